"""Simulating and scoring 1,000,000 mixtures: mixlab's pruned top-k scoring vs predicting every mixture.

The alternative is what RegMix does: LightGBM `predict` on every simulated mixture, then
sort. mixlab scores the trees in stages and drops mixtures that can no longer reach the top
k; the answer is the same. Run: python benchmarks/mixtures_select.py [--samples N] [--threads T]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mixlab.mixtures.config import FitConfig
from mixlab.mixtures.fit import load_fit, run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import CHUNK, score_lowest, simulate_mixtures
from mixlab.tables import write_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_table(
            known_runs(args.runs, target_blend={"prose": 0.7, "code": 0.3}, seed=0), root / "runs.parquet"
        )
        run_mixtures_fit({"runs": root / "runs.parquet"}, FitConfig(target="target"), root / "fit")
        fitted = load_fit(root / "fit", num_threads=args.threads)
        print(
            f"model: {fitted.final.rounds} trees from {args.runs} runs; {args.samples:,} mixtures, "
            f"top {args.top_k}, {args.threads} threads"
        )

        sampler = fitted.fit["sampler"]
        start = time.perf_counter()
        w = simulate_mixtures(fitted.prior, args.samples, sampler, np.random.default_rng(0))
        t_sim = time.perf_counter() - start

        start = time.perf_counter()
        full = fitted.final.predict(w)
        brute = np.sort(full)[: args.top_k]
        t_brute = time.perf_counter() - start

        start = time.perf_counter()
        ranges = fitted.final.tree_ranges()
        best = None
        for i in range(0, len(w), CHUNK):
            best = score_lowest(fitted, w[i : i + CHUNK], args.top_k, best, ranges)
        t_pruned = time.perf_counter() - start
        assert best is not None
        same = np.allclose(np.sort(best[1]), brute, rtol=0, atol=1e-12)

    print(f"simulate {args.samples:,} mixtures (vectorised Dirichlet): {t_sim:.2f}s")
    print(f"score, predict every mixture (LightGBM predict + sort):  {t_brute:.2f}s")
    print(f"score, mixlab pruned top-{args.top_k}:                       {t_pruned:.2f}s")
    print(f"speed-up: {t_brute / t_pruned:.1f}x; same top {args.top_k}: {same}")
    print(f"simulate + score total: {t_sim + t_pruned:.2f}s (vs {t_sim + t_brute:.2f}s)")


if __name__ == "__main__":
    main()
