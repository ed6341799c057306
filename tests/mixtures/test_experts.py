"""Data experts: the closed-form mixture feature, `swarm train --experts`, and fit/select using it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mixlab.errors import InputError
from mixlab.mixtures.experts import EXPERTS_DIR, LOGP_PREFIX, mixture_loss, read_logprobs
from mixlab.stage import has_manifest
from mixlab.tables import write_table

VOCAB = 48
DOMAINS = ["a", "b", "c"]


def brute_force(weights: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """-mean_x log sum_d w_d p_d(x), one mixture and one token at a time."""
    out = []
    for w in weights:
        per_token = [
            -np.log(sum(w[d] * np.exp(logp[d, x]) for d in range(len(w)))) for x in range(logp.shape[1])
        ]
        out.append(np.mean(per_token))
    return np.array(out)


def test_closed_form_matches_brute_force_on_a_tiny_example():
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(5), size=(3, 7))[..., 0])  # (E=3, N=7) log-probabilities
    weights = np.array([[1, 0, 0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(mixture_loss(weights, logp), brute_force(weights, logp), rtol=1e-12)
    # one-hot mixtures give back each expert's own loss
    np.testing.assert_allclose(mixture_loss(np.eye(3), logp), -logp.mean(axis=1), rtol=1e-12)


def test_vectorised_blocks_equal_the_loop_including_underflowing_tokens():
    rng = np.random.default_rng(1)
    logp = -rng.exponential(3.0, size=(4, 50))
    logp[1, :10] = -900.0  # expert 1 is hopeless on these tokens: a mixture of it alone underflows
    logp[2, :10] = -1.0
    weights = rng.dirichlet(np.ones(4) * 0.3, size=40)
    weights[0] = [0.0, 1.0, 0.0, 0.0]
    weights[1] = [0.0, 0.999999, 1e-6, 0.0]
    loop = brute_force_logsumexp(weights, logp)
    np.testing.assert_allclose(mixture_loss(weights, logp, block=7), loop, rtol=1e-10)
    np.testing.assert_allclose(mixture_loss(weights, logp), loop, rtol=1e-10)


def brute_force_logsumexp(weights: np.ndarray, logp: np.ndarray) -> np.ndarray:
    out = []
    for w in weights:
        with np.errstate(divide="ignore"):
            t = np.log(w)[:, None] + logp  # (E, N)
        m = t.max(axis=0)
        out.append(-(m + np.log(np.exp(t - m).sum(axis=0))).mean())
    return np.array(out)


# --- on real proxies ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, client, blend_tokens) -> tuple[Path, Path]:
    """A tiny sampled swarm trained with --experts: (tokens, swarm output)."""
    from mixlab.mixtures.config import SampleConfig
    from mixlab.mixtures.sample import run_mixtures_sample
    from mixlab.proxy_models.swarm import run_swarm_train

    root = tmp_path_factory.mktemp("experts")
    tokens = blend_tokens  # tests/mixtures/conftest.py: domains a, b, c and a 70/30 target
    run_mixtures_sample({"tokens": tokens}, SampleConfig(candidates=14), root / "cands")
    run_swarm_train({"candidates": root / "cands", "tokens": tokens}, SWARM, root / "swarm", client=client)
    return tokens, root / "swarm"


def swarm_config(**changes):
    from mixlab.proxy_models.config import SwarmConfig

    base = dict(
        n_layer=1, n_head=2, n_embd=16, seq_len=16, batch_size=4, steps=10, warmup_steps=2, eval_sequences=6
    )
    return SwarmConfig(**{**base, "threads": 1, "experts": True, **changes})


SWARM = swarm_config()


def test_swarm_experts_store_token_logprobs_whose_mean_is_each_experts_loss(swarm):
    tokens, out = swarm
    runs = pl.read_parquet(out / "runs.parquet")
    experts = runs.filter(pl.col("run_id").str.starts_with("expert."))
    assert sorted(experts["run_id"]) == [f"expert.{d}" for d in DOMAINS]
    assert runs.height == 14 + 3
    logprobs = read_logprobs(out)
    assert logprobs.experts == DOMAINS
    assert sorted(logprobs.logp) == [*DOMAINS, "target"]  # every validation domain, the target too
    assert not list((out / EXPERTS_DIR).glob("*.json"))  # a data folder: parquet only
    for e, d in enumerate(DOMAINS):
        row = experts.filter(pl.col("run_id") == f"expert.{d}").row(0, named=True)
        assert row[f"w.{d}"] == 1.0
        for v, values in logprobs.logp.items():
            assert values.shape == (3, 6 * 16)
            # the stored tokens are exactly the ones the run is scored on
            assert -values[e].mean() == pytest.approx(row[f"loss.{v}"], abs=1e-4)
    table = pl.read_parquet(out / EXPERTS_DIR / "a.parquet")
    assert table.columns == ["domain", "window", "position", *(LOGP_PREFIX + d for d in DOMAINS)]


def test_fit_and_select_use_the_expert_feature_when_the_swarm_has_experts(swarm, tmp_path):
    from mixlab.mixtures.config import FitConfig, SelectConfig
    from mixlab.mixtures.fit import load_fit, run_mixtures_fit
    from mixlab.mixtures.select import run_mixtures_select

    tokens, out = swarm
    run_mixtures_fit({"runs": out, "candidates": None}, FitConfig(target="target", folds=3), tmp_path / "fit")
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["features"]["columns"][-1] == "experts.target"
    assert (tmp_path / "fit" / EXPERTS_DIR / "target.parquet").is_file()
    fitted = load_fit(tmp_path / "fit", "linear")
    w = np.array([[0.7, 0.3, 0.0], [0.1, 0.1, 0.8]])
    x = fitted.design(w)  # the loaded fit rebuilds [w, the experts' target loss] from its folder alone
    assert x.shape == (2, 4) and np.allclose(x[:, :3], w) and np.all(np.isfinite(x[:, 3]))
    assert np.array_equal(fitted.predict(w), fitted.final.predict(x))
    assert fitted.predict_folds(w).shape == (3, 2)
    run_mixtures_select(
        {"fit": tmp_path / "fit", "tokens": None}, SelectConfig(samples=2_000, top_k=16), tmp_path / "sel"
    )
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    assert abs(sum(mixture["weights"].values()) - 1) < 1e-6
    assert np.isfinite(mixture["predicted_target_loss"])


def test_fit_without_experts_keeps_fit_json_as_before(swarm, tmp_path):
    from mixlab.mixtures.config import FitConfig
    from mixlab.mixtures.fit import run_mixtures_fit

    _, out = swarm
    runs = pl.read_parquet(out / "runs.parquet")
    write_table(runs.to_arrow(), tmp_path / "plain" / "runs.parquet")
    run_mixtures_fit(
        {"runs": tmp_path / "plain", "candidates": None},
        FitConfig(target="target", folds=3),
        tmp_path / "fit",
    )
    assert "features" not in json.loads((tmp_path / "fit" / "fit.json").read_text())


def test_experts_missing_for_a_domain_is_refused_with_nothing_written(swarm, tmp_path):
    from mixlab.mixtures.config import FitConfig
    from mixlab.mixtures.fit import run_mixtures_fit

    _, out = swarm
    broken = tmp_path / "swarm"
    shutil.copytree(out, broken)
    for f in (broken / EXPERTS_DIR).glob("*.parquet"):
        table = pl.read_parquet(f).drop(LOGP_PREFIX + "c")
        table.write_parquet(f)
    with pytest.raises(InputError, match=r"no expert for domain\(s\) \['c'\].*swarm train --experts"):
        run_mixtures_fit(
            {"runs": broken, "candidates": None}, FitConfig(target="target", folds=3), tmp_path / "fit"
        )
    assert not (tmp_path / "fit").exists() and not has_manifest(tmp_path / "fit")
    assert not list(tmp_path.glob(".fit*"))
