"""Fitting at a recorded step of the swarm's trajectories, and on the whole trajectory."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest

from mixlab.errors import InputError
from mixlab.mixtures.config import FitConfig, SelectConfig
from mixlab.mixtures.fit import fit_models, load_fit, read_fit_runs, run_mixtures_fit
from mixlab.mixtures.known import known_runs
from mixlab.mixtures.select import choose_mixture, run_mixtures_select
from mixlab.tables import write_table

QUICK = FitConfig(target="target", folds=3, max_rounds=80, early_stopping_rounds=10)
STEPS = (10, 20, 40)


def swarm_dir(tmp_path, n: int = 48, with_trajectories: bool = True):
    """A swarm output: runs.parquet (losses at step 40) and trajectories.parquet at STEPS, earlier
    steps higher by an amount that depends on the mixture (so they carry its ranking, noisily)."""
    out = tmp_path / "swarm"
    table = known_runs(n, target_blend={"prose": 0.7, "code": 0.3}, repeats=2, repeat_mixtures=4, seed=3)
    write_table(table, out / "runs.parquet")
    df = pl.from_arrow(table)
    rng = np.random.default_rng(0)
    losses = [c for c in df.columns if c.startswith("loss.")]
    rows = []
    for step in STEPS:
        lift = 2.0 * (40 / step - 1)
        part = df.select("run_id", *[(pl.col(c) * (1 + lift / 10) + 0.01 * lift) for c in losses])
        noise = {c: part[c] + 0.02 * lift * rng.standard_normal(part.height) for c in losses}
        rows.append(
            part.with_columns(
                **noise,
                step=pl.lit(step, pl.Int64),
                tokens=pl.lit(step * 512, pl.Int64),
                train_loss=pl.lit(1.0),
            ).select("run_id", "step", "tokens", "train_loss", *losses)
        )
    if with_trajectories:
        write_table(pl.concat(rows).to_arrow(), out / "trajectories.parquet")
    return out, pl.concat(rows)


def test_at_step_fits_the_losses_recorded_at_that_step(tmp_path) -> None:
    swarm, traj = swarm_dir(tmp_path)
    run_mixtures_fit({"runs": swarm}, dataclasses.replace(QUICK, at_step=20), tmp_path / "fit")
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    at20 = traj.filter(pl.col("step") == 20)["loss.target"]
    assert fit["at_step"] == 20 and "features" not in fit
    assert fit["target_loss"]["min"] == pytest.approx(at20.min())
    final = json.loads(
        (
            run_mixtures_fit({"runs": swarm}, QUICK, tmp_path / "final") and tmp_path / "final" / "fit.json"
        ).read_text()
    )
    assert final["target_loss"]["min"] < fit["target_loss"]["min"]  # the later step's losses are lower


def test_a_step_that_was_not_recorded_is_refused_with_the_recorded_ones(tmp_path) -> None:
    swarm, _ = swarm_dir(tmp_path)
    with pytest.raises(InputError, match=r"--at-step 30 was not recorded; recorded steps: 10, 20, 40"):
        run_mixtures_fit({"runs": swarm}, dataclasses.replace(QUICK, at_step=30), tmp_path / "fit")
    assert not (tmp_path / "fit").exists()


def test_at_step_without_trajectories_is_one_clear_line(tmp_path) -> None:
    swarm, _ = swarm_dir(tmp_path, with_trajectories=False)
    for cfg in (dataclasses.replace(QUICK, at_step=20), dataclasses.replace(QUICK, trajectory=True)):
        with pytest.raises(
            InputError, match=r"no trajectories\.parquet beside the runs.*re-run `mixlab swarm train`"
        ):
            run_mixtures_fit({"runs": swarm / "runs.parquet"}, cfg, tmp_path / "fit")
    assert not (tmp_path / "fit").exists()


def test_a_trajectory_fit_trains_on_earlier_steps_but_is_judged_at_the_last(tmp_path) -> None:
    swarm, _ = swarm_dir(tmp_path)
    cfg = dataclasses.replace(QUICK, trajectory=True)
    runs, history, step = read_fit_runs(swarm, cfg)
    assert step == 40 and sorted(set(history.steps.tolist())) == [10, 20]  # the earlier steps
    result = fit_models(runs, cfg, None, history, step)
    plain = fit_models(runs, QUICK)
    np.testing.assert_array_equal(result.folds, plain.folds)  # the same mixtures held out together
    assert result.trajectory_rows == 2 * len(runs.run_ids)  # steps 10 and 20 of every run
    assert len(result.cv["lightgbm"].predicted) == len(runs.target_loss)
    assert result.features.record == {"trajectory": {"step": 40}}
    # Predictions come from weights alone: the step is fixed at the fitted one.
    fitted = result.fitted()
    w = runs.weights[:5]
    np.testing.assert_allclose(fitted.predict(w), result.final["lightgbm"].predict(fitted.design(w)))
    assert fitted.design(w).shape == (5, len(runs.domains) + 1)
    assert choose_mixture(fitted, SelectConfig(samples=500, top_k=10))["weights"]


def test_a_trajectory_fit_on_disk_is_read_back_and_selected_from(tmp_path) -> None:
    swarm, _ = swarm_dir(tmp_path)
    run_mixtures_fit({"runs": swarm}, dataclasses.replace(QUICK, trajectory=True), tmp_path / "fit")
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["features"] == {"trajectory": {"step": 40}} and fit["trajectory_rows"] > 0
    fitted = load_fit(tmp_path / "fit")
    assert fitted.design(np.full((1, 4), 0.25))[0, -1] == pytest.approx(np.log(40))
    run_mixtures_select({"fit": tmp_path / "fit"}, SelectConfig(samples=500, top_k=10), tmp_path / "sel")
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert sum(mixture["weights"].values()) == pytest.approx(1.0)
