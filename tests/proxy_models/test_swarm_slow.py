"""Slower swarm checks: loss responds to mixture weights; a killed swarm resumes skipping finished runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from mixlab.mixtures.config import SampleConfig
from mixlab.mixtures.sample import run_mixtures_sample
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import run_swarm_train, train_mixtures

TINY = SwarmConfig(
    n_layer=1,
    n_head=2,
    n_embd=32,
    seq_len=16,
    batch_size=8,
    steps=40,
    warmup_steps=4,
    eval_sequences=16,
    pack_size=16,
    threads=1,
)


def test_each_domain_loss_falls_as_its_weight_rises_across_the_swarm(tmp_path, tokens_dir) -> None:
    run_mixtures_sample(
        {"tokens": tokens_dir},
        SampleConfig(candidates=16, proxy_tokens=TINY.train_tokens, max_epochs=100),
        tmp_path / "cands",
    )
    cands = pl.read_parquet(tmp_path / "cands" / "candidates.parquet")
    domains = [c[2:] for c in cands.columns if c.startswith("w.")]
    mixes = [dict(zip(domains, row)) for row in cands.select([f"w.{d}" for d in domains]).rows()]
    runs = pl.from_arrow(
        train_mixtures(
            tokens_dir, mixes, TINY, seeds=cands["seed"].to_list(), run_ids=cands["run_id"].to_list()
        )
    )
    for d in domains:
        rho = runs.select(pl.corr(f"w.{d}", f"loss.{d}", method="spearman")).item()
        assert rho < -0.6, (d, rho)


@pytest.mark.slow
def test_each_domain_loss_falls_as_its_weight_rises_on_the_synthetic_corpus(tmp_path) -> None:
    from mixlab.synth import SynthConfig, run_synth
    from mixlab.tokenize.config import TokenizeConfig, TokenizerTrainConfig
    from mixlab.tokenize.corpus import run_tokenize
    from mixlab.tokenize.train import run_tokenizer_train

    run_synth(
        {},
        SynthConfig(
            docs_per_domain=300,
            doc_words=120,
            near_dup_clusters=5,
            exact_dups=2,
            target_blend={"prose": 0.7, "code": 0.3},
            target_docs=100,
        ),
        tmp_path / "synth",
    )
    run_tokenizer_train(
        {"documents": [tmp_path / "synth" / "documents"]},
        TokenizerTrainConfig(vocab_size=512, sample_bytes=2_000_000),
        tmp_path / "tok",
    )
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        run_tokenize(
            {
                "documents": [tmp_path / "synth" / "documents"],
                "tokenizer": tmp_path / "tok",
                "targets": [tmp_path / "synth" / "target"],
            },
            TokenizeConfig(),
            tmp_path / "tokens",
            client=c,
        )
        cfg = SwarmConfig(
            n_layer=2,
            n_head=4,
            n_embd=64,
            seq_len=64,
            batch_size=8,
            steps=80,
            warmup_steps=8,
            eval_sequences=16,
            pack_size=24,
            threads=2,
        )
        run_mixtures_sample(
            {"tokens": tmp_path / "tokens"},
            SampleConfig(candidates=24, proxy_tokens=cfg.train_tokens),
            tmp_path / "cands",
        )
        manifest = run_swarm_train(
            {"candidates": tmp_path / "cands" / "candidates.parquet", "tokens": tmp_path / "tokens"},
            cfg,
            tmp_path / "swarm",
            client=c,
        )
    runs = pl.read_parquet(tmp_path / "swarm" / "runs.parquet")
    assert "loss.target" in runs.columns and runs.height == 24
    for d in manifest.stats["domains"]:
        rho = runs.select(pl.corr(f"w.{d}", f"loss.{d}", method="spearman")).item()
        assert rho < -0.5, (d, rho)


@pytest.mark.slow
def test_a_killed_swarm_resumes_and_skips_finished_runs(tmp_path, tokens_dir, capfd) -> None:
    run_mixtures_sample(
        {"tokens": tokens_dir},
        SampleConfig(candidates=6, proxy_tokens=10_000, max_epochs=100),
        tmp_path / "cands",
    )
    cands = tmp_path / "cands" / "candidates.parquet"
    flags = [
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--steps",
        "60",
        "--warmup-steps",
        "4",
        "--eval-sequences",
        "8",
        "--pack-size",
        "1",
        "--threads",
        "1",
    ]
    out = tmp_path / "swarm"
    markers = (
        tmp_path / ".swarm.partial" / "_mixlab" / "work" / "markers" / "packs"
    )  # one marker per finished pack
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixlab.cli",
            "swarm",
            "train",
            str(cands),
            str(tokens_dir),
            "--out",
            str(out),
            *flags,
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while len(list(markers.glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = len(list(markers.glob("*.json")))
    assert 2 <= finished < 6 and not out.exists()

    cfg = SwarmConfig(
        n_layer=1,
        n_head=2,
        n_embd=32,
        seq_len=16,
        batch_size=8,
        steps=60,
        warmup_steps=4,
        eval_sequences=8,
        pack_size=1,
        threads=1,
    )
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as lc,
        Client(lc) as c,
    ):
        run_swarm_train({"candidates": cands, "tokens": tokens_dir}, cfg, out, client=c)
    assert f"{finished} run(s) already finished" in capfd.readouterr().err
    runs = pl.read_parquet(out / "runs.parquet")
    c = pl.read_parquet(cands)
    fresh = pl.from_arrow(
        train_mixtures(
            tokens_dir,
            [
                dict(zip(["alpha", "beta", "gamma"], r))
                for r in c.select("w.alpha", "w.beta", "w.gamma").rows()
            ],
            cfg,
            seeds=c["seed"].to_list(),
            run_ids=c["run_id"].to_list(),
        )
    )
    np.testing.assert_allclose(runs["loss.beta"].to_numpy(), fresh["loss.beta"].to_numpy(), rtol=1e-5)
