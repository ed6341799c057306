"""The pipeline explains itself: a plan with estimated times, stage k of n with elapsed and
estimated time, the pipeline file and a run manifest at the run root; and the CLI's wording."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.pipelines.run import estimate_seconds, plan_pipeline, run_pipeline
from mixlab.tokenize.evaluate import format_table

TINY = """
description: a tiny run for the tests
seed: 3
synth: {domains: [prose, code], docs_per_domain: 20, doc_words: 40, near_dup_clusters: 2, exact_dups: 1,
        target_blend: {prose: 0.7, code: 0.3}, target_docs: 10}
swarm_train: {n_layer: 1, n_embd: 32, n_head: 2, seq_len: 32, batch_size: 4, steps: 8}
"""


def _yaml(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(TINY)
    return path


def test_dry_run_shows_an_estimated_time_per_stage_and_in_all(tmp_path: Path) -> None:
    args = ["pipeline", "run", str(_yaml(tmp_path)), "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "estimated time of what is left to run: ~" in result.output
    assert "title = a tiny run for the tests" in result.output  # the report is titled by the description
    stages = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)["stages"]
    assert all(s["estimated_s"] > 0 for s in stages)


def test_estimates_grow_with_the_tokens_trained(tmp_path: Path) -> None:
    small = plan_pipeline(_yaml(tmp_path), tmp_path / "a")
    (tmp_path / "big.yaml").write_text(TINY.replace("steps: 8}", "steps: 80}"))
    big = plan_pipeline(tmp_path / "big.yaml", tmp_path / "b")
    a, b = (estimate_seconds(p, p.step("swarm_train")) for p in (small, big))
    assert b == pytest.approx(10 * a)


def test_a_run_keeps_its_pipeline_file_and_a_run_manifest_and_says_stage_k_of_n(
    tmp_path: Path, capsys
) -> None:
    root = tmp_path / "run"
    run_pipeline(_yaml(tmp_path), root, until_stage="ingest")
    err = capsys.readouterr().err
    assert "== stage 1 of 2: synth" in err and "== stage 2 of 2: ingest" in err
    assert "elapsed " in err and "this stage ~" in err and "left ~" in err
    assert (root / "pipeline.yaml").read_text() == TINY
    record = json.loads((root / "run.json").read_text())
    assert record["description"] == "a tiny run for the tests"
    assert record["stages"]["synth"]["status"] == "done" and record["stages"]["synth"]["dir"] == "00_synth"
    assert "wall_s" in record and "mixlab" in json.dumps(record["versions"])
    run_pipeline(_yaml(tmp_path), root, until_stage="ingest")
    again = json.loads((root / "run.json").read_text())
    assert again["stages"]["synth"]["status"] == "up to date" and "wall_s" in again["stages"]["synth"]


def test_ingest_of_an_unsupported_file_names_what_is_supported(tmp_path: Path) -> None:
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    result = CliRunner().invoke(main, ["ingest", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "unknown input type; supported: parquet (.parquet), JSON lines (.jsonl" in result.output
    assert ".txt" in result.output and ".md" in result.output


def test_tokenizer_eval_prints_whole_tokenizer_names() -> None:
    name = "bpe-vocab-32768-prose-heavy-sample"
    row = dict(bytes_per_token=3.0, chars_per_token=3.0, fertility=1.2, unk_share=0.0, vocab_utilisation=0.5)
    table = pa.Table.from_pylist(
        [{"tokenizer": name, "domain": "legal-contracts", **row, "renyi_efficiency": 0.4}]
    )
    text = format_table(table)
    assert name in text and "legal-contracts" in text


def test_tokenizer_eval_without_documents_names_documents_and_help_lines_are_whole() -> None:
    result = CliRunner().invoke(main, ["tokenizer", "eval", "tok"])
    assert result.exit_code != 0 and "Missing argument 'DOCUMENTS'" in result.output
    top = CliRunner().invoke(main, ["--help"]).output
    assert "..." not in top.split("Options:")[1]  # no short help cut off
