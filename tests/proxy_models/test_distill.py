"""`mixlab distill`: chunked KD loss, student vs scratch, tokenizer and checkpoint checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from mixlab.errors import InputError
from mixlab.proxy_models.checkpoint import save_model
from mixlab.proxy_models.config import DistillConfig, GPTConfig
from mixlab.proxy_models.distill import run_distill
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.train import distill_loss

VOCAB = 64  # the vocabulary of the tokens_dir fixture
TEACHER = GPTConfig(vocab_size=VOCAB, seq_len=32, n_layer=2, n_head=2, n_embd=32)
TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=16,
    batch_size=4,
    steps=6,
    eval_every=3,
    checkpoint_every=3,
    eval_sequences=4,
    warmup_steps=1,
    logit_chunk=8,
)


def make_teacher(out: Path, tokens_dir: Path, cfg: GPTConfig = TEACHER) -> Path:
    """A real mixlab model directory (randomly initialised weights) trained 'on' alpha+beta."""
    meta = {
        "stage": "pretrain",
        "mixture": {"alpha": 0.5, "beta": 0.5},
        "target": {"target": 1.0},
        "eos_id": 0,
    }
    tokenizer = tokens_dir / "tokenizer"
    save_model(out, GPT(cfg, seeds=(7,)), 0, meta, tokenizer if tokenizer.is_dir() else None)
    return out


def test_chunked_loss_equals_the_full_logits_loss_and_gradients() -> None:
    torch.manual_seed(0)
    teacher = GPT(TEACHER, seeds=(1,))
    student = GPT(GPTConfig(vocab_size=VOCAB, seq_len=32, n_layer=1, n_head=2, n_embd=16), seeds=(2, 2))
    idx = torch.randint(0, VOCAB, (1, 3, 33)).expand(2, -1, -1)
    x, y = idx[..., :-1], idx[..., 1:]
    alpha, tau = torch.tensor([0.7, 0.0]), 2.0

    # Reference: whole-batch logits, one backward.
    s_logits = student(x)[0]  # (2, 3, 32, V)
    with torch.no_grad():
        t_logits = teacher(x[:1])[0]
    ce = F.cross_entropy(s_logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none").view(2, -1).mean(1)
    p_t = F.softmax(t_logits / tau, -1)
    kl = (
        (p_t * (F.log_softmax(t_logits / tau, -1) - F.log_softmax(s_logits / tau, -1)))
        .sum(-1)
        .view(2, -1)
        .mean(1)
    )
    reference = alpha * tau**2 * kl + (1 - alpha) * ce
    reference.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()

    h = student.hidden_states(x)
    h_cut = h.detach().requires_grad_()
    with torch.no_grad():
        h_t = teacher.hidden_states(x[:1])
    loss, ce_chunked = distill_loss(student, teacher, h_cut, h_t, y, alpha, tau, chunk=5, backward_scale=1.0)
    h.backward(h_cut.grad)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ce_chunked, ce.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss[1], ce_chunked[1])  # alpha 0: plain cross-entropy
    for n, p in student.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6)


def test_distill_writes_the_student_and_compares_it_with_scratch(
    tokens_with_tokenizer: Path, tmp_path: Path
) -> None:
    teacher = make_teacher(tmp_path / "teacher", tokens_with_tokenizer)
    out = tmp_path / "student"
    cfg = DistillConfig(**TINY, compare_scratch=True)
    manifest = run_distill({"teacher": teacher, "tokens": tokens_with_tokenizer}, cfg, out)

    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "distill" and config["alpha"] == cfg.alpha and config["model"]["n_embd"] == 16
    assert config["mixture"] == {"alpha": 0.5, "beta": 0.5}  # the teacher's mixture by default
    assert config["model"]["seq_len"] == TEACHER.seq_len
    assert (out / "scratch" / "model.safetensors").is_file() and (
        out / "tokenizer" / "tokenizer.json"
    ).is_file()
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["models"]) == {"distilled", "scratch", "teacher"}
    assert comparison["target"]["terms"] == {"target": 1.0}
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    assert {(r["step"], r["model"]) for r in metrics} == {
        (s, m) for s in (3, 6) for m in ("distilled", "scratch")
    }
    assert manifest.stats["warnings"] == []


def test_student_larger_than_teacher_warns(tokens_dir: Path, tmp_path: Path) -> None:
    small = GPTConfig(vocab_size=VOCAB, seq_len=32, n_layer=1, n_head=2, n_embd=8)
    teacher = make_teacher(tmp_path / "teacher", tokens_dir, small)
    cfg = DistillConfig(**{**TINY, "steps": 2, "eval_every": 2, "n_embd": 32})
    manifest = run_distill({"teacher": teacher, "tokens": tokens_dir}, cfg, tmp_path / "student")
    assert "larger than the teacher" in manifest.stats["warnings"][0]


def test_teacher_with_another_tokenizer_is_refused(
    tokens_with_tokenizer: Path, tmp_path: Path, make_tokenizer
) -> None:
    teacher = make_teacher(tmp_path / "teacher", tokens_with_tokenizer)
    shutil.rmtree(teacher / "tokenizer")
    make_tokenizer(teacher / "tokenizer", seed=1)  # same vocabulary size, other merges
    with pytest.raises(InputError, match="must share the tokenizer"):
        run_distill(
            {"teacher": teacher, "tokens": tokens_with_tokenizer}, DistillConfig(**TINY), tmp_path / "s"
        )
    assert not (tmp_path / "s").exists() and not (tmp_path / ".s.partial").exists()


def test_not_a_checkpoint_and_corrupt_checkpoints_are_clear_errors(
    tokens_dir: Path, tmp_path: Path, cli
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("distill", "--teacher", empty, "--tokens", tokens_dir, "--out", tmp_path / "s")
    assert result.exit_code == 1 and "not a mixlab checkpoint" in result.output

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(InputError, match="neither a mixlab checkpoint"):
        run_distill({"teacher": other, "tokens": tokens_dir}, DistillConfig(**TINY), tmp_path / "s")

    teacher = make_teacher(tmp_path / "teacher", tokens_dir)
    data = (teacher / "model.safetensors").read_bytes()
    (teacher / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt weights"):
        run_distill({"teacher": teacher, "tokens": tokens_dir}, DistillConfig(**TINY), tmp_path / "s2")
    assert not (tmp_path / "s2").exists() and not (tmp_path / ".s2.partial").exists()


@pytest.mark.slow
def test_distilled_student_beats_the_same_student_from_scratch(tmp_path: Path, make_tokens) -> None:
    import numpy as np

    from mixlab.proxy_models.config import PretrainConfig
    from mixlab.proxy_models.pretrain import run_pretrain

    rng = np.random.default_rng(0)

    def stream(k: int, n: int) -> np.ndarray:  # domain k: its own band of 12 ids, step 2k+1, 15% noise
        band = 1 + 12 * k + np.arange(12)
        out = band[(np.arange(n) * (2 * k + 1)) % 12]
        noise = rng.random(n) < 0.15
        out[noise] = rng.integers(1, VOCAB, int(noise.sum()))
        return out

    streams = {
        d: {"train": stream(k, 4000), "valid": stream(k, 1200)} for k, d in enumerate(["alpha", "gamma"])
    }
    tokens = make_tokens(tmp_path / "tokens", streams)
    (tmp_path / "mixture.json").write_text(json.dumps({"alpha": 0.5, "gamma": 0.5}))
    teacher_cfg = PretrainConfig(
        n_layer=1,
        n_embd=32,
        n_head=2,
        seq_len=32,
        steps=50,
        batch_size=8,
        eval_every=50,
        eval_sequences=16,
        warmup_steps=5,
        lr=3e-3,
    )
    run_pretrain({"tokens": tokens, "mixture": tmp_path / "mixture.json"}, teacher_cfg, tmp_path / "teacher")
    cfg = DistillConfig(
        n_layer=1,
        n_embd=16,
        n_head=2,
        steps=40,
        batch_size=8,
        eval_every=20,
        eval_sequences=16,
        warmup_steps=4,
        lr=3e-3,
        compare_scratch=True,
    )
    manifest = run_distill({"teacher": tmp_path / "teacher", "tokens": tokens}, cfg, tmp_path / "student")
    losses = manifest.stats["target_loss"]
    assert losses["distilled"] < losses["scratch"]
    comparison = json.loads((tmp_path / "student" / "comparison.json").read_text())
    assert comparison["gap_vs_reference"]["scratch"] > 0


def test_a_teacher_written_before_the_training_core_refactor_still_loads(
    tokens_dir: Path, tmp_path: Path
) -> None:
    """The old layout: two safetensors metadata keys, the target as bare {name: coefficient}."""
    from safetensors.torch import save_file

    from mixlab.proxy_models.checkpoint import load_model

    old = tmp_path / "old_teacher"
    old.mkdir()
    model = GPT(TEACHER, seeds=(7,))
    weights = {k: v.float() for k, v in model.member_state_dict(0).items()}
    save_file(weights, str(old / "model.safetensors"), metadata={"format": "pt", "producer": "mixlab"})
    config = {
        "format": "mixlab",
        "model": {k: v for k, v in TEACHER.to_dict().items()},
        "stage": "pretrain",
        "mixture": {"alpha": 0.5, "beta": 0.5},
        "target": {"target": 1.0},
        "eos_id": 0,
    }
    (old / "config.json").write_text(json.dumps(config))
    loaded, meta = load_model(old)
    for name, value in model.member_state_dict(0).items():
        torch.testing.assert_close(loaded.member_state_dict(0)[name], value)
    manifest = run_distill(
        {"teacher": old, "tokens": tokens_dir}, DistillConfig(**TINY), tmp_path / "student"
    )
    assert manifest.stats["target"]["terms"] == {"target": 1.0}


def test_an_interrupted_distill_resumes_by_itself_to_the_same_bytes(
    tokens_dir: Path, tmp_path: Path, capfd, checkpoints
) -> None:
    teacher = make_teacher(tmp_path / "teacher", tokens_dir)
    cfg = DistillConfig(**{**TINY, "checkpoint_every": 2}, compare_scratch=True)
    inputs = {"teacher": teacher, "tokens": tokens_dir}
    run_distill(inputs, cfg, tmp_path / "straight")
    checkpoints.kill_at = 2
    with pytest.raises(checkpoints.Killed):
        run_distill(inputs, cfg, tmp_path / "killed")
    capfd.readouterr()
    run_distill(inputs, cfg, tmp_path / "killed")
    assert "distill: resuming from the checkpoint at step 2" in capfd.readouterr().err
    for name in ("model.safetensors", "scratch/model.safetensors", "metrics.parquet", "comparison.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
