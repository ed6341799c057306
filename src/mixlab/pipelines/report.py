"""`mixlab report RUN_DIR`: one self-contained HTML page (plots embedded as PNG) and a markdown summary.

Reads the stage outputs of a pipeline run (``NN_<stage>`` directories: manifests,
``runs.parquet``, ``fit.json``, ``mixture.json``, ``metrics.parquet``, ``comparison.json``;
the three JSON shapes are documented in `mixlab.mixture`) and writes ``report.html``,
``report.md`` and the figures. Every number shown is read from a stage's output; nothing is
recomputed a different way. It answers, on one page: which mixture, why, and how sure we are.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.config import option
from mixlab.errors import ConfigError, InputError
from mixlab.mixture import MIXTURE_JSON, Mixture
from mixlab.stage import MANIFEST, Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage
from mixlab.tables import read_table

STAGE_DIR = re.compile(r"^(\d\d)_([a-z_]+)$")  # a pipeline run root's stage outputs: 03_dedup
FIT_JSON = "fit.json"  # mixlab.mixtures.fit.FIT_JSON (not imported: that pulls in the regressors)
COMPARISON_JSON = "comparison.json"


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """`mixlab report`: what the page is called and how much it shows."""

    title: str = option("mixlab run", "title of the report page")
    max_runs_plotted: int = option(512, "most swarm runs drawn in the loss-vs-weight plots")

    def __post_init__(self) -> None:
        if self.max_runs_plotted < 1:
            raise ConfigError("--max-runs-plotted: must be at least 1")


def stage_dirs(run_dir: Path | str) -> dict[str, Path]:
    """Finished stage outputs of a run root by stage name (`03_dedup` -> dedup), the report's own left out."""
    run_dir = Path(run_dir)
    found = {}
    for child in sorted(run_dir.iterdir()):
        m = STAGE_DIR.match(child.name)
        if m and (child / MANIFEST).is_file() and m.group(2) != "report":
            Manifest.load(child)  # a foreign manifest.json is "not a mixlab output", never read as one
            found[m.group(2)] = child
    return found


def default_report_dir(run_dir: Path | str) -> Path:
    """The run root's ``NN_report`` folder: the existing one, else numbered after the last stage output."""
    run_dir = Path(run_dir)
    numbers = []
    for child in sorted(run_dir.iterdir()) if run_dir.is_dir() else ():
        m = STAGE_DIR.match(child.name)
        if m and m.group(2) == "report":
            return child
        if m:
            numbers.append(int(m.group(1)))
    return run_dir / f"{max(numbers, default=-1) + 1:02d}_report"


# --- figures -----------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _bars(labels: list[str], series: Mapping[str, list[float]], ylabel: str) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(labels) + 2), 3.2))
    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width=width, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


# --- sections: each returns (markdown, html, figures) from one stage's outputs ----------------


class Page:
    """Markdown and HTML built side by side, figures embedded in the HTML and saved as files."""

    def __init__(self, out: Path):
        self.md: list[str] = []
        self.html: list[str] = []
        self.out = out
        self.figures: list[str] = []

    def heading(self, text: str) -> None:
        self.md.append(f"\n## {text}\n")
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        cells = [[_fmt(c) for c in r] for r in rows]
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        self.md.extend("| " + " | ".join(r) + " |" for r in cells)
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, name: str, png: bytes, caption: str) -> None:
        (self.out / name).write_bytes(png)
        self.figures.append(name)
        self.md.append(f"![{caption}]({name})\n")
        data = base64.b64encode(png).decode()
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _dedup(page: Page, d: Path) -> None:
    stats = Manifest.load(d).stats
    page.heading("Dedup")
    rows = []
    for domain, s in sorted(stats.get("domains", {}).items()):
        rows.append(
            [
                domain,
                s.get("documents_in"),
                s.get("documents_out"),
                s.get("removed_exact"),
                s.get("removed_near"),
                s.get("bytes_in"),
                s.get("bytes_out"),
            ]
        )
    page.table(
        ["domain", "docs in", "docs out", "exact removed", "near removed", "bytes in", "bytes out"], rows
    )
    cand, clusters = stats.get("candidates", {}), stats.get("clusters", {})
    page.para(
        f"LSH {stats.get('banding', {}).get('bands', '?')} bands x {stats.get('banding', {}).get('rows', '?')} rows; "
        f"{cand.get('checked', 0)} candidate pairs verified by {cand.get('verified_by', '?')}, "
        f"{cand.get('rejected', 0)} rejected; {clusters.get('count', 0)} clusters, largest {clusters.get('largest', 0)}."
    )
    hist = clusters.get("size_histogram") or {}
    if hist:
        labels = list(hist)
        page.figure(
            "dedup_cluster_sizes.png",
            _bars(labels, {"clusters": [hist[k] for k in labels]}, "clusters"),
            "duplicate cluster sizes",
        )


def _tokens(page: Page, tokenizer: Path | None, tokens: Path) -> None:
    stats = Manifest.load(tokens).stats
    page.heading("Tokenizer and tokens")
    if tokenizer is not None:
        t = Manifest.load(tokenizer)
        sample = t.stats.get("sample", {})
        page.para(
            f"{t.config.get('model')} tokenizer, vocabulary {stats.get('vocab_size')}, trained on a "
            f"{t.config.get('mixture')} sample of {sum(s.get('sample_bytes', 0) for s in sample.values()):,} bytes:"
        )
        page.table(
            ["domain", "sample weight", "sample bytes", "documents"],
            [
                [d, s.get("weight"), s.get("sample_bytes"), s.get("sample_documents")]
                for d, s in sorted(sample.items())
            ],
        )
    rows = []
    for domain, splits in sorted(stats.get("per_domain", {}).items()):
        for split, s in sorted(splits.items()):
            rows.append([domain, split, s.get("documents"), s.get("tokens"), s.get("bytes_per_token")])
    page.table(["domain", "split", "documents", "tokens", "bytes/token"], rows)


def _swarm(page: Page, swarm: Path, cfg: ReportConfig) -> list[str]:
    runs = read_table(swarm / "runs.parquet")
    weights = sorted(c.removeprefix("w.") for c in runs.column_names if c.startswith("w."))
    losses = sorted(c.removeprefix("loss.") for c in runs.column_names if c.startswith("loss."))
    m = Manifest.load(swarm)
    page.heading("Proxy swarm")
    page.para(
        f"{runs.num_rows} proxy runs of {m.stats.get('params', runs['params'][0].as_py() if 'params' in runs.column_names else '?')} "
        f"parameters, {runs['tokens'][0].as_py() if 'tokens' in runs.column_names else '?'} tokens each."
    )
    plt = _plt()
    n = min(runs.num_rows, cfg.max_runs_plotted)
    W = np.column_stack([runs[f"w.{d}"].to_numpy()[:n] for d in weights])
    W = W[np.lexsort(W.T[::-1])[::-1]]  # sorted by the first domain's weight, then the next
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = np.zeros(n)
    for i, d in enumerate(weights):
        ax.bar(np.arange(n), W[:, i], bottom=bottom, label=d, width=1.0, linewidth=0)
        bottom = bottom + W[:, i]
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(weights), loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    ax.set_xlabel("candidate (sorted by weight)")
    ax.set_ylabel("weight")
    page.figure("swarm_candidates.png", _png(fig), "candidate mixtures' weights")
    shown = [d for d in weights if d in losses]
    fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 2.8), squeeze=False)
    for ax, d in zip(axes[0], shown):
        ax.scatter(runs[f"w.{d}"].to_numpy()[:n], runs[f"loss.{d}"].to_numpy()[:n], s=8)
        ax.set_xlabel(f"weight of {d}")
        ax.set_ylabel(f"{d} validation loss")
    page.figure(
        "swarm_loss_vs_weight.png", _png(fig), "per-domain validation loss against that domain's weight"
    )
    return weights


def _fit(page: Page, fit_dir: Path) -> None:
    fit = json.loads((fit_dir / FIT_JSON).read_text())
    page.heading("Regression: weights -> target loss")
    page.para(f"Target: {fit['target']['spec']}. Held-out scores from {fit['folds']}-fold cross-validation.")
    floor = fit["noise_floor"]["rmse"] if fit["noise_floor"] else None
    rows = [[name, s["spearman"], s["pearson"], s["rmse"], floor] for name, s in fit["models"].items()]
    page.table(["model", "Spearman", "Pearson", "RMSE", "noise floor (seed RMSE)"], rows)
    chosen = fit["chosen"]
    plot = fit_dir / fit["plots"][chosen]
    if plot.is_file():
        page.figure(f"fit_{plot.name}", plot.read_bytes(), f"held-out predicted vs actual ({chosen})")


def _mixture(page: Page, select_dir: Path) -> None:
    mix = Mixture.read(select_dir / MIXTURE_JSON).record
    page.heading("Chosen mixture")
    weights, prior = mix["weights"], mix["prior"]
    domains = sorted(weights)
    uniform = 1.0 / len(domains)
    page.table(
        ["domain", "chosen", "natural (prior)", "uniform"],
        [[d, weights[d], prior[d], uniform] for d in domains],
    )
    page.para(
        f"Predicted target loss {mix['predicted_target_loss']:.4f} (spread across CV models: "
        f"std {mix['spread']['std']:.3g}); natural {mix['natural']['predicted_target_loss']:.4f}, "
        f"uniform {mix['uniform']['predicted_target_loss']:.4f}. "
        f"Method: {mix['method']['description']}."
    )
    page.figure(
        "mixture_vs_prior.png",
        _bars(
            domains,
            {
                "chosen": [weights[d] for d in domains],
                "natural": [prior[d] for d in domains],
                "uniform": [uniform] * len(domains),
            },
            "weight",
        ),
        "chosen mixture against natural and uniform",
    )
    if "verification" in mix:
        _verification(page, mix["verification"])
    for w in mix["warnings"]:
        page.para(f"Warning: {w}")


def _verification(page: Page, check: Mapping[str, Any]) -> None:
    """The second-scale check of mixture.json: the predicted and measured order, and each gap."""
    page.para(
        f"Second-scale check (proxies {check['scale']}x wider and longer, re-trained before the "
        f"full run): predicted order {check['predicted_order']}, measured {check['measured_order']}; "
        f"the order {'holds' if check['ordering_holds'] else 'does NOT hold'}."
    )
    comparisons = check["comparisons"]
    page.table(
        [
            "mixture",
            "predicted target loss",
            "measured at the larger size",
            "measured std",
            "chosen lower by",
            "verdict",
        ],
        [
            [
                n,
                m["predicted"],
                m["measured"],
                m["measured_std"],
                comparisons[n]["gap"] if n in comparisons else None,
                comparisons[n]["verdict"] if n in comparisons else None,
            ]
            for n, m in check["mixtures"].items()
        ],
    )


def _pretrain(page: Page, d: Path, title: str, reference: str) -> None:
    page.heading(title)
    metrics = read_table(d / "metrics.parquet", required=("model", "step")).to_pylist()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    for model in sorted({r["model"] for r in metrics}):
        rows = [r for r in metrics if r["model"] == model and r.get("target") is not None]
        ax.plot([r["step"] for r in rows], [r["target"] for r in rows], marker="o", ms=3, label=model)
    ax.set_xlabel("step")
    ax.set_ylabel("target validation loss")
    ax.legend(fontsize=8)
    page.figure(f"{d.name}_curves.png", _png(fig), f"{title}: target loss during training")
    if (d / COMPARISON_JSON).is_file():
        _comparison(page, json.loads((d / COMPARISON_JSON).read_text()), reference)


def _comparison(page: Page, comp: Mapping[str, Any], reference: str) -> None:
    """comparison.json: every model's losses at equal tokens, and the gaps against the seed noise."""
    models = comp["models"]
    domains = sorted({k for m in models.values() for k in m["losses"]})
    page.table(
        ["model", "target loss", *[f"{x} loss" for x in domains]],
        [[n, m["target"], *[m["losses"].get(x) for x in domains]] for n, m in models.items()],
    )
    for line in comp["summary"]:
        page.para(line)
    noise = comp["noise_floor"]
    if noise is not None:
        verdict = "yes" if all(g > noise for g in comp["gap_vs_reference"].values()) else "no"
        page.para(
            f"{reference} beats every alternative by more than the swarm's seed noise ({noise:.3g}): {verdict}."
        )


def run_report(
    inputs: Inputs, cfg: ReportConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Build the report of the run root `inputs["run"]` (its ``NN_<stage>`` outputs) into `out_dir`."""
    inputs = absolute_inputs(inputs)
    run = inputs["run"]
    if not run.is_dir():
        raise InputError(f"{run}: not a directory; pass the run root of `mixlab pipeline run`")
    dirs = stage_dirs(run)
    if not dirs:
        raise InputError(f"{run}: no finished stage outputs (NN_<stage>/manifest.json) to report on")

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        page = Page(stage.out)
        page.html.append(f"<h1>{html.escape(cfg.title)}</h1>")
        page.md.append(f"# {cfg.title}\n")
        sections = write_sections(page, dirs, cfg)
        (stage.out / "report.md").write_text("\n".join(page.md) + "\n")
        (stage.out / "report.html").write_text(_html_page(cfg.title, "\n".join(page.html)))
        counts = {"sections": len(sections), "figures": len(page.figures)}
        return counts, {"sections": sections, "figures": page.figures}

    # Fingerprinted by the stage outputs, not the run root (which holds the report itself).
    return run_stage("report", cfg, dirs, out_dir, body, force=force)


def write_sections(page: Page, dirs: Mapping[str, Path], cfg: ReportConfig) -> list[str]:
    """The answer first, then one section per finished stage output, in the flow's order."""
    if "mixtures_select" in dirs:
        _answer(page, dirs)
    sections: dict[str, Callable[[], Any]] = {
        "dedup": lambda: _dedup(page, dirs["dedup"]),
        "tokenize": lambda: _tokens(page, dirs.get("tokenizer_train"), dirs["tokenize"]),
        "swarm_train": lambda: _swarm(page, dirs["swarm_train"], cfg),
        "mixtures_fit": lambda: _fit(page, dirs["mixtures_fit"]),
        "mixtures_select": lambda: _mixture(page, dirs["mixtures_select"]),
        "pretrain": lambda: _pretrain(
            page, dirs["pretrain"], "Pretraining: chosen mixture vs baselines", "chosen"
        ),
        "distill": lambda: _pretrain(
            page, dirs["distill"], "Distillation: distilled vs scratch student", "distilled"
        ),
    }
    written = []
    for name, section in sections.items():
        if name in dirs:
            section()
            written.append(name)
    return written


def _answer(page: Page, dirs: Mapping[str, Path]) -> None:
    """The first paragraph: which mixture, why, and how sure."""
    mix = Mixture.read(dirs["mixtures_select"] / MIXTURE_JSON).record
    weights = ", ".join(f"{d} {w:.2f}" for d, w in sorted(mix["weights"].items(), key=lambda kv: -kv[1]))
    held = mix["held_out"]
    how_sure = f"How sure: held-out Spearman {held['spearman']:.3f}, RMSE {held['rmse']:.3g}"
    if mix["noise_floor"]:
        how_sure += f" (seed noise floor {mix['noise_floor']['rmse']:.3g})"
    parts = [
        f"Chosen mixture: {weights}.",
        f"Why: the regressor predicts target loss {mix['predicted_target_loss']:.4f} for it, against "
        f"{mix['natural']['predicted_target_loss']:.4f} (natural) and "
        f"{mix['uniform']['predicted_target_loss']:.4f} (uniform).",
        how_sure + ".",
    ]
    if "verification" in mix:
        check = mix["verification"]
        parts.append(
            f"Re-trained at {check['scale']}x the proxy size with {check['seeds']} seed(s): "
            + "; ".join(
                f"against {n}, chosen is {c['verdict']} ({c['gap']:+.4f}"
                + (f" +- {c['stderr']:.3f}" if c["stderr"] is not None else "")
                + " nats lower)"
                for n, c in check["comparisons"].items()
            )
            + "."
        )
    if "pretrain" in dirs and (dirs["pretrain"] / COMPARISON_JSON).is_file():
        comp = json.loads((dirs["pretrain"] / COMPARISON_JSON).read_text())
        parts.append(
            f"Pretrained at equal tokens, the best target loss is {comp['best']}'s "
            f"(gaps vs {comp['reference']}: {', '.join(f'{k} {v:+.4f}' for k, v in comp['gap_vs_reference'].items())})."
        )
    page.heading("Answer")
    page.para(" ".join(parts))


def _html_page(title: str, body: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "th{background:#f3f4f6}figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}"
        "h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )
