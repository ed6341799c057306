"""Parquet contracts and the one place parquet is read and written.

Schemas of the tables stages exchange, the documents-contract check, atomic table writes,
and row-range partitions (a data-parallel stage's unit of work and of resume). Readers take
local paths or fsspec URLs (``s3://bucket/docs/``): a URL is opened where it is read, so a
Dask worker reading a partition opens its file itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mixlab import storage
from mixlab.errors import InputError
from mixlab.storage import Location, is_url

DOCUMENTS_SCHEMA = pa.schema([("id", pa.string()), ("domain", pa.string()), ("text", pa.string())])


DUPLICATES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("domain", pa.string()),
        ("cluster_id", pa.string()),
        ("kept_id", pa.string()),
        ("kind", pa.string()),
        ("jaccard", pa.float64()),
    ]
)


TOKEN_COUNTS_SCHEMA = pa.schema(
    [("domain", pa.string()), ("split", pa.string()), ("documents", pa.int64()), ("tokens", pa.int64())]
)


_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())


def documents_dir(path: Path) -> Path:
    """A stage output holding a ``documents/`` folder (synth, ingest, dedup) means that folder:
    its other tables (duplicates, planted pairs) are not documents. Any other path is itself."""
    docs = path / "documents"
    is_output = (path / "_mixlab" / "manifest.json").is_file() or (path / "manifest.json").is_file()
    return docs if is_output and docs.is_dir() else path


def parquet_files(path: Location) -> list[Path] | list[Location]:
    """The parquet files of a file or directory (recursively, sorted, hidden/underscored skipped);
    a documents-producing stage's output dir gives its documents (`documents_dir`).

    For a URL, the files' URLs (listed through fsspec, nothing downloaded).
    """
    if is_url(path):
        docs = storage.join(path, "documents")  # a documents-producing stage's output: its documents
        if storage.is_file(storage.join(path, storage.MANIFEST)) and storage.exists(docs):
            path = docs
        found = storage.expand(path)
        if len(found) == 1 and found[0] == path:
            return found  # a single file, whatever its name
        urls = [f for f in found if str(f).endswith(".parquet")]
        if not urls:
            raise InputError(
                f"{path}: no .parquet files found; pass a parquet file or a folder of them "
                "(e.g. a mixlab stage's output), or run `mixlab ingest` on other formats"
            )
        return urls
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    path = documents_dir(path)
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(
            f"{path}: no .parquet files found; pass a parquet file or a folder of them "
            "(e.g. a mixlab stage's output), or run `mixlab ingest` on other formats"
        )
    return files


def open_parquet(file: Location, storage_options: Mapping[str, Any] | None = None) -> pq.ParquetFile:
    """A ParquetFile of a local path or a URL (opened through fsspec with the storage options).

    Use this rather than `pq.ParquetFile` / `pq.read_table` on a str: pyarrow would open an
    `s3://` URL with its own client, which knows nothing of mixlab's storage_options.
    """
    if is_url(file):
        return pq.ParquetFile(storage.open_input(str(file), storage_options=storage_options))
    return pq.ParquetFile(file)


def read_schema(file: Location, fix: str = "write it again") -> pa.Schema:
    try:
        if is_url(file):
            return open_parquet(file).schema_arrow
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{file}: not a readable parquet file ({_first_line(exc)}); {fix}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def check_numeric(schema: pa.Schema, columns: Iterable[str], where: Path | str, fix: str = "") -> None:
    """Columns that must hold numbers (weights, losses): another type is one worded line."""
    for name in columns:
        tp = schema.field(name).type
        if not (pa.types.is_integer(tp) or pa.types.is_floating(tp) or pa.types.is_null(tp)):
            raise InputError(
                f"{where}: column {name!r} has type {tp}, expected numbers" + (f"; {fix}" if fix else "")
            )


def read_table(
    path: Path | str,
    columns: Sequence[str] | None = None,
    *,
    required: Sequence[str] = (),
    allow_empty: bool = False,
    fix: str = "",
) -> pa.Table:
    """A parquet file, or every parquet file of a folder, as one table: the one reader of inputs.

    Every way it can fail is said in one line naming the file and what to do: no such path, a
    folder without parquet, a truncated or corrupt file, `required` columns missing, and (unless
    `allow_empty`) no rows at all. `fix` is appended, e.g. "make it with `mixlab mixtures sample`".
    """
    files = parquet_files(path)
    hint = f"; {fix}" if fix else ""
    tables = []
    for file in files:
        names = read_schema(file, fix or "write it again").names
        missing = [c for c in (*required, *(columns or ())) if c not in names]
        if missing:
            raise InputError(
                f"{file}: column(s) {', '.join(map(repr, dict.fromkeys(missing)))} missing "
                f"(found: {', '.join(names) or 'none'}){hint}"
            )
        try:
            wanted = list(columns) if columns is not None else None
            if is_url(file):
                tables.append(open_parquet(file).read(columns=wanted))
            else:
                tables.append(pq.read_table(file, columns=wanted))
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: not a readable parquet file ({_first_line(exc)}){hint}") from None
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowException as exc:
        raise InputError(
            f"{path}: its parquet files do not share one schema ({_first_line(exc)}){hint}"
        ) from None
    if not allow_empty and table.num_rows == 0:
        where = files[0] if len(files) == 1 else path
        raise InputError(f"{where}: has no rows{hint}")
    return table


def check_documents(path: Location | Sequence[Location], *, check_unique: bool = True) -> list[Location]:
    """Validate the documents contract (id, domain, text as strings; ids unique and non-null).

    `path` is one documents input or several; ids must be unique across all of them together.
    Returns the parquet files. Errors name the file, the problem and the fix. A table with no
    rows passes: whether that is acceptable is the stage's decision.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths:
        raise InputError("no documents given; pass a documents table (a parquet file or a folder of them)")
    where = ", ".join(map(str, paths))
    files = []
    for given in paths:
        for file in parquet_files(given):
            schema = read_schema(file)
            names = schema.names
            for column, flag in (
                ("text", "--text-column"),
                ("id", "--id-column"),
                ("domain", "--domain-column"),
            ):
                if column not in names:
                    others = ", ".join(n for n in names if n not in ("id", "domain", "text")) or "none"
                    raise InputError(
                        f"{file}: column {column!r} missing (found: {', '.join(names) or 'none'}); "
                        f"run `mixlab ingest {given} --out DIR {flag} <one of: {others}>` to build a documents table"
                    )
                if schema.field(column).type not in _STRING_TYPES:
                    raise InputError(
                        f"{file}: column {column!r} has type {schema.field(column).type}, expected string; "
                        "run `mixlab ingest` to convert it"
                    )
            files.append(file)
    if not check_unique:
        return files
    import polars as pl

    # One scan per file: inputs may carry different extra columns.
    scan = pl.concat([_id_scan(f) for f in files])
    try:
        stats = (
            scan.select(
                pl.len().alias("rows"),
                pl.col("id").null_count().alias("null_ids"),
                pl.col("id").n_unique().alias("unique_ids"),
                pl.col("domain").null_count().alias("null_domains"),
            )
            .collect()
            .row(0, named=True)
        )
        if stats["unique_ids"] != stats["rows"]:
            dupes = (
                scan.group_by("id")
                .agg(pl.len(), pl.col("_file").unique().sort())
                .filter(pl.col("len") > 1)
                .sort("id")
                .head(5)
                .collect()
            )
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{where}: could not read documents ({exc})") from None
    if stats["null_ids"]:
        raise InputError(f"{where}: {stats['null_ids']} documents have a null id; ids must be set")
    if stats["null_domains"]:
        raise InputError(
            f"{where}: {stats['null_domains']} documents have a null domain; "
            "run `mixlab ingest` with --domain NAME or --domain-from file/folder to set one"
        )
    if stats["unique_ids"] != stats["rows"]:
        first, in_files = dupes["id"][0], dupes["_file"][0].to_list()
        raise InputError(
            f"{where}: ids are not unique ({stats['rows'] - stats['unique_ids']} repeated, e.g. "
            f"{dupes['id'].to_list()}); {first!r} is in {' and '.join(in_files)}; ids must be unique: fix "
            "them at the source, or drop the id column and run `mixlab ingest`, which derives ids"
        )
    return files


def _id_scan(file: Location) -> Any:
    """The id and domain columns of one documents file, lazily (for the uniqueness check)."""
    import polars as pl

    if is_url(file):
        # polars' own cloud reader would not see mixlab's storage_options: read through fsspec.
        table = open_parquet(file).read(columns=["id", "domain"])
        return pl.from_arrow(table).lazy().with_columns(pl.lit(str(file)).alias("_file"))
    return pl.scan_parquet(str(file)).select("id", "domain", pl.lit(str(file)).alias("_file"))


# Row groups of the documents tables mixlab writes. Tasks read row ranges, and parquet reads
# whole row groups: small groups keep a task from decoding text it does not use.
DOCUMENT_ROW_GROUP = 4096


def write_table(
    table: pa.Table, path: Path, *, compression: str = "zstd", row_group_size: int | None = None
) -> None:
    """Write one parquet file atomically (temp name + rename) so a kill leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression=compression, row_group_size=row_group_size)
    os.replace(tmp, path)


def write_shard(
    table: pa.Table, path: Path, *, compression: str = "zstd", row_group_size: int | None = None
) -> bool:
    """Write one shard of a data folder, unless it has no rows; returns whether it was written.

    A data folder holds parquet only and never a 0-row file: HF ``datasets`` refuses one
    ("BatchSize must be greater than 0"). Readers of a folder cope with a part that wrote none.
    """
    if table.num_rows == 0:
        return False
    write_table(table, path, compression=compression, row_group_size=row_group_size)
    return True


@dataclasses.dataclass(frozen=True)
class Partition:
    """Rows [start, stop) of one parquet file: a data-parallel stage's unit of work and of resume."""

    index: int
    file: str
    start: int
    stop: int
    # For a URL file: the fsspec options the worker opens it with (kept out of repr: secrets).
    storage_options: dict[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)


def plan_partitions(
    files: Iterable[Location], max_rows: int, min_parts: int = 8, min_rows: int = 2000
) -> list[Partition]:
    """Row ranges of at most `max_rows` rows, and small enough that a small corpus still makes
    about `min_parts` of them (so every worker has work), but not below `min_rows`: a part has
    fixed costs (reading, the tokenizer's first pass over its words) that smaller parts repeat.

    The plan depends only on the files and the settings, never on the cluster, so a resumed
    run finds its completion markers where it left them.
    """
    files = [f if is_url(f) else Path(f) for f in files]
    counts = [open_parquet(f).metadata.num_rows for f in files]
    per_part = max(1, min(max_rows, max(min_rows, -(-sum(counts) // min_parts))))
    options = storage.current_options() or None
    parts: list[Partition] = []
    for file, rows in zip(files, counts):
        extra = {"storage_options": options} if is_url(file) else {}
        for start in range(0, max(rows, 1), per_part):
            parts.append(Partition(len(parts), str(file), start, min(rows, start + per_part), **extra))
    return parts


def read_partition(part: Partition, columns: Iterable[str] | None = None) -> pa.Table:
    """The partition's rows, reading only the row groups that overlap it."""
    columns = list(columns) if columns is not None else None
    pf = open_parquet(part.file, part.storage_options) if is_url(part.file) else pq.ParquetFile(part.file)
    tables, offset = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < part.stop and offset + n > part.start:
            t = pf.read_row_group(g, columns=columns)
            lo, hi = max(part.start - offset, 0), min(part.stop - offset, n)
            tables.append(t.slice(lo, hi - lo))
        offset += n
    if not tables:
        return pf.schema_arrow.empty_table().select(columns) if columns else pf.schema_arrow.empty_table()
    return pa.concat_tables(tables)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"
