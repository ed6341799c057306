"""Tiny tokenize outputs written by the tests themselves, in the layout of mixlab.tokenize.shards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

VOCAB = 64
EOS = 0


def domain_tokens(k: int, n: int, seed: int) -> np.ndarray:
    """A learnable token stream with its own statistics: domain k mostly follows its own
    deterministic successor rule within its own band of the vocabulary."""
    rng = np.random.default_rng([seed, k])
    band = 1 + 12 * k + np.arange(12)  # 12 ids of its own
    start = int(rng.integers(12))
    out = band[(start + np.arange(n) * (2 * k + 1)) % 12]  # a fixed successor rule per domain
    noise = rng.random(n) < 0.15
    out[noise] = rng.integers(1, VOCAB, int(noise.sum()))
    return out.astype(np.int64)


@pytest.fixture
def tokens_dir(tmp_path: Path, make_tokens: Callable[..., Path]) -> Path:
    """Three learnable domains (train + valid) and a validation-only 'target' domain."""
    streams = {
        d: {"train": domain_tokens(k, 6000, 0), "valid": domain_tokens(k, 1500, 1)}
        for k, d in enumerate(["alpha", "beta", "gamma"])
    }
    streams["target"] = {"valid": np.concatenate([domain_tokens(0, 800, 2), domain_tokens(1, 800, 3)])}
    return make_tokens(tmp_path / "tokens", streams)


def write_tokenizer(out: Path, seed: int = 0, vocab_size: int = VOCAB) -> Path:
    """A real byte-pair tokenizer of exactly `vocab_size` ids (EOS = id 0) trained on seeded
    letter strings, saved the way mixlab saves tokenizers; `seed` changes its merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from mixlab.tokenize.tokenizer import save_tokenizer

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghij"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"], show_progress=False
    )
    tok.train_from_iterator([" ".join(words[i : i + 30]) for i in range(0, len(words), 30)], trainer)
    assert tok.get_vocab_size() == vocab_size and tok.token_to_id("<eos>") == EOS
    save_tokenizer(tok, out, {"eos": "<eos>", "pad": "<pad>"})
    return out


@pytest.fixture
def tokens_with_tokenizer(tokens_dir: Path) -> Path:
    """`tokens_dir` plus the tokenizer/ folder a real tokenize output carries."""
    from mixlab.tokenize.shards import TOKENIZER_DIR

    write_tokenizer(tokens_dir / TOKENIZER_DIR)
    return tokens_dir


@pytest.fixture
def make_tokenizer() -> Callable[..., Path]:
    return write_tokenizer


class Killed(Exception):
    """Stands in for a kill: raised right after a resume checkpoint is written."""


class Checkpoints:
    """The steps of the resume checkpoints written; `kill_at` makes the run die after that one."""

    Killed = Killed

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.kill_at: int | None = None


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch) -> Checkpoints:
    """Watches (and can interrupt) the training loop's checkpoints, as a kill -9 would."""
    from mixlab.proxy_models import train

    seen = Checkpoints()
    save = train.save_training_state

    def save_and_watch(out, model, optimizer, state) -> None:
        save(out, model, optimizer, state)
        seen.steps.append(state["step"])
        if seen.kill_at is not None and state["step"] >= seen.kill_at:
            seen.kill_at = None
            raise Killed

    monkeypatch.setattr(train, "save_training_state", save_and_watch)
    return seen
