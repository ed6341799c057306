"""Data-parallel pretraining under torchrun (gloo on CPU, 2 processes): the same global batch
gives one process's loss curve, a killed 2-rank run resumes on 1 rank to the same final loss,
and a world size that does not divide the batch is one line from rank 0 with every rank failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mixlab
from mixlab.proxy_models.config import PretrainConfig
from mixlab.proxy_models.pretrain import run_pretrain

SRC = str(Path(mixlab.__file__).resolve().parents[1])
FLAGS = {
    "n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 16, "steps": 6, "batch_size": 4, "lr": 0.01,
    "warmup_steps": 1, "eval_every": 3, "eval_sequences": 4, "checkpoint_every": 3, "device": "cpu", "threads": 1,
}  # fmt: skip

KILLED_AT_STEP_5 = """
import os, sys
sys.path.insert(0, {src!r})
from mixlab.proxy_models import train

step = train._step
calls = [0]


def dies_at_step_5(*args, **kwargs):
    calls[0] += 1
    if calls[0] == 5:
        os._exit(9)  # a kill after the checkpoint at step 3
    return step(*args, **kwargs)


train._step = dies_at_step_5
from mixlab.cli import main

main(sys.argv[1:], prog_name="mixlab")
"""


def torchrun(args: list[str], cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    what = [str(script)] if script else ["-m", "mixlab"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *what]
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def cli_flags(flags: dict) -> list[str]:
    return [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture
def mixture(tmp_path: Path) -> Path:
    path = tmp_path / "mixture.json"
    path.write_text(json.dumps({"weights": {"alpha": 0.6, "beta": 0.4}}))
    return path


def losses(out: Path) -> np.ndarray:
    table = pq.read_table(out / "metrics.parquet").sort_by([("step", "ascending"), ("model", "ascending")])
    return np.array([table.column(c).to_numpy() for c in table.column_names if "loss" in c or c == "target"])


def one_process(tokens_dir: Path, mixture: Path, out: Path) -> np.ndarray:
    run_pretrain({"tokens": tokens_dir, "mixture": mixture}, PretrainConfig(**FLAGS), out)
    return losses(out)


def test_two_ranks_give_one_process_loss_curve(tokens_dir, mixture, tmp_path):
    expected = one_process(tokens_dir, mixture, tmp_path / "one")
    done = torchrun(["pretrain", "--tokens", str(tokens_dir), "--mixture", str(mixture), "--out", "two"]
                    + cli_flags(FLAGS), tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("pretrain: wrote") == 1  # rank 0 alone says it
    np.testing.assert_allclose(losses(tmp_path / "two"), expected, rtol=1e-5, atol=1e-6)


def test_a_killed_two_rank_run_resumes_on_one_rank_to_the_same_final_loss(tokens_dir, mixture, tmp_path):
    expected = one_process(tokens_dir, mixture, tmp_path / "one")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT_STEP_5.format(src=SRC))
    args = [
        "pretrain",
        "--tokens",
        str(tokens_dir),
        "--mixture",
        str(mixture),
        "--out",
        str(tmp_path / "two"),
    ]
    killed = torchrun(args + cli_flags(FLAGS), tmp_path, script)
    assert killed.returncode != 0 and not (tmp_path / "two").exists()
    resumed = one_process(tokens_dir, mixture, tmp_path / "two")  # the same out dir, one process
    np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-6)


def test_a_world_size_that_does_not_divide_the_batch_is_one_line_and_every_rank_fails(
    tokens_dir, mixture, tmp_path
):
    flags = {**FLAGS, "batch_size": 5}
    done = torchrun(["pretrain", "--tokens", str(tokens_dir), "--mixture", str(mixture), "--out", "bad"]
                    + cli_flags(flags), tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("--batch-size 5: not divisible by the world size 2") == 1, done.stderr
    assert not (tmp_path / "bad").exists()


def test_csv_logger_writes_every_evaluation_beside_metrics_parquet_and_changes_no_number(
    tokens_dir, mixture, tmp_path
):
    expected = one_process(tokens_dir, mixture, tmp_path / "plain")
    cfg = PretrainConfig(**FLAGS, logger="csv")
    run_pretrain({"tokens": tokens_dir, "mixture": mixture}, cfg, tmp_path / "logged")
    np.testing.assert_array_equal(losses(tmp_path / "logged"), expected)
    import pyarrow.csv

    table = pyarrow.csv.read_csv(tmp_path / "logged" / "logs" / "metrics.csv")
    assert table.num_rows == pq.read_table(tmp_path / "logged" / "metrics.parquet").num_rows
    assert {"step", "model", "train_loss", "target"} <= set(table.column_names)


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_optional_loggers_write_their_runs_offline(tokens_dir, mixture, tmp_path, kind):
    pytest.importorskip("tensorboard" if kind == "tensorboard" else "wandb")
    os.environ.setdefault("WANDB_SILENT", "true")
    run_pretrain(
        {"tokens": tokens_dir, "mixture": mixture}, PretrainConfig(**FLAGS, logger=kind), tmp_path / "o"
    )
    assert any((tmp_path / "o" / "logs").rglob("*"))
