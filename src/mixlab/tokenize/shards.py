"""The token-shard layout and the reader that training consumes.

A tokenize output directory looks like::

    tokens/<domain>/<split>/shard_00000.parquet   id, domain, tokens: list<uint16|uint32> (EOS appended)
    token_counts.parquet                          domain, split, documents, tokens  (the mixture prior)
    tokenizer/                                    copy of the tokenizer used (tokenizer.json, ...)
    _mixlab/manifest.json                         stats: vocab_size, eos_id, token_dtype, domains, shards_dir
    _mixlab/streams/<domain>/<split>.npy          the split's tokens concatenated in shard order

``tokens/`` is the data folder: it holds parquet only, so ``pyarrow.dataset.dataset(OUT/tokens)``,
``polars.scan_parquet("OUT/tokens/**/*.parquet")``, HF ``datasets.load_dataset("parquet",
data_dir="OUT/tokens")`` and datatrove's ``ParquetReader("OUT/tokens")`` each give every token
row exactly once (the domain is a column as well as a folder name).

A split without documents (the train split of a validation-only domain such as a target) has
no folder, since HF ``datasets`` refuses 0-row shards; token_counts.parquet still lists it with
zeros, and `domain_stream` reads it as an empty stream.

The streams are NumPy ``.npy`` files (format 1.0): the 6 bytes ``\\x93NUMPY``, 2 version bytes,
a little-endian uint16 header length, then an ASCII dict such as ``{'descr': '<u2',
'fortran_order': False, 'shape': (123456,)}`` padded to a multiple of 64 bytes; the token ids
follow, little-endian, back to back. Read one with ``np.load(path, mmap_mode="r")``: a raw
``np.memmap(path, dtype)`` would read the header as tokens. (A ``.npy`` rather than a headerless
``.bin``: its dtype and length travel inside the file, so a stream copied out of its output still
reads right, and outputs of older mixlab versions have the same format.) They are mixlab's
cache, not data: the shards hold the same tokens, and `domain_stream` reads those when an
output was made with ``--no-write-stream``.

Outputs of older mixlab versions (no ``shards_dir`` in the manifest) kept the shards at
``<domain>/<split>/`` and the stream beside them as ``<domain>/<split>/_stream.npy``; they are
still read.

Training reads a domain's split as one flat token stream (documents back to back, each
ending in EOS): memory-mapped from the stream when present, else read once from the shards,
never re-parsed per batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mixlab.errors import InputError
from mixlab.stage import MANIFEST, META, Manifest, has_manifest, manifest_path
from mixlab.tables import parquet_files, read_table

SPLITS = ("train", "valid")
SHARDS_DIR = "tokens"  # the data folder of token shards, inside a tokenize output
STREAMS_DIR = f"{META}/streams"  # <domain>/<split>.npy, mixlab's memory-mapped copy of the shards
LEGACY_STREAM = "_stream.npy"  # older outputs: <domain>/<split>/_stream.npy beside the shards
TOKEN_COUNTS = "token_counts.parquet"
TOKENIZER_DIR = "tokenizer"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


@functools.lru_cache(maxsize=64)
def _shards_dir_cached(path: str, mtime_ns: int) -> str | None:
    return Manifest.load(path).stats.get("shards_dir")


def shards_root(tokens_dir: Path | str) -> Path:
    """The folder holding ``<domain>/<split>/shard_*.parquet``: ``tokens/``, or the output itself
    for outputs of older mixlab versions (whose manifest names no ``shards_dir``)."""
    tokens_dir = Path(tokens_dir)
    manifest = manifest_path(tokens_dir)
    if not manifest.is_file():
        return tokens_dir
    name = _shards_dir_cached(str(tokens_dir), manifest.stat().st_mtime_ns)
    return tokens_dir / name if name else tokens_dir


def split_dir(tokens_dir: Path | str, domain: str, split: str) -> Path:
    """The folder of one domain's split's shards (absent when the split has no documents)."""
    return shards_root(tokens_dir) / domain / split


def stream_path(tokens_dir: Path | str, domain: str, split: str) -> Path:
    """Where the split's ``.npy`` stream is (it may be absent: ``--no-write-stream``)."""
    tokens_dir = Path(tokens_dir)
    root = shards_root(tokens_dir)
    if root == tokens_dir:
        return root / domain / split / LEGACY_STREAM
    return tokens_dir / STREAMS_DIR / domain / f"{split}.npy"


def domains(tokens_dir: Path | str) -> list[str]:
    """Domains present in a tokens directory, from its token counts."""
    counts = read_token_counts(tokens_dir)
    return sorted(set(counts.column("domain").to_pylist()))


def read_token_counts(tokens_dir: Path | str) -> pa.Table:
    path = Path(tokens_dir) / TOKEN_COUNTS
    if not path.is_file():
        raise InputError(f"{tokens_dir}: no {TOKEN_COUNTS}; pass the output directory of `mixlab tokenize`")
    return read_table(path, required=("domain", "split", "documents", "tokens"), allow_empty=True)


def tokens_info(tokens_dir: Path | str) -> dict:
    """vocab_size, eos_id and token dtype recorded by the tokenize stage."""
    stats = Manifest.load(tokens_dir).stats
    missing = [k for k in ("vocab_size", "eos_id") if k not in stats]
    if missing:
        raise InputError(f"{tokens_dir}: manifest lacks {missing}; not a `mixlab tokenize` output")
    return stats


@dataclasses.dataclass(frozen=True)
class TokenShards:
    """A tokenize output, opened once: its counts, vocabulary, EOS id, dtype and domains.

    Every consumer (sample, swarm, select, pretrain, distill) reads these through one handle
    instead of re-reading ``token_counts.parquet`` and the manifest per question.
    """

    path: Path
    vocab_size: int
    eos_id: int
    dtype: np.dtype
    counts: tuple[tuple[str, str, int, int], ...]  # (domain, split, documents, tokens) rows

    @classmethod
    def open(cls, tokens_dir: Path | str) -> TokenShards:
        path = Path(tokens_dir)
        if not path.is_dir():
            raise InputError(
                f"{path}: no such tokens directory; pass the output directory of `mixlab tokenize`"
            )
        missing = [name for name in (TOKEN_COUNTS,) if not (path / name).is_file()]
        if not has_manifest(path):
            missing.insert(0, f"{META}/{MANIFEST}")
        if missing:
            within = path.name == SHARDS_DIR and (path.parent / TOKEN_COUNTS).is_file()
            raise InputError(
                f"{path}: not a `mixlab tokenize` output (no {' or '.join(missing)}); "
                + (
                    f"this is its data folder: pass {path.parent}"
                    if within
                    else "pass the output directory of `mixlab tokenize`"
                )
            )
        info = tokens_info(path)
        table = read_token_counts(path)
        rows = tuple(
            (str(r["domain"]), str(r["split"]), int(r["documents"]), int(r["tokens"]))
            for r in table.to_pylist()
        )
        vocab = int(info["vocab_size"])
        return cls(
            path, vocab, int(info["eos_id"]), np.dtype(info.get("token_dtype") or token_dtype(vocab)), rows
        )

    @property
    def domains(self) -> list[str]:
        """Every domain with any split (mixable ones and validation-only ones such as ``target``)."""
        return sorted({d for d, *_ in self.counts})

    def tokens(self, split: str = "train") -> dict[str, int]:
        """Tokens per domain in one split (domains without that split are absent)."""
        out: dict[str, int] = {}
        for domain, s, _docs, n in self.counts:
            if s == split:
                out[domain] = out.get(domain, 0) + n
        return dict(sorted(out.items()))

    def natural(self, domains: Sequence[str]) -> dict[str, float]:
        """The natural mixture of `domains`: their shares of the train tokens."""
        train = self.tokens("train")
        total = sum(train.get(d, 0) for d in domains)
        if total <= 0:
            raise InputError(f"{self.path}: domains {list(domains)} have no train tokens")
        return {d: train.get(d, 0) / total for d in domains}

    def scored_domains(self, seq_len: int) -> list[str]:
        """Domains whose validation split holds at least one window of `seq_len` + 1 tokens."""
        return [
            d
            for d, n in self.tokens("valid").items()
            if n >= seq_len + 1 and self.split_dir(d, "valid").is_dir()
        ]

    def split_dir(self, domain: str, split: str) -> Path:
        """The folder of one domain's split's shards (absent when the split has no documents)."""
        return split_dir(self.path, domain, split)

    def stream(self, domain: str, split: str) -> np.ndarray:
        return domain_stream(self.path, domain, split)


@functools.lru_cache(maxsize=64)
def _stream_cached(directory: str, stream: str, mtime_ns: int) -> np.ndarray:
    if Path(stream).is_file():
        return np.load(stream, mmap_mode="r")
    parts = []
    for file in parquet_files(directory):
        column = read_table(file, ["tokens"], allow_empty=True).column("tokens")
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
        if (domain, split, 0) in {
            (r["domain"], r["split"], r["documents"]) for r in read_token_counts(tokens_dir).to_pylist()
        }:
            # A split without documents (a validation-only domain's train split) has no folder.
            return np.zeros(0, dtype=np.dtype(tokens_info(tokens_dir).get("token_dtype") or np.uint32))
        raise InputError(
            f"{tokens_dir}: no shards for domain {domain!r} split {split!r} (domains: {', '.join(domains(tokens_dir))})"
        )
    stream = stream_path(tokens_dir, domain, split)
    return _stream_cached(str(directory), str(stream), directory.stat().st_mtime_ns)
