"""`mixlab report RUN_DIR`: one self-contained HTML page (plots embedded as PNG) and a markdown summary.

Reads the stage outputs of a pipeline run (``NN_<stage>`` directories: manifests,
``runs.parquet``, ``fit.json``, ``mixture.json``, ``metrics.parquet``, ``comparison.json``;
the three JSON shapes are documented in `mixlab.mixture`; an iterative ``NN_search`` output's
``rounds.parquet`` and last round stand in for the one-shot stages) and writes ``report.html``,
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
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, has_manifest, run_stage
from mixlab.tables import read_table

STAGE_DIR = re.compile(r"^(\d\d)_([a-z_]+)$")  # a pipeline run root's stage outputs: 03_dedup
FIT_JSON = "fit.json"  # mixlab.mixtures.fit.FIT_JSON (not imported: that pulls in the regressors)
COMPARISON_JSON = "comparison.json"
ROUNDS = "rounds.parquet"  # mixlab.mixtures.search.ROUNDS (not imported, as FIT_JSON)


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
        if m and has_manifest(child) and m.group(2) != "report":
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


def domain_colours(domains: list[str]) -> dict[str, Any]:
    """One colour per domain, the same in every figure of the page (sorted names -> tab10)."""
    cmap = _plt().get_cmap("tab10")
    return {d: cmap(i % 10) for i, d in enumerate(sorted(domains))}


SERIES_ALPHA = {"chosen": 1.0, "natural": 0.55, "uniform": 0.3, "best swarm run": 0.8}
SERIES_HATCH = {"chosen": "", "natural": "//", "uniform": "..", "best swarm run": "xx"}


def _mixture_bars(
    domains: list[str], series: Mapping[str, Mapping[str, float]], colours: Mapping[str, Any]
) -> bytes:
    """Weights per domain (bars in the domain's colour), one bar per mixture, told apart by hatching."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(domains) + 2), 3.2))
    x = np.arange(len(domains))
    width = 0.8 / max(1, len(series))
    for i, (name, weights) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            [weights.get(d, 0.0) for d in domains],
            width=width,
            color=[colours[d] for d in domains],
            alpha=SERIES_ALPHA.get(name, 0.6),
            hatch=SERIES_HATCH.get(name, ""),
            edgecolor="#333",
            linewidth=0.5,
            label=name,
        )
    ax.set_xticks(x, domains)
    ax.set_xlabel("domain")
    ax.set_ylabel("weight in the mixture")
    handles = [
        _plt().Rectangle(
            (0, 0),
            1,
            1,
            facecolor="#999",
            alpha=SERIES_ALPHA.get(n, 0.6),
            hatch=SERIES_HATCH.get(n, ""),
            edgecolor="#333",
        )
        for n in series
    ]
    ax.legend(handles, list(series), fontsize=8)
    return _png(fig)


# --- formatting: one precision per kind of number ----------------------------------------------

INTERNAL_NAMES = {
    "exact_jaccard": "exact Jaccard similarity",
    "topk": "top-k average",
    "near_prior": "near the prior",
}


def loss(x: float | None) -> str:
    """A loss, always 3 decimals."""
    return "-" if x is None else f"{x:.3f}"


def weight(x: float | None) -> str:
    """A mixture weight as a percentage; a nonzero weight never shows as 0."""
    if x is None:
        return "-"
    if x == 0:
        return "0%"
    if x < 0.001:
        return "<0.1%"
    return f"{100 * x:.1f}%"


def gap_text(gap: float, stderr: float | None, other: str, subject: str = "chosen") -> str:
    """`chosen is 0.341 ± 0.058 lower than natural` (a positive gap: the subject's loss is lower)."""
    noise = f" ± {stderr:.3f}" if stderr is not None else ""
    return f"{subject} is {abs(gap):.3f}{noise} {'lower' if gap > 0 else 'higher'} than {other}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) >= 1000 else f"{value:.4g}"
    return INTERNAL_NAMES.get(str(value), str(value))


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

    def para(self, text: str, kind: str = "") -> None:
        self.md.append(("**Warning:** " if kind == "warning" else "") + text + "\n")
        cls = f' class="{kind}"' if kind else ""
        self.html.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        cells = [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "---|" * len(header))
        self.md.extend("| " + " | ".join(r) + " |" for r in cells)
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f'<div class="table"><table><tr>{head}</tr>{body}</table></div>')

    def figure(self, name: str, png: bytes, caption: str) -> None:
        (self.out / name).write_bytes(png)
        self.figures.append(name)
        self.md.append(f"![{caption}]({name})\n")
        data = base64.b64encode(png).decode()
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def preformatted(self, summary: str, text: str) -> None:
        self.md.append(
            f"<details><summary>{summary}</summary>\n\n```yaml\n{text.rstrip()}\n```\n</details>\n"
        )
        self.html.append(
            f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
        )


@dataclasses.dataclass
class Run:
    """What several sections share: the stage directories, the target, the domains' colours."""

    dirs: Mapping[str, Path]
    root: Path
    target_terms: dict[str, float]
    target_text: str
    domains: list[str]
    colours: dict[str, Any]
    chosen: dict[str, float] | None


def read_run(root: Path, dirs: Mapping[str, Path]) -> Run:
    terms, spec = {}, None
    for name in ("mixtures_select", "mixtures_fit"):
        if name not in dirs:
            continue
        path = dirs[name] / (MIXTURE_JSON if name == "mixtures_select" else FIT_JSON)
        record = json.loads(path.read_text()).get("target") or {}
        terms, spec = dict(record.get("terms") or {}), record.get("spec")
        break
    chosen = (
        Mixture.read(dirs["mixtures_select"] / MIXTURE_JSON).weights if "mixtures_select" in dirs else None
    )
    domains = sorted(chosen) if chosen else []
    if not domains and "swarm_train" in dirs:
        domains = sorted(Manifest.load(dirs["swarm_train"]).stats.get("domains", []))
    extra = sorted(t for t in terms if t not in domains)
    return Run(
        dirs,
        root,
        terms,
        target_definition(root, dirs, terms, spec),
        domains,
        domain_colours(domains + extra),
        chosen,
    )


def target_definition(
    root: Path, dirs: Mapping[str, Path], terms: Mapping[str, float], spec: str | None
) -> str:
    """What the target is, in words: the planted blend of a synthetic corpus, a target corpus, or a sum."""
    if not terms:
        return "the target loss"
    parts = []
    for name, coef in terms.items():
        what = f"{name} validation loss"
        if name == "target" and "synth" in dirs:
            blend = Manifest.load(dirs["synth"]).config.get("target_blend") or {}
            if blend:
                mix = " + ".join(
                    f"{round(100 * w)}% {d}" for d, w in sorted(blend.items(), key=lambda kv: -kv[1])
                )
                what = (
                    f"the loss on a held-out set of fresh documents drawn {mix} "
                    "(the synthetic corpus's planted blend, never trained on)"
                )
        else:
            ingest = dirs.get(f"target_{name}")
            if ingest is not None:
                sources = Manifest.load(ingest).inputs
                files = ", ".join(
                    Path(str(k if not isinstance(v, str) else v)).name for k, v in list(sources.items())[:3]
                )
                what = f"the loss on the target corpus {name!r} ({files}), validation only, never mixed"
        parts.append(what if len(terms) == 1 else f"{coef:g} x {what}")
    return " + ".join(parts)


def _dedup(page: Page, d: Path, run: Run) -> None:
    manifest = Manifest.load(d)
    stats = manifest.stats
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
    banding = stats.get("banding", {})
    page.para(
        f"MinHash LSH with {banding.get('bands', '?')} bands x {banding.get('rows', '?')} rows; "
        f"{cand.get('checked', 0):,} candidate pairs checked by {_fmt(cand.get('verified_by', '?'))}, "
        f"{cand.get('rejected', 0):,} rejected; {clusters.get('count', 0):,} clusters, the largest of "
        f"{clusters.get('largest', 0):,} documents."
    )
    if "synth" in run.dirs and (run.dirs["synth"] / "near_duplicates.parquet").is_file():
        score = planted_duplicates_found(
            run.dirs["synth"] / "near_duplicates.parquet",
            d / "duplicates.parquet",
            float(manifest.config.get("threshold", 0.8)),
        )
        page.para(planted_text(score))
    hist = clusters.get("size_histogram") or {}
    if hist:
        labels = list(hist)
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar(labels, [hist[k] for k in labels], color="#4c72b0")
        ax.set_xlabel("documents in the cluster")
        ax.set_ylabel("clusters")
        page.figure("dedup_cluster_sizes.png", _png(fig), "duplicate cluster sizes")


def planted_duplicates_found(planted: Path, duplicates: Path, threshold: float) -> dict[str, Any]:
    """Dedup scored against the duplicates a synthetic corpus planted (synth's near_duplicates.parquet).

    A planted pair is found when dedup put both documents in one cluster; a removal is false
    when the removed document is in no planted pair at all.
    """
    pairs = read_table(planted).to_pylist()
    removed = read_table(duplicates).to_pylist()
    cluster = {r["id"]: r["cluster_id"] for r in removed}
    cluster.update({r["cluster_id"]: r["cluster_id"] for r in removed})

    def together(a: str, b: str) -> bool:
        return cluster.get(a, a) == cluster.get(b, b)

    above = [p for p in pairs if p["jaccard"] >= threshold]
    below = [p for p in pairs if p["jaccard"] < threshold]
    in_pairs = {p["id_a"] for p in pairs} | {p["id_b"] for p in pairs}
    return {
        "threshold": threshold,
        "planted_above": len(above),
        "found_above": sum(together(p["id_a"], p["id_b"]) for p in above),
        "planted_below": len(below),
        "found_below": sum(together(p["id_a"], p["id_b"]) for p in below),
        "removed": len(removed),
        "false_removals": sum(r["id"] not in in_pairs for r in removed),
    }


def planted_text(score: Mapping[str, Any]) -> str:
    above, found = score["planted_above"], score["found_above"]
    share = f" ({100 * found / above:.1f}%)" if above else ""
    return (
        f"Against the planted duplicates: {found:,} of {above:,} planted pairs with Jaccard >= "
        f"{score['threshold']:g} were found{share}; {score['found_below']:,} of {score['planted_below']:,} "
        f"planted pairs below the threshold were merged too; {score['false_removals']:,} of "
        f"{score['removed']:,} removed documents were in no planted pair."
    )


def _tokens(page: Page, tokenizer: Path | None, tokens: Path) -> None:
    stats = Manifest.load(tokens).stats
    page.heading("Tokenizer and tokens")
    if tokenizer is not None:
        t = Manifest.load(tokenizer)
        sample = t.stats.get("sample", {})
        page.para(
            f"{t.config.get('model')} tokenizer, vocabulary {stats.get('vocab_size'):,}, trained on a "
            f"{t.config.get('mixture')} sample of {sum(s.get('sample_bytes', 0) for s in sample.values()):,} bytes:"
        )
        page.table(
            ["domain", "sample weight", "sample bytes", "documents"],
            [
                [d, weight(s.get("weight")), s.get("sample_bytes"), s.get("sample_documents")]
                for d, s in sorted(sample.items())
            ],
        )
    rows = []
    for domain, splits in sorted(stats.get("per_domain", {}).items()):
        for split, s in sorted(splits.items()):
            bpt = s.get("bytes_per_token")
            rows.append(
                [domain, split, s.get("documents"), s.get("tokens"), "-" if bpt is None else f"{bpt:.2f}"]
            )
    page.table(["domain", "split", "documents", "tokens", "bytes/token"], rows)


def swarm_target_losses(runs: Any, terms: Mapping[str, float]) -> np.ndarray | None:
    """Each swarm run's target loss (the weighted sum of its validation losses), or None."""
    if not terms or any(f"loss.{t}" not in runs.column_names for t in terms):
        return None
    return sum(c * runs[f"loss.{t}"].to_numpy() for t, c in terms.items())


def best_swarm_run(swarm: Path, run: Run) -> dict[str, Any] | None:
    """The swarm run with the lowest target loss: its id, weights and loss (at the proxy's size)."""
    runs = read_table(swarm / "runs.parquet")
    target = swarm_target_losses(runs, run.target_terms)
    if target is None or not len(target):
        return None
    i = int(np.argmin(target))
    weights = {
        c.removeprefix("w."): float(runs[c][i].as_py()) for c in runs.column_names if c.startswith("w.")
    }
    return {
        "run_id": runs["run_id"][i].as_py(),
        "weights": weights,
        "target": float(target[i]),
        "runs": runs.num_rows,
    }


def _swarm(page: Page, swarm: Path, cfg: ReportConfig, run: Run) -> None:
    runs = read_table(swarm / "runs.parquet")
    weights = sorted(c.removeprefix("w.") for c in runs.column_names if c.startswith("w."))
    losses = sorted(c.removeprefix("loss.") for c in runs.column_names if c.startswith("loss."))
    stats = Manifest.load(swarm).stats if has_manifest(swarm) else {}  # a search round's runs: no manifest
    params = stats.get("params", runs["params"][0].as_py() if "params" in runs.column_names else None)
    tokens = runs["tokens"][0].as_py() if "tokens" in runs.column_names else None
    page.heading("Proxy swarm")
    page.para(f"{runs.num_rows:,} proxy runs of {_fmt(params)} parameters, {_fmt(tokens)} tokens each.")
    plt = _plt()
    n = min(runs.num_rows, cfg.max_runs_plotted)
    W = np.column_stack([runs[f"w.{d}"].to_numpy()[:n] for d in weights])
    W = W[np.lexsort(W.T[::-1])[::-1]]  # sorted by the first domain's weight, then the next
    fig, ax = plt.subplots(figsize=(8, 3))
    bottom = np.zeros(n)
    for i, d in enumerate(weights):
        ax.bar(np.arange(n), W[:, i], bottom=bottom, label=d, width=1.0, linewidth=0, color=run.colours[d])
        bottom = bottom + W[:, i]
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=len(weights), loc="upper center", bbox_to_anchor=(0.5, 1.2), frameon=False)
    ax.set_xlabel("candidate (sorted by weight)")
    ax.set_ylabel("weight")
    page.figure("swarm_candidates.png", _png(fig), "candidate mixtures' weights")
    target = swarm_target_losses(runs, run.target_terms)
    if target is not None:
        fig, axes = plt.subplots(
            1, len(weights), figsize=(2.6 * len(weights), 2.8), squeeze=False, sharey=True
        )
        for ax, d in zip(axes[0], weights):
            ax.scatter(runs[f"w.{d}"].to_numpy()[:n], target[:n], s=8, color=run.colours[d])
            _mark_chosen(ax, run, d)
            ax.set_xlabel(f"weight of {d}")
        axes[0][0].set_ylabel("target loss")
        axes[0][-1].legend(fontsize=7)
        page.figure(
            "swarm_target_vs_weight.png",
            _png(fig),
            "target loss of every proxy against each domain's weight (dashed: the chosen mixture)",
        )
    shown = [d for d in weights if d in losses]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 2.8), squeeze=False)
    for ax, d in zip(axes[0], shown):
        ax.scatter(runs[f"w.{d}"].to_numpy()[:n], runs[f"loss.{d}"].to_numpy()[:n], s=8, color=run.colours[d])
        _mark_chosen(ax, run, d)
        ax.set_xlabel(f"weight of {d}")
        ax.set_ylabel(f"{d} validation loss")
    page.figure(
        "swarm_loss_vs_weight.png",
        _png(fig),
        "each domain's own validation loss against its weight (dashed: the chosen mixture)",
    )


def _search(page: Page, search: Path, run: Run) -> None:
    """How the iterative search's choice converged: per round, the proxies so far, the predicted
    best, its spread against the seed noise floor, and the fit's held-out Spearman."""
    rounds = read_table(search / ROUNDS)
    mix = json.loads((search / MIXTURE_JSON).read_text())
    info = mix["method"]["search"]
    r = {c: rounds[c].to_pylist() for c in rounds.column_names}
    domains = [c.removeprefix("w.") for c in rounds.column_names if c.startswith("w.")]
    page.heading("Iterative search: how the choice converged")
    page.para(
        f"{info['rounds']} rounds, {info['proxies']:,} proxies of a budget of {info['budget']:,} (data experts "
        f"and repeated seeds included); stopped: {info['stop']}. Each round fits every run so far, then trains "
        "the mixtures with the lowest predicted loss less the fold models' spread. The swarm, regression and "
        "chosen-mixture sections below are drawn from the last round (every round's runs, its fit)."
    )
    rows = [
        [
            r["round"][i],
            r["proxies"][i],
            loss(r["predicted_best"][i]),
            loss(r["best_spread"][i]),
            loss(r["noise_floor"][i]),
            f"{r['held_out_spearman'][i]:.3f}",
            *[weight(r[f"w.{d}"][i]) for d in domains],
        ]
        for i in range(rounds.num_rows)
    ]
    page.table(
        ["round", "proxies", "predicted best", "spread", "noise floor", "held-out Spearman", *domains], rows
    )
    plt = _plt()
    proxies = np.asarray(r["proxies"], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    axes[0].errorbar(
        proxies, r["predicted_best"], yerr=r["best_spread"], marker="o", color="black", capsize=3
    )
    axes[0].set_xlabel("proxies trained")
    axes[0].set_ylabel("predicted best target loss")
    axes[1].plot(proxies, r["held_out_spearman"], marker="o", color="black")
    axes[1].set_xlabel("proxies trained")
    axes[1].set_ylabel("held-out Spearman")
    for d in domains:
        axes[2].plot(proxies, r[f"w.{d}"], marker="o", label=d, color=run.colours.get(d))
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("proxies trained")
    axes[2].set_ylabel("weight in the predicted best")
    axes[2].legend(fontsize=7)
    page.figure(
        "search_convergence.png",
        _png(fig),
        "per round: the predicted best's target loss (bars: its spread), the fit's held-out Spearman, its weights",
    )


def _mark_chosen(ax: Any, run: Run, domain: str) -> None:
    if run.chosen is not None and domain in run.chosen:
        ax.axvline(run.chosen[domain], color="black", linestyle="--", linewidth=1, label="chosen")


def _fit(page: Page, fit_dir: Path, run: Run) -> None:
    fit = json.loads((fit_dir / FIT_JSON).read_text())
    page.heading("Regression: weights -> target loss")
    page.para(f"Target: {run.target_text}. Held-out scores from {fit['folds']}-fold cross-validation.")
    floor = fit["noise_floor"]["rmse"] if fit["noise_floor"] else None
    rows = [
        [name, f"{s['spearman']:.3f}", f"{s['pearson']:.3f}", loss(s["rmse"]), loss(floor)]
        for name, s in fit["models"].items()
    ]
    page.table(["model", "Spearman", "Pearson", "RMSE", "noise floor (seed RMSE)"], rows)
    chosen = fit["chosen"]
    plot = fit_dir / fit["plots"][chosen]
    if plot.is_file():
        page.figure(
            f"fit_{plot.name}", plot.read_bytes(), f"held-out predicted vs actual target loss ({chosen})"
        )


def flat_optimum(
    fit_dir: Path, mix: Mapping[str, Any], samples: int = 20_000, seed: int = 0
) -> dict[str, Any] | None:
    """The mixtures the regressor predicts within the noise floor of the best: each domain's weight range.

    Simulated from the same law the search used (the candidates' sampler around the prior);
    the best prediction among them is the reference, `noise_floor.rmse` the tolerance.
    """
    if not mix.get("noise_floor") or not (mix.get("method") or {}).get("sampler"):
        return None
    from mixlab.mixtures.fit import load_fit
    from mixlab.mixtures.select import simulate_mixtures

    fitted = load_fit(fit_dir, mix["method"].get("model"), num_threads=1)
    w = simulate_mixtures(fitted.prior, samples, mix["method"]["sampler"], np.random.default_rng(seed))
    pred = np.asarray(fitted.predict(w))
    tol = float(mix["noise_floor"]["rmse"])
    near = w[pred <= pred.min() + tol]
    return {
        "tolerance": tol,
        "samples": len(w),
        "within": len(near),
        "best": float(pred.min()),
        "ranges": {
            d: (float(near[:, j].min()), float(near[:, j].max())) for j, d in enumerate(fitted.domains)
        },
    }


def flat_text(flat: Mapping[str, Any]) -> str:
    ranges = ", ".join(f"{d} from {weight(lo)} to {weight(hi)}" for d, (lo, hi) in flat["ranges"].items())
    return (
        f"How flat the optimum is: of {flat['samples']:,} simulated mixtures, {flat['within']:,} are predicted "
        f"within the seed noise floor ({flat['tolerance']:.3f}) of the best; among them {ranges}. Any of "
        "these is as good as the chosen one, as far as the swarm can tell."
    )


def _mixture(page: Page, select_dir: Path, run: Run) -> None:
    mix = Mixture.read(select_dir / MIXTURE_JSON).record
    page.heading("Chosen mixture")
    weights, prior = mix["weights"], mix["prior"]
    domains = sorted(weights)
    uniform = dict.fromkeys(domains, 1.0 / len(domains))
    best = best_swarm_run(run.dirs["swarm_train"], run) if "swarm_train" in run.dirs else None
    series = {"chosen": weights, "natural": prior, "uniform": uniform}
    if best is not None:
        series["best swarm run"] = best["weights"]
    page.table(["domain", *series], [[d, *[weight(s.get(d)) for s in series.values()]] for d in domains])
    predicted = mix["predicted_target_loss"]
    folds = mix["spread"].get("folds") or []
    text = (
        f"Predicted target loss {predicted:.3f} (spread across the cross-validation fold models: std "
        f"{mix['spread']['std']:.3f}); natural {mix['natural']['predicted_target_loss']:.3f}, uniform "
        f"{mix['uniform']['predicted_target_loss']:.3f}. Method: {mix['method']['description']}."
    )
    if best is not None:
        text += (
            f" The best of the {best['runs']:,} swarm runs ({best['run_id']}) measured a target loss of "
            f"{best['target']:.3f} at the proxy's size; the chosen mixture is a search beyond it, not a measurement."
        )
    page.para(text)
    if folds and predicted < min(folds):
        page.para(
            f"The chosen mixture's predicted loss ({predicted:.3f}) lies below every fold model's prediction "
            f"({min(folds):.3f} to {max(folds):.3f}): the search picked the final model's most optimistic "
            "corner, so read the predicted level as optimistic and trust the ranking, then the re-training below.",
            "warning",
        )
    page.figure(
        "mixture_vs_prior.png",
        _mixture_bars(domains, series, run.colours),
        "chosen mixture against natural, uniform and the best swarm run",
    )
    flat = flat_optimum(run.dirs["mixtures_fit"], mix) if "mixtures_fit" in run.dirs else None
    if flat is not None:
        page.para(flat_text(flat))
    if "verification" in mix:
        _verification(page, mix["verification"])
    for w in mix["warnings"]:
        page.para(w, "warning")


def verification_verdict(check: Mapping[str, Any]) -> str:
    """One sentence on the second-scale check that agrees with its table: every gap with its sign and ±."""
    comps = check.get("comparisons") or {}
    where = f"Re-trained at {check['scale']:g}x the proxy's width and steps with {check['seeds']} seed(s)"
    if not comps:
        return where + ": no baseline to compare with."
    better = [n for n, c in comps.items() if c["verdict"].startswith("better")]
    worse = [n for n, c in comps.items() if c["verdict"].startswith("worse")]
    gaps = "; ".join(gap_text(c["gap"], c["stderr"], n) for n, c in comps.items())
    if len(better) == len(comps):
        head = "the chosen mixture beats every baseline beyond seed noise"
    elif worse:
        head = f"the chosen mixture is WORSE than {', '.join(worse)} beyond seed noise"
    elif better:
        rest = [n for n in comps if n not in better]
        head = f"the chosen mixture beats {', '.join(better)} but is within seed noise of {', '.join(rest)}"
    else:
        head = "the chosen mixture cannot be told apart from the baselines within seed noise"
    return f"{where}, {head}: {gaps}."


def _verification(page: Page, check: Mapping[str, Any]) -> None:
    """The second-scale check of mixture.json: one verdict, then each mixture's loss and gap."""
    page.para(verification_verdict(check))
    comparisons = check.get("comparisons") or {}

    def measured(m: Mapping[str, Any]) -> str:
        std = m.get("measured_std")
        return loss(m["measured"]) + (f" ± {std:.3f}" if std is not None else "")

    page.table(
        [
            "mixture",
            "predicted target loss",
            "measured at the larger size (mean ± std)",
            "chosen against it",
            "verdict",
        ],
        [
            [
                n,
                loss(m["predicted"]),
                measured(m),
                gap_text(comparisons[n]["gap"], comparisons[n]["stderr"], n) if n in comparisons else "-",
                comparisons[n]["verdict"] if n in comparisons else "-",
            ]
            for n, m in check["mixtures"].items()
        ],
    )


def _pretrain(page: Page, d: Path, title: str, reference: str, run: Run) -> None:
    page.heading(title)
    metrics = read_table(d / "metrics.parquet", required=("model", "step")).to_pylist()
    comp = json.loads((d / COMPARISON_JSON).read_text()) if (d / COMPARISON_JSON).is_file() else None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = sorted({r["model"] for r in metrics})
    bases = list(dict.fromkeys(n.split("~")[0] for n in names))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for model in names:
        base = model.split("~")[0]
        rows = [r for r in metrics if r["model"] == model and r.get("target") is not None]
        first = model == base
        ax.plot(
            [r["step"] for r in rows],
            [r["target"] for r in rows],
            marker="o" if first else None,
            ms=3,
            color=cycle[bases.index(base) % len(cycle)],
            alpha=1.0 if first else 0.4,
            label=base if first else None,
        )
    teacher = (comp or {}).get("models", {}).get("teacher")
    if teacher is not None:
        ax.axhline(teacher["target"], color="black", linestyle="--", linewidth=1, label="teacher (final)")
    ax.set_xlabel("step")
    ax.set_ylabel("target validation loss")
    ax.legend(fontsize=8)
    note = " (faint: the other seeds)" if len(names) > len(bases) else ""
    page.figure(f"{d.name}_curves.png", _png(fig), f"{title}: target loss during training{note}")
    if comp is not None:
        _comparison(page, comp, reference, run)


def _comparison(page: Page, comp: Mapping[str, Any], reference: str, run: Run) -> None:
    """comparison.json: every model's losses at equal tokens, and the gaps against the seed noise."""
    models = comp["models"]
    only_target = set(run.target_terms) == {"target"} or set((comp.get("target") or {}).get("terms", {})) == {
        "target"
    }
    domains = sorted(
        {k for m in models.values() for k in m["losses"]} - ({"target"} if only_target else set())
    )
    seeds = comp.get("seeds", 1)
    head = "target loss" + (f" (mean of {seeds} seeds)" if seeds > 1 else "")
    page.table(
        ["model", head, *[f"{x} loss" for x in domains]],
        [[n, loss(m["target"]), *[loss(m["losses"].get(x)) for x in domains]] for n, m in models.items()],
    )
    page.para(
        f"At equal tokens ({comp['tokens']:,} each): "
        + "; ".join(gap_text(g, None, n, reference) for n, g in comp["gap_vs_reference"].items())
        + "."
    )
    if comp.get("seed_gaps"):
        page.para(
            f"Judged against the spread of {seeds} seeds at this size: "
            + "; ".join(
                f"{gap_text(g['gap'], g['stderr'], n, reference)} ({g['verdict']})"
                for n, g in comp["seed_gaps"].items()
            )
            + "."
        )
    elif comp.get("noise_floor") is not None and reference == "chosen":
        noise = comp["noise_floor"]
        verdict = "yes" if all(g > noise for g in comp["gap_vs_reference"].values()) else "no"
        page.para(
            f"{reference} beats every alternative by more than the swarm's seed noise ({noise:.3f}): {verdict}. "
            "One seed per model: the swarm's noise floor is measured at the proxy's size, so this overstates "
            "how sure the gap is; pretrain with --seeds 2 or more to judge it against its own seed spread."
        )
    if reference == "chosen":
        cost = domain_costs(comp)
        if cost:
            page.para(cost_text(cost, iterative=chosen_by_search(run)), "warning")


def domain_costs(
    comp: Mapping[str, Any], reference: str = "natural", ratio: float = 1.25
) -> list[dict[str, Any]]:
    """Mixture domains the chosen model is much worse on than the `reference` baseline (loss x `ratio`)."""
    models = comp["models"]
    if "chosen" not in models or reference not in models:
        return []
    chosen, base = models["chosen"], models[reference]
    out = []
    for d, w in sorted(chosen.get("weights", {}).items()):
        a, b = chosen["losses"].get(d), base["losses"].get(d)
        if a is not None and b is not None and a > ratio * b:
            out.append({"domain": d, "weight": w, "loss": a, "baseline": b, "reference": reference})
    return out


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def cost_text(costs: list[dict[str, Any]], iterative: bool = False) -> str:
    names = _and([f"{c['domain']} ({weight(c['weight'])})" for c in costs])
    losses = ", ".join(
        f"{c['domain']} {c['loss']:.2f} vs {c['baseline']:.2f} ({c['loss'] / c['baseline']:.1f}x)"
        for c in costs
    )
    # The iterative search has no weight floors: only its target can take the other domains in.
    fix = (
        "put them in the target (search: target)"
        if iterative
        else "set a floor (mixtures_select: min_weight) or put them in the target"
    )
    return (
        f"Cost to other domains: the chosen mixture gives little weight to {names}, and after pretraining "
        f"their loss is far above the {costs[0]['reference']} baseline's: {losses}. It is the best mixture for "
        f"the target only; if the model must also serve these domains, {fix}."
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
        raise InputError(f"{run}: no finished stage outputs (NN_<stage>/_mixlab/manifest.json) to report on")

    title = page_title(cfg, run)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        page = Page(stage.out)
        page.html.append(f"<h1>{html.escape(title)}</h1>")
        page.md.append(f"# {title}\n")
        sections = write_sections(page, dirs, cfg, run)
        (stage.out / "report.md").write_text("\n".join(page.md) + "\n")
        (stage.out / "report.html").write_text(_html_page(title, "\n".join(page.html)))
        counts = {"sections": len(sections), "figures": len(page.figures)}
        return counts, {"sections": sections, "figures": page.figures}

    # Fingerprinted by the stage outputs, not the run root (which holds the report itself).
    return run_stage("report", cfg, dirs, out_dir, body, force=force)


def page_title(cfg: ReportConfig, run: Path) -> str:
    """--title, else the `description` of the pipeline file kept at the run root, else the default."""
    default = next(f.default for f in dataclasses.fields(cfg) if f.name == "title")
    if cfg.title != default or not (run / RUN_YAML).is_file():
        return cfg.title
    import yaml

    try:
        data = yaml.safe_load((run / RUN_YAML).read_text())
    except (OSError, yaml.YAMLError):
        return cfg.title
    description = data.get("description") if isinstance(data, dict) else None
    return str(description) if description else cfg.title


def search_views(dirs: Mapping[str, Path]) -> dict[str, Path]:
    """`dirs`, with an iterative search standing in for the one-shot stages a run did not have:
    its mixture.json for select's, its last round's fit for fit's, all its rounds' runs for the swarm's."""
    views = dict(dirs)
    search = dirs.get("search")
    if search is None or "mixtures_select" in dirs or not (search / MIXTURE_JSON).is_file():
        return views
    last = search / json.loads((search / MIXTURE_JSON).read_text())["method"]["search"]["fit"]
    views["mixtures_select"] = search
    views.setdefault("mixtures_fit", last)
    views.setdefault("swarm_train", last.parent / "runs")
    return views


def chosen_by_search(run: Run) -> bool:
    """True when the mixture the run pretrained on is the iterative search's (no one-shot select)."""
    return "search" in run.dirs and run.dirs.get("mixtures_select") == run.dirs["search"]


def write_sections(
    page: Page, dirs: Mapping[str, Path], cfg: ReportConfig, root: Path | None = None
) -> list[str]:
    """The answer first, then one section per finished stage output, in the flow's order."""
    root = root or next(iter(dirs.values())).parent
    dirs = search_views(dirs)
    run = read_run(root, dirs)
    if "mixtures_select" in dirs:
        _answer(page, run)
    sections: dict[str, Callable[[], Any]] = {
        "dedup": lambda: _dedup(page, dirs["dedup"], run),
        "tokenize": lambda: _tokens(page, dirs.get("tokenizer_train"), dirs["tokenize"]),
        "search": lambda: _search(page, dirs["search"], run),
        "swarm_train": lambda: _swarm(page, dirs["swarm_train"], cfg, run),
        "mixtures_fit": lambda: _fit(page, dirs["mixtures_fit"], run),
        "mixtures_select": lambda: _mixture(page, dirs["mixtures_select"], run),
        "pretrain": lambda: _pretrain(
            page, dirs["pretrain"], "Pretraining: chosen mixture vs baselines", "chosen", run
        ),
        "distill": lambda: _pretrain(
            page, dirs["distill"], "Distillation: distilled vs scratch student", "distilled", run
        ),
    }
    written = []
    for name, section in sections.items():
        if name in dirs:
            section()
            written.append(name)
    _pipeline_file(page, run.root)
    return written


RUN_YAML = "pipeline.yaml"  # what `pipeline run` keeps at the run root (mixlab.pipelines.run.RUN_YAML)
RUN_JSON = "run.json"


def _pipeline_file(page: Page, root: Path) -> None:
    if (root / RUN_YAML).is_file():
        page.heading("Pipeline")
        page.para(
            f"The run root keeps the pipeline file it was made with ({RUN_YAML}) and a run manifest ({RUN_JSON})."
        )
        page.preformatted(RUN_YAML, (root / RUN_YAML).read_text())


def _answer(page: Page, run: Run) -> None:
    """The first paragraphs: what the target is, which mixture, why, how sure, and at what cost."""
    dirs = run.dirs
    mix = Mixture.read(dirs["mixtures_select"] / MIXTURE_JSON).record
    weights = ", ".join(f"{d} {weight(w)}" for d, w in sorted(mix["weights"].items(), key=lambda kv: -kv[1]))
    held = mix["held_out"]
    how_sure = f"How sure: held-out Spearman {held['spearman']:.3f}, RMSE {held['rmse']:.3f}"
    if mix["noise_floor"]:
        how_sure += f" (seed noise floor {mix['noise_floor']['rmse']:.3f})"
    page.heading("Answer")
    page.para(f"Target: {run.target_text}.")
    parts = [
        f"Chosen mixture: {weights}.",
        f"Why: the regressor predicts target loss {mix['predicted_target_loss']:.3f} for it, against "
        f"{mix['natural']['predicted_target_loss']:.3f} (natural) and "
        f"{mix['uniform']['predicted_target_loss']:.3f} (uniform).",
        how_sure + ".",
    ]
    search = (mix.get("method") or {}).get("search")
    if search:
        parts.append(
            f"Found by iterative search: {search['rounds']} rounds, {search['proxies']:,} proxies of a budget of "
            f"{search['budget']:,} (stopped: {search['stop']})."
        )
    if "verification" in mix:
        parts.append(verification_verdict(mix["verification"]))
    comp = None
    if "pretrain" in dirs and (dirs["pretrain"] / COMPARISON_JSON).is_file():
        comp = json.loads((dirs["pretrain"] / COMPARISON_JSON).read_text())
        seeds = comp.get("seeds", 1)
        if comp.get("seed_gaps"):
            gaps = "; ".join(
                f"{gap_text(g['gap'], g['stderr'], n, comp['reference'])} ({g['verdict']})"
                for n, g in comp["seed_gaps"].items()
            )
        else:
            gaps = "; ".join(
                gap_text(g, None, n, comp["reference"]) for n, g in comp["gap_vs_reference"].items()
            )
            gaps += " (one seed each: no seed spread at this size)"
        parts.append(
            f"Pretrained at equal tokens ({seeds} seed{'s' if seeds > 1 else ''} per model), the best target "
            f"loss is {comp['best']}'s: {gaps}."
        )
    page.para(" ".join(parts))
    if comp is not None:
        cost = domain_costs(comp)
        if cost:
            page.para(cost_text(cost, iterative=chosen_by_search(run)), "warning")


def _html_page(title: str, body: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;"
        "overflow-wrap:anywhere}"
        ".table{overflow-x:auto;max-width:100%}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "td{font-variant-numeric:tabular-nums}"
        "th{background:#f3f4f6}figure{margin:1em 0}img{max-width:100%;height:auto}"
        "figcaption{font-size:12px;color:#555}"
        "h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}"
        "p.warning{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em}"
        "pre{white-space:pre-wrap;font-size:12px;background:#f6f8fa;padding:.6em}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )
