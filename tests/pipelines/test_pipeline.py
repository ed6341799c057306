"""The pipeline runner: shipped YAMLs load, bad YAML fails before any work, runs resume and skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.errors import ConfigError, MixlabError
from mixlab.pipelines.run import STAGE_NAMES, plan_pipeline, run_pipeline, shipped_pipelines

TINY = """
seed: 3
synth: {domains: [prose, code, legal], docs_per_domain: 60, doc_words: 80, near_dup_clusters: 6,
        exact_dups: 2, target_blend: {prose: 0.7, code: 0.3}, target_docs: 30}
dedup: {num_perm: 64}
tokenizer_train: {vocab_size: 300, sample_bytes: 200000}
tokenize: {valid_fraction: 0.2}
mixtures_sample: {candidates: 12}
swarm_train: {n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, batch_size: 4, steps: 8, warmup_steps: 2,
              eval_sequences: 4, repeats: 2, repeat_mixtures: 2}
mixtures_fit: {target: target, folds: 3}
mixtures_select: {samples: 2000, top_k: 16}
pretrain: {n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, batch_size: 4, steps: 10, warmup_steps: 2,
           eval_every: 5, eval_sequences: 4, baselines: [natural, uniform]}
distill: {n_layer: 1, n_embd: 16, n_head: 2, seq_len: 32, batch_size: 4, steps: 6, warmup_steps: 1,
          eval_every: 3, eval_sequences: 4, compare_scratch: true}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", shipped_pipelines(), ids=lambda p: p.stem)
def test_every_shipped_pipeline_resolves_every_stage_config(path: Path, tmp_path: Path) -> None:
    plan = plan_pipeline(path, tmp_path)
    assert [s.name for s, _, _ in plan.stages] == list(STAGE_NAMES)
    assert all(out.parent == tmp_path for _, _, out in plan.stages)


def test_quickstart_is_shipped() -> None:
    assert "quickstart" in [p.stem for p in shipped_pipelines()]


def test_unknown_section_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown section.*dedupe.*stages: synth"):
        plan_pipeline(write(tmp_path, "dedupe: {threshold: 0.8}\n"), tmp_path / "run")


def test_unknown_key_in_a_stage_section_names_the_stage_and_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[dedup\].*'thresh'.*valid keys"):
        plan_pipeline(write(tmp_path, "dedup: {thresh: 0.8}\n"), tmp_path / "run")


def test_bad_value_fails_before_any_stage_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError):
        run_pipeline(write(tmp_path, "tokenizer_train: {vocab_size: 10}\n"), run)
    assert not run.exists()


def test_global_seed_reaches_every_stage_that_has_one(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, "seed: 7\ndedup: {seed: 1}\n"), tmp_path / "run")
    seeds = {s.name: getattr(cfg, "seed", None) for s, cfg, _ in plan.stages}
    assert seeds["dedup"] == 1  # a section's own seed wins
    assert seeds["synth"] == 7 and seeds["mixtures_sample"] == 7 and seeds["pretrain"] == 7


def test_inputs_replace_the_synthetic_corpus(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, "inputs: [corpus]\n"), tmp_path / "run")
    assert plan.inputs == [tmp_path / "corpus"]
    assert "synth" not in [s.name for s, _, _ in plan.stages]


def test_from_a_stage_whose_predecessors_are_unfinished_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MixlabError, match="earlier stage synth has no finished output"):
        run_pipeline(write(tmp_path, TINY), tmp_path / "run", from_stage="dedup", until_stage="dedup")


def test_dry_run_prints_the_plan_and_configs_without_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["pipeline", "run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "run"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "[swarm_train]" in result.output and '"steps": 8' in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_until_stage_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "pipeline",
            "run",
            str(write(tmp_path, TINY)),
            "--out",
            str(tmp_path / "r"),
            "--until",
            "pretraining",
        ],
    )
    assert result.exit_code != 0
    assert "unknown stage 'pretraining'" in result.output and "Traceback" not in result.output


def test_a_partial_pipeline_resumes_and_skips_finished_stages(tmp_path: Path) -> None:
    yaml = write(tmp_path, TINY)
    run = tmp_path / "run"
    first = run_pipeline(yaml, run, until_stage="tokenize")
    assert set(first) == {"synth", "ingest", "dedup", "tokenizer_train", "tokenize"}
    before = (run / "04_tokenize" / "manifest.json").read_text()
    again = run_pipeline(yaml, run, until_stage="tokenize")
    assert all(m.skipped for m in again.values())
    assert (run / "04_tokenize" / "manifest.json").read_text() == before
    # the target set is tokenized as a validation-only domain
    counts = json.loads((run / "04_tokenize" / "manifest.json").read_text())["stats"]["per_domain"]
    assert counts["target"]["valid"]["documents"] > 0
    assert counts["target"].get("train", {}).get("documents", 0) == 0


@pytest.mark.slow
def test_whole_tiny_pipeline_ends_in_a_report_and_reruns_as_a_no_op(tmp_path: Path) -> None:
    yaml = write(tmp_path, TINY)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["pipeline", "run", str(yaml), "--out", str(run)])
    assert result.exit_code == 0, result.output
    report = run / "11_report"
    html = (report / "report.html").read_text()
    md = (report / "report.md").read_text()
    assert str(report / "report.html") in result.output
    for heading in (
        "Answer",
        "Dedup",
        "Tokenizer and tokens",
        "Proxy swarm",
        "Regression",
        "Chosen mixture",
        "Pretraining",
        "Distillation",
    ):
        assert f"<h2>{heading}" in html and f"## {heading}" in md
    assert html.count("data:image/png;base64,") >= 6  # self-contained: figures embedded
    mixture = json.loads((run / "08_mixtures_select" / "mixture.json").read_text())
    assert f"{mixture['predicted_target_loss']:.4f}" in md  # figures are read from the stage outputs
    again = run_pipeline(yaml, run)
    assert all(m.skipped for m in again.values())


@pytest.mark.slow
def test_a_pipeline_killed_mid_swarm_resumes_to_the_outputs_of_an_uninterrupted_run(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    import pyarrow.parquet as pq

    yaml = write(tmp_path, TINY)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mixlab.cli",
            "pipeline",
            "run",
            str(yaml),
            "--out",
            str(killed),
            "--until",
            "swarm_train",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = killed / ".06_swarm_train.partial"
    deadline = time.time() + 300
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: the CLI and its Dask workers
    proc.wait()
    assert not (killed / "06_swarm_train" / "manifest.json").exists()

    resumed = run_pipeline(yaml, killed)
    assert resumed["synth"].skipped and resumed["tokenize"].skipped  # finished stages are not redone
    straight = tmp_path / "straight"
    run_pipeline(yaml, straight)

    a, b = (pq.read_table(d / "06_swarm_train" / "runs.parquet") for d in (killed, straight))
    assert a.column("run_id").to_pylist() == b.column("run_id").to_pylist()
    for column in (c for c in a.column_names if c.startswith(("w.", "loss."))):
        np.testing.assert_allclose(a[column].to_numpy(), b[column].to_numpy(), rtol=0, atol=1e-5)
    mix_a, mix_b = (
        json.loads((d / "08_mixtures_select" / "mixture.json").read_text()) for d in (killed, straight)
    )
    for domain, w in mix_b["weights"].items():
        assert mix_a["weights"][domain] == pytest.approx(w, abs=1e-6)
    comp_a, comp_b = (
        json.loads((d / "09_pretrain" / "comparison.json").read_text()) for d in (killed, straight)
    )
    for name, model in comp_b["models"].items():
        assert comp_a["models"][name]["target"] == pytest.approx(model["target"], abs=1e-4)


BLEND = """
seed: 1
synth: {domains: [prose, code, tabular, legal], docs_per_domain: 300, doc_words: 200, near_dup_clusters: 10,
        exact_dups: 4, target_blend: {prose: 0.7, code: 0.3}, target_docs: 100}
tokenizer_train: {vocab_size: 512}
mixtures_sample: {candidates: 48}
swarm_train: {n_layer: 2, n_embd: 64, n_head: 4, seq_len: 64, batch_size: 8, steps: 60, warmup_steps: 6,
              eval_sequences: 16, repeats: 2, repeat_mixtures: 2}
mixtures_fit: {target: target}
mixtures_select: {samples: 20000}
pretrain: {n_layer: 2, n_embd: 64, n_head: 4, seq_len: 64, steps: 200, eval_every: 100, baselines: [natural, uniform]}
"""


@pytest.mark.slow
def test_the_synthetic_blend_target_is_found_and_pays_off_in_pretraining(tmp_path: Path) -> None:
    """The whole search on the synthetic corpus, scored against what it planted: a target drawn
    70/30 from prose and code. The chosen mixture must lean on those two, and the model
    pretrained on it must beat natural and uniform at equal tokens."""
    run = tmp_path / "run"
    run_pipeline(write(tmp_path, BLEND), run, until_stage="pretrain")
    mixture = json.loads((run / "08_mixtures_select" / "mixture.json").read_text())
    assert mixture["weights"]["prose"] + mixture["weights"]["code"] >= 0.8, mixture["weights"]
    assert mixture["predicted_target_loss"] < mixture["natural"]["predicted_target_loss"]
    assert mixture["predicted_target_loss"] < mixture["uniform"]["predicted_target_loss"]
    comparison = json.loads((run / "09_pretrain" / "comparison.json").read_text())
    models = comparison["models"]
    assert comparison["best"] == "chosen", models
    noise = mixture["noise_floor"]["rmse"]
    for baseline in ("natural", "uniform"):
        assert models[baseline]["target"] - models["chosen"]["target"] > noise, (baseline, models, noise)
