"""Mixture batches for proxy training and the fixed evaluation windows they are scored on.

Reads a tokenize output directory (``<domain>/<split>/`` shards via
``mixlab.tokenize.shards.domain_stream``). Each run draws its own sequences from the train
split, domain chosen per sequence by the run's mixture weights; everything random derives
from the run's seed and run id (`mixlab.stage.derive_rng`), so a run's batches do not depend
on the pack, slot or worker it lands in. Validation windows are fixed positions of the valid split, the same for all runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mixlab.errors import InputError
from mixlab.stage import derive_rng, derive_seed
from mixlab.tokenize.shards import TokenShards, domain_stream


def run_init_seed(seed: int, run_id: str) -> int:
    """The model initialisation seed of a run (a torch seed, 47 bits), from (seed, run id) only."""
    return derive_seed(seed, "init", run_id, bits=47)


def check_train_tokens(shards: TokenShards, mixtures: Iterable[Mapping[str, float]], seq_len: int) -> None:
    """Every domain a mixture trains on needs at least one train sequence; fails before any training."""
    train = shards.tokens("train")
    used = {d for weights in mixtures for d, w in weights.items() if w > 0}
    short = {d: train.get(d, 0) for d in sorted(used) if train.get(d, 0) < seq_len + 1}
    if short:
        raise InputError(
            f"{shards.path}: domain(s) with fewer train tokens than one sequence of --seq-len {seq_len} + 1: "
            f"{short}; lower --seq-len or give those domains zero weight"
        )


def windows(stream: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows stream[s : s + length] for every start s, as int64 (n, length); one vectorised gather."""
    return np.asarray(stream[starts[:, None] + np.arange(length)], dtype=np.int64)


class MixtureLoader:
    """Batches (B, T+1) of one run's mixture: per sequence a domain, then a random window.

    ``tokens`` counts the tokens trained on per domain (T per sequence: the predicted
    positions), so ``epochs()`` tells how often each domain's train split was repeated.
    """

    def __init__(
        self,
        tokens_dir: Path | str,
        weights: Mapping[str, float],
        seq_len: int,
        batch_size: int,
        seed: int,
        run_id: str,
    ):
        self.domains = sorted(d for d, w in weights.items() if w > 0)
        if not self.domains:
            raise InputError(f"run {run_id}: mixture has no domain with positive weight")
        p = np.array([weights[d] for d in self.domains], dtype=np.float64)
        self.p = p / p.sum()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.streams = {d: domain_stream(tokens_dir, d, "train") for d in self.domains}
        for d, s in self.streams.items():
            if len(s) < seq_len + 1:
                raise InputError(
                    f"{tokens_dir}: domain {d!r} has {len(s)} train tokens, fewer than one sequence "
                    f"of --seq-len {seq_len} + 1; give it zero weight or lower --seq-len"
                )
        self.rng = derive_rng(seed, "data", run_id)
        self.tokens = dict.fromkeys(self.domains, 0)

    def next_batch(self) -> np.ndarray:
        """(B, T+1) int64 token windows: inputs are [:, :-1], targets [:, 1:]."""
        return self.gather(*self.draw())

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The next batch's plan, (domain index (B,), window start (B,)), and its tokens counted.

        Only the plan consumes randomness, so a reader that needs some rows of a batch (a rank, a
        data-loader worker) draws every batch's plan and gathers its own rows only.
        """
        T, B = self.seq_len, self.batch_size
        choice = self.rng.choice(len(self.domains), size=B, p=self.p)  # (B,) domain per sequence
        starts = np.zeros(B, dtype=np.int64)
        for k, d in enumerate(self.domains):  # a loop over domains (few), not sequences
            rows = np.flatnonzero(choice == k)
            if rows.size == 0:
                continue
            starts[rows] = self.rng.integers(0, len(self.streams[d]) - T, size=rows.size)
            self.tokens[d] += int(rows.size) * T
        return choice, starts

    def gather(self, choice: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """(b, T+1) int64 windows of a plan (or of some of its rows)."""
        T = self.seq_len
        out = np.empty((len(choice), T + 1), dtype=np.int64)
        for k, d in enumerate(self.domains):
            rows = np.flatnonzero(choice == k)
            if rows.size:
                out[rows] = windows(self.streams[d], starts[rows], T + 1)
        return out

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's train split so far (above 1 means repetition)."""
        return {d: self.tokens[d] / max(1, len(self.streams[d])) for d in self.domains}


def eval_windows(tokens_dir: Path | str, domain: str, seq_len: int, n: int) -> np.ndarray:
    """(k, T+1) fixed windows spread evenly over a domain's valid split (k <= n; same for every run)."""
    stream = domain_stream(tokens_dir, domain, "valid")
    if len(stream) < seq_len + 1:
        raise InputError(
            f"{tokens_dir}: domain {domain!r} has {len(stream)} validation tokens, fewer than one "
            f"sequence of --seq-len {seq_len} + 1; lower --seq-len or give the domain a larger validation split"
        )
    last = len(stream) - (seq_len + 1)
    # Non-overlapping windows when the split is long enough, evenly spread either way.
    k = min(n, max(1, (len(stream) - 1) // seq_len))
    starts = np.unique(np.linspace(0, last, num=k).round().astype(np.int64))
    return windows(stream, starts, seq_len + 1)
