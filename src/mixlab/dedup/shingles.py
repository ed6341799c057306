"""Text normalisation and shingle hashes, vectorised over a batch of documents.

A shingle is n consecutive tokens (words or characters) of the normalised text; a document
shorter than n tokens is one shingle of all its tokens. Normalisation and splitting run in
polars/pyarrow over the whole batch; each distinct token is hashed once (xxh3-64) and a
shingle's hash folds its token hashes in numpy. `shingle_hash` is the same function one
shingle at a time: pass it as `hashfunc` to `datasketch.MinHash` and its hash values equal
mixlab's signatures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from mixlab.dedup.config import DedupConfig

FOLD = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier folding token hashes into a shingle hash
_MASK64 = (1 << 64) - 1

# Per-document status codes (stored with the signatures, counted in the manifest).
OK, SHORT, EMPTY, NULL = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", SHORT: "short", EMPTY: "empty", NULL: "null_text"}


# MurmurHash3's finalisers, fmix32 and fmix64: one avalanching bijection at two widths.
_FMIX_CONSTANTS = {
    np.dtype(np.uint32): (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16),
    np.dtype(np.uint64): (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33),
}


def fmix(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser at the width of `h` (uint32 or uint64), element-wise with wraparound."""
    s1, m1, s2, m2, s3 = (h.dtype.type(c) for c in _FMIX_CONSTANTS[h.dtype])
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _MASK64
    return h ^ (h >> 33)


def token_hash(token: str) -> int:
    """64-bit hash of one token (xxh3 of its UTF-8 bytes)."""
    return xxhash.xxh3_64_intdigest(token.encode())


def shingle_hash(shingle: Sequence[str]) -> int:
    """32-bit hash of one shingle (a sequence of tokens): the reference for `shingle_batch`."""
    h = 0
    for token in shingle:
        h = (h * int(FOLD) + token_hash(token)) & _MASK64
    return _fmix64_int(h) >> 32


def normalise_expr(cfg: DedupConfig, column: str = "text") -> pl.Expr | None:
    """The configured character normalisations as one polars expression; None when all are off.

    Whitespace is handled by splitting (pyarrow's whitespace split matches `str.split()`).
    """
    e, changed = pl.col(column), False
    if cfg.nfkc:
        e, changed = e.str.normalize("NFKC"), True
    if cfg.lowercase:
        e, changed = e.str.to_lowercase(), True
    if cfg.strip_punctuation:
        e, changed = e.str.replace_all(r"[\p{P}\p{S}]", ""), True
    if cfg.normalize_digits:
        e, changed = e.str.replace_all(r"\d", "0"), True
    return e if changed else None


def normalise(text: str, cfg: DedupConfig) -> str:
    """One text normalised as the batch path does it (the reference, for tests and datasketch)."""
    expr = normalise_expr(cfg)
    if expr is not None:
        text = pl.DataFrame({"text": [text]}).select(expr).item()
    if cfg.collapse_whitespace:
        text = " ".join(text.split())
    return text


def tokens(text: str, cfg: DedupConfig) -> list[str]:
    """The tokens of one normalised text: whitespace-separated words, or characters."""
    return text.split() if cfg.shingle == "words" else list(text)


def shingles(text: str, cfg: DedupConfig) -> list[tuple[str, ...]]:
    """The shingles of one raw text, in order (with repeats): the reference for `shingle_batch`."""
    toks = tokens(normalise(text, cfg), cfg)
    n = cfg.ngram
    if not toks:
        return []
    if len(toks) < n:
        return [tuple(toks)]
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


@dataclasses.dataclass
class ShingledBatch:
    """Shingle hashes of a batch: document d owns ``hashes[offsets[d]:offsets[d+1]]`` (sorted, unique)."""

    hashes: np.ndarray  # (S,) uint32
    offsets: np.ndarray  # (n_docs + 1,) int64
    status: np.ndarray  # (n_docs,) int8: OK, SHORT, EMPTY, NULL
    text_hash: np.ndarray  # (n_docs,) uint64: xxh3-64 of the normalised text (0 for null text)


def _hash_each(strings: pa.Array) -> np.ndarray:
    """xxh3-64 of every string, one call per distinct string (a vocabulary, not the text)."""
    if len(strings) == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = pc.dictionary_encode(strings)
    vocab = encoded.dictionary.cast(pa.large_binary()).to_pylist()
    vocab_hashes = np.fromiter((xxhash.xxh3_64_intdigest(v) for v in vocab), np.uint64, count=len(vocab))
    return vocab_hashes[encoded.indices.to_numpy(zero_copy_only=False)]


def _split_words(texts: pa.Array) -> pa.ListArray:
    ascii_only = pc.all(pc.fill_null(pc.string_is_ascii(texts), True)).as_py()
    split = pc.ascii_split_whitespace if ascii_only is not False else pc.utf8_split_whitespace
    return split(texts)


def _flatten(lists: pa.Array, n_docs: int) -> tuple[pa.Array, np.ndarray]:
    """(non-empty tokens, tokens per document): leading/trailing whitespace yields '' tokens."""
    offs = lists.offsets.to_numpy().astype(np.int64)
    flat = lists.values[offs[0] : offs[-1]] if len(lists) else lists.values
    offs = offs - offs[0]
    nonempty = pc.greater(pc.binary_length(flat), 0)
    keep = nonempty.to_numpy(zero_copy_only=False)
    doc = np.repeat(np.arange(n_docs), np.diff(offs))
    counts = np.bincount(doc[keep], minlength=n_docs)
    return flat.filter(nonempty), counts


def _normalised_tokens(
    texts: pa.LargeStringArray, cfg: DedupConfig
) -> tuple[pa.Array, np.ndarray, pa.Array, np.ndarray]:
    """(normalised texts, null mask, flat tokens, tokens per document) of a batch."""
    n_docs = len(texts)
    expr = normalise_expr(cfg)
    if expr is not None:
        texts = pl.from_arrow(pa.table({"text": texts})).select(expr).to_arrow().column(0).combine_chunks()
        texts = texts.cast(pa.large_string())
    null = texts.is_null().to_numpy(zero_copy_only=False)
    words = _split_words(texts) if (cfg.shingle == "words" or cfg.collapse_whitespace) else None
    normalised = texts
    if cfg.collapse_whitespace:
        assert words is not None
        # Leading/trailing runs split into '' tokens; dropping them before the join trims the ends.
        flat_w, counts_w = _flatten(words, n_docs)
        offs_w = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(counts_w, out=offs_w[1:])
        normalised = pc.binary_join(
            pa.LargeListArray.from_arrays(pa.array(offs_w), flat_w), pa.scalar(" ", pa.large_string())
        )
        if cfg.shingle == "words":
            return normalised, null, flat_w, counts_w
    if cfg.shingle == "words":
        assert words is not None
        return (normalised, null, *_flatten(words, n_docs))
    chars = pl.from_arrow(normalised).str.split("").to_arrow()
    if isinstance(chars, pa.ChunkedArray):
        chars = chars.combine_chunks()
    return (normalised, null, *_flatten(chars, n_docs))


def _text_hashes(normalised: pa.Array, null: np.ndarray) -> np.ndarray:
    """Exact-duplicate key: one hash call per document over its normalised text (0 for null)."""
    text_hash = np.fromiter(
        (
            0 if t is None else xxhash.xxh3_64_intdigest(t)
            for t in normalised.cast(pa.large_binary()).to_pylist()
        ),
        np.uint64,
        count=len(null),
    )
    text_hash[null] = 0
    return text_hash


def _shingle_hashes(tok_hash: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hash of every shingle, its document): token hashes folded n at a time in numpy."""
    n_docs = len(lengths)
    tok_offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=tok_offsets[1:])
    n_sh = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    width = np.minimum(lengths, n)
    total = int(n_sh.sum())
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), n_sh)
    sh_first = np.cumsum(n_sh) - n_sh
    first_tok = tok_offsets[:-1][doc_of] + (np.arange(total, dtype=np.int64) - sh_first[doc_of])
    h = np.zeros(total, dtype=np.uint64)
    short = width < n
    w = width[doc_of] if bool((short & (n_sh > 0)).any()) else None
    for k in range(n):
        if w is None:
            h = h * FOLD + tok_hash[first_tok + k]
        else:
            live = k < w
            h[live] = h[live] * FOLD + tok_hash[first_tok[live] + k]
    return (fmix(h) >> np.uint64(32)).astype(np.uint32), doc_of


def _sorted_sets(sh: np.ndarray, doc_of: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): each document's shingle hashes sorted and de-duplicated, by sorting
    (document, hash) packed in 64 bits."""
    key = np.sort((doc_of.astype(np.uint64) << np.uint64(32)) | sh.astype(np.uint64))
    if len(key):
        key = key[np.r_[True, key[1:] != key[:-1]]]
    hashes = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=n_docs)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return hashes, offsets


def shingle_batch(texts: pa.Array | pa.ChunkedArray, cfg: DedupConfig) -> ShingledBatch:
    """Normalise, tokenise and hash every shingle of a batch of texts without a per-shingle Python call."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = texts.cast(pa.large_string())
    n_docs = len(texts)
    normalised, null, flat, lengths = _normalised_tokens(texts, cfg)
    text_hash = _text_hashes(normalised, null)
    sh, doc_of = _shingle_hashes(_hash_each(flat), lengths, cfg.ngram)
    hashes, offsets = _sorted_sets(sh, doc_of, n_docs)
    status = np.full(n_docs, OK, dtype=np.int8)
    status[(lengths > 0) & (lengths < cfg.ngram)] = SHORT
    status[lengths == 0] = EMPTY
    status[null] = NULL
    return ShingledBatch(hashes=hashes, offsets=offsets, status=status, text_hash=text_hash)
