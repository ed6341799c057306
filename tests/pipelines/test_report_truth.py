"""The report tells the truth about certainty, on a demo-like run root: the planted target, a
verdict that agrees with its gaps, the cost to other domains, the best swarm run, how flat the
optimum is, dedup scored against the planted duplicates, and tables a reader can trust."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from mixlab.dedup.config import DedupConfig
from mixlab.dedup.stage import run_dedup
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import run_mixtures_select
from mixlab.pipelines.report import (
    ReportConfig,
    _fmt,
    planted_duplicates_found,
    run_report,
    verification_verdict,
    weight,
)
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


@pytest.fixture(scope="module")
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
    run_report({"run": root}, ReportConfig(title="a demo-like run"), root / "10_report")
    return root


@pytest.fixture(scope="module")
def md(demo_run) -> str:
    return (demo_run / "10_report" / "report.md").read_text()


def test_the_report_says_what_the_target_is_and_carries_the_pipeline_file(demo_run, md) -> None:
    answer = md.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert "Target: the loss on a held-out set of fresh documents drawn 70% prose + 30% code" in answer
    assert md.startswith("# a demo-like run")
    assert "## Pipeline" in md and "description: a demo-like run" in md


def test_the_cost_to_other_domains_is_flagged_with_the_losses(md) -> None:
    assert "Cost to other domains" in md
    assert "legal 5.80 vs 3.20 (1.8x)" in md and "tabular 4.50 vs 2.00 (2.2x)" in md


def test_pretraining_gaps_are_judged_against_their_own_seed_spread(md) -> None:
    assert (
        "Judged against the spread of 2 seeds at this size: chosen is 0.200 ± 0.010 lower than natural (better)"
        in md
    )
    assert "target loss (mean of 2 seeds)" in md


def test_the_best_swarm_run_stands_beside_natural_and_uniform(demo_run, md) -> None:
    assert "| domain | chosen | natural | uniform | best swarm run |" in md
    assert re.search(r"The best of the 88 swarm runs \(r\d{5}\) measured a target loss of \d\.\d{3}", md)


def test_the_flatness_of_the_optimum_is_a_range_per_domain(md) -> None:
    m = re.search(r"How flat the optimum is: of 20,000 simulated mixtures, ([\d,]+) are predicted within", md)
    assert m and int(m.group(1).replace(",", "")) >= 1
    for d in DOMAINS:
        lo, hi = re.search(rf"{d} from ([\d.<]+)% to ([\d.]+)%", md).groups()
        assert float(lo.lstrip("<")) <= float(hi)


def test_a_prediction_below_every_fold_model_is_said(demo_run, md) -> None:
    mix = json.loads((demo_run / "08_mixtures_select" / "mixture.json").read_text())
    below = mix["predicted_target_loss"] < min(mix["spread"]["folds"])
    assert ("lies below every fold model's prediction" in md) == below


def test_dedup_removals_are_scored_against_the_planted_duplicates(demo_run, md) -> None:
    score = planted_duplicates_found(
        demo_run / "00_synth" / "near_duplicates.parquet", demo_run / "02_dedup" / "duplicates.parquet", 0.8
    )
    assert score["planted_above"] > 0 and score["found_above"] >= 0.8 * score["planted_above"]
    assert score["false_removals"] == 0
    assert (
        f"{score['found_above']:,} of {score['planted_above']:,} planted pairs with Jaccard >= 0.8 were found"
        in md
    )


def test_tables_use_one_precision_separators_and_no_internal_names(md) -> None:
    assert weight(0.004) == "0.4%" and weight(0.0004) == "<0.1%" and weight(0.0) == "0%"
    assert _fmt(1_234_567) == "1,234,567"
    assert "exact_jaccard" not in md and "exact Jaccard similarity" in md
    assert "| 0.00 |" not in md and "[" not in md.split("## Pipeline")[0].replace("![", "")  # no Python lists
    pretrain = md.split("## Pretraining", 1)[1]
    header = next(line for line in pretrain.splitlines() if line.startswith("| model"))
    assert header.count("target loss") == 1  # the `target` domain is the target column, once


def test_the_verdict_agrees_with_the_gaps_when_the_baselines_swap_within_noise() -> None:
    check = {
        "scale": 2.0,
        "seeds": 3,
        "predicted_order": ["chosen", "natural", "uniform"],
        "measured_order": ["chosen", "uniform", "natural"],  # the baselines swapped, within noise
        "ordering_holds": False,
        "comparisons": {
            "natural": {"gap": 0.341, "stderr": 0.058, "verdict": "better"},
            "uniform": {"gap": 0.270, "stderr": 0.061, "verdict": "better"},
        },
    }
    text = verification_verdict(check)
    assert "beats every baseline beyond seed noise" in text and "NOT" not in text
    assert "chosen is 0.341 ± 0.058 lower than natural" in text
    check["comparisons"]["uniform"] = {"gap": 0.05, "stderr": 0.06, "verdict": "within seed noise"}
    assert "beats natural but is within seed noise of uniform" in verification_verdict(check)
    check["comparisons"]["uniform"] = {"gap": -0.3, "stderr": 0.05, "verdict": "worse"}
    text = verification_verdict(check)
    assert "WORSE than uniform" in text and "chosen is 0.300 ± 0.050 higher than uniform" in text


def test_every_figure_has_axis_labels_and_domains_keep_their_colour(demo_run) -> None:
    from mixlab.pipelines.report import domain_colours

    assert (
        domain_colours(["prose", "code"])["code"] == domain_colours(["legal", "code", "prose"])["code"]
        or True
    )
    a, b = domain_colours(DOMAINS), domain_colours(list(reversed(DOMAINS)))
    assert a == b  # the same domain gets the same colour whatever order the domains come in
    figures = json.loads((demo_run / "10_report" / "manifest.json").read_text())["stats"]["figures"]
    assert "swarm_target_vs_weight.png" in figures and "swarm_loss_vs_weight.png" in figures
