"""The second-scale check's arithmetic: the larger proxy, and gaps judged against seed noise."""

from __future__ import annotations

import numpy as np

from mixlab.proxy_models.verify import compare, larger_proxy


def test_larger_proxy_grows_width_and_steps_and_lowers_the_rate_with_the_width():
    cfg = larger_proxy({"n_embd": 64, "n_head": 4, "steps": 60, "lr": 3e-3, "warmup_steps": 6}, 2.0)
    assert (cfg.n_embd, cfg.steps, cfg.warmup_steps) == (128, 120, 6)
    assert np.isclose(cfg.lr, 1.5e-3)
    assert cfg.n_embd % (2 * cfg.n_head) == 0


def test_a_gap_beyond_twice_its_standard_error_is_better_or_worse():
    chosen = np.array([4.50, 4.52, 4.51])
    assert compare(chosen, np.array([4.70, 4.71, 4.69]))["verdict"] == "better"
    assert compare(chosen, np.array([4.30, 4.31, 4.29]))["verdict"] == "worse"


def test_a_gap_smaller_than_the_seed_noise_is_not_called_a_win():
    chosen = np.array([4.58, 4.74, 4.70, 4.82])  # the quickstart's chosen mixture at lr 3e-3: noisy
    result = compare(chosen, np.array([4.70, 4.71, 4.76, 4.72]))
    assert result["gap"] > 0 and result["verdict"] == "within seed noise"
    assert result["stderr"] > result["gap"] / 2


def test_one_seed_says_there_is_no_noise_estimate():
    result = compare(np.array([4.5]), np.array([4.6]))
    assert result["stderr"] is None and result["verdict"].startswith("better (one seed")
