"""Runs tables from a known loss law: regression problems whose answer is known in advance.

For tests, benchmarks and checking a fit: each domain's validation loss falls with the log of
the weight it (and, through a transfer matrix, similar domains) gets, plus seed noise; a
``loss.target`` column is the loss on a validation set drawn from a known blend of domains,
so the best mixture for that target puts its weight on the blend. Writes nothing itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from mixlab.mixtures.config import SampleConfig
from mixlab.mixtures.select import simulate_mixtures

EPS = 1e-3


def transfer_matrix(domains: Sequence[str], similarity: float = 0.15) -> np.ndarray:
    """(D, D): how much training on domain j helps domain d; the prose-like domains help each other."""
    prose_like = {"prose", "legal", "news"}
    t = np.eye(len(domains))
    for i, a in enumerate(domains):
        for j, b in enumerate(domains):
            if i != j and a in prose_like and b in prose_like:
                t[i, j] = similarity
    return t


def true_losses(weights: np.ndarray, domains: Sequence[str]) -> np.ndarray:
    """(n, D) noise-free per-domain validation loss of each mixture."""
    d = len(domains)
    a = np.linspace(3.0, 4.0, d)  # (D,) loss at a tiny share
    b = np.linspace(0.12, 0.25, d)  # (D,) how fast it falls with the log of the effective share
    effective = weights @ transfer_matrix(domains).T  # (n, D)
    return a - b * np.log(effective + EPS)


def blend_loss(losses: np.ndarray, domains: Sequence[str], blend: Mapping[str, float]) -> np.ndarray:
    """The loss on a validation set drawn from `blend` is the blend of the domains' losses."""
    coef = np.array([blend.get(d, 0.0) for d in domains])
    return losses @ coef


def known_runs(
    n: int,
    domains: Sequence[str] = ("prose", "code", "tabular", "legal"),
    *,
    prior: Sequence[float] | None = None,
    target_blend: Mapping[str, float] | None = None,
    noise: float = 0.01,
    repeats: int = 1,
    repeat_mixtures: int = 4,
    seed: int = 0,
) -> pa.Table:
    """A runs table (run_id, seed, repeat_of, w.<domain>, loss.<domain>, loss.target) of `n` mixtures.

    Mixtures are drawn the way `mixtures sample` draws candidates (Dirichlet around the prior,
    sparse to near-prior); the first `repeat_mixtures` are trained `repeats` times in all, with
    fresh seed noise each time, so the noise floor is measurable.
    """
    rng = np.random.default_rng([seed, 0xC0FFEE])
    d = len(domains)
    p = np.asarray(prior if prior is not None else np.linspace(2.0, 1.0, d), dtype=np.float64)
    p = p / p.sum()
    weights = simulate_mixtures(p, n, SampleConfig().sampler(), rng)
    run_ids = [f"r{i:05d}" for i in range(n)]
    repeat_of = list(run_ids)
    extra = [i for i in range(min(repeat_mixtures, n)) for _ in range(repeats - 1)]
    weights = np.vstack([weights, weights[extra]])
    run_ids += [f"r{i:05d}-s{k}" for k, i in enumerate(extra)]
    repeat_of += [f"r{i:05d}" for i in extra]
    losses = true_losses(weights, domains) + noise * rng.standard_normal(weights.shape)
    columns: dict[str, pa.Array] = {
        "run_id": pa.array(run_ids, pa.string()),
        "seed": pa.array(np.arange(len(run_ids)), pa.int64()),
        "repeat_of": pa.array(repeat_of, pa.string()),
    }
    for j, dom in enumerate(domains):
        columns[f"w.{dom}"] = pa.array(weights[:, j], pa.float64())
    for j, dom in enumerate(domains):
        columns[f"loss.{dom}"] = pa.array(losses[:, j], pa.float64())
    if target_blend:
        clean = blend_loss(true_losses(weights, domains), domains, target_blend)
        columns["loss.target"] = pa.array(clean + noise * rng.standard_normal(len(clean)), pa.float64())
    return pa.table(columns)
