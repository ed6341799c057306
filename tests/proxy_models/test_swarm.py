"""Swarm training: runs.parquet, validation-only domains, repeats, packing independence, bad input, CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.errors import ConfigError, InputError
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import run_swarm_train, train_mixtures
from mixlab.tables import write_table

FAST = SwarmConfig(
    n_layer=1,
    n_head=2,
    n_embd=32,
    seq_len=16,
    batch_size=4,
    steps=12,
    warmup_steps=2,
    eval_sequences=8,
    pack_size=3,
    threads=1,
)


def _candidates(path: Path, rows: list[dict]) -> Path:
    table = pa.Table.from_pylist(
        [
            {"run_id": f"r{i:05d}", "seed": i, **{f"w.{d}": w for d, w in row.items()}}
            for i, row in enumerate(rows)
        ]
    )
    write_table(table, path)
    return path


MIXES = [
    {"alpha": 1.0, "beta": 0.0, "gamma": 0.0},
    {"alpha": 0.2, "beta": 0.5, "gamma": 0.3},
    {"alpha": 0.0, "beta": 0.0, "gamma": 1.0},
    {"alpha": 0.4, "beta": 0.4, "gamma": 0.2},
]


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


def test_swarm_writes_one_row_per_run_with_losses_on_every_validation_domain(
    tmp_path, tokens_dir, client
) -> None:
    cands = _candidates(tmp_path / "c.parquet", MIXES)
    cfg = dataclasses.replace(FAST, repeats=3, repeat_mixtures=2)
    manifest = run_swarm_train(
        {"candidates": cands, "tokens": tokens_dir}, cfg, tmp_path / "swarm", client=client
    )
    runs = pl.read_parquet(tmp_path / "swarm" / "runs.parquet")
    assert runs.height == 4 + 2 * 2  # 4 candidates + 2 extra seeds for each of the first 2
    for col in (
        "run_id",
        "seed",
        "w.alpha",
        "loss.alpha",
        "loss.gamma",
        "tokens",
        "params",
        "params_nonembedding",
        "wall_s",
        "device",
    ):
        assert col in runs.columns
    assert "loss.target" in runs.columns and "w.target" not in runs.columns  # scored, never trained on
    assert runs["tokens"].to_list() == [cfg.train_tokens] * runs.height
    assert (runs["tokens.alpha"] + runs["tokens.beta"] + runs["tokens.gamma"] == runs["tokens"]).all()
    only_gamma = runs.filter(pl.col("run_id") == "r00002")
    assert only_gamma["tokens.alpha"][0] == 0
    assert runs["params_nonembedding"][0] < runs["params"][0]
    assert runs.filter(pl.col("repeat_of") == "r00000").height == 3
    floor = pl.read_parquet(tmp_path / "swarm" / "noise_floor.parquet")
    assert set(floor["domain"]) == {"alpha", "beta", "gamma", "target"} and (floor["loss_std"] > 0).all()
    assert manifest.stats["noise_floor"]["alpha"] == pytest.approx(
        floor.filter(pl.col("domain") == "alpha")["loss_std"][0]
    )
    # A rerun with the same config and inputs does nothing.
    assert run_swarm_train(
        {"candidates": cands, "tokens": tokens_dir}, cfg, tmp_path / "swarm", client=client
    ).skipped


def test_a_run_gives_the_same_losses_whatever_pack_it_lands_in(tokens_dir) -> None:
    alone = train_mixtures(
        tokens_dir, MIXES[1:2], dataclasses.replace(FAST, pack_size=1), seeds=[5], run_ids=["b"]
    )
    packed = train_mixtures(tokens_dir, MIXES[:3], FAST, seeds=[9, 5, 4], run_ids=["a", "b", "c"])
    a = pl.from_arrow(alone).select(pl.selectors.starts_with("loss."))
    p = pl.from_arrow(packed).select(pl.selectors.starts_with("loss."))
    np.testing.assert_allclose(a.row(0), p.row(1), rtol=2e-5)


def test_domain_loss_falls_when_the_domain_is_trained_on(tokens_dir) -> None:
    runs = train_mixtures(tokens_dir, [MIXES[0], MIXES[2]], FAST)
    alpha = runs.column("loss.alpha").to_pylist()
    gamma = runs.column("loss.gamma").to_pylist()
    assert alpha[0] < alpha[1] and gamma[1] < gamma[0]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"alpha": 0.5, "beta": 0.2, "gamma": 0.2}], "do not sum to 1"),
        ([{"alpha": 0.5, "omega": 0.5}], r"domain\(s\) \['omega'\]"),
        ([{"alpha": 1.2, "beta": -0.2, "gamma": 0.0}], "negative"),
    ],
)
def test_bad_candidates_are_refused_before_training(tmp_path, tokens_dir, rows, message) -> None:
    cands = _candidates(tmp_path / "c.parquet", rows)
    with pytest.raises(InputError, match=message):
        run_swarm_train({"candidates": cands, "tokens": tokens_dir}, FAST, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_domain_with_too_few_tokens_is_refused_before_training(tmp_path, make_tokens) -> None:
    rng = np.random.default_rng(0)
    tokens = make_tokens(
        tmp_path / "t",
        {
            "big": {"train": rng.integers(0, 60, 3000), "valid": rng.integers(0, 60, 500)},
            "small": {"train": rng.integers(0, 60, 10), "valid": rng.integers(0, 60, 500)},
        },
    )
    cands = _candidates(tmp_path / "c.parquet", [{"big": 0.5, "small": 0.5}])
    with pytest.raises(InputError, match=r"fewer train tokens than one sequence.*'small': 10"):
        run_swarm_train({"candidates": cands, "tokens": tokens}, FAST, tmp_path / "out")


def test_model_sizes_that_do_not_divide_are_refused_with_the_flag_name() -> None:
    with pytest.raises(ConfigError, match=r"--n-embd \(30\) must be divisible by --n-head \(4\)"):
        SwarmConfig(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="--pack-size"):
        SwarmConfig(pack_size=0)


def test_cli_swarm_train_and_mixtures_sample(tmp_path, tokens_dir, client) -> None:
    runner = CliRunner()
    for args in (["swarm", "train", "--help"], ["mixtures", "sample", "--help"], ["mixtures", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert "--repeats" in runner.invoke(main, ["swarm", "train", "--help"]).output
    sample = runner.invoke(
        main,
        [
            "mixtures",
            "sample",
            str(tokens_dir),
            "--out",
            str(tmp_path / "cands"),
            "--candidates",
            "5",
            "--proxy-tokens",
            "2000",
        ],
    )
    assert sample.exit_code == 0, sample.output
    result = runner.invoke(
        main,
        [
            "swarm",
            "train",
            str(tmp_path / "cands"),
            str(tokens_dir),
            "--out",
            str(tmp_path / "swarm"),
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--n-embd",
            "32",
            "--seq-len",
            "16",
            "--batch-size",
            "4",
            "--steps",
            "5",
            "--warmup-steps",
            "1",
            "--eval-sequences",
            "4",
            "--scheduler-address",
            client.scheduler.address,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "runs=5" in result.output
    runs = pl.read_parquet(tmp_path / "swarm" / "runs.parquet")
    assert runs["run_id"].to_list() == [f"r{i:05d}" for i in range(5)]
    bad = runner.invoke(
        main,
        [
            "swarm",
            "train",
            str(tmp_path / "cands"),
            str(tokens_dir),
            "--out",
            str(tmp_path / "x"),
            "--n-embd",
            "30",
        ],
    )
    assert bad.exit_code == 1 and "--n-embd (30) must be divisible" in bad.output


@pytest.mark.gpu
def test_swarm_trains_on_cuda_with_bf16_autocast(tokens_dir) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    runs = train_mixtures(tokens_dir, MIXES[:2], dataclasses.replace(FAST, device="cuda"))
    assert runs.column("device")[0].as_py() != "cpu"
    assert np.isfinite(runs.column("loss.alpha").to_numpy()).all()


@pytest.mark.parametrize("damage", ["no rows", "truncated"])
def test_empty_or_truncated_candidates_are_one_worded_line(tmp_path, tokens_dir, damage) -> None:
    cands = _candidates(tmp_path / "c.parquet", MIXES)
    if damage == "no rows":
        import pyarrow.parquet as pq

        write_table(pq.read_table(cands).slice(0, 0), cands)
    else:
        data = cands.read_bytes()
        cands.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        run_swarm_train({"candidates": cands, "tokens": tokens_dir}, FAST, tmp_path / "out")
    message = str(info.value)
    assert str(cands) in message and "\n" not in message
    assert ("has no rows" if damage == "no rows" else "not a readable parquet file") in message
    assert not (tmp_path / "out").exists()


def test_a_swarm_stopped_between_packs_trains_only_the_other_packs(
    tmp_path, tokens_dir, client, monkeypatch, capfd
) -> None:
    from mixlab.stage import TaskMarkers

    cands = _candidates(tmp_path / "c.parquet", MIXES[:3])
    cfg = dataclasses.replace(FAST, pack_size=1, steps=4)
    inputs = {"candidates": cands, "tokens": tokens_dir}
    mark = TaskMarkers.mark

    def mark_then_stop(self, task, result):  # the run dies right after its first pack is marked
        mark(self, task, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(TaskMarkers, "mark", mark_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_swarm_train(inputs, cfg, tmp_path / "swarm", client=client)
    monkeypatch.setattr(TaskMarkers, "mark", mark)
    capfd.readouterr()
    run_swarm_train(inputs, cfg, tmp_path / "swarm", client=client)
    err = capfd.readouterr().err
    assert "swarm: 1 run(s) already finished; training the other 2" in err
    assert (
        "(1/2)" in err and "(2/2)" in err and "(3/" not in err
    )  # finished packs counted once each, in order
    run_swarm_train(inputs, cfg, tmp_path / "straight", client=client)
    resumed, straight = (pl.read_parquet(tmp_path / d / "runs.parquet") for d in ("swarm", "straight"))
    assert resumed["run_id"].to_list() == straight["run_id"].to_list() == ["r00000", "r00001", "r00002"]
    losses = [c for c in straight.columns if c.startswith("loss.")]
    assert resumed.select(losses).equals(straight.select(losses))


def test_the_model_stages_import_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mixlab.proxy_models.swarm, mixlab.proxy_models.pretrain, mixlab.proxy_models.distill, "
        "mixlab.proxy_models.verify, mixlab.proxy_models.export, mixlab.proxy_models.config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seeds_derive_from_the_global_seed_as_before() -> None:
    import xxhash

    from mixlab.proxy_models.data import run_init_seed
    from mixlab.proxy_models.swarm import RunSpec, with_repeats

    assert run_init_seed(7, "r00003") == xxhash.xxh3_64_intdigest(b"init/r00003", seed=7) & 0x7FFF_FFFF_FFFF
    repeat = with_repeats([RunSpec("r0", 11, {"a": 1.0}, "r0")], 3, 1)[2]
    assert (repeat.run_id, repeat.seed) == (
        "r0~s2",
        xxhash.xxh3_64_intdigest(b"repeat/2", seed=11) & 0x7FFF_FFFF,
    )
