from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mixlab.errors import InputError
from mixlab.tokenize.encode import encode_texts, line_chunks, token_lists
from mixlab.tokenize.tokenizer import load_tokenizer

from .conftest import HARD_TEXTS


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [list(x) for x in np.split(flat, np.cumsum(lengths)[:-1])]


def _tricky_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000\u200b  aZé日'sS19¹½.,!?-_()\"🎉\u0301\ufdd0")
    alphabet += [
        "'s",
        "'LL",
        " 'd",
        "<|endoftext|>",
        "  ",
        "x_y",
        "(",
        "a1",
        "7b",
        "#",
        "\r\n",
        "[",
        "`",
        "{",
        "~",
        "@",
    ]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 50))) for _ in range(n)]


def test_space_segmented_encoding_equals_whole_document_encoding(bpe_dir: Path) -> None:
    tok, info = load_tokenizer(bpe_dir)
    assert info.space_segmentable
    texts = HARD_TEXTS + _tricky_strings(4000)
    flat, lengths = encode_texts(tok, texts, eos_id=info.eos_id, space_segmentable=True)
    expected = [tok.encode(t, add_special_tokens=False).ids + [info.eos_id] for t in texts]
    assert _split(flat, lengths) == expected


def test_byte_level_bpe_round_trips_non_ascii_and_emoji(bpe_dir: Path) -> None:
    tok, info = load_tokenizer(bpe_dir)
    texts = HARD_TEXTS + _tricky_strings(300, seed=1)
    flat, lengths = encode_texts(tok, texts, space_segmentable=True)
    assert [tok.decode(ids) for ids in _split(flat, lengths)] == texts


def test_literal_eos_string_in_a_document_is_not_the_eos_id(bpe_dir: Path) -> None:
    tok, info = load_tokenizer(bpe_dir)
    for segmented in (True, False):
        flat, lengths = encode_texts(
            tok, ["x <|endoftext|> y"], eos_id=info.eos_id, space_segmentable=segmented
        )
        assert list(flat).count(info.eos_id) == 1 and flat[-1] == info.eos_id


def test_long_documents_are_cut_at_lines_and_joined_back(bpe_dir: Path) -> None:
    tok, info = load_tokenizer(bpe_dir)
    text = "\n".join(f"line {i} of a long document" for i in range(500))
    assert all(len(p) <= 300 for p in line_chunks(text, 300)) and "".join(line_chunks(text, 300)) == text
    flat, lengths = encode_texts(tok, [text, "short"], max_chunk_chars=300, eos_id=info.eos_id)
    ids = _split(flat, lengths)
    assert tok.decode(ids[0][:-1]) == text and ids[1][-1] == info.eos_id


def test_token_lists_have_the_flat_ids_per_document() -> None:
    arr = token_lists(np.array([5, 6, 7, 0], dtype=np.uint16), np.array([3, 0, 1]))
    assert str(arr.type) == "list<item: uint16>" and arr.to_pylist() == [[5, 6, 7], [], [0]]


def test_tokenizer_directory_from_another_tool_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(InputError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(InputError, match="not a Hugging Face tokenizer"):
        load_tokenizer(tmp_path)


def test_a_worker_remembers_pieces_across_calls_and_gives_the_same_ids(bpe_dir: Path) -> None:
    from mixlab.tokenize.encode import worker_memory, worker_tokenizer

    tok, info = worker_tokenizer(str(bpe_dir))
    memory = worker_memory(tok)
    memory.clear()
    texts = HARD_TEXTS + _tricky_strings(500, seed=2)
    fresh = encode_texts(tok, texts, eos_id=info.eos_id, space_segmentable=True)
    first = encode_texts(tok, texts[::2], eos_id=info.eos_id, space_segmentable=True, memory=memory)
    assert memory  # the first call taught it its pieces
    second = encode_texts(
        tok, texts, eos_id=info.eos_id, space_segmentable=True, memory=memory
    )  # half remembered
    assert _split(*first) == _split(*fresh)[::2]
    assert np.array_equal(second[0], fresh[0]) and np.array_equal(second[1], fresh[1])


def test_a_tokenizer_retrained_in_place_is_not_served_from_a_workers_cache(
    tiny_corpus: Path, tmp_path: Path
) -> None:
    import dataclasses

    from mixlab.tokenize.encode import worker_memory, worker_tokenizer
    from mixlab.tokenize.train import run_tokenizer_train

    from .conftest import SMALL_BPE

    out = tmp_path / "tok"
    run_tokenizer_train(
        {"documents": tiny_corpus / "documents"}, dataclasses.replace(SMALL_BPE, vocab_size=300), out
    )
    first, _ = worker_tokenizer(str(out))
    worker_memory(first)["hello"] = (1, 2, 3)
    run_tokenizer_train({"documents": tiny_corpus / "documents"}, SMALL_BPE, out, force=True)
    second, _ = worker_tokenizer(str(out))
    assert (first.get_vocab_size(), second.get_vocab_size()) == (300, 400)
    assert "hello" not in worker_memory(second)


def test_texts_encoded_in_many_slices_give_the_ids_of_whole_documents(bpe_dir: Path, monkeypatch) -> None:
    import mixlab.tokenize.encode as encode

    monkeypatch.setattr(encode, "SEGMENT_BYTES", 200)  # a slice every few documents
    tok, info = load_tokenizer(bpe_dir)
    texts = ["", *HARD_TEXTS, "", *_tricky_strings(400, seed=3), ""]
    flat, lengths = encode_texts(tok, pa.array(texts).slice(1), eos_id=info.eos_id, space_segmentable=True)
    expected = [tok.encode(t, add_special_tokens=False).ids + [info.eos_id] for t in texts[1:]]
    assert _split(flat, lengths) == expected
