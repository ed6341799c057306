"""End to end on real proxies: sample -> swarm -> fit -> select --verify, on a target from a known blend."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from mixlab.stage import run_stage
from mixlab.tables import shard_name, write_table
from mixlab.tokenize.shards import TOKEN_COUNTS, token_dtype

VOCAB = 48


def stream(k: int, n: int, seed: int) -> np.ndarray:
    """Domain k: its own band of 14 ids following its own successor rule, 10% noise within the band."""
    rng = np.random.default_rng([seed, k])
    band = 1 + 14 * k + np.arange(14)
    out = band[(int(rng.integers(14)) + np.arange(n) * (2 * k + 3)) % 14]
    noise = rng.random(n) < 0.1
    out[noise] = band[rng.integers(0, 14, int(noise.sum()))]
    return out


def write_tokens(out, streams):
    def body(stage):
        rows = []
        dtype = token_dtype(VOCAB)
        for domain, splits in streams.items():
            for split, tokens in splits.items():
                docs = [tokens[i : i + 100].astype(dtype) for i in range(0, len(tokens), 100)]
                write_table(
                    pa.table(
                        {
                            "id": [f"{domain}-{split}-{i}" for i in range(len(docs))],
                            "domain": [domain] * len(docs),
                            "tokens": pa.array(
                                [d.tolist() for d in docs], pa.list_(pa.from_numpy_dtype(dtype))
                            ),
                        }
                    ),
                    stage.out / domain / split / shard_name(0),
                )
                rows.append({"domain": domain, "split": split, "documents": len(docs), "tokens": len(tokens)})
        write_table(pa.Table.from_pylist(rows), stage.out / TOKEN_COUNTS)
        return {"tokens": sum(r["tokens"] for r in rows)}, {"vocab_size": VOCAB, "eos_id": 0}

    run_stage("tokenize", {"test": str(out)}, {}, out, body)
    return out


@pytest.mark.slow
def test_blend_target_chosen_mixture_beats_natural_and_uniform_when_retrained(tmp_path):
    from mixlab.mixtures.config import FitConfig, SampleConfig, SelectConfig
    from mixlab.mixtures.fit import run_mixtures_fit
    from mixlab.mixtures.sample import run_mixtures_sample
    from mixlab.mixtures.select import run_mixtures_select
    from mixlab.proxy_models import verify  # the module the verify helper moves there
    from mixlab.proxy_models.config import SwarmConfig
    from mixlab.proxy_models.swarm import run_swarm_train

    sizes = {"a": 40_000, "b": 40_000, "c": 120_000}  # the natural mixture leans on c, which the target lacks
    streams = {
        d: {"train": stream(k, n, 0), "valid": stream(k, 4_000, 1)} for k, (d, n) in enumerate(sizes.items())
    }
    target = np.concatenate([stream(0, 2_800, 2), stream(1, 1_200, 2)])  # 70% a, 30% b
    streams["target"] = {"valid": target}
    tokens = write_tokens(tmp_path / "tokens", streams)

    run_mixtures_sample(
        {"tokens": tokens}, SampleConfig(candidates=32, proxy_tokens=20_000), tmp_path / "cands"
    )
    swarm_cfg = SwarmConfig(
        n_embd=32,
        n_head=2,
        seq_len=32,
        batch_size=8,
        steps=50,
        warmup_steps=5,
        eval_sequences=16,
        pack_size=16,
    )
    run_swarm_train(
        {"candidates": tmp_path / "cands" / "candidates.parquet", "tokens": tokens},
        swarm_cfg,
        tmp_path / "swarm",
    )
    fit_manifest = run_mixtures_fit(
        {"runs": tmp_path / "swarm", "candidates": tmp_path / "cands"},
        FitConfig(target="target"),
        tmp_path / "fit",
    )
    assert fit_manifest.stats["held_out"]["lightgbm"]["spearman"] > 0.7
    run_mixtures_select(
        {"fit": tmp_path / "fit", "tokens": tokens},
        SelectConfig(samples=100_000, verify=True, verify_scale=1.5, verify_seeds=1),
        tmp_path / "sel",
        verify=verify.verify_mixtures,
    )
    mixture = json.loads((tmp_path / "sel" / "mixture.json").read_text())
    w = mixture["weights"]
    assert w["a"] + w["b"] >= 0.8
    assert mixture["predicted_target_loss"] < mixture["natural"]["predicted_target_loss"]
    assert mixture["predicted_target_loss"] < mixture["uniform"]["predicted_target_loss"]
    check = mixture["verification"]
    assert check["proxy"]["n_embd"] == 48 and check["proxy"]["steps"] == 75
    assert check["chosen_beats_baselines"], check
