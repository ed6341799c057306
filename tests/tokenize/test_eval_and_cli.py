from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mixlab.tokenize.config import TokenizerEvalConfig, TokenizerTrainConfig
from mixlab.tokenize.evaluate import renyi_efficiency, run_tokenizer_eval
from mixlab.tokenize.train import run_tokenizer_train


def test_renyi_efficiency_is_one_for_uniform_use_and_lower_when_skewed() -> None:
    assert renyi_efficiency(np.full(16, 10), 16, 2.5) == pytest.approx(1.0)
    assert renyi_efficiency(np.array([100, 1, 1, 1]), 4, 2.5) < 0.2


def test_eval_compares_tokenizers_per_domain_on_held_out_documents(
    tiny_corpus: Path, hard_documents: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    wp = run_tokenizer_train(
        {"documents": tiny_corpus / "documents"},
        TokenizerTrainConfig(model="wordpiece", vocab_size=300, limit_alphabet=60, sample_bytes=50_000),
        tmp_path / "wp",
    ).path
    m = run_tokenizer_eval(
        {"tokenizers": [bpe_dir, wp], "documents": [tiny_corpus / "documents", hard_documents]},
        TokenizerEvalConfig(split="all"),
        tmp_path / "eval",
    )
    rows = pq.read_table(tmp_path / "eval" / "eval.parquet").to_pylist()
    assert len(rows) == 2 * 6 and m.counts["tokenizers"] == 2
    for r in rows:
        assert r["bytes_per_token"] * r["tokens"] == pytest.approx(r["bytes"])
        assert r["fertility"] * r["words"] == pytest.approx(r["tokens"])
        assert 0 < r["renyi_efficiency"] <= 1 and 0 < r["vocab_utilisation"] <= 1
    by = {(r["tokenizer"], r["domain"]): r for r in rows}
    assert all(by[("bpe", d)]["unk_share"] == 0 for d in ("hard", "all"))
    assert by[("wp", "hard")]["unk_share"] > 0  # emoji and CJK were never seen by the small WordPiece
    held_out = run_tokenizer_eval(
        {"tokenizers": [bpe_dir], "documents": tiny_corpus / "documents"},
        TokenizerEvalConfig(),
        tmp_path / "eval-valid",
    )
    assert 0 < held_out.counts["documents"] < 100


def test_cli_trains_evaluates_and_tokenizes(cli, tiny_corpus: Path, dask_threads, tmp_path: Path) -> None:
    for args in (
        ("tokenizer", "--help"),
        ("tokenizer", "train", "--help"),
        ("tokenizer", "eval", "--help"),
        ("tokenize", "--help"),
    ):
        assert cli(*args).exit_code == 0
    docs = tiny_corpus / "documents"
    res = cli(
        "tokenizer",
        "train",
        docs,
        "--out",
        tmp_path / "tok",
        "--vocab-size",
        300,
        "--mixture",
        "uniform",
        "--split-digits",
    )
    assert res.exit_code == 0, res.output
    res = cli("tokenizer", "eval", tmp_path / "tok", docs, "--out", tmp_path / "eval")
    assert res.exit_code == 0 and "bytes/tok" in res.output and "renyi" in res.output
    address = dask_threads.scheduler.address
    res = cli(
        "tokenize",
        docs,
        "--tokenizer",
        tmp_path / "tok",
        "--out",
        tmp_path / "tokens",
        "--scheduler-address",
        address,
    )
    assert res.exit_code == 0, res.output
    assert (
        json.loads((tmp_path / "tokens" / "_mixlab" / "manifest.json").read_text())["stats"]["token_dtype"]
        == "uint16"
    )


def test_cli_reports_bad_input_in_one_line(cli, tiny_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "mixture.json").write_text(json.dumps({"prose": 0.5, "poetry": 0.5}))
    res = cli(
        "tokenizer",
        "train",
        tiny_corpus / "documents",
        "--out",
        tmp_path / "t",
        "--mixture",
        tmp_path / "mixture.json",
    )
    assert res.exit_code == 1 and "poetry" in res.output and "Traceback" not in res.output
    res = cli("tokenizer", "train", tiny_corpus / "documents", "--out", tmp_path / "t", "--vocab-size", 100)
    assert res.exit_code != 0 and "--vocab-size" in res.output
    (tmp_path / "other-tool").mkdir()
    (tmp_path / "other-tool" / "vocab.txt").write_text("[UNK]\n")
    res = cli(
        "tokenizer", "eval", tmp_path / "other-tool", tiny_corpus / "documents", "--out", tmp_path / "e"
    )
    assert res.exit_code == 1 and "no tokenizer.json" in res.output
