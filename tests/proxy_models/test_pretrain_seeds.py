"""`mixlab pretrain --seeds K`: every model K times, gaps judged against the spread of the seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixlab.errors import ConfigError
from mixlab.proxy_models.config import PretrainConfig
from mixlab.proxy_models.pretrain import run_pretrain

TINY = dict(
    n_layer=1, n_head=2, n_embd=32, seq_len=32, batch_size=4, steps=6, eval_every=3, eval_sequences=4,
    warmup_steps=2, lr=3e-3,
)  # fmt: skip


def test_baselines_with_seeds_report_each_seed_and_a_gap_with_its_standard_error(
    tokens_with_tokenizer: Path, tmp_path: Path
) -> None:
    mixture = tmp_path / "mixture.json"
    mixture.write_text(
        json.dumps({"weights": {"alpha": 0.5, "beta": 0.5, "gamma": 0.0}, "predicted_target_loss": 1.0})
    )
    cfg = PretrainConfig(**TINY, baselines=("natural", "uniform"), seeds=3)
    manifest = run_pretrain({"tokens": tokens_with_tokenizer, "mixture": mixture}, cfg, tmp_path / "pre")
    comp = json.loads((tmp_path / "pre" / "comparison.json").read_text())
    assert comp["seeds"] == 3
    assert {n: len(v) for n, v in comp["target_by_seed"].items()} == {"chosen": 3, "natural": 3, "uniform": 3}
    assert len(set(comp["target_by_seed"]["chosen"])) == 3  # the seeds differ
    mean = sum(comp["target_by_seed"]["chosen"]) / 3
    assert comp["models"]["chosen"]["target"] == pytest.approx(mean)  # the table shows the seed mean
    for name in ("natural", "uniform"):
        g = comp["seed_gaps"][name]
        assert g["gap"] == pytest.approx(comp["gap_vs_reference"][name])
        assert g["stderr"] > 0 and g["verdict"] in ("better", "worse", "within seed noise")
    assert manifest.counts["models"] == 3  # models, not members: one saved directory each
    assert (tmp_path / "pre" / "baselines" / "natural" / "model.safetensors").is_file()


def test_seeds_below_one_are_refused_with_the_flag() -> None:
    with pytest.raises(ConfigError, match="--seeds"):
        PretrainConfig(seeds=0)
