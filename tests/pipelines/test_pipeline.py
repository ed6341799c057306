"""The pipeline runner: shipped YAMLs load, bad YAML fails before any work, runs resume and skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.errors import ConfigError, MixlabError
from mixlab.pipelines.run import (
    STAGE_NAMES,
    describe,
    plan_pipeline,
    run_pipeline,
    shipped_pipelines,
    step_inputs,
)

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
    assert [s.name for s in plan.steps] == list(STAGE_NAMES)
    assert all(s.out.parent == tmp_path for s in plan.steps)


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
    plan = plan_pipeline(write(tmp_path, "seed: 7\nmixtures_fit: {seed: 1}\n"), tmp_path / "run")
    seeds = {s.name: getattr(s.cfg, "seed", None) for s in plan.steps}
    assert seeds["mixtures_fit"] == 1  # a section's own seed wins
    assert seeds["synth"] == 7 and seeds["mixtures_sample"] == 7 and seeds["pretrain"] == 7


def test_inputs_replace_the_synthetic_corpus(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, "inputs: [corpus]\n"), tmp_path / "run")
    assert plan.inputs == [tmp_path / "corpus"]
    assert "synth" not in [s.name for s in plan.steps]


def test_from_a_stage_whose_predecessors_are_unfinished_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MixlabError, match="earlier stage synth has no finished output"):
        run_pipeline(write(tmp_path, TINY), tmp_path / "run", from_stage="dedup", until_stage="dedup")


def test_dry_run_prints_the_plan_and_configs_without_running(tmp_path: Path) -> None:
    args = ["pipeline", "run", str(write(tmp_path, TINY)), "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "swarm_train" in result.output and "06_swarm_train" in result.output
    dump = CliRunner().invoke(main, [*args, "--json"])
    assert dump.exit_code == 0, dump.output
    assert '"steps": 8' in dump.output
    stages = {s["name"]: s for s in json.loads(dump.output)["stages"]}
    assert stages["swarm_train"]["config"]["steps"] == 8
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
    before = (run / "04_tokenize" / "_mixlab" / "manifest.json").read_text()
    again = run_pipeline(yaml, run, until_stage="tokenize")
    assert all(m.skipped for m in again.values())
    assert (run / "04_tokenize" / "_mixlab" / "manifest.json").read_text() == before
    # the target set is tokenized as a validation-only domain
    counts = json.loads((run / "04_tokenize" / "_mixlab" / "manifest.json").read_text())["stats"][
        "per_domain"
    ]
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
    assert f"{mixture['predicted_target_loss']:.3f}" in md  # figures are read from the stage outputs
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
    assert not (killed / "06_swarm_train" / "_mixlab" / "manifest.json").exists()

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


@pytest.mark.parametrize("spelling", ["tokenizer train", "tokenizer-train", "tokenizer_train"])
def test_from_and_until_accept_every_spelling_of_a_stage(tmp_path: Path, spelling: str) -> None:
    plan = plan_pipeline(write(tmp_path, TINY), tmp_path / "run", from_stage=spelling, until_stage=spelling)
    assert [s.name for s in plan.selected] == ["tokenizer_train"]


def test_a_stage_outside_the_pipeline_is_refused_for_from_and_until(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--from: stage 'tokenizer_eval' is not part of this pipeline"):
        plan_pipeline(write(tmp_path, TINY), tmp_path / "run", from_stage="tokenizer eval")


def test_what_the_pipeline_fills_in_does_not_depend_on_the_selected_stages(tmp_path: Path) -> None:
    yaml = write(tmp_path, TINY)
    full = plan_pipeline(yaml, tmp_path / "run")
    for until in ("mixtures_sample", "mixtures_select"):
        part = plan_pipeline(yaml, tmp_path / "run", until_stage=until)
        assert [s.cfg for s in part.selected] == [s.cfg for s in full.steps[: len(part.selected)]]
    assert full.step("mixtures_select").cfg.token_budget == 10 * 4 * 32  # pretrain steps x batch x seq_len
    assert full.step("mixtures_sample").cfg.proxy_tokens == 8 * 4 * 32  # swarm steps x batch x seq_len
    assert full.step("mixtures_select").filled == {"token_budget": 1280}


def test_a_value_set_in_the_stages_own_section_is_not_filled_in(tmp_path: Path) -> None:
    yaml = write(tmp_path, "mixtures_select: {token_budget: 5}\nmixtures_sample: {proxy_tokens: 7}\n")
    plan = plan_pipeline(yaml, tmp_path / "run")
    assert plan.step("mixtures_select").cfg.token_budget == 5
    assert plan.step("mixtures_sample").cfg.proxy_tokens == 7
    assert plan.step("mixtures_select").filled == {}


def test_the_synthetic_target_set_goes_to_tokenize_as_target_corpus(tmp_path: Path) -> None:
    run = tmp_path / "run"
    plan = plan_pipeline(write(tmp_path, TINY), run)
    tokenize = step_inputs(plan, plan.step("tokenize"))
    assert tokenize == {
        "documents": [run / "02_dedup" / "documents"],
        "tokenizer": run / "03_tokenizer_train",
        "targets": [run / "00_synth" / "target" / "documents.parquet"],
    }
    assert step_inputs(plan, plan.step("tokenizer_train"))["documents"] == [run / "02_dedup" / "documents"]
    assert step_inputs(plan, plan.step("report")) == {"run": run}


def test_target_corpora_are_ingested_apart_as_their_own_domain(tmp_path: Path) -> None:
    yaml = write(
        tmp_path,
        "inputs: [corpus]\ntargets: {legal_eval: [held/legal.jsonl], news: held/news}\ningest: {text_column: body}\n",
    )
    run = tmp_path / "run"
    plan = plan_pipeline(yaml, run)
    assert [s.name for s in plan.steps][:4] == ["ingest", "target_legal_eval", "target_news", "dedup"]
    step = plan.step("target_legal_eval")
    assert step.out == run / "01_target_legal_eval" and step.stage.name == "ingest"
    assert (step.cfg.domain_from, step.cfg.domain, step.cfg.text_column) == ("flag", "legal_eval", "body")
    assert step_inputs(plan, step) == {"sources": [tmp_path / "held" / "legal.jsonl"]}
    assert step_inputs(plan, plan.step("ingest")) == {"sources": [tmp_path / "corpus"]}
    assert step_inputs(plan, plan.step("dedup")) == {"documents": [run / "01_ingest"]}  # no target in dedup
    targets = step_inputs(plan, plan.step("tokenize"))["targets"]
    assert targets == [run / "01_target_legal_eval", run / "01_target_news"]


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "synth: {target_blend: {prose: 1.0}}\ntargets: {target: [t.jsonl]}\n",
            "synthetic corpus's own target",
        ),
        ("inputs: [c]\ntargets: {'bad name': [t.jsonl]}\n", "not a usable domain name"),
        ("inputs: [c]\ntargets: [t.jsonl]\n", "expected a mapping"),
        ("inputs: [c]\ntargets: {t: 3}\n", "expected a path or a list of paths"),
    ],
)
def test_bad_targets_are_refused_before_any_work(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        plan_pipeline(write(tmp_path, text), tmp_path / "run")


def test_environment_variables_and_home_expand_in_pipeline_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MIXLAB_DATA", str(tmp_path / "data"))
    yaml = write(tmp_path, "inputs: ['${MIXLAB_DATA}/web', ~/code]\ntargets: {t: $MIXLAB_DATA/t.jsonl}\n")
    plan = plan_pipeline(yaml, tmp_path / "run")
    assert plan.inputs == [tmp_path / "data" / "web", Path.home() / "code"]
    assert plan.targets == {"t": [tmp_path / "data" / "t.jsonl"]}
    monkeypatch.delenv("MIXLAB_DATA")
    with pytest.raises(ConfigError, match="MIXLAB_DATA"):
        plan_pipeline(yaml, tmp_path / "run")


def test_dry_run_shows_each_stages_status_and_the_filled_in_settings(tmp_path: Path) -> None:
    yaml = write(tmp_path, TINY)
    run = tmp_path / "run"
    run_pipeline(yaml, run, until_stage="synth")
    text = describe(plan_pipeline(yaml, run))
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert "00_synth" in rows["synth"] and rows["synth"].endswith("done")
    assert rows["ingest"].endswith("to run")
    assert "token_budget = 1280" in text and "proxy_tokens = 1024" in text
    assert str(run / "00_synth" / "target" / "documents.parquet") in text
    changed = describe(plan_pipeline(write(tmp_path, TINY.replace("seed: 3", "seed: 4"), "q.yaml"), run))
    assert "done with other settings (seed): needs --force" in changed


def test_a_pipeline_with_a_target_corpus_keeps_it_out_of_dedup_and_the_tokenizer_sample(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    held = tmp_path / "held.jsonl"
    held.write_text(
        "".join(json.dumps({"text": f"a held-out target document number {i}"}) + "\n" for i in range(6))
    )
    yaml = write(
        tmp_path,
        f"inputs: [{tiny_corpus / 'documents'}]\ntargets: {{heldout: [{held}]}}\n"
        "dedup: {num_perm: 64}\ntokenizer_train: {vocab_size: 300, sample_bytes: 200000}\n",
    )
    run = tmp_path / "run"
    run_pipeline(yaml, run, until_stage="tokenize")
    dedup = json.loads((run / "02_dedup" / "_mixlab" / "manifest.json").read_text())
    assert "heldout" not in json.dumps(dedup["stats"])
    sample = json.loads((run / "03_tokenizer_train" / "_mixlab" / "manifest.json").read_text())["stats"][
        "sample"
    ]
    assert "heldout" not in sample
    counts = json.loads((run / "04_tokenize" / "_mixlab" / "manifest.json").read_text())["stats"][
        "per_domain"
    ]
    assert counts["heldout"]["valid"]["documents"] == 6
    assert counts["heldout"].get("train", {}).get("documents", 0) == 0


@pytest.mark.slow
def test_a_run_until_select_then_a_full_run_continues_without_force(tmp_path: Path) -> None:
    yaml = write(tmp_path, TINY)
    run = tmp_path / "run"
    first = run_pipeline(yaml, run, until_stage="mixtures_select")
    assert "pretrain" not in first
    again = run_pipeline(yaml, run)
    assert all(again[name].skipped for name in first)
    assert not again["pretrain"].skipped and (run / "11_report" / "report.html").is_file()


def test_sections_of_stages_outside_the_pipeline_are_checked_but_not_run(tmp_path: Path) -> None:
    plan = plan_pipeline(write(tmp_path, "export_hf: {dtype: bfloat16}\n"), tmp_path / "run")
    assert "export_hf" not in [s.name for s in plan.steps]
    with pytest.raises(ConfigError, match=r"\[export_hf\].*'dtpe'"):
        plan_pipeline(write(tmp_path, "export_hf: {dtpe: int3}\n"), tmp_path / "run")


def test_an_input_path_that_does_not_exist_is_refused_before_any_stage_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inputs: .*nosuch: no such file or directory"):
        run_pipeline(write(tmp_path, "inputs: [nosuch]\n"), tmp_path / "run", until_stage="ingest")
    assert not (tmp_path / "run").exists()
