"""`mixture_search: iterative`: the pipeline's one `search` stage instead of the four one-shot
stages, later stages keeping their directories, pretrain on the search's mixture, and the
report's convergence section."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.errors import ConfigError
from mixlab.mixtures.search import run_search
from mixlab.pipelines.run import ONE_SHOT, describe, plan_json, plan_pipeline, run_pipeline, step_inputs
from mixlab.stages import STAGES

from .test_pipeline import TINY, write


class Interrupted(Exception):
    """Stands in for a kill in the middle of the search."""


@contextlib.contextmanager
def searching(rounds: list[str], stop_at: str | None = None):
    """The registry's `search` stage with a trainer that records each round it trains (and
    raises at `stop_at`): what a rerun trains again is then visible."""
    from mixlab.stages import _train_round

    def train(candidates, tokens, out_dir, settings, client):
        rounds.append(Path(out_dir).parent.name)
        if rounds[-1] == stop_at:
            raise Interrupted(stop_at)
        return _train_round(candidates, tokens, out_dir, settings, client)

    stage = STAGES["search"]
    STAGES["search"] = dataclasses.replace(stage, run=functools.partial(run_search, train=train))
    try:
        yield
    finally:
        STAGES["search"] = stage


ITERATIVE = (
    TINY
    + """
mixture_search: iterative
search: {budget: 14, target: target, folds: 3, pool: 2000, samples: 2000, top_k: 16}
"""
)


def test_iterative_replaces_the_one_shot_stages_and_later_stages_keep_their_directories(
    tmp_path: Path,
) -> None:
    plan = plan_pipeline(write(tmp_path, ITERATIVE), tmp_path / "run")
    names = [s.name for s in plan.steps]
    assert "search" in names and not set(ONE_SHOT) & set(names)
    dirs = {s.name: s.out.name for s in plan.steps}
    assert dirs["search"] == "05_search"
    assert (dirs["pretrain"], dirs["distill"], dirs["report"]) == ("09_pretrain", "10_distill", "11_report")
    mixture = tmp_path / "run" / "05_search" / "mixture.json"
    assert step_inputs(plan, plan.step("pretrain"))["mixture"] == mixture
    assert step_inputs(plan, plan.step("distill"))["mixture"] == mixture


def test_the_search_takes_the_swarm_recipe_from_the_swarm_section_it_leaves_out(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, TINY), tmp_path / "run", search="iterative")
    search = plan.step("search")
    assert search.cfg.swarm["n_embd"] == 32 and "repeats" not in search.cfg.swarm
    assert search.cfg.target == "target"  # mixtures_fit's target
    assert search.filled["swarm"]["steps"] == 8


def test_the_flag_overrides_the_file_and_one_shot_stays_the_default(tmp_path: Path) -> None:
    one_shot = plan_pipeline(write(tmp_path, ITERATIVE), tmp_path / "run", search="one-shot")
    assert [s.name for s in one_shot.steps][5:9] == list(ONE_SHOT)
    assert plan_pipeline(write(tmp_path, TINY, "t.yaml"), tmp_path / "run").mixture_search == "one-shot"
    assert plan_pipeline("quickstart", tmp_path / "run").mixture_search == "one-shot"


def test_a_bad_method_is_one_line_naming_the_choices(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"mixture_search: 'regmix' is not a method; use one of one-shot, iterative"
    ):
        plan_pipeline(write(tmp_path, TINY + "mixture_search: regmix\n"), tmp_path / "run")
    result = CliRunner().invoke(
        main, ["pipeline", "run", str(write(tmp_path, TINY)), "--mixture-search", "x", "--dry-run"]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output and "one-shot" in result.output


@pytest.mark.parametrize(("flag", "name", "method", "expected"), [
    ("--from", "swarm train", "iterative", "search"),
    ("--until", "mixtures_select", "iterative", "search"),
    ("--from", "search", "one-shot", "mixtures_sample"),
    ("--until", "search", "one-shot", "mixtures_select"),
])  # fmt: skip
def test_from_and_until_name_either_method_s_stages(tmp_path: Path, flag, name, method, expected) -> None:
    key = "from_stage" if flag == "--from" else "until_stage"
    plan = plan_pipeline(write(tmp_path, TINY), tmp_path / "run", search=method, **{key: name})
    index = plan.first if flag == "--from" else plan.last - 1
    assert plan.steps[index].name == expected


def test_dry_run_and_json_show_the_search_stage_and_its_estimate(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, ITERATIVE), tmp_path / "run")
    text = describe(plan)
    assert "05_search" in text and "mixture:  iterative" in text and "06_swarm_train" not in text
    record = plan_json(plan)
    assert record["mixture_search"] == "iterative"
    search = next(s for s in record["stages"] if s["name"] == "search")
    assert search["dir"].endswith("05_search") and search["estimated_s"] > 0
    assert search["config"]["budget"] == 14


@pytest.mark.slow
def test_a_tiny_iterative_pipeline_resumes_a_killed_search_and_reports_how_the_choice_converged(
    tmp_path: Path,
) -> None:
    yaml = write(tmp_path, ITERATIVE)
    run = tmp_path / "run"
    rounds: list[str] = []
    with pytest.raises(Interrupted):  # killed in round 2, after round 1 was trained and fitted
        with searching(rounds, stop_at="round_02"):
            run_pipeline(yaml, run, until_stage="search")
    with searching(rounds):
        first = run_pipeline(yaml, run, until_stage="mixtures select")
    assert rounds[:3] == ["round_01", "round_02", "round_02"]  # resumed at round 2, round 1 kept
    assert not first["search"].skipped and first["tokenize"].skipped
    result = CliRunner().invoke(main, ["pipeline", "run", str(yaml), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert not (run / "06_swarm_train").exists() and not (run / "08_mixtures_select").exists()
    mixture = json.loads((run / "05_search" / "mixture.json").read_text())
    comparison = json.loads((run / "09_pretrain" / "comparison.json").read_text())
    assert comparison["models"]["chosen"]["weights"] == pytest.approx(mixture["weights"])  # the search's
    md = (run / "11_report" / "report.md").read_text()
    for heading in ("Answer", "Iterative search: how the choice converged", "Proxy swarm", "Regression",
                    "Chosen mixture", "Pretraining", "Distillation"):  # fmt: skip
        assert f"## {heading}" in md, heading
    assert "Found by iterative search" in md and f"{mixture['predicted_target_loss']:.3f}" in md
    convergence = md.split("## Iterative search", 1)[1].split("\n## ", 1)[0]
    assert "| round | proxies | predicted best | spread | noise floor | held-out Spearman |" in convergence
    assert "search_convergence.png" in convergence
    again = run_pipeline(yaml, run)  # resumes: every stage, the search included, is up to date
    assert all(m.skipped for m in again.values())


def test_the_cost_warning_of_a_searched_mixture_names_the_knob_the_search_has() -> None:
    from mixlab.pipelines.report import cost_text

    costs = [{"domain": "legal", "weight": 0.0001, "loss": 7.3, "baseline": 3.7, "reference": "natural"}]
    assert "mixtures_select: min_weight" in cost_text(costs)
    searched = cost_text(costs, iterative=True)
    assert "search: target" in searched and "min_weight" not in searched
