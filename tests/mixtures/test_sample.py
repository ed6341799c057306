"""Candidate sampling: natural + uniform first, distinct Dirichlet draws, floor, repetition cap, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.errors import ConfigError, InputError
from mixlab.mixtures.config import SampleConfig
from mixlab.mixtures.sample import cap_weights, run_mixtures_sample
from mixlab.stage import run_stage
from mixlab.tables import write_table


def _token_counts(out: Path, train: dict[str, int]) -> Path:
    """A tokens directory holding only what sampling reads: token_counts.parquet and a manifest."""

    def body(stage):
        rows = [
            {"domain": d, "split": s, "documents": 10, "tokens": n if s == "train" else n // 10}
            for d, n in train.items()
            for s in ("train", "valid")
        ]
        rows.append({"domain": "target", "split": "valid", "documents": 5, "tokens": 5000})
        write_table(pa.Table.from_pylist(rows), stage.out / "token_counts.parquet")
        return {}, {"vocab_size": 100, "eos_id": 0}

    run_stage("tokenize", {"t": str(out)}, {}, out, body)
    return out


TRAIN = {"code": 2_000_000, "legal": 50_000, "prose": 6_000_000, "tabular": 500_000}


def _sample(tmp_path: Path, **kw) -> pl.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    tokens = _token_counts(tmp_path / "tokens", TRAIN)
    run_mixtures_sample({"tokens": tokens}, SampleConfig(**kw), tmp_path / "cands")
    return pl.read_parquet(tmp_path / "cands" / "candidates.parquet")


def test_candidates_start_with_natural_and_uniform_and_sum_to_one(tmp_path) -> None:
    c = _sample(tmp_path, candidates=40, proxy_tokens=100_000)
    w = c.select(pl.selectors.starts_with("w.")).to_numpy()
    assert c.height == 40 and c["kind"][:2].to_list() == ["natural", "uniform"]
    assert sorted(c.columns) == sorted(
        ["run_id", "seed", "kind", "spread", "w.code", "w.legal", "w.prose", "w.tabular"]
    )
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    total = sum(TRAIN.values())
    np.testing.assert_allclose(w[0], [TRAIN[d] / total for d in sorted(TRAIN)])
    np.testing.assert_allclose(w[1], 0.25)
    assert c["run_id"].n_unique() == 40 and c["seed"].n_unique() == 40


def test_small_weights_are_floored_and_candidates_are_distinct(tmp_path) -> None:
    c = _sample(tmp_path, candidates=40, min_weight=0.05, min_distance=0.1, proxy_tokens=100_000)
    w = c.filter(pl.col("kind") == "dirichlet").select(pl.selectors.starts_with("w.")).to_numpy()
    assert ((w == 0) | (w >= 0.05 - 1e-12)).all()
    assert (w == 0).any()  # sparse draws happen at small spreads
    all_w = c.select(pl.selectors.starts_with("w.")).to_numpy()
    d = np.abs(all_w[:, None, :] - all_w[None, :, :]).sum(-1) + np.eye(len(all_w)) * 9
    assert d[2:].min() >= 0.1


def test_no_domain_gets_more_weight_than_its_tokens_allow(tmp_path) -> None:
    # legal has 50k tokens: with 1M-token proxies and at most 2 epochs it can take at most 0.1.
    c = _sample(tmp_path, candidates=30, proxy_tokens=1_000_000, max_epochs=2.0)
    assert c["w.legal"].max() <= 0.1 + 1e-9
    assert c["w.legal"][1] == pytest.approx(0.1)  # uniform capped, the excess given to the others


def test_sampling_is_deterministic_given_the_seed(tmp_path) -> None:
    a = _sample(tmp_path / "a", candidates=20, proxy_tokens=100_000, seed=3)
    b = _sample(tmp_path / "b", candidates=20, proxy_tokens=100_000, seed=3)
    c = _sample(tmp_path / "c", candidates=20, proxy_tokens=100_000, seed=4)
    assert a.equals(b) and not a.equals(c)


def test_holdout_domains_are_never_mixed(tmp_path) -> None:
    c = _sample(tmp_path, candidates=5, proxy_tokens=100_000)
    assert "w.target" not in c.columns


def test_a_corpus_too_small_for_the_proxy_budget_is_refused(tmp_path) -> None:
    tokens = _token_counts(tmp_path / "tokens", {"a": 1000, "b": 1000})
    with pytest.raises(ConfigError, match="--max-epochs"):
        run_mixtures_sample({"tokens": tokens}, SampleConfig(proxy_tokens=1_000_000), tmp_path / "out")
    with pytest.raises(ConfigError, match="--domains"):
        run_mixtures_sample({"tokens": tokens}, SampleConfig(domains=("a", "zzz")), tmp_path / "out")
    with pytest.raises(InputError, match="token_counts"):
        run_mixtures_sample({"tokens": tmp_path}, SampleConfig(), tmp_path / "out2")


def test_cap_weights_moves_the_excess_to_domains_with_room() -> None:
    w = cap_weights(np.array([0.7, 0.3, 0.0]), np.array([0.5, 1.0, 1.0]))
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    assert cap_weights(np.array([0.5, 0.5]), np.array([0.3, 0.3])) is None


def test_cli_mixtures_sample(tmp_path) -> None:
    tokens = _token_counts(tmp_path / "tokens", TRAIN)
    result = CliRunner().invoke(
        main,
        [
            "mixtures",
            "sample",
            str(tokens),
            "--out",
            str(tmp_path / "c"),
            "--candidates",
            "8",
            "--proxy-tokens",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "candidates=8" in result.output


def test_proxy_tokens_zero_means_no_repetition_cap_and_the_manifest_says_so(tmp_path) -> None:
    # legal's 50k tokens would cap it at 0.1 of 1M-token proxies; without --proxy-tokens nothing is capped.
    tokens = _token_counts(tmp_path / "tokens", TRAIN)
    manifest = run_mixtures_sample(
        {"tokens": tokens}, SampleConfig(candidates=30, max_epochs=2.0), tmp_path / "c"
    )
    assert manifest.stage == "mixtures_sample"
    assert manifest.stats["proxy_tokens"] == 0 and manifest.stats["cap"] is None
    c = pl.read_parquet(tmp_path / "c" / "candidates.parquet")
    assert c["w.legal"][1] == pytest.approx(0.25)  # the uniform mixture, uncapped
    capped = run_mixtures_sample(
        {"tokens": tokens},
        SampleConfig(candidates=30, max_epochs=2.0, proxy_tokens=1_000_000),
        tmp_path / "d",
    )
    assert capped.stats["cap"]["legal"] == pytest.approx(0.1)


def test_the_cap_uses_the_proxy_tokens_given_not_a_default_swarm(tmp_path) -> None:
    """Same draws with and without a cap that binds nowhere: the budget changes only what it caps."""
    a = _sample(tmp_path / "a", candidates=20)
    b = _sample(tmp_path / "b", candidates=20, proxy_tokens=1_000)
    c = _sample(tmp_path / "c", candidates=20, proxy_tokens=10_000_000, max_epochs=2.0)
    assert a.equals(b)
    assert c["w.legal"].max() <= 50_000 * 2.0 / 10_000_000 + 1e-9


def test_candidate_seeds_derive_from_the_global_seed_and_the_run_id(tmp_path) -> None:
    import xxhash

    c = _sample(tmp_path, candidates=6, seed=7)
    expected = [xxhash.xxh3_64_intdigest(r.encode(), seed=7) & 0x7FFF_FFFF for r in c["run_id"]]
    assert c["seed"].to_list() == expected


def test_sampling_imports_nothing_from_proxy_models(tmp_path) -> None:
    import subprocess
    import sys
    import textwrap

    tokens = _token_counts(tmp_path / "tokens", TRAIN)
    code = textwrap.dedent(
        f"""
        import sys
        from mixlab.mixtures.config import SampleConfig
        from mixlab.mixtures.sample import run_mixtures_sample
        run_mixtures_sample({{"tokens": {str(tokens)!r}}}, SampleConfig(candidates=4), {str(tmp_path / "c")!r})
        loaded = [m for m in sys.modules if m.startswith("mixlab.proxy_models") or m in ("torch", "lightgbm")]
        assert not loaded, loaded
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
