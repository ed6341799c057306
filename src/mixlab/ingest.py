"""Raw corpora (parquet, JSONL / JSONL.gz, folders of text files) into the documents contract.

Reads the paths of ``inputs["sources"]``; writes ``shard_00000.parquet`` ... with ``id``,
``domain``, ``text``, ``source``. Null, empty and non-UTF-8 documents are counted per source
and reported, never fatal; a broken JSONL line or an unreadable parquet file is an error
naming the file and line, and so is an id given to more than one document.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from mixlab.config import check_choices, option
from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage
from mixlab.tables import DOCUMENT_ROW_GROUP, read_schema, shard_name, write_table


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """`mixlab ingest`: raw parquet / JSONL / text folders into the documents contract."""

    text_column: str = option("text", "column (parquet) or key (JSONL) holding the document text")
    id_column: str = option(
        "id", "column or key holding document ids; derived from source + content when absent"
    )
    domain_column: str = option("domain", "column or key holding the domain, used when present")
    domain: str | None = option(
        None, "domain for documents without a domain column (with --domain-from flag: for every document)"
    )
    domain_from: str = option(
        "auto",
        "where the domain comes from: auto (column, else --domain, else file/folder name), column, file, folder, flag",
        choices=("auto", "column", "file", "folder", "flag"),
    )
    on_invalid_utf8: str = option(
        "skip",
        "documents that are not valid UTF-8: skip (counted) or replace bad bytes with U+FFFD",
        choices=("skip", "replace"),
    )
    rows_per_file: int = option(100_000, "maximum documents per output parquet file")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.domain_from == "flag" and not self.domain:
            raise ConfigError("--domain-from flag: pass --domain NAME as well")
        if self.rows_per_file < 1:
            raise ConfigError("--rows-per-file: must be at least 1")


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")
TEXT_SUFFIXES = (".txt", ".md", ".text")
SUPPORTED = f"parquet (.parquet), JSON lines ({', '.join(JSONL_SUFFIXES)}), text ({', '.join(TEXT_SUFFIXES)})"
BATCH = 10_000

Record = tuple[Any, Any, Any]  # (id or None, domain or None, text as str | bytes | None)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def _strip_suffix(name: str) -> str:
    for suffix in (*JSONL_SUFFIXES, *TEXT_SUFFIXES, ".parquet"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover(inputs: Sequence[Path]) -> list[tuple[Path, str, Path]]:
    """(file, kind, root) for every readable input file; folders are walked recursively."""
    found: list[tuple[Path, str, Path]] = []
    for root in inputs:
        root = Path(root)
        if not root.exists():
            raise InputError(f"{root}: no such file or directory")
        if root.is_file():
            kind = _kind(root)
            if kind is None:
                raise InputError(
                    f"{root}: unknown input type; supported: {SUPPORTED}, or a folder of such files; "
                    "convert it to one of these"
                )
            found.append((root, kind, root.parent))
            continue
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts) and _kind(p)
        )
        if not files:
            raise InputError(
                f"{root}: empty folder (no .parquet, .jsonl[.gz] or .txt files found); point ingest at the corpus"
            )
        found += [(p, _kind(p), root) for p in files]  # type: ignore[misc]
    return found


def _read_parquet(path: Path, cfg: IngestConfig) -> Iterator[list[Record]]:
    # Streamed in batches (a raw file may not fit in memory), so not through `read_table`; the
    # schema is read by the one worded reader of parquet schemas.
    names = read_schema(path).names
    if cfg.text_column not in names:
        raise InputError(
            f"{path}: column {cfg.text_column!r} missing (found: {', '.join(names)}); "
            f"pass --text-column with one of them"
        )
    if cfg.domain_from == "column" and cfg.domain_column not in names:
        raise InputError(
            f"{path}: column {cfg.domain_column!r} missing (found: {', '.join(names)}); "
            "pass --domain-column, or --domain-from file/folder/flag"
        )
    columns = [c for c in (cfg.id_column, cfg.domain_column, cfg.text_column) if c in names]
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=columns):
            n = batch.num_rows
            col = {name: batch.column(name).to_pylist() for name in columns}
            yield list(
                zip(
                    col.get(cfg.id_column, [None] * n),
                    col.get(cfg.domain_column, [None] * n),
                    col[cfg.text_column],
                )
            )
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: corrupt parquet data ({exc})") from None


def _read_jsonl(path: Path, cfg: IngestConfig) -> Iterator[list[Record]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    batch: list[Record] = []
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):  # JSON is parsed per record anyway
                if not line.strip():
                    continue
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    # Bad bytes are a document problem (counted), not a broken file: they stay as
                    # surrogate escapes so --on-invalid-utf8 decides to skip or replace them.
                    line = line.decode("utf-8", errors="surrogateescape")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{path}:{lineno}: not valid JSON ({exc.args[0] if exc.args else exc}); fix or remove the line"
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError(
                        f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}"
                    )
                if cfg.text_column not in obj:
                    raise InputError(
                        f"{path}:{lineno}: key {cfg.text_column!r} missing (found: {', '.join(obj)}); "
                        "pass --text-column with one of them"
                    )
                batch.append((obj.get(cfg.id_column), obj.get(cfg.domain_column), obj[cfg.text_column]))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path}: could not read ({exc}); the file is truncated or corrupt: write or download it again"
        ) from None
    if batch:
        yield batch


def _read_text(path: Path, cfg: IngestConfig) -> Iterator[list[Record]]:
    yield [(None, None, path.read_bytes())]


READERS = {"parquet": _read_parquet, "jsonl": _read_jsonl, "text": _read_text}


def _domain_for(cfg: IngestConfig, value: Any, file: Path, root: Path) -> str | None:
    """The document's domain by --domain-from; `auto` is column, else --domain, else the name."""
    # The folder directly under the input root names the domain (corpus/legal/2020/a.txt -> legal);
    # files at the root take the root's own name.
    rel = file.relative_to(root).parts
    folder = rel[0] if len(rel) > 1 else root.resolve().name
    name = folder if _kind(file) == "text" else _strip_suffix(file.name)
    from_column = None if value is None or not str(value) else str(value)
    return {
        "flag": cfg.domain,
        "column": from_column,
        "file": _strip_suffix(file.name),
        "folder": folder,
        "auto": from_column or cfg.domain or name,
    }[cfg.domain_from]


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repair_utf8(text: str) -> str:
    """Undecodable bytes (kept as surrogate escapes) become U+FFFD; other lone surrogates '?'."""
    try:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="replace").decode("utf-8")


def document_id(source: str, row: int, text: str) -> str:
    """A stable id from the source, its position and the content (unique even for repeated texts)."""
    return xxhash.xxh3_128_hexdigest(f"{source}\0{row}\0".encode() + text.encode())[:24]


def clean_text(text: Any, cfg: IngestConfig) -> tuple[str | None, str | None]:
    """(the document's text, or None when it is skipped; what was counted: a skip reason or
    ``utf8_replaced``, else None)."""
    counted = None
    if text is None:
        return None, "null_text"
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            if cfg.on_invalid_utf8 == "skip":
                return None, "invalid_utf8"
            text, counted = text.decode("utf-8", errors="replace"), "utf8_replaced"
    elif isinstance(text, str):
        if not _utf8_ok(text):  # lone surrogates: from bad bytes or \ud800-style escapes
            if cfg.on_invalid_utf8 == "skip":
                return None, "invalid_utf8"
            text, counted = _repair_utf8(text), "utf8_replaced"
    else:
        return None, "not_text"
    if not text.strip():
        return None, "empty"
    return text, counted


@dataclasses.dataclass
class _Shards:
    """Documents collected into ``shard_NNNNN.parquet`` files of at most `rows` rows."""

    out: Path
    rows: int
    count: int = 0
    pending: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)

    def add(self, doc_id: str, domain: str, text: str, source: str) -> None:
        self.pending.append((doc_id, domain, text, source))
        if len(self.pending) >= self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        columns = zip(("id", "domain", "text", "source"), zip(*self.pending))
        table = pa.table({name: pa.array(list(values), pa.string()) for name, values in columns})
        write_table(table, self.out / shard_name(self.count), row_group_size=DOCUMENT_ROW_GROUP)
        self.count += 1
        self.pending = []


def _ingest_file(
    file: Path, kind: str, root: Path, cfg: IngestConfig, shards: _Shards, per_domain: Counter
) -> tuple[str, Counter]:
    """Every usable record of one input file into `shards`; returns (its source name, what was skipped)."""
    source = file.relative_to(root).as_posix() if file != root else file.name
    skipped: Counter = Counter()
    row = 0
    for batch in READERS[kind](file, cfg):
        for given_id, domain_value, raw in batch:  # per-record checks decide skip vs keep
            row += 1
            text, counted = clean_text(raw, cfg)
            if counted is not None:
                skipped[counted] += 1
            if text is None:
                continue
            domain = _domain_for(cfg, domain_value, file, root)
            if not domain:
                skipped["no_domain"] += 1
                continue
            doc_id = str(given_id) if given_id is not None else document_id(source, row, text)
            if not (_utf8_ok(doc_id) and _utf8_ok(domain)):  # bad bytes in a JSONL id or domain
                doc_id, domain = _repair_utf8(doc_id), _repair_utf8(domain)
            shards.add(doc_id, domain, text, source)
            per_domain[domain] += 1
    return source, skipped


def check_unique_ids(out: Path, files_by_source: Mapping[str, Sequence[Path]], cfg: IngestConfig) -> None:
    """Refuse ids given more than once, naming the input files they came from (not the output)."""
    repeated = (
        pl.scan_parquet(str(out / "*.parquet"))
        .group_by("id")
        .agg(pl.len(), pl.col("source").unique().sort())
        .filter(pl.col("len") > 1)
        .sort("id")
        .collect()
    )
    if repeated.height == 0:
        return
    first = repeated.row(0, named=True)
    files = [str(f) for s in first["source"] for f in files_by_source[s]]
    if cfg.id_column != IngestConfig().id_column:
        advice = f"drop --id-column {cfg.id_column} so ids are derived, or make that column's values unique"
    else:
        advice = (
            f"make the inputs' {cfg.id_column!r} values unique (ingest derives ids only where there are none)"
        )
    raise InputError(
        f"{', '.join(files)}: ids are not unique ({repeated.height} repeated, e.g. "
        f"{repeated['id'].head(5).to_list()}); {first['id']!r} is given to {first['len']} documents; {advice}"
    )


def no_documents_advice(skipped: dict[str, int], cfg: IngestConfig) -> str:
    """What to do when every document of the inputs was skipped (or there were none)."""
    if skipped.get("invalid_utf8"):
        return "pass --on-invalid-utf8 replace to keep documents with bad bytes (as U+FFFD)"
    if skipped.get("null_text") or skipped.get("empty"):
        return f"check that --text-column ({cfg.text_column!r}) names the column holding the text"
    if skipped.get("no_domain"):
        return "pass --domain NAME to give the documents a domain"
    return "the inputs hold no documents: give files with rows"


def run_ingest(
    inputs: Inputs, cfg: IngestConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Read every input of `inputs["sources"]` into the documents contract in ``out_dir``.

    See the module docstring. Runs in this process; `client` is accepted for the stage
    contract and unused.
    """
    inputs = absolute_inputs(inputs)
    sources = inputs.get("sources")
    paths = [sources] if isinstance(sources, (str, Path)) else list(sources or [])
    if not paths:
        raise InputError("ingest: no inputs given")
    files = discover(paths)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        shards = _Shards(stage.out, cfg.rows_per_file)
        per_domain: Counter = Counter()
        skipped: dict[str, Counter] = {}
        files_by_source: dict[str, list[Path]] = {}  # two roots may hold the same relative name
        for file, kind, root in files:
            source, skipped_here = _ingest_file(file, kind, root, cfg, shards, per_domain)
            files_by_source.setdefault(source, []).append(file)
            if skipped_here:
                skipped.setdefault(source, Counter()).update(skipped_here)
        shards.flush()
        totals = dict(sum(skipped.values(), Counter()))
        written = sum(per_domain.values())
        if written == 0:
            raise InputError(
                f"ingest: no usable documents in {', '.join(map(str, paths))} (skipped: {totals}); "
                + no_documents_advice(totals, cfg)
            )
        check_unique_ids(stage.out, files_by_source, cfg)
        for source, c in skipped.items():
            log(f"ingest: {source}: skipped {dict(c)}")
        counts = {
            "documents": written,
            "skipped": sum(v for k, v in totals.items() if k != "utf8_replaced"),
            "files": len(files),
            "shards": shards.count,
        }
        stats = {
            "per_domain": dict(per_domain),
            "skipped": totals,
            "skipped_per_source": {s: dict(c) for s, c in skipped.items()},
        }
        return counts, stats

    return run_stage("ingest", cfg, {"sources": paths}, out_dir, body, force=force)
