"""Shared by the data-expert and search tests: three learnable domains and a blended target."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

BLEND_VOCAB = 48
BLEND_DOMAINS = ["a", "b", "c"]


def stream(k: int, n: int, seed: int) -> np.ndarray:
    """Domain k's tokens: a fixed successor rule within its own band of 14 ids, 10% noise in the band."""
    rng = np.random.default_rng([seed, k])
    band = 1 + 14 * k + np.arange(14)
    out = band[(int(rng.integers(14)) + np.arange(n) * (2 * k + 3)) % 14]
    noise = rng.random(n) < 0.1
    out[noise] = band[rng.integers(0, 14, int(noise.sum()))]
    return out


@pytest.fixture(scope="module")
def blend_tokens(tmp_path_factory: pytest.TempPathFactory, make_tokens: Callable[..., Path]) -> Path:
    """A tokenize output: domains a, b, c (train + valid) and a validation-only target of 70% a + 30% b."""
    streams = {
        d: {"train": stream(k, 8_000, 0), "valid": stream(k, 1_200, 1)} for k, d in enumerate(BLEND_DOMAINS)
    }
    streams["target"] = {"valid": np.concatenate([stream(0, 700, 2), stream(1, 300, 2)])}
    return make_tokens(tmp_path_factory.mktemp("blend") / "tokens", streams, vocab_size=BLEND_VOCAB)


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster of one worker, shared by a module's tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c
