from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from mixlab.errors import ConfigError, InputError
from mixlab.stage import Manifest
from mixlab.tables import write_table
from mixlab.tokenize.config import TokenizerTrainConfig
from mixlab.tokenize.train import run_tokenizer_train

from .conftest import HARD_TEXTS, SMALL_BPE


def test_trained_bpe_loads_with_tokenizers_and_transformers_with_eos_and_pad(bpe_dir: Path) -> None:
    tok = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    assert tok.get_vocab_size() <= SMALL_BPE.vocab_size
    assert tok.token_to_id("<|endoftext|>") == Manifest.load(bpe_dir).stats["eos_id"] == 0
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(bpe_dir))
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0
    assert hf.pad_token == "<|pad|>" and hf.pad_token_id == 1
    text = HARD_TEXTS[0]
    assert hf.decode(hf(text)["input_ids"]) == text


def test_byte_level_bpe_training_is_deterministic(
    tiny_corpus: Path, hard_documents: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    again = run_tokenizer_train(
        {"documents": [tiny_corpus / "documents", hard_documents]}, SMALL_BPE, tmp_path / "again"
    )
    assert (again.path / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()


def test_sample_follows_the_mixture_and_the_byte_budget(tiny_corpus: Path, tmp_path: Path) -> None:
    docs = tiny_corpus / "documents"
    base = dataclasses.replace(SMALL_BPE, sample_bytes=20_000)
    natural = run_tokenizer_train({"documents": docs}, base, tmp_path / "natural").stats["sample"]
    uniform = run_tokenizer_train(
        {"documents": docs}, dataclasses.replace(base, mixture="uniform"), tmp_path / "uniform"
    ).stats["sample"]
    (tmp_path / "mix.json").write_text(json.dumps({"weights": {"code": 0.75, "prose": 0.25}}))
    mixed = run_tokenizer_train(
        {"documents": docs}, dataclasses.replace(base, mixture=str(tmp_path / "mix.json")), tmp_path / "mixed"
    ).stats["sample"]
    for sample in (natural, uniform, mixed):
        total = sum(d["sample_bytes"] for d in sample.values())
        assert 18_000 <= total <= 22_000
    avail = {d: s["available_bytes"] for d, s in natural.items()}
    for d, s in natural.items():
        assert s["sample_bytes"] / 20_000 == pytest.approx(avail[d] / sum(avail.values()), abs=0.05)
    for s in uniform.values():
        assert s["sample_bytes"] == pytest.approx(5_000, rel=0.25)
    assert mixed["code"]["sample_bytes"] == pytest.approx(15_000, rel=0.1)
    assert mixed["legal"]["sample_bytes"] == mixed["tabular"]["sample_bytes"] == 0


def test_a_share_larger_than_a_domain_repeats_its_documents(
    tiny_corpus: Path, hard_documents: Path, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(SMALL_BPE, mixture="uniform", sample_bytes=100_000)
    sample = run_tokenizer_train(
        {"documents": [tiny_corpus / "documents", hard_documents]}, cfg, tmp_path / "t"
    ).stats["sample"]
    hard = sample["hard"]
    assert hard["sample_bytes"] > 3 * hard["available_bytes"] and hard["repeats"] > 3


@pytest.mark.parametrize(
    ("mixture", "match"),
    [
        ({"prose": 0.5, "poetry": 0.5}, "not in the documents"),
        ({"prose": 0.5, "code": 0.2}, "sum to"),
        ({"prose": "lots"}, "not a number"),
    ],
)
def test_bad_mixture_is_a_clear_error(tiny_corpus: Path, tmp_path: Path, mixture: dict, match: str) -> None:
    (tmp_path / "mixture.json").write_text(json.dumps(mixture))
    cfg = dataclasses.replace(SMALL_BPE, mixture=str(tmp_path / "mixture.json"))
    with pytest.raises(ConfigError, match=match):
        run_tokenizer_train({"documents": tiny_corpus / "documents"}, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_vocab_size_smaller_than_the_alphabet_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--vocab-size"):
        TokenizerTrainConfig(model="bpe", vocab_size=200)
    with pytest.raises(ConfigError, match="--vocab-size"):
        TokenizerTrainConfig(model="wordpiece", vocab_size=500, limit_alphabet=1000)
    with pytest.raises(InputError, match="--vocab-size"):
        run_tokenizer_train(
            {"documents": tiny_corpus / "documents"},
            TokenizerTrainConfig(model="unigram", vocab_size=12),
            tmp_path / "u",
        )


def test_wordpiece_and_unigram_have_unknown_tokens_and_respect_vocab_size(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    for model, unk in (("wordpiece", "[UNK]"), ("unigram", "<unk>")):
        cfg = TokenizerTrainConfig(model=model, vocab_size=300, limit_alphabet=100, sample_bytes=60_000)
        out = run_tokenizer_train({"documents": tiny_corpus / "documents"}, cfg, tmp_path / model).path
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        assert tok.get_vocab_size() <= 300 and tok.token_to_id(unk) is not None
        hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
        assert hf.unk_token == unk and hf.eos_token == "<|endoftext|>" and hf.pad_token is not None


def test_null_texts_are_counted_and_skipped(tmp_path: Path) -> None:
    texts = ["some text here " * 20, None, "more words in this one " * 20, None, "and a third " * 20]
    write_table(
        pa.table(
            {"id": [str(i) for i in range(5)], "domain": ["d"] * 5, "text": pa.array(texts, pa.string())}
        ),
        tmp_path / "docs.parquet",
    )
    m = run_tokenizer_train(
        {"documents": tmp_path / "docs.parquet"},
        dataclasses.replace(SMALL_BPE, valid_fraction=0.0),
        tmp_path / "t",
    )
    assert m.stats["skipped_null_text"] == 2 and m.counts["documents"] == 3


def test_rerun_with_same_config_is_a_no_op(bpe_dir: Path, tiny_corpus: Path, hard_documents: Path) -> None:
    from mixlab.tokenize.train import run_tokenizer_train as train

    assert train({"documents": [tiny_corpus / "documents", hard_documents]}, SMALL_BPE, bpe_dir).skipped


def test_whitespace_only_text_is_refused_naming_the_input(tmp_path: Path) -> None:
    texts = ["   ", "\n\t", "", None, "\u3000 "]
    table = pa.table(
        {"id": [str(i) for i in range(5)], "domain": ["d"] * 5, "text": pa.array(texts, pa.string())}
    )
    write_table(table, tmp_path / "blank.parquet")
    cfg = dataclasses.replace(SMALL_BPE, valid_fraction=0.0)
    with pytest.raises(InputError, match="no training text") as err:
        run_tokenizer_train({"documents": tmp_path / "blank.parquet"}, cfg, tmp_path / "t")
    assert str(err.value).startswith(f"{tmp_path / 'blank.parquet'}: ")
    assert not (tmp_path / "t").exists()


def test_a_vocabulary_smaller_than_asked_is_a_warning_recorded_in_the_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    texts = ["the same few words again and again"] * 20
    table = pa.table({"id": [str(i) for i in range(20)], "domain": ["d"] * 20, "text": texts})
    write_table(table, tmp_path / "small.parquet")
    cfg = dataclasses.replace(SMALL_BPE, vocab_size=70_000, valid_fraction=0.0)
    m = run_tokenizer_train({"documents": tmp_path / "small.parquet"}, cfg, tmp_path / "t")
    assert m.stats["vocab_size_requested"] == 70_000 and m.stats["vocab_size"] < 1000
    assert m.stats["warnings"] and "fewer than the 70000 requested" in m.stats["warnings"][0]
    assert "warning: the vocabulary has" in capsys.readouterr().err


def test_a_mixture_input_weights_the_sample_as_the_flag_does(tiny_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "mix.json").write_text(json.dumps({"weights": {"code": 0.75, "prose": 0.25}}))
    base = dataclasses.replace(SMALL_BPE, sample_bytes=20_000)
    docs = {"documents": tiny_corpus / "documents"}
    by_input = run_tokenizer_train({**docs, "mixture": tmp_path / "mix.json"}, base, tmp_path / "a")
    by_flag = run_tokenizer_train(
        docs, dataclasses.replace(base, mixture=str(tmp_path / "mix.json")), tmp_path / "b"
    )
    assert by_input.stats["sample"] == by_flag.stats["sample"] and "mixture" in by_input.inputs
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    with pytest.raises(ConfigError, match="pass only one"):
        run_tokenizer_train(
            {**docs, "mixture": tmp_path / "mix.json"},
            dataclasses.replace(base, mixture="uniform"),
            tmp_path / "c",
        )
