"""Encoding batches of documents into flat token arrays, as the tokenize and eval stages do.

Documents are encoded with ``encode_batch_fast`` (no offsets), special tokens treated as
text, and documents longer than ``max_chunk_chars`` cut at line boundaries first (very long
inputs make ``encode_batch`` several times slower) with their ids joined back. The result is
one flat id array plus per-document lengths, ready to become a parquet list column.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from tokenizers import Tokenizer

from mixlab.tokenize.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_file

# Per process, keyed by (directory, eos token, digest of tokenizer.json): a long-lived worker
# must not serve a tokenizer, or ids, from a file that has since been retrained in place.
_LOADED: dict[tuple[str, str | None, str], tuple[Tokenizer, TokenizerInfo]] = {}
_MEMORIES: dict[int, dict[str, tuple[int, ...]]] = {}  # by id() of a tokenizer in _LOADED (kept alive there)
MEMORY_PIECES = (
    500_000  # pieces a worker remembers (~60 MB); Zipf's law fills it with the frequent ones first
)


def worker_tokenizer(path: str, eos_token: str | None = None) -> tuple[Tokenizer, TokenizerInfo]:
    """The tokenizer loaded once per process (inside each Dask worker, never shipped through fork).

    Parallelism inside `tokenizers` is switched off here: Dask already runs one task per
    core, and a tokenizer that ran threads before a fork would silently encode serially.
    """
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    key = (path, eos_token, xxhash.xxh3_64_hexdigest(tokenizer_file(path).read_bytes()))
    if key not in _LOADED:
        _LOADED[key] = load_tokenizer(Path(path), eos_token)
    return _LOADED[key]


def worker_memory(tok: Tokenizer) -> dict[str, tuple[int, ...]]:
    """This process's piece -> ids memory for a tokenizer from `worker_tokenizer` (see `encode_texts`)."""
    return _MEMORIES.setdefault(id(tok), {})


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


# Byte classes for finding where the GPT-4 pre-tokenisation always starts a new pre-token
# (see `tokenizer.space_segmentable`). Cuts go only between two ASCII bytes, so a piece never
# splits a UTF-8 character and Unicode's wider notions of space or letter cannot matter:
#   a space after a printable non-space   ("a| b", ".| b")
#   a printable non-space after a newline  ("\n|x")
#   punctuation or a newline after a letter or digit ("don|'t", "x|.y", "x|\n")
_PRINTABLE, _SPACE, _NEWLINE, _ALNUM, _PUNCT = 1, 2, 4, 8, 16
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[0x21:0x7F] |= _PRINTABLE
_BYTE_CLASS[0x20] |= _SPACE
_BYTE_CLASS[[0x0A, 0x0D]] |= _NEWLINE
for _lo, _hi in ((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)):
    _BYTE_CLASS[_lo : _hi + 1] |= _ALNUM
for _lo, _hi in ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)):
    _BYTE_CLASS[_lo : _hi + 1] |= _PUNCT


def _cut_table() -> np.ndarray:
    """(65536,) bool: is there a cut between byte `prev` and byte `cur`, indexed by prev << 8 | cur."""
    prev, cur = np.meshgrid(_BYTE_CLASS, _BYTE_CLASS, indexing="ij")  # (256, 256)

    def has(c: np.ndarray, flags: int) -> np.ndarray:
        return (c & flags) != 0

    cut = (
        (has(cur, _SPACE) & has(prev, _PRINTABLE))
        | (has(prev, _NEWLINE) & has(cur, _PRINTABLE))
        | (has(prev, _ALNUM) & has(cur, _PUNCT | _NEWLINE))
    )
    return cut.reshape(-1)


_CUT_BETWEEN = _cut_table()


def _as_large_strings(texts: Sequence[str] | pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.large_string())
    if not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.large_string())
    if texts.null_count:
        raise ValueError("encode_texts: null text (filter nulls before encoding)")
    return texts.cast(pa.large_string())


def _offsets(texts: pa.LargeStringArray) -> np.ndarray:
    """(n + 1,) int64 byte offsets of the texts into their data buffer (no copy)."""
    return np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]


def space_pieces(texts: pa.LargeStringArray) -> tuple[pa.LargeStringArray, np.ndarray]:
    """(pieces, pieces per text): every text cut where a pre-token must start, in one numpy pass
    over the UTF-8 bytes. The pieces share the texts' byte buffer (only new offsets are made)."""
    offsets = _offsets(texts)
    lo, hi = (int(offsets[0]), int(offsets[-1])) if len(texts) else (0, 0)
    data = texts.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8)[lo:hi] if data is not None else np.zeros(0, np.uint8)
    pair = raw[:-1].astype(np.uint16) << 8  # (prev byte, next byte) as one index into the cut table
    pair |= raw[1:]
    cut = _CUT_BETWEEN[pair]
    boundary = np.zeros(hi - lo + 1, dtype=bool)
    boundary[1:-1] = cut  # cut before byte i + 1 (a cut at a text's first byte is its start anyway)
    boundary[offsets - lo] = True
    bounds = np.flatnonzero(boundary) + lo
    pieces = pa.LargeStringArray.from_buffers(len(bounds) - 1, pa.py_buffer(bounds.astype(np.int64)), data)
    per_text = np.searchsorted(bounds, offsets[1:]) - np.searchsorted(bounds, offsets[:-1])
    return pieces, per_text.astype(np.int64)


def _encode_pieces(
    tok: Tokenizer,
    pieces: Sequence[str],
    batch_size: int,
    dtype: np.dtype,
    memory: dict[str, tuple[int, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, ids per piece) of independent pieces of text.

    With a `memory`, pieces already in it are not encoded again and new ones are added while
    it has room (up to MEMORY_PIECES).
    """
    # Loops over pieces are the only way in and out of `tokenizers` (the encoding runs in Rust);
    # they run once per distinct piece, not per occurrence.
    ids: list[tuple[int, ...] | None] = (
        [memory.get(p) for p in pieces] if memory is not None else [None] * len(pieces)
    )
    todo = [i for i, x in enumerate(ids) if x is None]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        encodings = tok.encode_batch_fast([pieces[i] for i in batch], add_special_tokens=False)
        for i, e in zip(batch, encodings):
            ids[i] = tuple(e.ids)
        if memory is not None and len(memory) < MEMORY_PIECES:
            memory.update((pieces[i], ids[i]) for i in batch)
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))  # type: ignore[arg-type]
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))  # type: ignore[arg-type]
    return flat, lengths


def _starts(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def _gather(
    flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The runs flat[starts[c]: starts[c] + lengths[c]] for c in `codes` back to back (a ragged
    gather), and each run's length."""
    take = lengths[codes]
    index = np.arange(int(take.sum()), dtype=np.int64) + np.repeat(starts[codes] - _starts(take), take)
    return flat[index], take


SEGMENT_BYTES = 4 << 20  # text per pass of the space-segmented path: its arrays stay small and reused


def _per_document(piece_lengths: np.ndarray, per_doc: np.ndarray) -> np.ndarray:
    """Tokens per document: the sum over its (consecutive) pieces."""
    lengths = np.zeros(len(per_doc), dtype=np.int64)
    has_pieces = per_doc > 0
    if has_pieces.any():
        lengths[has_pieces] = np.add.reduceat(piece_lengths, _starts(per_doc)[has_pieces])
    return lengths


def _encode_segmented(
    tok: Tokenizer,
    texts: pa.LargeStringArray,
    batch_size: int,
    dtype: np.dtype,
    memory: dict[str, tuple[int, ...]],
) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, tokens per document) of texts cut into pieces, each distinct piece encoded once."""
    pieces, per_doc = space_pieces(texts)
    coded = pc.dictionary_encode(pieces)
    codes = coded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    flat_u, lengths_u = _encode_pieces(tok, coded.dictionary.to_pylist(), batch_size, dtype, memory)
    flat, piece_lengths = _gather(flat_u, _starts(lengths_u), lengths_u, codes)
    return flat, _per_document(piece_lengths, per_doc)


def encode_texts(
    tok: Tokenizer,
    texts: Sequence[str] | pa.Array | pa.ChunkedArray,
    *,
    eos_id: int | None = None,
    space_segmentable: bool = False,
    max_chunk_chars: int = 100_000,
    batch_size: int = 1000,
    dtype: np.dtype = np.dtype(np.uint32),
    memory: dict[str, tuple[int, ...]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, tokens per document) for `texts` (no nulls), with `eos_id` appended to each when given.

    With `space_segmentable` (see `tokenizer.space_segmentable`) texts are cut where a
    pre-token must start (`space_pieces`) and each distinct piece is encoded once: the same
    ids as whole-document encoding for a fraction of the work, since words repeat. The texts
    go through in slices of about SEGMENT_BYTES (small arrays, reused memory; a first pass
    over fresh memory pays the page faults of every temporary) that share a piece -> ids
    memory: the caller's (`worker_memory`, one per process and tokenizer) or one for this call.
    Otherwise documents over `max_chunk_chars` are cut after newlines, which may change a few
    tokens at the cuts.
    """
    if space_segmentable:
        array = _as_large_strings(texts)
        memory = memory if memory is not None else {}
        done = []
        if len(array):
            offsets = _offsets(array)
            slice_of_doc = (offsets[:-1] - offsets[0]) // SEGMENT_BYTES  # by where each document starts
            cuts = np.r_[0, np.flatnonzero(np.diff(slice_of_doc)) + 1, len(array)]
            done = [
                _encode_segmented(tok, array.slice(lo, hi - lo), batch_size, dtype, memory)
                for lo, hi in zip(cuts[:-1], cuts[1:])
            ]
        flat = np.concatenate([ids for ids, _ in done]) if done else np.zeros(0, dtype=dtype)
        lengths = np.concatenate([per_doc for _, per_doc in done]) if done else np.zeros(0, dtype=np.int64)
    else:
        if not isinstance(texts, Sequence):
            texts = texts.to_pylist()
        pieces_list: list[str] = []
        per_doc = np.ones(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):  # a loop over documents only to find the rare long ones
            if len(text) > max_chunk_chars:
                chunk = line_chunks(text, max_chunk_chars)
                pieces_list.extend(chunk)
                per_doc[i] = len(chunk)
            else:
                pieces_list.append(text)
        flat, piece_lengths = _encode_pieces(tok, pieces_list, batch_size, dtype)
        lengths = _per_document(piece_lengths, per_doc)
    if eos_id is not None:
        flat = np.insert(flat, np.cumsum(lengths), np.asarray(eos_id, dtype=dtype))
        lengths += 1
    return flat, lengths


def token_lists(flat: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A list<uint16|uint32> array from a flat id array and per-document lengths (no copy of the ids)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)).cast(
        pa.list_(pa.from_numpy_dtype(flat.dtype))
    )
