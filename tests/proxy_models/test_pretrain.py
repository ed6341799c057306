"""`mixlab pretrain`: outputs, baselines comparison, exact resume after a kill, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from mixlab.errors import ConfigError, InputError, MixlabError
from mixlab.mixture import Mixture
from mixlab.proxy_models.config import PretrainConfig, model_config
from mixlab.proxy_models.pretrain import run_pretrain
from mixlab.proxy_models.results import training_target
from mixlab.proxy_models.train import lr_at
from mixlab.tokenize.shards import TokenShards

TINY = dict(
    n_layer=1,
    n_head=2,
    n_embd=32,
    seq_len=32,
    batch_size=4,
    steps=8,
    eval_every=4,
    checkpoint_every=4,
    eval_sequences=4,
    warmup_steps=2,
    lr=3e-3,
)


def write_mixture(path: Path, weights: dict, target=None) -> Path:
    data = {"weights": weights, "predicted_target_loss": 1.0, "method": {"name": "topk"}}
    if target is not None:
        data["target"] = target
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def mixture(tmp_path: Path) -> Path:
    return write_mixture(
        tmp_path / "mixture.json",
        {"alpha": 0.5, "beta": 0.5, "gamma": 0.0},
        {"spec": "target", "terms": {"target": 1.0}},
    )


def test_pretrain_writes_model_metrics_and_baseline_comparison(
    tokens_with_tokenizer: Path, mixture: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pre"
    cfg = PretrainConfig(**TINY, baselines=("natural", "uniform"))
    manifest = run_pretrain({"tokens": tokens_with_tokenizer, "mixture": mixture}, cfg, out)

    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "mixlab" and config["model"]["n_embd"] == 32
    assert config["mixture"] == {"alpha": 0.5, "beta": 0.5, "gamma": 0.0}
    assert "model.embed_tokens.weight" in load_file(out / "model.safetensors")
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (
        tokens_with_tokenizer / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    for name in ("natural", "uniform"):
        assert (out / "baselines" / name / "model.safetensors").is_file()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))

    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    assert {r["step"] for r in metrics} == {4, 8} and {r["model"] for r in metrics} == {
        "chosen",
        "natural",
        "uniform",
    }
    row = metrics[-1]
    for column in (
        "tokens",
        "lr",
        "train_loss",
        "loss.alpha",
        "loss.beta",
        "loss.gamma",
        "loss.target",
        "target",
    ):
        assert np.isfinite(row[column])
    assert row["target"] == pytest.approx(
        row["loss.target"]
    )  # the mixture file's target: the 'target' domain
    assert max(r["tokens"] for r in metrics) == 8 * 4 * 32

    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["models"]) == {"chosen", "natural", "uniform"}
    assert comparison["models"]["uniform"]["weights"] == pytest.approx(
        {"alpha": 1 / 3, "beta": 1 / 3, "gamma": 1 / 3}
    )
    assert comparison["models"]["natural"]["weights"]["alpha"] == pytest.approx(6000 / 18000)
    table = pq.read_table(out / "comparison.parquet")
    assert table.num_rows == 3 and "loss.gamma" in table.column_names
    assert manifest.stats["target_loss"] == pytest.approx(comparison["models"]["chosen"]["target"])


def test_resume_after_a_kill_ends_where_the_uninterrupted_run_ends(
    tokens_dir: Path, mixture: Path, tmp_path: Path, checkpoints
) -> None:
    cfg = PretrainConfig(**{**TINY, "checkpoint_every": 2}, baselines=("uniform",))
    inputs = {"tokens": tokens_dir, "mixture": mixture}
    run_pretrain(inputs, cfg, tmp_path / "straight")

    checkpoints.kill_at = 6
    with pytest.raises(checkpoints.Killed):
        run_pretrain(inputs, cfg, tmp_path / "killed")
    assert not (tmp_path / "killed").exists() and (tmp_path / ".killed.partial").is_dir()
    checkpoints.steps.clear()
    run_pretrain(inputs, cfg, tmp_path / "killed")
    steps_after_resume = checkpoints.steps
    assert steps_after_resume == []  # it continued after step 6: no checkpoint before the end was rewritten

    straight = pq.read_table(tmp_path / "straight" / "metrics.parquet").to_pylist()
    resumed = pq.read_table(tmp_path / "killed" / "metrics.parquet").to_pylist()
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed):
        assert a.keys() == b.keys()
        assert a["model"] == b["model"]
        for k in set(a) - {"model"}:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-6), k
    w1, w2 = (
        load_file(tmp_path / "straight" / "model.safetensors"),
        load_file(tmp_path / "killed" / "model.safetensors"),
    )
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-6, atol=1e-6)


def test_mixture_naming_an_absent_domain_fails_and_leaves_the_old_output(
    tokens_dir: Path, tmp_path: Path, cli
) -> None:
    out = tmp_path / "pre"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    bad = write_mixture(tmp_path / "bad.json", {"alpha": 0.5, "code": 0.5})
    result = cli("pretrain", "--tokens", tokens_dir, "--mixture", bad, "--out", out, "--steps", 2)
    assert result.exit_code == 1
    assert "['code'] are not in" in result.output and "alpha" in result.output
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / ".pre.partial").exists()


def test_mixture_files_are_validated(tokens_dir: Path, tmp_path: Path) -> None:
    domains = TokenShards.open(tokens_dir).domains
    with pytest.raises(InputError, match="sum to"):
        Mixture.read(write_mixture(tmp_path / "m.json", {"alpha": 0.5, "beta": 0.2}), domains)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Mixture.read(tmp_path / "broken.json", domains)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"alpha": 0.25, "beta": 0.75}))
    mix = Mixture.read(plain, domains)
    assert mix.weights == {"alpha": 0.25, "beta": 0.75} and mix.target is None


def test_target_comes_from_the_flag_then_the_mixture_file_then_the_mean() -> None:
    scored = ["alpha", "beta", "gamma", "target"]
    mix = ["alpha", "beta", "gamma"]

    def resolve_target(spec, recorded, mix, scored):
        return training_target(spec, recorded, mix, scored, "mixture.json").terms

    assert resolve_target("alpha=0.5,beta=0.5", {"terms": {"target": 1.0}}, mix, scored) == {
        "alpha": 0.5,
        "beta": 0.5,
    }
    assert resolve_target(None, {"spec": "target", "terms": {"target": 1.0}}, mix, scored) == {"target": 1.0}
    assert resolve_target(None, "target", mix, scored) == {"target": 1.0}
    assert resolve_target(None, None, mix, scored) == pytest.approx(dict.fromkeys(mix, 1 / 3))
    with pytest.raises(InputError, match="no validation loss"):
        resolve_target(None, {"terms": {"news": 1.0}}, mix, scored)
    with pytest.raises(ConfigError, match="--target"):
        resolve_target("news", None, mix, scored)


def test_model_size_comes_from_defaults_then_the_model_file_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "model.yaml"
    file.write_text("n_layer: 3\nn_embd: 48\nn_head: 6\n")
    cfg = PretrainConfig(model=file, n_embd=96)
    model = model_config(cfg, cfg.model, {"n_layer": 4, "n_embd": 128, "seq_len": 64}, vocab_size=64)
    assert (model.n_layer, model.n_embd, model.n_head, model.seq_len, model.vocab_size) == (3, 96, 6, 64, 64)
    with pytest.raises(ConfigError, match="--n-embd"):
        model_config(PretrainConfig(n_embd=50, n_head=4), None, {}, vocab_size=64)
    (tmp_path / "vocab.json").write_text(json.dumps({"vocab_size": 1000}))
    with pytest.raises(ConfigError, match="vocab_size 1000 differs"):
        model_config(PretrainConfig(), tmp_path / "vocab.json", {}, vocab_size=64)


def test_schedules_warm_up_then_decay_to_the_floor() -> None:
    cos = PretrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    wsd = PretrainConfig(
        steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2
    )
    cos, wsd = cos.recipe, wsd.recipe
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(99, cos) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(99, wsd) == pytest.approx(0.1) and 0.1 < lr_at(90, wsd) < 1.0


def test_bad_flags_are_config_errors(tokens_dir: Path, cli) -> None:
    with pytest.raises(ConfigError, match="--baselines"):
        PretrainConfig(baselines=("best",))
    with pytest.raises(ConfigError, match="--grad-accum"):
        PretrainConfig(grad_accum=0)
    assert cli("pretrain", "--help").exit_code == 0
    assert issubclass(ConfigError, MixlabError)


def blend_tokens(out: Path, make_tokens) -> Path:
    """alpha and gamma are small, beta is big (so natural != uniform); the 'target' validation
    set is half alpha, half gamma: the best mixture for it is known to be alpha + gamma."""
    rng = np.random.default_rng(0)

    def stream(k: int, n: int) -> np.ndarray:  # domain k: its own band of 12 ids, step 2k+1, 15% noise
        band = 1 + 12 * k + np.arange(12)
        out = band[(np.arange(n) * (2 * k + 1)) % 12]
        noise = rng.random(n) < 0.15
        out[noise] = rng.integers(1, 64, int(noise.sum()))
        return out

    sizes = {"alpha": 3000, "beta": 12000, "gamma": 3000}
    streams = {d: {"train": stream(k, n), "valid": stream(k, 1200)} for k, (d, n) in enumerate(sizes.items())}
    streams["target"] = {
        "valid": np.concatenate([streams["alpha"]["valid"][:600], streams["gamma"]["valid"][:600]])
    }
    return make_tokens(out, streams)


@pytest.mark.slow
def test_chosen_mixture_beats_natural_and_uniform_by_more_than_seed_noise(
    tmp_path: Path, make_tokens
) -> None:
    tokens = blend_tokens(tmp_path / "tokens", make_tokens)
    mixture = write_mixture(
        tmp_path / "mixture.json",
        {"alpha": 0.5, "beta": 0.0, "gamma": 0.5},
        {"spec": "target", "terms": {"target": 1.0}},
    )
    recipe = dict(
        n_layer=1,
        n_embd=32,
        n_head=2,
        seq_len=32,
        steps=50,
        batch_size=8,
        eval_every=25,
        eval_sequences=16,
        warmup_steps=5,
        lr=3e-3,
    )
    inputs = {"tokens": tokens, "mixture": mixture}
    run_pretrain(inputs, PretrainConfig(**recipe, baselines=("natural", "uniform")), tmp_path / "seed0")
    other_seed = run_pretrain(inputs, PretrainConfig(**recipe, seed=1), tmp_path / "seed1")
    comparison = json.loads((tmp_path / "seed0" / "comparison.json").read_text())
    models = comparison["models"]
    noise = abs(models["chosen"]["target"] - other_seed.stats["target_loss"])
    assert comparison["best"] == "chosen"
    for baseline in ("natural", "uniform"):
        assert models[baseline]["target"] - models["chosen"]["target"] > max(noise, 0.02)


@pytest.mark.slow
def test_cli_resume_after_sigkill_matches_the_uninterrupted_run(
    tokens_dir: Path, mixture: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = [
        "--tokens",
        str(tokens_dir),
        "--mixture",
        str(mixture),
        "--n-layer",
        "1",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "30",
        "--eval-every",
        "10",
        "--checkpoint-every",
        "2",
        "--eval-sequences",
        "4",
        "--threads",
        "1",
    ]
    cmd = [sys.executable, "-m", "mixlab.cli", "pretrain", *flags]
    subprocess.run([*cmd, "--out", str(tmp_path / "straight")], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], stderr=subprocess.DEVNULL)
    state = tmp_path / ".killed.partial" / "_mixlab" / "work" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed").exists()
    done = subprocess.run([*cmd, "--out", str(tmp_path / "killed")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint at step" in done.stderr
    straight = json.loads((tmp_path / "straight" / "config.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert resumed["target_loss"] == pytest.approx(straight["target_loss"], rel=1e-6, abs=1e-6)


def test_an_interrupted_pretrain_resumes_by_itself_to_the_same_bytes(
    tokens_dir: Path, mixture: Path, tmp_path: Path, capfd, checkpoints
) -> None:
    cfg = PretrainConfig(**{**TINY, "checkpoint_every": 2}, baselines=("uniform",))
    inputs = {"tokens": tokens_dir, "mixture": mixture}
    run_pretrain(inputs, cfg, tmp_path / "straight")

    checkpoints.kill_at = 2  # killed right after its first checkpoint
    with pytest.raises(checkpoints.Killed):
        run_pretrain(inputs, cfg, tmp_path / "killed")
    capfd.readouterr()
    resumed = run_pretrain(inputs, cfg, tmp_path / "killed")  # no flag: a rerun is a resume
    assert "pretrain: resuming from the checkpoint at step 2" in capfd.readouterr().err
    straight = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert resumed.stats["target_loss"] == straight["target_loss"]
    for name in (
        "model.safetensors",
        "metrics.parquet",
        "config.json",
        "baselines/uniform/model.safetensors",
    ):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    columns = pq.read_schema(tmp_path / "killed" / "metrics.parquet").names
    assert columns[:5] == ["step", "model", "tokens", "lr", "train_loss"] and columns[-1] == "target"


def test_force_starts_an_interrupted_pretrain_over(
    tokens_dir: Path, mixture: Path, tmp_path: Path, capfd, checkpoints
) -> None:
    cfg = PretrainConfig(**{**TINY, "checkpoint_every": 2})
    inputs = {"tokens": tokens_dir, "mixture": mixture}
    checkpoints.kill_at = 4
    with pytest.raises(checkpoints.Killed):
        run_pretrain(inputs, cfg, tmp_path / "pre")
    capfd.readouterr()
    checkpoints.steps.clear()
    run_pretrain(inputs, cfg, tmp_path / "pre", force=True)
    assert "resuming from the checkpoint" not in capfd.readouterr().err
    assert checkpoints.steps == [2, 4, 6]  # every checkpoint written again: it started from step 0


def test_two_identical_runs_write_byte_identical_files(
    tokens_dir: Path, mixture: Path, tmp_path: Path
) -> None:
    cfg = PretrainConfig(**{**TINY, "steps": 4, "eval_every": 2})
    inputs = {"tokens": tokens_dir, "mixture": mixture}
    for name in ("a", "b"):
        run_pretrain(inputs, cfg, tmp_path / name)
    for name in ("model.safetensors", "metrics.parquet", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_weights_files_do_not_depend_on_hash_order(tmp_path: Path) -> None:
    from mixlab.proxy_models.checkpoint import save_weights
    from mixlab.proxy_models.config import GPTConfig
    from mixlab.proxy_models.model import GPT

    model = GPT(GPTConfig(vocab_size=64, seq_len=8, n_layer=1, n_head=2, n_embd=8), seeds=(0,))
    # safetensors writes its metadata map in per-instance hash order: many saves would differ.
    files = [tmp_path / f"{i}.safetensors" for i in range(8)]
    for file in files:
        save_weights(file, model, 0)
    assert len({file.read_bytes() for file in files}) == 1
