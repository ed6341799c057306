"""Targets from a runs table, NaN handling, the noise floor and the rank statistics."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mixlab.errors import ConfigError, InputError
from mixlab.mixture import Target
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.regression import group_folds, spearman
from mixlab.mixtures.targets import load_runs, mixture_groups, noise_floor
from mixlab.tables import write_table


@pytest.fixture
def runs_file(tmp_path):
    path = tmp_path / "runs.parquet"
    write_table(known_runs(40, target_blend={"prose": 0.7, "code": 0.3}, seed=1), path)
    return path


def test_target_mean_weights_every_domain_equally(runs_file):
    runs = load_runs(runs_file, "mean")
    df = pl.read_parquet(runs_file)
    expected = df.select(
        pl.mean_horizontal("loss.prose", "loss.code", "loss.tabular", "loss.legal")
    ).to_series()
    assert runs.domains == ["prose", "code", "tabular", "legal"]
    assert np.allclose(runs.target_loss, expected.to_numpy())
    assert np.allclose(runs.weights.sum(axis=1), 1.0)


def test_target_weights_combine_the_named_losses(runs_file):
    runs = load_runs(runs_file, "code=0.5,prose=0.5")
    df = pl.read_parquet(runs_file)
    assert np.allclose(runs.target_loss, 0.5 * df["loss.code"].to_numpy() + 0.5 * df["loss.prose"].to_numpy())


def test_target_can_be_a_separate_validation_corpus(runs_file):
    runs = load_runs(runs_file, "target")
    assert np.allclose(runs.target_loss, pl.read_parquet(runs_file)["loss.target"].to_numpy())
    assert "target" not in runs.domains


def test_target_naming_an_absent_domain_is_an_error(runs_file):
    with pytest.raises(ConfigError, match="'news' not in the runs"):
        load_runs(runs_file, "news=1")
    with pytest.raises(ConfigError, match="not a number"):
        load_runs(runs_file, "code=abc")


def test_runs_with_nan_losses_are_dropped_and_counted(tmp_path):
    df = pl.from_arrow(known_runs(30, seed=2))
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) < 3)
        .then(float("nan"))
        .otherwise(pl.col("loss.code"))
        .alias("loss.code"),
        pl.when(pl.int_range(pl.len()) == 5).then(None).otherwise(pl.col("loss.prose")).alias("loss.prose"),
    )
    df.write_parquet(tmp_path / "runs.parquet")
    assert load_runs(tmp_path / "runs.parquet", "mean").dropped_nan == 4
    # A target that does not read the broken columns keeps every run.
    kept = load_runs(tmp_path / "runs.parquet", "tabular")
    assert kept.dropped_nan == 0 and len(kept.target_loss) == 30


def test_noise_floor_measures_seed_noise_of_repeated_mixtures():
    table = known_runs(50, noise=0.02, repeats=6, repeat_mixtures=10, seed=3)
    df = pl.from_arrow(table)
    weights = df.select(pl.col("^w\\..*$")).to_numpy()
    floor = noise_floor(weights, df["loss.code"].to_numpy())
    assert floor["runs"] >= 60 and floor["mixtures"] >= 5  # sparse draws (one-hot mixtures) can coincide
    assert 0.015 < floor["rmse"] < 0.025
    distinct = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    assert noise_floor(distinct, np.array([1.0, 2.0, 3.0])) is None


def test_repeated_seeds_of_a_mixture_share_a_fold():
    df = pl.from_arrow(known_runs(40, repeats=3, repeat_mixtures=8, seed=4))
    weights = df.select(pl.col("^w\\..*$")).to_numpy()
    groups = mixture_groups(weights)
    folds = group_folds(groups, 5, seed=0)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1
    assert set(folds) == set(range(5))


def test_spearman_averages_ties_like_the_textbook_definition():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, 50).astype(float)
    b = a + rng.normal(0, 2, 50)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)


def test_target_mean_without_any_loss_says_there_are_none():
    with pytest.raises(ConfigError) as error:
        Target.parse("mean", ["code", "prose"], [], source="the runs")
    assert "no validation losses in the runs" in str(error.value)
    assert "e.g." not in str(error.value)


def test_a_stored_target_record_reads_back_as_written():
    target = Target.parse("code=0.3,prose=0.7", ["code", "prose"], ["code", "prose", "target"])
    again = Target.from_record(target.to_record(), None, where="fit.json")
    assert again == target and again.to_record() == {
        "spec": "code=0.3,prose=0.7",
        "terms": {"code": 0.3, "prose": 0.7},
    }
    with pytest.raises(InputError, match="fit.json: the target names \\['code'\\]"):
        Target.from_record(target.to_record(), ["prose"], where="fit.json")


def test_the_runs_target_loss_is_the_target_evaluated_on_the_loss_columns(runs_file):
    runs = load_runs(runs_file, "code=0.25,target=0.75")
    df = pl.read_parquet(runs_file)
    assert runs.target == Target({"code": 0.25, "target": 0.75}, "code=0.25,target=0.75")
    np.testing.assert_array_equal(
        runs.target_loss, runs.target.loss_columns({c: df[c].to_numpy() for c in df.columns})
    )
