"""Raw corpora (parquet, JSONL / JSONL.gz, folders of text files) into the documents contract.

Writes ``shard_00000.parquet`` ... with ``id``, ``domain``, ``text``, ``source``. Null,
empty and non-UTF-8 documents are counted per source and reported, never fatal; a broken
JSONL line or an unreadable parquet file is an error naming the file and line.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from mixlab.config import check_choices, option
from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.stage import Manifest, StageDir, run_stage
from mixlab.tables import DOCUMENT_ROW_GROUP, shard_name, write_table


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
                    f"{root}: unknown input type; expected .parquet, .jsonl[.gz] or a folder of .txt files"
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
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    names = pf.schema_arrow.names
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
        for batch in pf.iter_batches(batch_size=BATCH, columns=columns):
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
        raise InputError(f"{path}: could not read ({exc})") from None
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


def run_ingest(
    inputs: Sequence[Path | str], cfg: IngestConfig, out_dir: Path | str, *, force: bool = False
) -> Manifest:
    """Read every input into the documents contract in ``out_dir``; see the module docstring."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("ingest: no inputs given")
    files = discover(paths)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        skipped: dict[str, Counter] = defaultdict(Counter)
        per_domain: Counter = Counter()
        shard, pending, written = 0, [], 0

        def flush() -> None:
            nonlocal shard, pending
            if pending:
                cols = list(zip(*pending))
                table = pa.table(
                    {
                        name: pa.array(list(values), pa.string())
                        for name, values in zip(("id", "domain", "text", "source"), cols)
                    }
                )
                write_table(table, stage.out / shard_name(shard), row_group_size=DOCUMENT_ROW_GROUP)
                shard += 1
                pending = []

        for file, kind, root in files:
            source = file.relative_to(root).as_posix() if file != root else file.name
            row = 0
            for batch in READERS[kind](file, cfg):
                for given_id, domain_value, text in batch:  # per-record checks decide skip vs keep
                    row += 1
                    if text is None:
                        skipped[source]["null_text"] += 1
                        continue
                    if isinstance(text, bytes):
                        try:
                            text = text.decode("utf-8")
                        except UnicodeDecodeError:
                            if cfg.on_invalid_utf8 == "skip":
                                skipped[source]["invalid_utf8"] += 1
                                continue
                            text = text.decode("utf-8", errors="replace")
                            skipped[source]["utf8_replaced"] += 1
                    elif isinstance(text, str):
                        if not _utf8_ok(text):  # lone surrogates: from bad bytes or \ud800-style escapes
                            if cfg.on_invalid_utf8 == "skip":
                                skipped[source]["invalid_utf8"] += 1
                                continue
                            text = _repair_utf8(text)
                            skipped[source]["utf8_replaced"] += 1
                    else:
                        skipped[source]["not_text"] += 1
                        continue
                    if not text.strip():
                        skipped[source]["empty"] += 1
                        continue
                    domain = _domain_for(cfg, domain_value, file, root)
                    if not domain:
                        skipped[source]["no_domain"] += 1
                        continue
                    doc_id = str(given_id) if given_id is not None else document_id(source, row, text)
                    if not (_utf8_ok(doc_id) and _utf8_ok(domain)):  # bad bytes in a JSONL id or domain
                        doc_id, domain = _repair_utf8(doc_id), _repair_utf8(domain)
                    pending.append((doc_id, domain, text, source))
                    per_domain[domain] += 1
                    written += 1
                    if len(pending) >= cfg.rows_per_file:
                        flush()
        flush()
        if written == 0:
            raise InputError(
                f"ingest: no usable documents in {', '.join(map(str, paths))} "
                f"(skipped: {dict(sum(skipped.values(), Counter()))})"
            )
        from mixlab.tables import check_documents

        check_documents(stage.out)  # ids given by the user must be unique across all inputs
        totals = dict(sum(skipped.values(), Counter()))
        for source, c in skipped.items():
            log(f"ingest: {source}: skipped {dict(c)}")
        return (
            {
                "documents": written,
                "skipped": sum(v for k, v in totals.items() if k != "utf8_replaced"),
                "files": len(files),
                "shards": shard,
            },
            {
                "per_domain": dict(per_domain),
                "skipped": totals,
                "skipped_per_source": {s: dict(c) for s, c in skipped.items()},
            },
        )

    return run_stage("ingest", cfg, {"inputs": paths}, out_dir, body, force=force)
