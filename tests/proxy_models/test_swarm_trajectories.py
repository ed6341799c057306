"""The swarm's trajectories (every evaluation of every proxy) and its --logger."""

from __future__ import annotations

import csv
import dataclasses

import polars as pl
import pytest

from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import run_swarm_train
from mixlab.stage import Manifest

from .conftest import domain_tokens
from .test_swarm import FAST, MIXES, _candidates

CFG = dataclasses.replace(FAST, steps=8, warmup_steps=1, pack_size=2)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def swarms(tmp_path_factory, client, make_tokens):
    """The same candidates trained twice: evaluated only at the end, and every 3 steps with a csv logger."""
    root = tmp_path_factory.mktemp("swarms")
    streams = {
        d: {"train": domain_tokens(k, 6000, 0), "valid": domain_tokens(k, 1500, 1)}
        for k, d in enumerate(["alpha", "beta", "gamma"])
    }
    tokens_dir = make_tokens(root / "tokens", streams)
    cands = _candidates(root / "c.parquet", MIXES[:3])
    inputs = {"candidates": cands, "tokens": tokens_dir}
    run_swarm_train(inputs, CFG, root / "plain", client=client)
    run_swarm_train(
        inputs, dataclasses.replace(CFG, eval_every=3, logger="csv"), root / "every3", client=client
    )
    return root, inputs


def test_trajectories_hold_every_evaluation_and_end_at_the_runs_losses(swarms) -> None:
    root, _ = swarms
    runs = pl.read_parquet(root / "every3" / "runs.parquet")
    traj = pl.read_parquet(root / "every3" / "trajectories.parquet")
    assert traj.columns[:4] == ["run_id", "step", "tokens", "train_loss"]
    assert traj.group_by("run_id").agg(pl.col("step")).sort("run_id")["step"].to_list() == [[3, 6, 8]] * 3
    assert (traj["tokens"] == traj["step"] * CFG.batch_size * CFG.seq_len).all()
    losses = [c for c in runs.columns if c.startswith("loss.")]
    assert losses == [c for c in traj.columns if c.startswith("loss.")]
    last = traj.filter(pl.col("step") == CFG.steps).select(["run_id", *losses])
    assert last.equals(runs.select(["run_id", *losses]))


def test_evaluating_along_the_way_changes_no_loss(swarms) -> None:
    root, _ = swarms
    plain, every = (pl.read_parquet(root / d / "runs.parquet") for d in ("plain", "every3"))
    losses = [c for c in plain.columns if c.startswith("loss.")]
    assert plain.select(["run_id", *losses]).equals(every.select(["run_id", *losses]))
    traj = pl.read_parquet(root / "plain" / "trajectories.parquet")
    assert traj["step"].unique().to_list() == [CFG.steps]  # by default: one evaluation, at the end


def test_csv_logger_writes_one_series_per_proxy_and_is_not_part_of_the_stage_key(swarms, client) -> None:
    root, inputs = swarms
    with open(root / "every3" / "logs" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 3  # 3 proxies x 3 evaluations
    assert {r["model"] for r in rows} == {"r00000", "r00001", "r00002"}
    assert {"step", "loss.alpha", "train_loss"} <= set(rows[0])
    manifest = Manifest.load(root / "every3")
    assert "logger" not in manifest.config and manifest.config["eval_every"] == 3
    again = run_swarm_train(inputs, dataclasses.replace(CFG, eval_every=3), root / "every3", client=client)
    assert again.skipped  # the same swarm without a logger is up to date


def test_tensorboard_logger_writes_event_files(tmp_path, tokens_dir, client) -> None:
    pytest.importorskip("tensorboard")
    cands = _candidates(tmp_path / "c.parquet", MIXES[:2])
    cfg = dataclasses.replace(CFG, steps=2, logger="tensorboard")
    run_swarm_train({"candidates": cands, "tokens": tokens_dir}, cfg, tmp_path / "s", client=client)
    events = list((tmp_path / "s" / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_eval_every_must_not_be_negative() -> None:
    from mixlab.errors import ConfigError

    with pytest.raises(ConfigError, match="--eval-every"):
        SwarmConfig(eval_every=-1)


def test_wandb_logger_runs_offline_with_steps_that_only_increase(
    tmp_path, tokens_dir, client, monkeypatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cands = _candidates(tmp_path / "c.parquet", MIXES[:3])
    cfg = dataclasses.replace(CFG, steps=2, pack_size=1, logger="wandb")
    logged = []
    from mixlab.proxy_models import loggers

    monkeypatch.setattr(loggers.MetricLogger, "log", lambda self, rows: logged.extend(rows))
    run_swarm_train({"candidates": cands, "tokens": tokens_dir}, cfg, tmp_path / "s", client=client)
    assert list((tmp_path / "s" / "logs" / "wandb").glob("offline-run-*"))
    steps = [r["step"] for r in logged]
    assert steps == sorted(steps) and len(set(steps)) == 3  # packs end to end: 2, 4, 6


def test_a_resumed_swarm_keeps_the_trajectories_of_the_packs_it_had_finished(
    tmp_path, tokens_dir, client, monkeypatch
) -> None:
    from mixlab.stage import TaskMarkers

    cands = _candidates(tmp_path / "c.parquet", MIXES[:3])
    cfg = dataclasses.replace(CFG, pack_size=1, steps=4, eval_every=2)
    inputs = {"candidates": cands, "tokens": tokens_dir}
    mark = TaskMarkers.mark

    def mark_then_stop(self, task, result):
        mark(self, task, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(TaskMarkers, "mark", mark_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_swarm_train(inputs, cfg, tmp_path / "swarm", client=client)
    monkeypatch.setattr(TaskMarkers, "mark", mark)
    run_swarm_train(inputs, cfg, tmp_path / "swarm", client=client)
    run_swarm_train(inputs, cfg, tmp_path / "straight", client=client)
    resumed, straight = (
        pl.read_parquet(tmp_path / d / "trajectories.parquet") for d in ("swarm", "straight")
    )
    assert resumed.height == 3 * 2 and resumed.equals(straight)
