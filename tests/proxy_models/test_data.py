"""The mixture loader: deterministic per run, domains drawn by weight, tokens counted; fixed eval windows."""

from __future__ import annotations

import numpy as np
import pytest

from mixlab.errors import InputError
from mixlab.proxy_models.data import MixtureLoader, eval_windows


@pytest.fixture
def banded(tmp_path, make_tokens):
    """Domain k's tokens are exactly the ids 10k .. 10k+9, so every window reveals its domain."""
    rng = np.random.default_rng(0)
    streams = {
        d: {"train": 10 * k + rng.integers(0, 10, 4000), "valid": 10 * k + rng.integers(0, 10, 900)}
        for k, d in enumerate(["a", "b", "c"])
    }
    streams["tiny"] = {"train": np.arange(5), "valid": np.arange(5)}
    return make_tokens(tmp_path / "tokens", streams, vocab_size=40)


def test_batches_depend_only_on_seed_and_run_id(banded) -> None:
    w = {"a": 0.5, "b": 0.5, "c": 0.0}
    one, two = (MixtureLoader(banded, w, 16, 4, seed=7, run_id="r1") for _ in range(2))
    other = MixtureLoader(banded, w, 16, 4, seed=7, run_id="r2")
    first = [one.next_batch() for _ in range(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack([two.next_batch() for _ in range(3)]))
    assert not np.array_equal(first[0], other.next_batch())


def test_domains_are_drawn_by_weight_and_tokens_counted_per_domain(banded) -> None:
    loader = MixtureLoader(banded, {"a": 0.7, "b": 0.3, "c": 0.0}, 16, 64, seed=0, run_id="r")
    batches = np.concatenate([loader.next_batch() for _ in range(20)])  # (1280, 17)
    assert batches.shape == (1280, 17)
    domain_of_row = batches // 10
    assert (domain_of_row == domain_of_row[:, :1]).all()  # a window never crosses domains
    share_a = (domain_of_row[:, 0] == 0).mean()
    assert 0.65 < share_a < 0.75 and (domain_of_row[:, 0] != 2).all()
    assert loader.tokens["a"] + loader.tokens["b"] == 1280 * 16
    assert loader.tokens["a"] == (domain_of_row[:, 0] == 0).sum() * 16
    assert loader.epochs()["a"] == pytest.approx(loader.tokens["a"] / 4000)


def test_windows_are_contiguous_slices_of_the_train_stream(tmp_path, make_tokens) -> None:
    make_tokens(
        tmp_path / "t", {"x": {"train": np.arange(500) % 60, "valid": np.arange(100) % 60}}, vocab_size=64
    )
    batch = MixtureLoader(tmp_path / "t", {"x": 1.0}, 8, 16, seed=3, run_id="r").next_batch()
    np.testing.assert_array_equal(np.diff(batch, axis=1) % 60, np.ones((16, 8)))


def test_a_domain_shorter_than_one_sequence_is_refused(banded) -> None:
    with pytest.raises(InputError, match="'tiny' has 5 train tokens"):
        MixtureLoader(banded, {"a": 0.5, "tiny": 0.5}, 16, 4, seed=0, run_id="r")


def test_eval_windows_are_fixed_and_spread_over_the_valid_split(banded) -> None:
    w1, w2 = eval_windows(banded, "b", 16, 10), eval_windows(banded, "b", 16, 10)
    np.testing.assert_array_equal(w1, w2)
    assert w1.shape == (10, 17) and ((w1 // 10) == 1).all()
    assert eval_windows(banded, "b", 16, 10_000).shape[0] == (900 - 1) // 16  # non-overlapping when it can
