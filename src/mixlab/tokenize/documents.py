"""Reading documents tables for the tokenizer stages: the seeded train/valid split and scans.

The split is made per document from a seeded hash of its id, so it does not depend on files,
partitions or workers; each domain with two or more documents gets at least one valid
document. Tokenizer training, evaluation and tokenizing all use this one split, so the
held-out documents of `tokenizer eval` are the `valid` shards of `tokenize`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixlab.errors import InputError
from mixlab.stage import derive_seed
from mixlab.tables import check_documents, open_parquet, read_table

_U64 = float(2**64)


def document_files(inputs: Path | str | Sequence[Path | str]) -> list[Path]:
    """The parquet files of one or more documents inputs, validated against the contract
    (ids unique across all of them)."""
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not paths:
        raise InputError("no documents given; pass a documents directory or parquet file")
    return check_documents(paths)


def id_hash(ids: Iterable[str | None], seed: int, salt: str = "") -> np.ndarray:
    """A uniform value in [0, 1) per id from `derive_seed(seed, salt + id)` (a Python loop:
    xxhash has no array API)."""
    return np.fromiter((derive_seed(seed, salt + (i or "")) for i in ids), dtype=np.float64) / _U64


def valid_mask(
    ids: pa.Array | Sequence[str], seed: int, fraction: float, forced: frozenset[str] = frozenset()
) -> np.ndarray:
    """True for documents in the valid split: hash below `fraction`, or forced (see `forced_valid`)."""
    values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
    mask = id_hash(values, seed) < fraction
    if forced:
        mask |= np.fromiter((i in forced for i in values), dtype=bool, count=len(values))
    return mask


def scan(files: Sequence[Path], columns: Sequence[str] = ("id", "domain")) -> pa.Table:
    """Columns of every file plus `file` (index into files) and `row` (row within the file)."""
    parts = []
    for index, file in enumerate(files):
        table = read_table(file, list(columns), allow_empty=True)
        n = table.num_rows
        table = table.append_column("file", pa.array(np.full(n, index, dtype=np.int32)))
        parts.append(table.append_column("row", pa.array(np.arange(n, dtype=np.int64))))
    return pa.concat_tables(parts, promote_options="permissive")


def text_batches(file: Path, batch_size: int) -> Iterator[pa.Array]:
    """The text column of a documents file in batches, streamed (a corpus need not fit in memory);
    a file that turns out unreadable past its footer is an InputError naming it."""
    try:
        for batch in open_parquet(file).iter_batches(batch_size=batch_size, columns=["text"]):
            yield batch.column(0)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{file}: not a readable parquet file ({str(exc).splitlines()[0]}); write it again"
        ) from None


def _lowest_hash_per_domain(u: np.ndarray, domains: pa.ChunkedArray, fraction: float) -> np.ndarray:
    """Row indices to move into valid: the lowest-hash document of each domain with none valid and >= 2 documents."""
    codes = pc.dictionary_encode(domains.combine_chunks())
    index = codes.indices.to_numpy(zero_copy_only=False)
    n_domains = len(codes.dictionary)
    counts = np.bincount(index, minlength=n_domains)
    has_valid = np.bincount(index, weights=u < fraction, minlength=n_domains) > 0
    order = np.lexsort((u, index))  # by domain, then hash
    first = order[np.searchsorted(index[order], np.arange(n_domains))]
    return first[(~has_valid) & (counts >= 2)]


def split_table(files: Sequence[Path], seed: int, fraction: float) -> tuple[pa.Table, frozenset[str]]:
    """(id, domain, file, row, valid) for every document, and the ids forced into valid."""
    table = scan(files)
    if table["domain"].null_count:
        raise InputError(
            f"{table['domain'].null_count} documents have a null domain; "
            "run `mixlab ingest ... --domain NAME` to give them one"
        )
    ids = table["id"].to_pylist()
    u = id_hash(ids, seed)
    valid = u < fraction
    forced: frozenset[str] = frozenset()
    if fraction > 0 and table.num_rows:
        rows = _lowest_hash_per_domain(u, table["domain"], fraction)
        valid[rows] = True
        forced = frozenset(ids[i] for i in rows)
    return table.append_column("valid", pa.array(valid)), forced


def text_bytes(file: Path, batch_size: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 byte length of every document's text, -1 where null; whether it has any
    non-whitespace character), streamed."""
    lengths, content = [], []
    for text in text_batches(file, batch_size):
        nbytes = pc.fill_null(pc.binary_length(text), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        blank = pc.fill_null(pc.utf8_is_space(text), True).to_numpy(zero_copy_only=False)
        lengths.append(nbytes)
        content.append(~blank & (nbytes > 0))
    if not lengths:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(lengths), np.concatenate(content)
