"""--activation-checkpointing and --compile for pretrain and distill: the same loss curve as
without, recorded in the manifest, not part of the stage key (a killed run resumes with them
changed), and a --compile that cannot work here is refused in one line before any output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mixlab.errors import ConfigError
from mixlab.proxy_models.checkpoint import save_model
from mixlab.proxy_models.config import DistillConfig, GPTConfig, PretrainConfig
from mixlab.proxy_models.distill import run_distill
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.pretrain import run_pretrain

FLAGS = {
    "n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 16, "steps": 6, "batch_size": 4, "lr": 0.01,
    "warmup_steps": 1, "eval_every": 3, "eval_sequences": 4, "checkpoint_every": 3, "device": "cpu", "threads": 1,
}  # fmt: skip
DISTILL_FLAGS = {**{k: v for k, v in FLAGS.items() if k != "seq_len"}, "n_embd": 16, "compare_scratch": True}
TEACHER = GPTConfig(vocab_size=64, seq_len=16, n_layer=1, n_head=2, n_embd=32)


@pytest.fixture
def mixture(tmp_path: Path) -> Path:
    path = tmp_path / "mixture.json"
    path.write_text(json.dumps({"weights": {"alpha": 0.6, "beta": 0.4}}))
    return path


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    meta = {"stage": "pretrain", "mixture": {"alpha": 0.6, "beta": 0.4}, "eos_id": 0}
    save_model(tmp_path / "teacher", GPT(TEACHER, seeds=(7,)), 0, meta, None)
    return tmp_path / "teacher"


def curve(out: Path) -> np.ndarray:
    """Every loss of every evaluation, in (step, model) order."""
    table = pq.read_table(out / "metrics.parquet").sort_by([("step", "ascending"), ("model", "ascending")])
    return np.array([table.column(c).to_numpy() for c in table.column_names if "loss" in c or c == "target"])


def pretrain(tokens_dir: Path, mixture: Path, out: Path, **flags):
    return run_pretrain({"tokens": tokens_dir, "mixture": mixture}, PretrainConfig(**{**FLAGS, **flags}), out)


def distill(teacher: Path, tokens_dir: Path, out: Path, **flags):
    cfg = DistillConfig(**{**DISTILL_FLAGS, **flags})
    return run_distill({"teacher": teacher, "tokens": tokens_dir}, cfg, out)


def test_activation_checkpointing_gives_the_same_gradients_as_keeping_activations(monkeypatch) -> None:
    from mixlab.proxy_models import model as model_module

    calls = []
    checkpoint = model_module.checkpoint
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    cfg = GPTConfig(vocab_size=64, seq_len=16, n_layer=2, n_head=2, n_embd=32)
    idx = torch.randint(0, 64, (2, 3, 17), generator=torch.Generator().manual_seed(0))
    grads = []
    for recompute in (False, True):
        model = GPT(cfg, seeds=(1, 2))
        model.activation_checkpointing = recompute
        _, loss = model(idx[..., :-1], idx[..., 1:])
        loss.sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == cfg.n_layer  # every block recomputed, and only when asked
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-6, atol=1e-7)


def test_pretrain_with_activation_checkpointing_gives_the_same_loss_curve(tokens_dir, mixture, tmp_path):
    plain = pretrain(tokens_dir, mixture, tmp_path / "plain")
    recomputed = pretrain(tokens_dir, mixture, tmp_path / "recomputed", activation_checkpointing=True)
    np.testing.assert_allclose(
        curve(tmp_path / "recomputed"), curve(tmp_path / "plain"), rtol=1e-6, atol=1e-7
    )
    assert recomputed.stats["activation_checkpointing"] and not plain.stats["activation_checkpointing"]
    assert recomputed.stats["compile"] is False and recomputed.stats["ranks"] == 1


def test_distill_with_activation_checkpointing_gives_the_same_loss_curve(tokens_dir, teacher, tmp_path):
    distill(teacher, tokens_dir, tmp_path / "plain")
    manifest = distill(teacher, tokens_dir, tmp_path / "recomputed", activation_checkpointing=True)
    np.testing.assert_allclose(
        curve(tmp_path / "recomputed"), curve(tmp_path / "plain"), rtol=1e-6, atol=1e-7
    )
    assert manifest.stats["activation_checkpointing"] is True


def test_a_run_killed_for_memory_resumes_with_activation_checkpointing_turned_on(
    tokens_dir, mixture, tmp_path, capfd, checkpoints
):
    pretrain(tokens_dir, mixture, tmp_path / "straight")
    checkpoints.kill_at = 3
    with pytest.raises(checkpoints.Killed):
        pretrain(tokens_dir, mixture, tmp_path / "killed")
    capfd.readouterr()
    resumed = pretrain(tokens_dir, mixture, tmp_path / "killed", activation_checkpointing=True)
    assert "resuming from the checkpoint at step 3" in capfd.readouterr().err
    np.testing.assert_allclose(curve(tmp_path / "killed"), curve(tmp_path / "straight"), rtol=1e-6, atol=1e-7)
    # Not in the stage key: the finished output is up to date whichever way it is rerun.
    again = pretrain(tokens_dir, mixture, tmp_path / "killed")
    assert again.skipped and resumed.stats["activation_checkpointing"] is True


def test_the_flags_are_cli_and_yaml_options(tmp_path, cli) -> None:
    for command in ("pretrain", "distill"):
        help_text = cli(command, "--help").output
        assert "--compile / --no-compile" in help_text and "--activation-checkpointing" in help_text
    from mixlab.config import resolve_config

    (tmp_path / "p.yaml").write_text("pretrain:\n  compile: true\n  activation_checkpointing: yes\n")
    cfg = resolve_config(PretrainConfig, tmp_path / "p.yaml", section="pretrain")
    assert cfg.compile is True and cfg.activation_checkpointing is True
    assert PretrainConfig().compile is False and DistillConfig().activation_checkpointing is False


def test_compile_without_a_cpu_compiler_is_one_line_before_any_output(
    tokens_dir, mixture, tmp_path, monkeypatch
):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"--compile: torch.compile on CPU needs a C\+\+ compiler"):
        pretrain(tokens_dir, mixture, tmp_path / "out", compile=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


@pytest.mark.slow  # TorchInductor's C++ build of the blocks takes ~30-50 s on a small CPU
@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler",
)
def test_compiled_pretrain_matches_the_eager_loss_curve(tokens_dir, mixture, tmp_path):
    flags = {"steps": 2, "eval_every": 2, "n_layer": 1}
    pretrain(tokens_dir, mixture, tmp_path / "eager", **flags)
    compiled = pretrain(tokens_dir, mixture, tmp_path / "compiled", compile=True, **flags)
    np.testing.assert_allclose(curve(tmp_path / "compiled"), curve(tmp_path / "eager"), rtol=1e-4, atol=1e-5)
    assert compiled.stats["compile"] is True
