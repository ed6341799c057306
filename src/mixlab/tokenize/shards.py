"""The token-shard layout and the reader that training consumes.

A tokenize output directory looks like::

    manifest.json                 stats: vocab_size, eos_id, token_dtype, domains
    tokenizer/                    copy of the tokenizer used (tokenizer.json, ...)
    token_counts.parquet          domain, split, documents, tokens  (the mixture prior)
    <domain>/<split>/shard_00000.parquet   id, domain, tokens: list<uint16|uint32> (EOS appended)
    <domain>/<split>/_stream.npy  the split's tokens concatenated in shard order, for memory-mapping
                                  (underscored so parquet dataset readers of the folder skip it)

Training reads a domain's split as one flat token stream (documents back to back, each
ending in EOS): memory-mapped from ``_stream.npy`` when present, else read once from the
shards, never re-parsed per batch.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixlab.errors import InputError
from mixlab.stage import Manifest
from mixlab.tables import parquet_files

SPLITS = ("train", "valid")
STREAM = "_stream.npy"
TOKEN_COUNTS = "token_counts.parquet"
TOKENIZER_DIR = "tokenizer"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def split_dir(tokens_dir: Path | str, domain: str, split: str) -> Path:
    return Path(tokens_dir) / domain / split


def domains(tokens_dir: Path | str) -> list[str]:
    """Domains present in a tokens directory, from its token counts."""
    counts = read_token_counts(tokens_dir)
    return sorted(set(counts.column("domain").to_pylist()))


def read_token_counts(tokens_dir: Path | str) -> pa.Table:
    path = Path(tokens_dir) / TOKEN_COUNTS
    if not path.is_file():
        raise InputError(f"{tokens_dir}: no {TOKEN_COUNTS}; pass the output directory of `mixlab tokenize`")
    return pq.read_table(path)


def tokens_info(tokens_dir: Path | str) -> dict:
    """vocab_size, eos_id and token dtype recorded by the tokenize stage."""
    stats = Manifest.load(tokens_dir).stats
    missing = [k for k in ("vocab_size", "eos_id") if k not in stats]
    if missing:
        raise InputError(f"{tokens_dir}: manifest lacks {missing}; not a `mixlab tokenize` output")
    return stats


@functools.lru_cache(maxsize=64)
def _stream_cached(path: str, mtime_ns: int) -> np.ndarray:
    directory = Path(path)
    stream = directory / STREAM
    if stream.is_file():
        return np.load(stream, mmap_mode="r")
    parts = []
    for file in parquet_files(directory):
        column = pq.read_table(file, columns=["tokens"]).column("tokens")
        for chunk in column.chunks:
            parts.append(chunk.flatten().to_numpy(zero_copy_only=False))
    if not parts:
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate(parts)


def domain_stream(tokens_dir: Path | str, domain: str, split: str) -> np.ndarray:
    """The concatenated token stream of one domain's split (read-only array, cached per process)."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    directory = split_dir(tokens_dir, domain, split)
    if not directory.is_dir():
        raise InputError(
            f"{tokens_dir}: no shards for domain {domain!r} split {split!r} (domains: {', '.join(domains(tokens_dir))})"
        )
    return _stream_cached(str(directory), directory.stat().st_mtime_ns)
