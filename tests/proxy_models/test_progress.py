"""Progress where the time goes: steps, tokens/s and ETA lines off a terminal, for every trainer."""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa

from mixlab.console import StepProgress
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import run_swarm_train, train_mixtures
from mixlab.tables import write_table

FAST = SwarmConfig(
    n_layer=1, n_head=2, n_embd=32, seq_len=16, batch_size=4, steps=6, warmup_steps=1, eval_sequences=4,
    pack_size=2, threads=1,
)  # fmt: skip
MIXES = [{"alpha": 1.0, "beta": 0.0, "gamma": 0.0}, {"alpha": 0.2, "beta": 0.5, "gamma": 0.3}]


def test_off_a_terminal_progress_is_a_line_with_steps_tokens_per_second_and_eta() -> None:
    lines: list[str] = []
    bar = StepProgress("pretrain", 10, every=0, emit=lines.append, tty=False)
    for step in range(1, 11):
        time.sleep(0.001)
        bar.set(step, step * 512)
    bar.close()
    assert lines[0].startswith("pretrain: step 1/10 (10%), ") and "tokens/s" in lines[0] and "ETA" in lines[0]
    assert len(lines) == 10  # one per step at every=0, then the closing summary
    assert lines[-1].startswith("pretrain: 10 steps in ")


def test_lines_are_spaced_by_the_interval() -> None:
    lines: list[str] = []
    bar = StepProgress("distill", 1000, every=60, emit=lines.append, tty=False)
    for step in range(1, 500):
        bar.set(step, step)
    assert lines == []  # nothing until a minute has passed


def test_a_training_run_off_a_terminal_reports_its_steps(tokens_dir, capsys, monkeypatch) -> None:
    monkeypatch.setenv("MIXLAB_PROGRESS_EVERY", "0")
    train_mixtures(tokens_dir, MIXES, FAST, desc="verify")
    err = capsys.readouterr().err
    assert "verify: step 3/6 (50%)" in err and "tokens/s, ETA" in err
    assert "verify: 6 steps in " in err


def test_the_swarm_reports_steps_from_inside_its_dask_tasks(
    tmp_path, tokens_dir, capsys, monkeypatch
) -> None:
    from distributed import Client, LocalCluster

    monkeypatch.setenv("MIXLAB_PROGRESS_EVERY", "0")
    rows = [
        {"run_id": f"r{i}", "seed": i, **{f"w.{d}": w for d, w in m.items()}} for i, m in enumerate(MIXES * 2)
    ]
    write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    cfg = dataclasses.replace(FAST, steps=30)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            run_swarm_train(
                {"candidates": tmp_path / "c.parquet", "tokens": tokens_dir},
                cfg,
                tmp_path / "s",
                client=client,
            )
    err = capsys.readouterr().err
    assert "swarm: step " in err and "/60 (" in err and "tokens/s" in err  # 2 packs x 30 steps
    assert "swarm: 60 steps in " in err
