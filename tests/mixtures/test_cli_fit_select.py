"""`mixlab mixtures fit` and `mixlab mixtures select` from the command line."""

from __future__ import annotations

import json

import pytest

from mixlab.mixtures.known import known_runs
from mixlab.tables import write_table


@pytest.mark.parametrize("command", ["fit", "select"])
def test_help_lists_the_options(cli, command):
    result = cli("mixtures", command, "--help")
    assert result.exit_code == 0
    assert "--out" in result.output and "--config" in result.output
    assert ("--target" if command == "fit" else "--top-k") in result.output


def test_fit_then_select_from_the_command_line(cli, tmp_path):
    write_table(known_runs(40, seed=3), tmp_path / "runs.parquet")
    result = cli(
        "mixtures",
        "fit",
        tmp_path / "runs.parquet",
        "--target",
        "code=0.5,prose=0.5",
        "--max-rounds",
        150,
        "--learning-rate",
        0.05,
        "--out",
        tmp_path / "fit",
    )
    assert result.exit_code == 0, result.output
    assert "lightgbm" in result.output and "<- chosen" in result.output
    result = cli(
        "mixtures",
        "select",
        tmp_path / "fit",
        "--samples",
        5000,
        "--top-k",
        16,
        "--max-weight",
        "code=0.4",
        "--out",
        tmp_path / "sel",
    )
    assert result.exit_code == 0, result.output
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert mixture["weights"]["code"] <= 0.4 + 1e-9
    assert mixture["target"]["terms"] == {"code": 0.5, "prose": 0.5}


def test_bad_target_is_a_one_line_error(cli, tmp_path):
    write_table(known_runs(20, seed=4), tmp_path / "runs.parquet")
    result = cli("mixtures", "fit", tmp_path / "runs.parquet", "--target", "news", "--out", tmp_path / "fit")
    assert result.exit_code == 1
    assert "'news' not in the runs" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "fit").exists()


def test_select_needs_a_fit_directory(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("mixtures", "select", tmp_path / "empty", "--out", tmp_path / "sel")
    assert result.exit_code == 1
    assert "no fit.json" in result.output
