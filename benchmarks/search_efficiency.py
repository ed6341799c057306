"""Proxies spent against the mixture found: one-shot RegMix vs one-shot + data experts vs iterative search.

    python benchmarks/search_efficiency.py [--out runs/search-bench] [--budgets 16,32,64,128]
        [--corpora synth,real] [--tiny]

Two corpora, each tokenized by the demo pipeline (src/mixlab/pipelines/quickstart.yaml, its
sizes): the synthetic one with its planted target (70% prose + 30% code), and one assembled
from real text on this machine that mixlab did not write: Python's standard library, C
headers (/usr/include), man pages (/usr/share/man, gzipped roff) and Debian copyright files
(/usr/share/doc), aimed at a validation-only target of third-party Python
(/usr/lib/python3/dist-packages) and licence texts (/usr/share/common-licenses).

For each total proxy budget B (repeated seeds and data experts count against it):
- one-shot: the demo's method; the first B - 4 candidates of one sampled pool (plus the demo's
  4 repeated seeds), LightGBM, `mixtures select`;
- one-shot + experts: the first B - 8 candidates, the 4 repeats and the 4 data experts, the
  fit on [w, expert feature] (model chosen by held-out Spearman), `mixtures select`;
- iterative: `mixlab search --budget B` (experts, UCB rounds).
Every chosen mixture is then trained at the verify scale (`select --verify`'s 1.5x proxy)
with the same seeds; its true target loss, its gap to the best any method found in units of
the seed noise (the pooled seed-to-seed std at that scale), and the fit's Spearman on a fixed
held-out set of proxies none of the methods trained on are printed as one markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import yaml

from mixlab.cluster import dask_client
from mixlab.mixtures.config import FitConfig, SampleConfig, SelectConfig
from mixlab.mixtures.experts import EXPERT_PREFIX, EXPERTS_DIR
from mixlab.mixtures.fit import load_fit, run_mixtures_fit
from mixlab.mixtures.regression import spearman
from mixlab.mixtures.sample import run_mixtures_sample
from mixlab.mixtures.search import SearchConfig, run_search
from mixlab.mixtures.select import run_mixtures_select
from mixlab.pipelines.run import SHIPPED, plan_pipeline, run_pipeline
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import run_swarm_train, train_mixtures
from mixlab.proxy_models.verify import larger_proxy
from mixlab.stages import _train_round
from mixlab.tables import write_table

REPEATS, REPEAT_MIXTURES = 3, 2  # the demo's: 4 extra proxies measure the noise floor
METHODS = ("one-shot", "one-shot + experts", "iterative + experts")


# --- corpora ------------------------------------------------------------------------------------


def chunks(text: str, size: int) -> list[str]:
    """Pieces of about `size` characters, cut at line ends."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    if n > size // 4:
        out.append("".join(cur))
    return out


def read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return ""
    return data.decode("utf-8", errors="replace")


def documents(files: list[Path], n_docs: int, size: int) -> list[str]:
    """Up to n_docs pieces, one file at a time in sorted order spread over the whole list."""
    files = sorted(files)
    step = max(1, len(files) // max(1, n_docs))  # spread the picks over every file, not the first few
    picked = files[::step] + [f for i, f in enumerate(files) if i % step]
    out: list[str] = []
    for f in picked:
        out += [c for c in chunks(read_text(f), size) if c.strip()][:3]
        if len(out) >= n_docs:
            break
    return out[:n_docs]


def real_corpus(root: Path, n_docs: int, size: int, n_target: int) -> tuple[Path, Path]:
    """Four real domains and the target's documents tables (id, domain, text)."""
    stdlib = sorted(Path("/usr/lib").glob("python3.*"))[-1]
    sources = {
        "python": [
            p for p in stdlib.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts
        ],
        "c": list(Path("/usr/include").rglob("*.h")),
        "man": [
            p for d in ("man1", "man3", "man5", "man8") for p in (Path("/usr/share/man") / d).glob("*.gz")
        ],
        "doc": list(Path("/usr/share/doc").glob("*/copyright")),
    }
    rows = []
    for domain, files in sources.items():
        docs = documents(files, n_docs, size)
        rows += [{"id": f"{domain}-{i:05d}", "domain": domain, "text": t} for i, t in enumerate(docs)]
        print(f"real corpus: {domain}: {len(docs)} documents from {len(files)} files", flush=True)
    licences = documents(
        [p for p in Path("/usr/share/common-licenses").iterdir() if p.is_file()], n_target // 2, size
    )
    third_party = documents(
        list(Path("/usr/lib/python3/dist-packages").rglob("*.py")), n_target - len(licences), size
    )
    target = [
        {"id": f"target-{i:05d}", "domain": "target", "text": t} for i, t in enumerate(licences + third_party)
    ]
    write_table(pa.Table.from_pylist(rows), root / "real_docs" / "documents.parquet")
    write_table(pa.Table.from_pylist(target), root / "real_target" / "documents.parquet")
    return root / "real_docs", root / "real_target"


def pipeline_file(root: Path, corpus: str, tiny: bool) -> Path:
    """The demo pipeline (for `real`: on the assembled corpus and target), written into `root`."""
    data = yaml.safe_load((SHIPPED / "quickstart.yaml").read_text())
    if tiny:
        data["synth"].update(docs_per_domain=150, doc_words=80, target_docs=60)
        data["swarm_train"].update(steps=12, eval_sequences=8)
    if corpus == "real":
        n = data["synth"]["docs_per_domain"]
        docs, target = real_corpus(root, n, 6 * data["synth"]["doc_words"], data["synth"]["target_docs"])
        del data["synth"]
        data["inputs"] = [str(docs)]
        data["targets"] = {"target": [str(target)]}
    path = root / f"{corpus}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# --- the methods ------------------------------------------------------------------------------------


def subset(pool: pl.DataFrame, candidate_ids: list[str], experts: bool) -> pl.DataFrame:
    """The pool's runs of these candidates, their repeated seeds and (with experts) the experts."""
    keep = pl.col("repeat_of").is_in(candidate_ids)
    if experts:
        keep = keep | pl.col("run_id").str.starts_with(EXPERT_PREFIX)
    return pool.filter(keep)


def fit_and_select(
    runs_dir: Path, cands: Path, fit_cfg: FitConfig, select_cfg: SelectConfig, out: Path
) -> Path:
    run_mixtures_fit({"runs": runs_dir, "candidates": cands}, fit_cfg, out / "fit")
    run_mixtures_select({"fit": out / "fit", "tokens": None}, select_cfg, out / "select")
    return out


def test_spearman(fit_dir: Path, test: pl.DataFrame, domains: list[str]) -> float:
    fitted = load_fit(fit_dir)
    predicted = fitted.predict(test.select([f"w.{d}" for d in fitted.domains]).to_numpy())
    return spearman(test["loss.target"].to_numpy(), predicted)


def run_corpus(
    root: Path, corpus: str, budgets: list[int], args: argparse.Namespace, client: Any
) -> list[dict]:
    started = time.perf_counter()
    yaml_path = pipeline_file(root, corpus, args.tiny)
    data = yaml.safe_load(yaml_path.read_text())
    run_pipeline(yaml_path, root / "run", until_stage="tokenize", client=client)
    tokens = plan_pipeline(yaml_path, root / "run").step("tokenize").out
    swarm_settings = {k: v for k, v in data["swarm_train"].items() if k not in ("repeats", "repeat_mixtures")}
    swarm = SwarmConfig(**swarm_settings, repeats=REPEATS, repeat_mixtures=REPEAT_MIXTURES)
    proxy_tokens = swarm.steps * swarm.batch_size * swarm.seq_len
    fit_demo = FitConfig(target="target")  # the demo's fit: LightGBM
    fit_experts = FitConfig(target="target", model="auto")
    select_cfg = SelectConfig(samples=args.samples, top_k=data["mixtures_select"]["top_k"])
    print(f"{corpus}: tokenized in {time.perf_counter() - started:.0f}s", flush=True)

    # One pool of candidates for both one-shot methods (a budget takes its first ones), with the
    # experts and the demo's repeated seeds; and a held-out set of proxies no method trains on.
    n_pool = max(budgets) - (REPEATS - 1) * REPEAT_MIXTURES
    run_mixtures_sample(
        {"tokens": tokens}, SampleConfig(candidates=n_pool, proxy_tokens=proxy_tokens), root / "pool_cands"
    )
    run_swarm_train(
        {"candidates": root / "pool_cands", "tokens": tokens},
        dataclasses.replace(swarm, experts=True),
        root / "pool_swarm",
        client=client,
    )
    pool = pl.read_parquet(root / "pool_swarm" / "runs.parquet")
    order = pl.read_parquet(root / "pool_cands" / "candidates.parquet")["run_id"].to_list()
    run_mixtures_sample(
        {"tokens": tokens},
        SampleConfig(candidates=args.test_runs + 2, proxy_tokens=proxy_tokens, seed=1),
        root / "test_cands",
    )
    test_cands = pl.read_parquet(root / "test_cands" / "candidates.parquet").filter(
        pl.col("kind") == "dirichlet"
    )
    test_cands = test_cands.with_columns(pl.concat_str(pl.lit("t"), pl.col("run_id")).alias("run_id"))
    write_table(test_cands.to_arrow(), root / "test_cands_renamed" / "candidates.parquet")
    run_swarm_train(
        {"candidates": root / "test_cands_renamed", "tokens": tokens},
        dataclasses.replace(swarm, repeats=1),
        root / "test_swarm",
        client=client,
    )
    test = pl.read_parquet(root / "test_swarm" / "runs.parquet")
    domains = [c.removeprefix("w.") for c in pool.columns if c.startswith("w.")]
    print(f"{corpus}: pool and held-out proxies trained at {time.perf_counter() - started:.0f}s", flush=True)

    results = []
    for budget in budgets:
        here = root / f"b{budget:03d}"
        extra = (REPEATS - 1) * REPEAT_MIXTURES
        plain = subset(pool, order[: budget - extra], experts=False)
        write_table(plain.to_arrow(), here / "oneshot_runs" / "runs.parquet")
        fit_and_select(here / "oneshot_runs", root / "pool_cands", fit_demo, select_cfg, here / "oneshot")
        with_experts = subset(pool, order[: budget - extra - len(domains)], experts=True)
        write_table(with_experts.to_arrow(), here / "experts_runs" / "runs.parquet")
        if not (here / "experts_runs" / EXPERTS_DIR).exists():
            shutil.copytree(root / "pool_swarm" / EXPERTS_DIR, here / "experts_runs" / EXPERTS_DIR)
        fit_and_select(here / "experts_runs", root / "pool_cands", fit_experts, select_cfg, here / "experts")
        search_cfg = SearchConfig(
            budget=budget,
            target="target",
            repeats=REPEATS,
            repeat_mixtures=REPEAT_MIXTURES,
            samples=args.samples,
            top_k=select_cfg.top_k,
            swarm=swarm_settings,
        )
        cells = [
            (METHODS[0], here / "oneshot", plain.height, here / "oneshot" / "fit"),
            (METHODS[1], here / "experts", with_experts.height, here / "experts" / "fit"),
        ]
        if budget in args.iterative_budgets:
            manifest = run_search({"tokens": tokens}, search_cfg, here / "search", client, train=_train_round)
            record = json.loads((here / "search" / "mixture.json").read_text())["method"]["search"]
            cells.append(
                (METHODS[2], here / "search", manifest.counts["proxies"], here / "search" / record["fit"])
            )
        for method, out, used, fit_dir in cells:
            mixture_file = out / "select" / "mixture.json" if method != METHODS[2] else out / "mixture.json"
            mixture = json.loads(mixture_file.read_text())
            fit = json.loads((fit_dir / "fit.json").read_text())
            results.append(
                {
                    "corpus": corpus,
                    "budget": budget,
                    "method": method,
                    "proxies": int(used),
                    "weights": mixture["weights"],
                    "predicted": mixture["predicted_target_loss"],
                    "model": fit["chosen"],
                    "cv_spearman": fit["models"][fit["chosen"]]["spearman"],
                    "test_spearman": test_spearman(fit_dir, test, domains),
                }
            )
        print(f"{corpus}: budget {budget} done at {time.perf_counter() - started:.0f}s", flush=True)

    # The true target loss of every choice (and the natural and uniform mixtures) at the verify scale.
    prior = json.loads((root / f"b{budgets[0]:03d}" / "oneshot" / "fit" / "fit.json").read_text())["prior"]
    named = {f"{r['budget']}|{r['method']}": r["weights"] for r in results if measured_cell(r, args)}
    if args.baselines:
        named["natural"] = prior
        named["uniform"] = {d: 1 / len(domains) for d in domains}
    big = larger_proxy(dataclasses.asdict(swarm), args.verify_scale)
    seeds = [1000 + s for s in range(args.verify_seeds)]
    measured: dict[str, np.ndarray] = {}
    for name, weights in named.items():
        w = {d: float(weights.get(d, 0.0)) for d in domains}
        total = sum(w.values())
        w = {d: x / total for d, x in w.items()}
        # The same run ids and seeds for every mixture: the same initialisations (common random numbers).
        table = train_mixtures(tokens, [w] * len(seeds), big, seeds=seeds, run_ids=[f"v{s}" for s in seeds])
        measured[name] = table.column("loss.target").to_numpy()
    print(f"{corpus}: verified {len(named)} mixtures at {time.perf_counter() - started:.0f}s", flush=True)
    noise = float(np.sqrt(np.mean([m.var(ddof=1) for m in measured.values()])))
    best = min(float(measured[n].mean()) for n in named if "|" in n)
    for r in results:
        m = measured.get(f"{r['budget']}|{r['method']}")
        if m is None:
            r.update(measured=None, measured_std=None, gap_noise=None)
            continue
        r.update(
            measured=float(m.mean()),
            measured_std=float(m.std(ddof=1)),
            gap_noise=(float(m.mean()) - best) / noise,
        )
    baselines = {n: float(measured[n].mean()) for n in ("natural", "uniform") if n in measured}
    return [{**r, "seed_noise": noise, "seeds": len(seeds), "baselines": baselines} for r in results]


DONE_WHEN = {(32, METHODS[0]), (128, METHODS[0]), (32, METHODS[1]), (32, METHODS[2])}


def measured_cell(r: dict, args: argparse.Namespace) -> bool:
    """Whether a choice is trained at the verify scale (--measure all, or only the done-when cells)."""
    return args.measure == "all" or (r["budget"], r["method"]) in DONE_WHEN


def markdown(results: list[dict]) -> str:
    lines = [
        "| corpus | budget | method | proxies | model | chosen weights | true target loss | gap (seed σ) | CV Spearman | held-out Spearman |",
        "|---|---:|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        weights = " ".join(f"{d}={w:.2f}" for d, w in r["weights"].items())
        true = (
            f"{r['measured']:.4f} ± {r['measured_std']:.4f}" if r["measured"] is not None else "not measured"
        )
        gap = f"{r['gap_noise']:+.2f}" if r["gap_noise"] is not None else "-"
        lines.append(
            f"| {r['corpus']} | {r['budget']} | {r['method']} | {r['proxies']} | {r['model']} | {weights} | "
            f"{true} | {gap} | {r['cv_spearman']:.3f} | {r['test_spearman']:.3f} |"
        )
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        r0 = next(r for r in results if r["corpus"] == corpus)
        base = ", ".join(f"{n} {v:.4f}" for n, v in r0["baselines"].items())
        lines.append(
            f"\n{corpus}: seed noise σ = {r0['seed_noise']:.4f} (pooled std of the target loss across seeds at the "
            "verify scale)" + (f"; {base}" if base else "")
        )
    lines += [""] + verdicts(results)
    return "\n".join(lines)


def verdicts(results: list[dict]) -> list[str]:
    """The issue's done-when, per corpus: the best new method at 32 against one-shot at 128, and
    the held-out Spearman with experts at 32 against one-shot at 64."""
    out = []
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        rows = {(r["budget"], r["method"]): r for r in results if r["corpus"] == corpus}
        if (32, METHODS[0]) not in rows or (128, METHODS[0]) not in rows:
            continue
        new = min(
            (rows[(32, m)] for m in METHODS[1:] if (32, m) in rows and rows[(32, m)]["measured"] is not None),
            key=lambda r: r["measured"],
        )
        ref = rows[(128, METHODS[0])]
        sigma = new["seed_noise"]
        # a difference of two means of k seeds each has standard error sigma * sqrt(2 / k)
        k = new["seeds"]
        delta = (new["measured"] - ref["measured"]) / (sigma * np.sqrt(2 / k))
        verdict = "better" if delta < -2 else "worse" if delta > 2 else "within seed noise"
        out.append(
            f"{corpus}: best new method at 32 ({new['method']}, {new['proxies']} proxies) vs one-shot at 128: "
            f"{new['measured'] - ref['measured']:+.4f} nats ({delta:+.2f} standard errors): {verdict}"
        )
        if (64, METHODS[0]) in rows:
            e32, o64 = rows[(32, METHODS[1])]["test_spearman"], rows[(64, METHODS[0])]["test_spearman"]
            out.append(
                f"{corpus}: held-out Spearman, one-shot + experts at 32 {e32:.3f} vs one-shot at 64 {o64:.3f}: "
                + ("at least as good" if e32 >= o64 else "lower")
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/search-bench"))
    ap.add_argument("--budgets", default="16,32,64,128")
    ap.add_argument("--corpora", default="synth,real")
    ap.add_argument("--samples", type=int, default=100_000, help="mixtures select's --samples (the demo's)")
    ap.add_argument("--test-runs", type=int, default=32, help="held-out proxies for the Spearman column")
    ap.add_argument("--verify-seeds", type=int, default=3)
    ap.add_argument("--verify-scale", type=float, default=1.5)
    ap.add_argument(
        "--iterative-budgets", default=None, help="budgets the iterative search runs at (default: --budgets)"
    )
    ap.add_argument(
        "--measure",
        choices=("all", "done-when"),
        default="all",
        help="train every choice at the verify scale, or only one-shot at 32 and 128 and the new methods at 32",
    )
    ap.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="do not measure natural/uniform"
    )
    ap.add_argument("--tiny", action="store_true", help="small corpora and proxies, to try the script out")
    ap.add_argument("--keep", action="store_true", help="reuse an existing --out (finished stages skip)")
    args = ap.parse_args()
    if args.out.exists() and not args.keep:
        shutil.rmtree(args.out)
    budgets = [int(b) for b in args.budgets.split(",")]
    args.iterative_budgets = [int(b) for b in (args.iterative_budgets or args.budgets).split(",")]
    started = time.perf_counter()
    results = []
    with dask_client(None) as client:
        for corpus in args.corpora.split(","):
            results += run_corpus(args.out / corpus, corpus, budgets, args, client)
            # each corpus's rows as soon as they are measured (a long run shows its first half)
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
            print("\n" + markdown(results) + "\n", flush=True)
    table = markdown(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
