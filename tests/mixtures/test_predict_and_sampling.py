"""`mixlab mixtures predict`, select's sampling-law flags, the extrapolation warning, warnings said once."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from mixlab.errors import ConfigError
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import load_fit, run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import choice_warnings, run_mixtures_select
from mixlab.tables import write_table

QUICK = FitConfig(target="code=0.5,prose=0.5", folds=3, max_rounds=80, early_stopping_rounds=10)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    runs = known_runs(40, seed=3)
    write_table(runs, root / "runs.parquet")
    run_mixtures_fit({"runs": root / "runs.parquet"}, QUICK, root / "fit")
    return root


def test_predict_prints_the_mixtures_best_first_and_writes_them(cli, fitted, tmp_path) -> None:
    result = cli(
        "mixtures", "predict", fitted / "fit", fitted / "runs.parquet", "--out", tmp_path / "p.parquet"
    )
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(tmp_path / "p.parquet")
    assert table.height == 40 and table.columns[:2] == ["name", "w.prose"]
    weights = table.select(pl.selectors.starts_with("w.")).to_numpy()
    np.testing.assert_allclose(
        table["predicted_target_loss"].to_numpy(), load_fit(fitted / "fit").predict(weights)
    )
    assert (table["spread_min"] <= table["spread_max"]).all()
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "name" and "predicted" in lines[0]
    best = table.sort("predicted_target_loss")["name"][0]
    assert lines[1].split()[0] == best


def test_predict_reads_a_mixture_json_and_a_csv(cli, fitted, tmp_path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"prose": 0.5, "code": 0.5}))
    result = cli("mixtures", "predict", fitted / "fit", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:3] == ["m", "0.500", "0.500"]  # absent domains weigh 0
    (tmp_path / "m.csv").write_text("name,w.prose,w.code,w.tabular,w.legal\na,0.25,0.25,0.25,0.25\n")
    assert cli("mixtures", "predict", fitted / "fit", tmp_path / "m.csv").exit_code == 0
    # Columns named as the fit's domains (RegMix's and Olmix's mixture files) read too.
    (tmp_path / "bare.csv").write_text("index,prose,code,tabular,legal\n7,0.25,0.25,0.25,0.25\n")
    bare = cli("mixtures", "predict", fitted / "fit", tmp_path / "bare.csv")
    assert bare.exit_code == 0, bare.output
    assert bare.stdout.splitlines()[1].split()[0] == "7"
    assert (
        bare.stdout.splitlines()[1].split()[-2]
        == cli("mixtures", "predict", fitted / "fit", tmp_path / "m.csv").stdout.splitlines()[1].split()[-2]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,w.prose,w.klingon\na,0.5,0.5\n", "domain(s) ['klingon'] the fit never saw"),
        ("name,w.prose,w.code\na,0.5,0.4\n", "do not sum to 1"),
        ("name,klingon\na,1.0\n", "no w.<domain> weight columns"),
    ],
)
def test_predict_refuses_bad_mixtures_in_one_line_and_writes_nothing(
    cli, fitted, tmp_path, text, message
) -> None:
    (tmp_path / "m.csv").write_text(text)
    result = cli("mixtures", "predict", fitted / "fit", tmp_path / "m.csv", "--out", tmp_path / "p.parquet")
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.parquet").exists()


def test_predict_renormalizes_when_asked(cli, fitted, tmp_path) -> None:
    (tmp_path / "m.csv").write_text("name,w.prose,w.code\na,0.5,0.4\n")
    assert cli("mixtures", "predict", fitted / "fit", tmp_path / "m.csv", "--renormalize").exit_code == 0


def test_select_flags_set_the_sampling_law_without_any_token_counts(fitted, tmp_path) -> None:
    cfg = SelectConfig(samples=2000, top_k=16, prior_power=0.5, spread=(0.3,))
    run_mixtures_select({"fit": fitted / "fit"}, cfg, tmp_path / "sel")
    sampler = json.loads((tmp_path / "sel" / "mixture.json").read_text())["method"]["sampler"]
    assert sampler["prior_power"] == 0.5
    assert (sampler["spread_min"], sampler["spread_max"], sampler["spread_levels"]) == (0.3, 0.3, 1)
    cfg = SelectConfig(samples=2000, top_k=16, spread=(0.2, 3.0))
    run_mixtures_select({"fit": fitted / "fit"}, cfg, tmp_path / "sel2")
    sampler = json.loads((tmp_path / "sel2" / "mixture.json").read_text())["method"]["sampler"]
    assert (sampler["spread_min"], sampler["spread_max"], sampler["prior_power"]) == (0.2, 3.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"prior_power": -1.0}, "--prior-power"),
        ({"spread": (0.0,)}, "--spread"),
        ({"spread": (3.0, 1.0)}, "--spread"),
    ],
)
def test_bad_sampling_law_flags_are_refused(kwargs, flag) -> None:
    with pytest.raises(ConfigError, match=flag):
        SelectConfig(**kwargs)


def test_a_choice_predicted_below_every_run_is_flagged_as_extrapolation() -> None:
    fit = {"weights_range": {"min": [0.0, 0.0], "max": [1.0, 1.0]}, "target_loss": {"min": 2.0}}
    low = {"predicted_target_loss": 1.9}
    warnings = choice_warnings(
        fit, ["a", "b"], np.array([0.5, 0.5]), low, {"predicted_target_loss": 3.0}, low
    )
    assert len(warnings) == 1 and "lies below every training run's (lowest 2)" in warnings[0]
    inside = {"predicted_target_loss": 2.1}
    assert not choice_warnings(
        fit, ["a", "b"], np.array([0.5, 0.5]), inside, {"predicted_target_loss": 3.0}, inside
    )


def test_each_warning_is_printed_once(cli, tmp_path) -> None:
    write_table(known_runs(20, seed=4), tmp_path / "runs.parquet")  # below the recommended 64 runs
    result = cli("mixtures", "fit", tmp_path / "runs.parquet", "--max-rounds", 30, "--out", tmp_path / "fit")
    assert result.exit_code == 0, result.output
    assert result.output.count("only 20 runs for 4 domains") == 1
    assert result.output.count("held-out spearman") == 3  # once per model, by the summary
    again = cli("mixtures", "fit", tmp_path / "runs.parquet", "--max-rounds", 30, "--out", tmp_path / "fit")
    assert "already up to date" in again.output and again.output.count("only 20 runs") == 1


def test_a_fit_in_memory_predicts_and_chooses_like_the_fit_on_disk(fitted) -> None:
    from mixlab.mixtures.fit import fit_models
    from mixlab.mixtures.select import choose_mixture
    from mixlab.mixtures.targets import load_runs

    runs = load_runs(fitted / "runs.parquet", QUICK.target)
    memory = fit_models(runs, QUICK).fitted()
    disk = load_fit(fitted / "fit")
    w = runs.weights[:10]
    np.testing.assert_allclose(memory.predict(w), disk.predict(w), rtol=1e-12)
    np.testing.assert_allclose(memory.predict_folds(w), disk.predict_folds(w), rtol=1e-12)
    cfg = SelectConfig(samples=3000, top_k=16)
    a, b = choose_mixture(memory, cfg), choose_mixture(disk, cfg)
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-9)
