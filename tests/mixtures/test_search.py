"""Iterative search: a tiny real search end to end, resuming per round, and budgets too small to start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mixlab.errors import ConfigError
from mixlab.mixture import Mixture
from mixlab.mixtures.search import SearchConfig, run_search

VOCAB = 48
DOMAINS = ["a", "b", "c"]
SWARM = dict(
    n_layer=1,
    n_head=2,
    n_embd=16,
    seq_len=16,
    batch_size=4,
    steps=10,
    warmup_steps=2,
    eval_sequences=6,
    threads=1,
)
TINY = SearchConfig(
    budget=16, folds=3, min_rounds=3, pool=2_000, samples=2_000, top_k=16, target="target", swarm=SWARM
)


@pytest.fixture(scope="module")
def tokens(blend_tokens: Path) -> Path:
    """Three learnable domains and a validation-only target of 70% a + 30% b (tests/mixtures/conftest.py)."""
    return blend_tokens


class Interrupted(BaseException):
    """Stands in for a kill: not a MixlabError, so the partial output is kept."""


def counting_trainer(calls: list[str], stop_at: str | None = None):
    from mixlab.stages import _train_round

    def train(candidates, tokens, out_dir, settings, client):
        if Path(out_dir).parent.name == stop_at:
            raise Interrupted
        calls.append(Path(out_dir).parent.name)
        return _train_round(candidates, tokens, out_dir, settings, client)

    return train


def test_tiny_search_spends_its_budget_in_rounds_and_writes_a_mixture_pretrain_reads(
    tokens, client, tmp_path
):
    calls: list[str] = []
    out = tmp_path / "search"
    with pytest.raises(Interrupted):
        run_search({"tokens": tokens}, TINY, out, client, train=counting_trainer(calls, stop_at="round_03"))
    assert calls == ["round_01", "round_02"]
    manifest = run_search({"tokens": tokens}, TINY, out, client, train=counting_trainer(calls))
    assert calls[2] == "round_03"  # rounds 1 and 2 were not trained again after the interruption

    rounds = pl.read_parquet(out / "rounds.parquet")
    assert rounds["round"].to_list() == list(range(1, rounds.height + 1))
    assert (
        rounds["proxies"][-1] <= TINY.budget and rounds["proxies"][0] == 10
    )  # 5 sampled + 3 experts + 2 repeats
    assert manifest.counts["proxies"] == rounds["proxies"][-1]
    for k in range(1, rounds.height + 1):
        for part in ("candidates", "swarm", "runs", "fit"):
            assert (out / f"round_{k:02d}" / part).is_dir()
    # the diversity floor: every acquired mixture is far enough from all trained before it
    first = pl.read_parquet(out / "round_01" / "runs" / "runs.parquet")
    second = pl.read_parquet(out / "round_02" / "swarm" / "runs.parquet")
    w = [f"w.{d}" for d in DOMAINS]
    dist = np.abs(second.select(w).to_numpy()[:, None] - first.select(w).to_numpy()[None]).sum(axis=2)
    assert dist.min() >= TINY.min_distance - 1e-9
    assert json.loads((out / "round_02" / "fit" / "fit.json").read_text())["features"]  # experts used
    mixture = Mixture.read(out / "mixture.json", DOMAINS)
    assert abs(sum(mixture.weights.values()) - 1) < 1e-6
    record = json.loads((out / "mixture.json").read_text())
    assert record["method"]["search"]["proxies"] == rounds["proxies"][-1]
    assert record["weights"]["a"] + record["weights"]["b"] > 0.5  # the target is 70% a + 30% b

    again = run_search({"tokens": tokens}, TINY, out, client, train=counting_trainer(calls))
    assert again.skipped


def test_budget_smaller_than_one_round_is_refused_before_anything_is_written(tokens, tmp_path):
    cfg = SearchConfig(budget=8, folds=3, swarm=SWARM)
    with pytest.raises(ConfigError, match=r"--budget 8: smaller than one round.*at least 10 runs"):
        run_search({"tokens": tokens}, cfg, tmp_path / "search", train=counting_trainer([]))
    assert not list(tmp_path.iterdir())


def test_search_settings_the_search_owns_are_refused_in_swarm():
    with pytest.raises(ConfigError, match="set by the search itself"):
        SearchConfig(swarm={"experts": True})


def test_cli_search_help_names_the_budget(cli):
    result = cli("search", "--help")
    assert result.exit_code == 0, result.output
    assert "--budget" in result.output and "--min-distance" in result.output


def test_cli_search_with_a_budget_below_one_round_says_so_in_one_line(cli, tokens, tmp_path):
    result = cli("search", tokens, "--budget", 6, "--out", tmp_path / "out")
    assert result.exit_code != 0
    assert "--budget 6: smaller than one round" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
