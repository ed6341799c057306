"""Encoding batches of documents into flat token arrays, as the tokenize and eval stages do.

Documents are encoded with ``encode_batch_fast`` (no offsets), special tokens treated as
text, and documents longer than ``max_chunk_chars`` cut at line boundaries first (very long
inputs make ``encode_batch`` several times slower) with their ids joined back. The result is
one flat id array plus per-document lengths, ready to become a parquet list column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from mixlab.tokenize.tokenizer import TokenizerInfo, load_tokenizer

_LOADED: dict[tuple[str, str | None], tuple[Tokenizer, TokenizerInfo]] = {}


def worker_tokenizer(path: str, eos_token: str | None = None) -> tuple[Tokenizer, TokenizerInfo]:
    """The tokenizer loaded once per process (inside each Dask worker, never shipped through fork).

    Parallelism inside `tokenizers` is switched off here: Dask already runs one task per
    core, and a tokenizer that ran threads before a fork would silently encode serially.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    key = (path, eos_token)
    if key not in _LOADED:
        _LOADED[key] = load_tokenizer(Path(path), eos_token)
    return _LOADED[key]


def line_chunks(text: str, max_chars: int) -> list[str]:
    """Cut a long text after newlines into pieces of at most `max_chars` (hard cut when a line is longer)."""
    pieces = []
    start, n = 0, len(text)
    while n - start > max_chars:
        cut = text.rfind("\n", start, start + max_chars)
        end = cut + 1 if cut >= start else start + max_chars
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


# Places where the GPT-4 pre-tokenisation always starts a new pre-token (see
# `tokenizer.space_segmentable`), as (RE2 pattern, replacement inserting MARK at the cut):
# a space after a non-whitespace character (RE2's \s is ASCII only, hence the explicit
# classes), a non-whitespace character after a newline, and an ASCII letter or digit followed
# by ASCII punctuation or a newline. Non-ASCII contexts are left uncut, so Unicode version
# differences between RE2 and Oniguruma cannot matter. (Letter|digit cuts are valid too but
# measured slower: each pass costs more than the extra reuse saves.)
_NOT_SPACE = r"[^\s\p{Z}\x{0b}\x{85}\x{1c}-\x{1f}]"
_PUNCT = r"[!-/:-@\[-`{-~]"
_CUTS = (
    (f"({_NOT_SPACE}) ", "\\1{m} "),
    (f"([\\r\\n])({_NOT_SPACE})", "\\1{m}\\2"),
    (f"([A-Za-z0-9])({_PUNCT}|[\\r\\n])", "\\1{m}\\2"),
)
_MARK = "\ufdd0"  # a Unicode noncharacter; documents that contain it are encoded whole


def _encode_pieces(tok: Tokenizer, pieces: Sequence[str], batch_size: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, ids per piece) of independent pieces of text."""
    flat_parts: list[np.ndarray] = []
    lengths = np.zeros(len(pieces), dtype=np.int64)
    for start in range(0, len(pieces), batch_size):
        encodings = tok.encode_batch_fast(list(pieces[start: start + batch_size]), add_special_tokens=False)
        # A loop over encodings is the only way out of `tokenizers`; the encoding work ran in Rust.
        ids = [e.ids for e in encodings]
        n = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        lengths[start: start + len(ids)] = n
        flat_parts.append(np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(n.sum())))
    flat = np.concatenate(flat_parts) if flat_parts else np.zeros(0, dtype=dtype)
    return flat, lengths


def _starts(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs flat[starts[c]: starts[c] + lengths[c]] for c in `codes` back to back (a ragged
    gather), and each run's length."""
    take = lengths[codes]
    index = np.arange(int(take.sum()), dtype=np.int64) + np.repeat(starts[codes] - _starts(take), take)
    return flat[index], take


def encode_texts(
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    eos_id: int | None = None,
    space_segmentable: bool = False,
    max_chunk_chars: int = 100_000,
    batch_size: int = 1000,
    dtype: np.dtype = np.dtype(np.uint32),
) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, tokens per document) for `texts`, with `eos_id` appended to each when given.

    With `space_segmentable` (see `tokenizer.space_segmentable`) texts are cut where a
    pre-token must start (before spaces, after newlines, ...) and each distinct piece is encoded once: the same ids as whole-document encoding, a
    fraction of the work, since words repeat. Otherwise documents over `max_chunk_chars`
    are cut after newlines, which may change a few tokens at the cuts.
    """
    if space_segmentable:
        array = pa.array(texts, pa.large_string())
        has_mark = pc.fill_null(pc.match_substring(array, _MARK), False)
        marked = array
        for pattern, replacement in _CUTS:
            marked = pc.replace_substring_regex(marked, pattern, replacement.format(m=_MARK))
        pieces = pc.split_pattern(pc.if_else(has_mark, "", marked), _MARK)
        per_doc = pc.list_value_length(pieces).to_numpy(zero_copy_only=False).astype(np.int64)
        coded = pc.dictionary_encode(pc.list_flatten(pieces))
        codes = coded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        flat_u, lengths_u = _encode_pieces(tok, coded.dictionary.to_pylist(), batch_size, dtype)
        flat, piece_lengths = _gather(flat_u, _starts(lengths_u), lengths_u, codes)
        if pc.any(has_mark).as_py():  # rare: encode those documents whole and splice them in
            marked_docs = np.flatnonzero(has_mark.to_numpy(zero_copy_only=False))
            pieces_per = np.repeat(np.arange(len(texts)), per_doc)
            lengths = np.bincount(pieces_per, weights=piece_lengths, minlength=len(texts)).astype(np.int64)
            flat_m, lengths_m = _encode_pieces(tok, [texts[i] for i in marked_docs], batch_size, dtype)
            starts = _starts(lengths)
            starts[marked_docs] = len(flat) + _starts(lengths_m)
            lengths[marked_docs] = lengths_m
            flat, piece_lengths = _gather(np.concatenate([flat, flat_m]), starts, lengths, np.arange(len(texts)))
            per_doc = np.ones(len(texts), dtype=np.int64)
    else:
        pieces: list[str] = []
        per_doc = np.ones(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):  # a loop over documents only to find the rare long ones
            if len(text) > max_chunk_chars:
                chunk = line_chunks(text, max_chunk_chars)
                pieces.extend(chunk)
                per_doc[i] = len(chunk)
            else:
                pieces.append(text)
        flat, piece_lengths = _encode_pieces(tok, pieces, batch_size, dtype)
    doc_of_piece = np.repeat(np.arange(len(texts), dtype=np.int64), per_doc)
    lengths = np.bincount(doc_of_piece, weights=piece_lengths, minlength=len(texts)).astype(np.int64)
    if eos_id is not None:
        flat = np.insert(flat, np.cumsum(lengths), np.asarray(eos_id, dtype=dtype))
        lengths += 1
    return flat, lengths


def token_lists(flat: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A list<uint16|uint32> array from a flat id array and per-document lengths (no copy of the ids)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)).cast(pa.list_(pa.from_numpy_dtype(flat.dtype)))
