"""The demo-like run root the report tests share (built once per session): synth (planted
duplicates and the 70/30 target) and a real dedup, a swarm of known runs, a real fit and
selection, a pretrain comparison with two seeds and a cost to legal and tabular, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from mixlab.dedup.config import DedupConfig
from mixlab.dedup.stage import run_dedup
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import run_mixtures_select
from mixlab.pipelines.report import ReportConfig, run_report
from mixlab.stage import run_stage, write_json
from mixlab.synth import SynthConfig, run_synth
from mixlab.tables import write_table

BLEND = {"prose": 0.7, "code": 0.3}
DOMAINS = ["prose", "code", "tabular", "legal"]


def _swarm(out: Path, runs: pa.Table) -> None:
    def body(stage):
        write_table(runs, stage.out / "runs.parquet")
        return {"runs": runs.num_rows}, {"domains": DOMAINS, "params": 166_208}

    run_stage("swarm_train", {}, {}, out, body)


def _pretrain(out: Path, chosen: dict[str, float]) -> None:
    """A pretrain output with two seeds, where the chosen model nearly drops legal and tabular."""
    losses = {
        "chosen": {"prose": 4.3, "code": 1.8, "tabular": 4.5, "legal": 5.8, "target": 3.7},
        "natural": {"prose": 4.4, "code": 2.2, "tabular": 2.0, "legal": 3.2, "target": 3.9},
        "uniform": {"prose": 4.5, "code": 2.1, "tabular": 2.1, "legal": 3.2, "target": 3.9},
    }
    weights = {
        "chosen": chosen,
        "natural": dict.fromkeys(DOMAINS, 0.25),
        "uniform": dict.fromkeys(DOMAINS, 0.25),
    }

    def body(stage):
        rows = [
            {"model": n + s, "step": step, "target": losses[n]["target"] + 1 / step}
            for n in losses
            for s in ("", "~s1")
            for step in (1, 2)
        ]
        write_table(pa.Table.from_pylist(rows), stage.out / "metrics.parquet")
        comparison = {
            "target": {"spec": "target", "terms": {"target": 1.0}},
            "tokens": 204_800,
            "reference": "chosen",
            "models": {
                n: {"weights": weights[n], "target": v["target"], "losses": v} for n, v in losses.items()
            },
            "gap_vs_reference": {"natural": 0.2, "uniform": 0.2},
            "best": "chosen",
            "noise_floor": 0.03,
            "summary": [],
            "seeds": 2,
            "target_by_seed": {"chosen": [3.69, 3.71], "natural": [3.88, 3.92], "uniform": [3.9, 3.9]},
            "seed_gaps": {
                "natural": {"gap": 0.2, "stderr": 0.01, "verdict": "better"},
                "uniform": {"gap": 0.2, "stderr": 0.01, "verdict": "better"},
            },
        }
        write_json(stage.out / "comparison.json", comparison)
        return {}, {}

    run_stage("pretrain", {}, {}, out, body)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """synth (planted duplicates and the 70/30 target) and a real dedup; a swarm of known runs,
    a real fit and selection, and a pretrain comparison with a cost to legal and tabular."""
    from distributed import Client

    root = tmp_path_factory.mktemp("demo")
    synth = SynthConfig(
        docs_per_domain=80,
        doc_words=60,
        near_dup_clusters=8,
        exact_dups=3,
        target_blend=BLEND,
        target_docs=20,
    )
    run_synth({}, synth, root / "00_synth")
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        run_dedup(
            {"documents": [root / "00_synth" / "documents"]},
            DedupConfig(num_perm=64),
            root / "02_dedup",
            client,
        )
    runs = known_runs(80, target_blend=BLEND, repeats=3, seed=1)
    _swarm(root / "06_swarm_train", runs)
    fit_cfg = FitConfig(target="target", max_rounds=100, learning_rate=0.05)
    run_mixtures_fit({"runs": root / "06_swarm_train" / "runs.parquet"}, fit_cfg, root / "07_mixtures_fit")
    run_mixtures_select(
        {"fit": root / "07_mixtures_fit"}, SelectConfig(samples=2_000, top_k=16), root / "08_mixtures_select"
    )
    chosen = json.loads((root / "08_mixtures_select" / "mixture.json").read_text())["weights"]
    _pretrain(root / "09_pretrain", chosen)
    (root / "pipeline.yaml").write_text("description: a demo-like run\nseed: 0\n")
    run_report({"run": root}, ReportConfig(), root / "10_report")
    return root
