"""`mixlab report`: a run root's stage outputs, read by their documented keys, on one page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from mixlab.errors import InputError
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import run_mixtures_select
from mixlab.pipelines.report import ReportConfig, default_report_dir, run_report, stage_dirs
from mixlab.stage import run_stage, write_json
from mixlab.tables import write_table


def _pretrain(out: Path, gaps: dict[str, float], noise: float | None) -> None:
    """A pretrain output holding what the report reads: metrics.parquet and comparison.json."""
    reference = 3.0
    models = {"chosen": reference, **{n: reference + g for n, g in gaps.items()}}

    def body(stage):
        rows = [{"model": n, "step": s, "target": t + 1 / s} for n, t in models.items() for s in (1, 2)]
        write_table(pa.Table.from_pylist(rows), stage.out / "metrics.parquet")
        comparison = {
            "target": {"spec": "target", "terms": {"target": 1.0}},
            "tokens": 1000,
            "reference": "chosen",
            "models": {n: {"weights": {}, "target": t, "losses": {"target": t}} for n, t in models.items()},
            "gap_vs_reference": gaps,
            "best": min(models, key=models.get),
            "noise_floor": noise,
            "summary": [f"chosen target loss {reference:.4f}"],
        }
        write_json(stage.out / "comparison.json", comparison)
        return {}, {}

    run_stage("pretrain", {}, {}, out, body)


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """A run root with a real fit and selection and a pretrain output (07_, 08_, 09_)."""
    root = tmp_path_factory.mktemp("run")
    runs = root.parent / f"{root.name}-runs.parquet"
    write_table(known_runs(60, target_blend={"prose": 0.7, "code": 0.3}, repeats=3, seed=1), runs)
    fit_cfg = FitConfig(target="target", max_rounds=100, learning_rate=0.05)
    run_mixtures_fit({"runs": runs}, fit_cfg, root / "07_mixtures_fit")
    run_mixtures_select(
        {"fit": root / "07_mixtures_fit"}, SelectConfig(samples=2_000, top_k=16), root / "08_mixtures_select"
    )
    _pretrain(root / "09_pretrain", {"natural": 0.2, "uniform": 0.1}, noise=0.05)
    return root


def test_the_answer_says_which_mixture_why_and_how_sure_from_the_stage_outputs(run_root, tmp_path):
    manifest = run_report({"run": run_root}, ReportConfig(), tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    mixture = json.loads((run_root / "08_mixtures_select" / "mixture.json").read_text())
    fit = json.loads((run_root / "07_mixtures_fit" / "fit.json").read_text())
    assert manifest.stage == "report"
    assert manifest.stats["sections"] == ["mixtures_fit", "mixtures_select", "pretrain"]
    assert f"predicts target loss {mixture['predicted_target_loss']:.3f}" in md
    assert f"{mixture['natural']['predicted_target_loss']:.3f} (natural)" in md
    assert f"held-out Spearman {mixture['held_out']['spearman']:.3f}" in md
    assert f"seed noise floor {fit['noise_floor']['rmse']:.3f}" in md
    assert (
        "the best target loss is chosen's: chosen is 0.200 lower than natural; chosen is 0.100 lower than uniform"
        in md
    )
    assert (
        f"({fit['chosen']})" in md
        and (tmp_path / "report" / f"fit_predicted_vs_actual_{fit['chosen']}.png").is_file()
    )
    assert "chosen beats every alternative by more than the swarm's seed noise (0.050): yes." in md


def test_beating_the_seed_noise_is_judged_from_the_gaps_and_the_noise_floor(run_root, tmp_path):
    root = tmp_path / "run"
    for name in ("07_mixtures_fit", "08_mixtures_select"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(run_root / name)
    _pretrain(root / "09_pretrain", {"natural": 0.2, "uniform": 0.01}, noise=0.05)
    run_report({"run": root}, ReportConfig(), root / "10_report")
    assert "more than the swarm's seed noise (0.050): no." in (root / "10_report" / "report.md").read_text()


def test_stage_dirs_are_found_by_their_numbered_names_and_the_report_is_numbered_after_them(
    run_root, tmp_path
):
    assert set(stage_dirs(run_root)) == {"mixtures_fit", "mixtures_select", "pretrain"}
    assert default_report_dir(run_root) == run_root / "10_report"
    (tmp_path / "11_report").mkdir()
    assert default_report_dir(tmp_path) == tmp_path / "11_report"  # an existing one is reused


def test_a_rerun_is_a_no_op_although_the_report_sits_in_the_run_root(run_root):
    out = default_report_dir(run_root)
    run_report({"run": run_root}, ReportConfig(), out)
    again = run_report({"run": run_root}, ReportConfig(), out)
    assert again.skipped
    assert "report" not in stage_dirs(run_root)


def test_a_folder_without_stage_outputs_is_refused(tmp_path):
    with pytest.raises(InputError, match="no finished stage outputs"):
        run_report({"run": tmp_path}, ReportConfig(), tmp_path / "00_report")
    with pytest.raises(InputError, match="not a directory"):
        run_report({"run": tmp_path / "nope"}, ReportConfig(), tmp_path / "r")


def test_the_report_imports_neither_the_pipeline_runner_nor_the_stage_registry():
    code = (
        "import sys, mixlab.pipelines.report\n"
        "bad = [m for m in ('mixlab.pipelines.run', 'mixlab.stages', 'torch', 'lightgbm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
