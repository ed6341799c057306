"""Data-parallel pretraining and distillation under torchrun (gloo on CPU, 2 processes): the same
global batch gives one process's loss curve, a killed 2-rank run resumes on 1 rank to the same
final loss, and bad input (a world size that does not divide the batch, a checkpoint of another
model size, a mixture naming a domain the tokens lack) is one line from rank 0, every rank exits
non-zero and nothing is half-written. With --fsdp (FSDP2 shards) the same holds, its checkpoints
and model files are an unsharded run's, and sharded and unsharded runs resume each other."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

import mixlab
from mixlab.proxy_models.checkpoint import save_model
from mixlab.proxy_models.config import DistillConfig, GPTConfig, PretrainConfig
from mixlab.proxy_models.distill import run_distill
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.pretrain import run_pretrain

SRC = str(Path(mixlab.__file__).resolve().parents[1])
FLAGS = {
    "n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 16, "steps": 6, "batch_size": 4, "lr": 0.01,
    "warmup_steps": 1, "eval_every": 3, "eval_sequences": 4, "checkpoint_every": 3, "device": "cpu", "threads": 1,
}  # fmt: skip
DISTILL_FLAGS = {**{k: v for k, v in FLAGS.items() if k != "seq_len"}, "n_embd": 16}  # seq_len: the teacher's
TEACHER = GPTConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, n_embd=32)

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


def torchrun(
    args: list[str], cwd: Path, script: Path | None = None, ranks: int = 2
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    what = [str(script)] if script else ["-m", "mixlab"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(ranks),
        *what,
    ]
    return subprocess.run(cmd + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def two_ranks(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """`python -m mixlab ARGS` as ranks 0 and 1 of a gloo group (what torchrun sets up), each
    process on its own, so every rank's exit status and output can be checked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.update({"MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mixlab", *args],
            cwd=cwd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        done = [(p, *p.communicate(timeout=300)) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, out, err in done]


def refused_on_every_rank(ranks: list[subprocess.CompletedProcess], line: str) -> None:
    """Every rank exits non-zero; rank 0 says `line` once (as one line), the other says nothing."""
    assert all(r.returncode != 0 for r in ranks), [(r.returncode, r.stderr[-2000:]) for r in ranks]
    said = [x for x in ranks[0].stderr.splitlines() if line in x]
    assert len(said) == 1, ranks[0].stderr
    assert "Traceback" not in ranks[0].stderr and not ranks[1].stderr.strip() and not ranks[1].stdout


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
    ranks = two_ranks(["pretrain", "--tokens", str(tokens_dir), "--mixture", str(mixture), "--out", "bad"]
                      + cli_flags(flags), tmp_path)  # fmt: skip
    refused_on_every_rank(ranks, "--batch-size 5: not divisible by the world size 2")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.partial").exists()


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


# --- distillation ---------------------------------------------------------------------------------


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    """A mixlab model directory (random weights) that records training on alpha + beta."""
    meta = {"stage": "pretrain", "mixture": {"alpha": 0.6, "beta": 0.4}, "eos_id": 0}
    save_model(tmp_path / "teacher", GPT(TEACHER, seeds=(7,)), 0, meta, None)
    return tmp_path / "teacher"


def distill_args(teacher: Path, tokens_dir: Path, out: Path | str, flags: dict = DISTILL_FLAGS) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--tokens", str(tokens_dir), "--out", str(out),
            "--compare-scratch"] + cli_flags(flags)  # fmt: skip


def one_process_distill(teacher: Path, tokens_dir: Path, out: Path) -> np.ndarray:
    cfg = DistillConfig(**DISTILL_FLAGS, compare_scratch=True)
    run_distill({"teacher": teacher, "tokens": tokens_dir}, cfg, out)
    return losses(out)


def test_two_ranks_distill_to_one_process_loss_curve(tokens_dir, teacher, tmp_path):
    expected = one_process_distill(teacher, tokens_dir, tmp_path / "one")
    done = torchrun(distill_args(teacher, tokens_dir, "two"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("distill: wrote") == 1
    np.testing.assert_allclose(losses(tmp_path / "two"), expected, rtol=1e-5, atol=1e-6)
    manifest = json.loads((tmp_path / "two" / "_mixlab" / "manifest.json").read_text())
    assert manifest["stats"]["ranks"] == 2


def test_a_killed_two_rank_distill_resumes_on_one_rank_to_the_same_final_loss(tokens_dir, teacher, tmp_path):
    expected = one_process_distill(teacher, tokens_dir, tmp_path / "one")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT_STEP_5.format(src=SRC))
    killed = torchrun(distill_args(teacher, tokens_dir, tmp_path / "two"), tmp_path, script)
    assert killed.returncode != 0 and not (tmp_path / "two").exists()
    resumed = one_process_distill(teacher, tokens_dir, tmp_path / "two")
    np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-6)


# --- bad input under torchrun: one line from rank 0, every rank non-zero, nothing half-written ----


def test_distill_with_a_world_size_that_does_not_divide_the_batch_is_refused_on_every_rank(
    tokens_dir, teacher, tmp_path
):
    ranks = two_ranks(distill_args(teacher, tokens_dir, "bad", {**DISTILL_FLAGS, "batch_size": 5}), tmp_path)
    refused_on_every_rank(ranks, "--batch-size 5: not divisible by the world size 2")
    assert not (tmp_path / "bad").exists() and not (tmp_path / ".bad.partial").exists()


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_a_mixture_naming_a_domain_the_tokens_lack_is_refused_on_every_rank(
    tokens_dir, teacher, tmp_path, stage
):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"alpha": 0.5, "code": 0.5}))
    if stage == "pretrain":
        args = ["pretrain", "--tokens", str(tokens_dir), "--out", "out", *cli_flags(FLAGS)]
    else:
        args = distill_args(teacher, tokens_dir, "out")
    ranks = two_ranks([*args, "--mixture", str(bad)], tmp_path)
    refused_on_every_rank(ranks, "['code'] are not in")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_resuming_a_checkpoint_of_another_model_size_is_refused_naming_both(
    tokens_dir, mixture, teacher, tmp_path, stage, checkpoints
):
    out = tmp_path / "out"
    checkpoints.kill_at = 3  # a killed run, its checkpoint at step 3 kept for a resume
    with pytest.raises(checkpoints.Killed):
        if stage == "pretrain":
            run_pretrain({"tokens": tokens_dir, "mixture": mixture}, PretrainConfig(**FLAGS), out)
        else:
            cfg = DistillConfig(**DISTILL_FLAGS, compare_scratch=True)
            run_distill({"teacher": teacher, "tokens": tokens_dir}, cfg, out)
    state = next((tmp_path / ".out.partial").rglob("state.json"))
    before = state.read_bytes()
    width = FLAGS["n_embd"] if stage == "pretrain" else DISTILL_FLAGS["n_embd"]
    if stage == "pretrain":
        args = ["pretrain", "--tokens", str(tokens_dir), "--mixture", str(mixture), "--out", str(out),
                *cli_flags({**FLAGS, "n_embd": 2 * width})]  # fmt: skip
    else:
        args = distill_args(teacher, tokens_dir, out, {**DISTILL_FLAGS, "n_embd": 2 * width})
    ranks = two_ranks(args, tmp_path)
    refused_on_every_rank(ranks, f"is of a model with n_embd {width},")
    assert f"this run asks for n_embd {2 * width}," in ranks[0].stderr
    assert not out.exists() and state.read_bytes() == before  # the checkpoint is kept for a resume


# --- --fsdp: weights, gradients and AdamW state sharded over the ranks (FSDP2) -------------------

SHARDED = "fsdp: weights, gradients and AdamW state sharded over 2 ranks"


SHARDED_CLIPPING = """
import copy, sys
sys.path.insert(0, {src!r})
import torch, torch.distributed as dist
from mixlab.proxy_models.config import GPTConfig
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.ranks import clip_sharded_grad_norm_per_model, shard_model

dist.init_process_group("gloo")
whole = GPT(GPTConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, n_embd=32), seeds=(1, 2))
sharded = copy.deepcopy(whole)
shard_model(sharded)
x = torch.randint(0, 64, (2, 4, 17), generator=torch.Generator().manual_seed(0))  # every rank: one batch
for model in (whole, sharded):
    _, loss = model(x[..., :-1], x[..., 1:])
    (loss * torch.tensor([1.0, 30.0])).sum().backward()  # members of very different gradient norms
want, got = whole.clip_grad_norm_per_model(0.5), clip_sharded_grad_norm_per_model(sharded, 0.5)
torch.testing.assert_close(got, want)
for p, q in zip(sharded.parameters(), whole.parameters()):
    torch.testing.assert_close(p.grad.full_tensor(), q.grad)
split = sorted({{p.grad.placements[0].dim for p in sharded.parameters()}})
if dist.get_rank() == 0:
    print("split on", split)
dist.destroy_process_group()
"""


def test_sharded_gradients_are_clipped_per_member_as_in_one_process(tmp_path):
    """3 ranks: n_embd 32 and vocab 64 do not divide by 3, so some weights are split on M itself."""
    script = tmp_path / "clip.py"
    script.write_text(SHARDED_CLIPPING.format(src=SRC))
    done = torchrun([], tmp_path, script, ranks=3)
    assert done.returncode == 0, done.stderr
    assert "split on [0, 1, 2]" in done.stdout


def sharded_pretrain_args(tokens_dir: Path, mixture: Path, out: Path | str) -> list[str]:
    return ["pretrain", "--tokens", str(tokens_dir), "--mixture", str(mixture), "--out", str(out), "--fsdp",
            *cli_flags(FLAGS)]  # fmt: skip


def test_sharded_two_ranks_give_one_process_loss_curve_and_the_same_model_files(
    tokens_dir, mixture, tmp_path
):
    expected = one_process(tokens_dir, mixture, tmp_path / "one")
    done = torchrun(sharded_pretrain_args(tokens_dir, mixture, "two"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(SHARDED) == 1
    np.testing.assert_allclose(losses(tmp_path / "two"), expected, rtol=1e-5, atol=1e-6)
    one, two = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    assert one.keys() == two.keys() and "model.embed_tokens.weight" in two  # Hugging Face names
    for name in one:
        assert (one[name].dtype, one[name].shape) == (two[name].dtype, two[name].shape), name
        np.testing.assert_allclose(two[name].numpy(), one[name].numpy(), rtol=1e-4, atol=1e-6)
    manifest = json.loads((tmp_path / "two" / "_mixlab" / "manifest.json").read_text())
    assert manifest["stats"]["fsdp"] is True and manifest["stats"]["ranks"] == 2


def test_a_killed_sharded_run_resumes_on_one_rank_without_fsdp_to_the_same_final_loss(
    tokens_dir, mixture, tmp_path, checkpoints
):
    expected = one_process(tokens_dir, mixture, tmp_path / "one")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT_STEP_5.format(src=SRC))
    killed = torchrun(sharded_pretrain_args(tokens_dir, mixture, tmp_path / "two"), tmp_path, script)
    assert killed.returncode != 0 and not (tmp_path / "two").exists()
    checkpoints.kill_at = 3  # an unsharded run's checkpoint at step 3, to compare the files with
    with pytest.raises(checkpoints.Killed):
        one_process(tokens_dir, mixture, tmp_path / "ref")
    sharded, whole = (next((tmp_path / f".{d}.partial").rglob("checkpoint")) for d in ("two", "ref"))
    for name in ("model.safetensors", "optimizer.safetensors"):
        got, want = load_file(str(sharded / name)), load_file(str(whole / name))
        assert got.keys() == want.keys(), name
        for k in want:
            assert (got[k].dtype, got[k].shape) == (want[k].dtype, want[k].shape), k
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-4, atol=1e-6)
    resumed = one_process(tokens_dir, mixture, tmp_path / "two")  # the same out dir, one process, unsharded
    np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-6)


def test_a_killed_one_process_run_resumes_sharded_on_two_ranks_to_the_same_final_loss(
    tokens_dir, mixture, tmp_path, checkpoints
):
    expected = one_process(tokens_dir, mixture, tmp_path / "one")
    checkpoints.kill_at = 3  # a killed unsharded run, its checkpoint at step 3 kept for a resume
    with pytest.raises(checkpoints.Killed):
        one_process(tokens_dir, mixture, tmp_path / "two")
    resumed = torchrun(sharded_pretrain_args(tokens_dir, mixture, tmp_path / "two"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # each rank took its shard of the whole checkpoint
    assert "resuming from the checkpoint at step 3" in resumed.stderr
    np.testing.assert_allclose(losses(tmp_path / "two"), expected, rtol=1e-5, atol=1e-6)


def test_fsdp_in_one_process_trains_unsharded_and_says_so(tokens_dir, mixture, tmp_path, capsys):
    expected = one_process(tokens_dir, mixture, tmp_path / "plain")
    cfg = PretrainConfig(**FLAGS, fsdp=True)
    run_pretrain({"tokens": tokens_dir, "mixture": mixture}, cfg, tmp_path / "fsdp")
    assert "--fsdp: one process, nothing to shard over; training unsharded" in capsys.readouterr().err
    np.testing.assert_array_equal(losses(tmp_path / "fsdp"), expected)


def test_sharded_two_ranks_distill_to_one_process_loss_curve(tokens_dir, teacher, tmp_path):
    expected = one_process_distill(teacher, tokens_dir, tmp_path / "one")
    done = torchrun([*distill_args(teacher, tokens_dir, "two"), "--fsdp"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(SHARDED) == 1  # the student; the frozen teacher stays whole on every rank
    np.testing.assert_allclose(losses(tmp_path / "two"), expected, rtol=1e-5, atol=1e-6)
    for student in ("", "scratch"):
        one, two = (load_file(str(tmp_path / d / student / "model.safetensors")) for d in ("one", "two"))
        assert one.keys() == two.keys()
        for name in one:
            np.testing.assert_allclose(two[name].numpy(), one[name].numpy(), rtol=1e-4, atol=1e-6)
