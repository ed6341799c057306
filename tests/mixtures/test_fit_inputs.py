"""Runs from other tools: CSV, Olmix's ratios.csv + metrics.csv, rounded weights, partial losses."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from mixlab.errors import InputError
from mixlab.mixtures.config import FitConfig
from mixlab.mixtures.fit import run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.targets import load_runs

QUICK = FitConfig(folds=3, max_rounds=60, early_stopping_rounds=10)
DOMAINS = ("prose", "code", "tabular", "legal")


def olmix_pair(tmp_path, n: int = 40, decimals: int | None = None):
    """Olmix's two files for `n` known runs: ratios.csv (run, <domain>...) and metrics.csv
    (run, <metric>_bpb...), the metrics' rows in another order than the ratios'."""
    df = pl.from_arrow(known_runs(n, DOMAINS, seed=5))
    ratios = df.select(pl.col("run_id").alias("run"), *[pl.col(f"w.{d}").alias(d) for d in DOMAINS])
    if decimals is not None:
        ratios = ratios.with_columns([pl.col(d).round(decimals) for d in DOMAINS])
    metrics = df.select(
        pl.col("run_id").alias("run"),
        pl.lit("swarm").alias("name"),
        *[pl.col(f"loss.{d}").alias(f"{d}_bpb") for d in DOMAINS],
    ).reverse()
    ratios.write_csv(tmp_path / "ratios.csv")
    metrics.write_csv(tmp_path / "metrics.csv")
    return df, tmp_path / "ratios.csv", tmp_path / "metrics.csv"


def test_olmix_ratios_and_metrics_are_joined_on_the_run_id(tmp_path, capfd) -> None:
    df, ratios, metrics = olmix_pair(tmp_path)
    runs = load_runs(ratios, "mean", metrics=metrics)
    assert runs.domains == list(DOMAINS) and runs.run_ids == df["run_id"].to_list()
    # No loss is named after a domain: `mean` averages every metric present, and says so.
    assert runs.target.terms == {f"{d}_bpb": 0.25 for d in DOMAINS}
    expected = df.select(pl.mean_horizontal(*[f"loss.{d}" for d in DOMAINS])).to_series().to_numpy()
    np.testing.assert_allclose(runs.target_loss, expected)
    assert (
        "averaging all 4 loss columns: prose_bpb, code_bpb, tabular_bpb, legal_bpb" in capfd.readouterr().err
    )


def test_a_folder_holding_ratios_and_metrics_fits_like_the_pair(tmp_path) -> None:
    olmix_pair(tmp_path)
    manifest = run_mixtures_fit({"runs": tmp_path}, QUICK, tmp_path / "fit")
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert manifest.counts["runs"] == 40 and fit["domains"] == list(DOMAINS)
    paired = run_mixtures_fit(
        {"runs": tmp_path / "ratios.csv", "metrics": tmp_path / "metrics.csv"}, QUICK, tmp_path / "fit2"
    )
    assert paired.stats["held_out"] == manifest.stats["held_out"]


def test_a_runs_csv_with_weight_and_loss_columns_reads_like_parquet(tmp_path) -> None:
    df = pl.from_arrow(known_runs(30, DOMAINS, seed=6))
    df.write_csv(tmp_path / "runs.csv")
    df.write_parquet(tmp_path / "runs.parquet")
    a, b = load_runs(tmp_path / "runs.csv", "code"), load_runs(tmp_path / "runs.parquet", "code")
    np.testing.assert_allclose(a.weights, b.weights)
    np.testing.assert_allclose(a.target_loss, b.target_loss)
    assert a.run_ids == b.run_ids


def test_runs_in_only_one_file_are_left_out_and_counted(tmp_path, capfd) -> None:
    df, ratios, metrics = olmix_pair(tmp_path)
    pl.read_csv(metrics).head(30).write_csv(metrics)
    runs = load_runs(ratios, "prose_bpb", metrics=metrics)
    assert len(runs.target_loss) == 30
    assert "10 run(s) appear in only one of ratios.csv and metrics.csv" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("ratios_text", "metrics_text", "message"),
    [
        ("prose,code\n0.5,0.5\n", "run,x\nr1,1.0\n", r"ratios\.csv: no run id column .*run_id, run, index"),
        ("run,prose,code\nr1,0.5,0.5\n", "id,x\nr1,1.0\n", r"metrics\.csv: no 'run' column to join"),
        ("run,prose,code\nr1,0.5,0.5\n", "run,label\nr1,a\n", r"metrics\.csv: no numeric columns"),
        ("run,prose,code\nr1,0.5,0.5\n", "run,x\nr9,1.0\n", r"no run id \(run\) appears in both"),
        ("run,prose,code\nr1,0.5,0.5\nr1,0.4,0.6\n", "run,x\nr1,1.0\n", r"'r1' appears more than once"),
    ],
)
def test_csv_pairs_with_missing_columns_are_one_line(tmp_path, ratios_text, metrics_text, message) -> None:
    (tmp_path / "ratios.csv").write_text(ratios_text)
    (tmp_path / "metrics.csv").write_text(metrics_text)
    with pytest.raises(InputError, match=message) as info:
        load_runs(tmp_path / "ratios.csv", "mean", metrics=tmp_path / "metrics.csv")
    assert "\n" not in str(info.value)


def test_a_runs_csv_without_prefixed_columns_points_at_metrics(tmp_path) -> None:
    (tmp_path / "runs.csv").write_text("run,prose,code\nr1,0.5,0.5\n")
    with pytest.raises(InputError, match=r"runs\.csv: no w\.<domain> weight columns.*--metrics"):
        load_runs(tmp_path / "runs.csv", "mean")


def test_weights_rounded_off_their_sum_are_refused_unless_renormalized(tmp_path, capfd) -> None:
    df, ratios, metrics = olmix_pair(tmp_path, decimals=2)
    sums = pl.read_csv(ratios).select(pl.sum_horizontal(*DOMAINS)).to_series().to_numpy()
    assert (np.abs(sums - 1) > 1e-3).any()  # rounding to 2 decimals leaves some rows off by more
    with pytest.raises(InputError, match=r"do not sum to 1 .*pass --renormalize"):
        load_runs(ratios, "prose_bpb", metrics=metrics)
    runs = load_runs(ratios, "prose_bpb", metrics=metrics, renormalize=True)
    np.testing.assert_allclose(runs.weights.sum(axis=1), 1.0)
    assert "--renormalize: rescaled the weights of" in capfd.readouterr().err


def test_target_mean_averages_the_domain_losses_present_and_says_which(tmp_path, capfd) -> None:
    df = pl.from_arrow(known_runs(30, DOMAINS, seed=7)).drop("loss.legal")
    df.write_parquet(tmp_path / "runs.parquet")
    runs = load_runs(tmp_path / "runs.parquet", "mean")
    assert runs.target.terms == pytest.approx({"prose": 1 / 3, "code": 1 / 3, "tabular": 1 / 3})
    err = capfd.readouterr().err
    assert "averaging the 3 domain losses present (prose, code, tabular); no loss column for legal" in err
