"""Raw corpora into the documents contract, from local paths or any fsspec URL.

Reads parquet, JSON lines (plain, ``.gz``, ``.zst``, ``.bz2``, ``.xz``), Arrow IPC (``.arrow``
/ ``.feather`` / ``.ipc``, file or stream format), folders of text files (all of a folder's
files of those kinds, or the ones ``--glob`` matches, e.g. ``**/*.py``: a matched file of no
data kind is one text document) and Hugging Face Hub datasets (``hf://datasets/ORG/NAME``:
its data files). Writes ``documents/shard_00000.parquet`` ... with ``id``, ``domain``,
``text``, ``source``.

Large inputs are never read whole: each input is cut into partitions that a Dask task opens
and reads itself (parquet by row groups, Arrow IPC files by record batches, plain JSONL by
byte ranges cut at newlines, text files in groups). A compressed JSONL file or an Arrow
*stream* cannot be cut, so it is one partition, read in streaming batches. Every partition
writes its kept documents to scratch; the output shards are then cut from their
concatenation in input order and ids are derived there, so rows, ids and shards are the same
whatever the partitioning. Null, empty and non-UTF-8 documents are counted per source, never
fatal; a broken line or file is a one-line error naming the file (and line), and so is an id
given to more than one document.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import posixpath
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import xxhash

from mixlab import storage
from mixlab.config import check_choices, option
from mixlab.console import log
from mixlab.errors import ConfigError, InputError, MixlabError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, TaskMarkers, absolute_inputs, run_stage
from mixlab.tables import DOCUMENT_ROW_GROUP, documents_dir, shard_name, write_table


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """`mixlab ingest`: raw parquet / JSONL / Arrow / text folders / Hub datasets into the documents contract."""

    text_column: str = option("text", "column (parquet, Arrow) or key (JSONL) holding the document text")
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
    glob: str | None = option(
        None,
        "files of a folder input to read, relative to it (e.g. '**/*.py'); a matched file that is "
        "not parquet / JSONL / Arrow is one text document",
    )
    partition_bytes: int = option(
        64 << 20,
        "input bytes per task: parquet row groups, Arrow batches, plain JSONL byte ranges and text "
        "files are grouped to about this size (compressed JSONL cannot be split: one task per file)",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.domain_from == "flag" and not self.domain:
            raise ConfigError("--domain-from flag: pass --domain NAME as well")
        if self.rows_per_file < 1:
            raise ConfigError("--rows-per-file: must be at least 1")
        if self.partition_bytes < 1:
            raise ConfigError("--partition-bytes: must be at least 1")
        if self.glob is not None and (not self.glob.strip() or self.glob.startswith("/")):
            raise ConfigError(
                f"--glob: {self.glob!r} must be a pattern relative to the folder given, e.g. '**/*.py'"
            )


# --- kinds of input file ----------------------------------------------------------------------

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
JSONL_SUFFIXES = tuple(base + c for base in (".jsonl", ".ndjson", ".json") for c in ("", *COMPRESSIONS))
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
TEXT_SUFFIXES = (".txt", ".md", ".text")
DATA_KINDS = ("parquet", "arrow", "jsonl")  # what a Hub dataset's files are read as
SUPPORTED = (
    f"parquet (.parquet), JSON lines (.jsonl, .ndjson, .json, each also as .gz/.zst/.bz2/.xz), "
    f"Arrow IPC ({', '.join(ARROW_SUFFIXES)}), text ({', '.join(TEXT_SUFFIXES)}, or any file --glob matches)"
)
BATCH = 10_000  # rows converted to Python at a time
READ_BLOCK = 1 << 20  # bytes read at a time from a plain JSONL file
STREAM_BLOCK = 1 << 16  # ... from a decompressing stream: small, so a truncation is placed near its line
HUB = "hf://"

_SUFFIX_KIND = sorted(
    [(s, "parquet") for s in PARQUET_SUFFIXES]
    + [(s, "arrow") for s in ARROW_SUFFIXES]
    + [(s, "jsonl") for s in JSONL_SUFFIXES]
    + [(s, "text") for s in TEXT_SUFFIXES],
    key=lambda pair: -len(pair[0]),  # longest first: `.ndjson` before `.json`, `.jsonl.gz` before `.gz`
)


def _kind(name: str) -> str | None:
    name = name.lower()
    return next((kind for suffix, kind in _SUFFIX_KIND if name.endswith(suffix)), None)


def _strip_suffix(name: str) -> str:
    low = name.lower()
    return next((name[: -len(s)] for s, _ in _SUFFIX_KIND if low.endswith(s)), name)


def _compression(name: str) -> str | None:
    return next((codec for suffix, codec in COMPRESSIONS.items() if name.lower().endswith(suffix)), None)


# --- where the files are: local paths and fsspec URLs ----------------------------------------


def _filesystem(url: str, options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) for a local path or URL: the one place ingest resolves one.

    `options` are the storage_options; None means this process's (`storage.using`). A worker
    has none of the client's, so files carry theirs (`SourceFile.storage_options`).
    """
    return storage.filesystem(url, options)


def _is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One input file as every task sees it: what to open, and the names it gives documents."""

    url: str  # a local path or a full fsspec URL: a worker opens it with `_filesystem`
    source: str  # the `source` column and part of derived ids: its path below the input given
    kind: str  # parquet, arrow, jsonl or text
    size: int
    folder: str  # its domain by --domain-from folder
    stem: str  # its domain by --domain-from file
    fallback: str  # its domain by auto, when neither a column nor --domain gives one
    # The client's storage_options for a URL (a worker does not share the client's); {} locally.
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)


def _hidden(parts: Sequence[str]) -> bool:
    # `_mixlab/` is mixlab's bookkeeping in its own outputs; other `_x` names (`__init__.py`) are data.
    return any(p.startswith(".") or p == "_mixlab" for p in parts)


def glob_pattern(glob: str) -> re.Pattern:
    """`glob` as a regex over '/'-separated relative paths: `**/` any folders (none too), `*` and
    `?` within one name, `[...]` a class. The same on every filesystem, unlike fsspec's glob."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and "]" in glob[i + 1 :]:
            j = glob.index("]", i + 1)
            body = glob[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _unreachable(given: str, exc: BaseException) -> InputError:
    cause = " ".join(str(exc).split())[:200] or type(exc).__name__
    if given.startswith(HUB):
        return InputError(
            f"{given}: could not reach the Hugging Face Hub ({type(exc).__name__}: {cause}); check the "
            "network (and HF_TOKEN for a gated dataset), or download the dataset first "
            "(`huggingface-cli download --repo-type dataset ORG/NAME --local-dir DIR`) and pass DIR"
        )
    return InputError(
        f"{given}: could not be read ({type(exc).__name__}: {cause}); check the URL and its access"
    )


def discover(inputs: Sequence[Path | str], glob: str | None = None) -> list[SourceFile]:
    """Every input file to read, in order: files as given, folders walked (sorted, hidden skipped).

    A folder's files are those of a known kind, or with `glob` those it matches; a Hub dataset's
    are its data files (parquet, JSONL, Arrow). Listing only: nothing is read here.
    """
    found: list[SourceFile] = []
    for given in inputs:
        # A synth / ingest / dedup output given whole means its documents, not its other tables.
        given = str(given) if _is_url(given) else str(documents_dir(Path(given)))
        fs, root = _filesystem(given)
        local = "file" in _protocols(fs)
        hub = given.startswith(HUB)
        root = root.rstrip("/") or root
        try:
            info = fs.info(root)
        except FileNotFoundError:
            what = "no such dataset or file on the Hub" if hub else "no such file or directory"
            raise InputError(f"{given}: {what}") from None
        except MixlabError:
            raise
        except Exception as exc:  # fsspec backends raise OSError, HTTP client errors and their own
            raise _unreachable(given, exc) from None

        root_name = Path(root).resolve().name if local else posixpath.basename(root).split("@")[0]
        if info.get("type") != "directory":
            kind = _kind(root)
            if kind is None:
                raise InputError(
                    f"{given}: unknown input type; supported: {SUPPORTED}, or a folder of such files; "
                    "convert it to one of these"
                )
            name = posixpath.basename(root)
            parent = (
                Path(root).parent.resolve().name if local else posixpath.basename(posixpath.dirname(root))
            )
            fallback = parent if kind == "text" else _strip_suffix(name)
            found.append(
                SourceFile(
                    _url_of(fs, root, local),
                    name,
                    kind,
                    int(info.get("size") or 0),
                    parent,
                    _strip_suffix(name),
                    fallback,
                    {} if local else storage.current_options(),
                )
            )
            continue
        try:
            listing = fs.find(root, detail=True)
        except MixlabError:
            raise
        except Exception as exc:
            raise _unreachable(given, exc) from None
        match = glob_pattern(glob).match if glob else None
        files = []
        for path, meta in listing.items():
            if meta.get("type", "file") != "file" or not path.startswith(root + "/"):
                continue
            rel = path[len(root) + 1 :]
            parts = tuple(rel.split("/"))
            if _hidden(parts):
                continue
            kind = _kind(parts[-1])
            if match is not None:
                if not match(rel):
                    continue
                kind = kind or "text"
            elif kind is None or (hub and kind not in DATA_KINDS):
                continue
            files.append((parts, path, kind, int(meta.get("size") or 0)))
        if not files:
            raise InputError(_empty_folder(given, glob, hub, listing, root))
        # Sorted by path components (as pathlib sorts), so the order is the one ingest always had.
        for parts, path, kind, size in sorted(files):
            # The folder directly under the input root names the domain (corpus/legal/2020/a.txt ->
            # legal); files at the root take the root's own name. A Hub dataset is named by itself.
            folder = root_name if hub or len(parts) == 1 else parts[0]
            fallback = root_name if hub else folder if kind == "text" else _strip_suffix(parts[-1])
            found.append(
                SourceFile(
                    _url_of(fs, path, local),
                    "/".join(parts),
                    kind,
                    size,
                    folder,
                    _strip_suffix(parts[-1]),
                    fallback,
                    {} if local else storage.current_options(),
                )
            )
    return found


def _url_of(fs: Any, path: str, local: bool) -> str:
    """What a worker opens: a local path as it is, anything else as a full URL (protocol kept)."""
    return path if local else fs.unstrip_protocol(path)


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _empty_folder(given: str, glob: str | None, hub: bool, listing: Mapping[str, Any], root: str) -> str:
    names = sorted(p[len(root) + 1 :] for p, m in listing.items() if m.get("type", "file") == "file")
    some = f" (it holds {len(names)} files, e.g. {', '.join(names[:3])})" if names else ""
    if glob:
        return (
            f"{given}: --glob {glob!r} matched no files{some}; check the pattern: it is matched against "
            "paths relative to the folder ('**/' for any depth, e.g. '**/*.py')"
        )
    if hub:
        return f"{given}: no data files (parquet, JSONL, Arrow) in the dataset{some}; pass --glob to choose files"
    return (
        f"{given}: empty folder (no .parquet, .jsonl[.gz|.zst|.bz2|.xz], .arrow or .txt files found){some}; "
        "point ingest at the corpus, or pass --glob to choose its files"
    )


# --- partitions: what one task reads ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourcePart:
    """What one task reads: row groups [start, stop) of a parquet file, record batches of an Arrow
    IPC file, bytes of a plain JSONL file (every line that starts in the range), a whole stream
    (compressed JSONL, Arrow stream; stop = -1), or a group of whole text files."""

    index: int
    files: tuple[SourceFile, ...]
    start: int = 0
    stop: int = -1

    @property
    def name(self) -> str:
        return f"part_{self.index:05d}"


def _open(file: SourceFile) -> Any:
    """The file opened for reading: a local one natively (pyarrow reads it without Python in
    between), anything else through its fsspec filesystem."""
    try:
        if not _is_url(file.url):
            return pa.OSFile(file.url, "rb")
        fs, path = _filesystem(file.url, file.storage_options)
        return fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{file.url}: no such file or directory (it was listed a moment ago)") from None
    except OSError as exc:
        raise InputError(f"{file.url}: could not open ({_first_line(exc)}); check it can be read") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_columns(file: SourceFile, names: Sequence[str], cfg: IngestConfig) -> None:
    if cfg.text_column not in names:
        raise InputError(
            f"{file.url}: column {cfg.text_column!r} missing (found: {', '.join(names) or 'none'}); "
            f"pass --text-column with one of them"
        )
    if cfg.domain_from == "column" and cfg.domain_column not in names:
        raise InputError(
            f"{file.url}: column {cfg.domain_column!r} missing (found: {', '.join(names)}); "
            "pass --domain-column, or --domain-from file/folder/flag"
        )


def _arrow_reader(fh: Any, file: SourceFile) -> Any:
    """An IPC file reader (random access to batches), or a stream reader; errors worded."""
    head = fh.read(6)
    fh.seek(0)
    try:
        return ipc.open_file(fh) if head == b"ARROW1" else ipc.open_stream(fh)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(
            f"{file.url}: not a readable Arrow IPC file or stream ({_first_line(exc)}); write it again "
            "(Feather v1 files are not read: save them again with pyarrow.feather.write_feather)"
        ) from None


def _groups(sizes: Sequence[int], target: int) -> Iterator[tuple[int, int]]:
    """[start, stop) runs of consecutive items whose sizes add up to about `target` (at least one)."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        total += size
        if total >= target:
            yield start, i + 1
            start, total = i + 1, 0
    if start < len(sizes):
        yield start, len(sizes)


def plan_parts(files: Sequence[SourceFile], cfg: IngestConfig) -> list[SourcePart]:
    """The partitions of every input, from file sizes and footers only (cheap, on the client).

    Column problems of parquet and Arrow inputs are found here, before any task runs. The plan
    depends on the files and `cfg` alone, so a resumed run finds its completion markers.
    """
    pieces: list[tuple[tuple[SourceFile, ...], int, int]] = []
    texts: list[SourceFile] = []

    def flush_texts() -> None:
        for a, b in _groups([f.size for f in texts], cfg.partition_bytes):
            pieces.append((tuple(texts[a:b]), 0, -1))
        texts.clear()

    for file in files:
        if file.kind == "text":
            texts.append(file)
            continue
        flush_texts()
        if file.kind == "parquet":
            with _open(file) as fh:
                try:
                    meta = pq.ParquetFile(fh).metadata
                    names = meta.schema.to_arrow_schema().names
                except (pa.ArrowInvalid, OSError) as exc:
                    raise InputError(
                        f"{file.url}: not a readable parquet file ({_first_line(exc)}); write it again"
                    ) from None
            _check_columns(file, names, cfg)
            sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
            pieces += [((file,), a, b) for a, b in _groups(sizes, cfg.partition_bytes)]
        elif file.kind == "arrow":
            with _open(file) as fh:
                reader = _arrow_reader(fh, file)
                _check_columns(file, reader.schema.names, cfg)
                batches = getattr(reader, "num_record_batches", None)
            if batches is None:  # a stream: no index of its batches, read in one pass
                pieces.append(((file,), 0, -1))
            else:
                each = file.size / max(batches, 1)
                pieces += [((file,), a, b) for a, b in _groups([each] * batches, cfg.partition_bytes)]
        elif _compression(file.url) is not None:
            pieces.append(((file,), 0, -1))  # a compressed stream cannot be entered in the middle
        else:
            step = cfg.partition_bytes
            pieces += [((file,), a, min(a + step, file.size)) for a in range(0, file.size, step)]
    flush_texts()
    return [SourcePart(i, files_, start, stop) for i, (files_, start, stop) in enumerate(pieces)]


# --- reading one partition ------------------------------------------------------------------

Record = tuple[Any, Any, Any]  # (id or None, domain or None, text as str | bytes | None)


def _columns(names: Sequence[str], cfg: IngestConfig) -> list[str]:
    return [c for c in dict.fromkeys((cfg.id_column, cfg.domain_column, cfg.text_column)) if c in names]


def _records(batch: pa.RecordBatch | pa.Table, cfg: IngestConfig) -> list[Record]:
    n = batch.num_rows
    names = batch.schema.names
    col = {name: batch.column(name).to_pylist() for name in _columns(names, cfg)}
    return list(
        zip(col.get(cfg.id_column, [None] * n), col.get(cfg.domain_column, [None] * n), col[cfg.text_column])
    )


def _read_parquet(part: SourcePart, cfg: IngestConfig) -> Iterator[list[Record]]:
    file = part.files[0]
    with _open(file) as fh:
        try:
            pf = pq.ParquetFile(fh)
            columns = _columns(pf.schema_arrow.names, cfg)
            groups = list(range(part.start, part.stop))
            for batch in pf.iter_batches(batch_size=BATCH, row_groups=groups, columns=columns):
                yield _records(batch, cfg)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{file.url}: corrupt parquet data ({_first_line(exc)}); write it again"
            ) from None


def _read_arrow(part: SourcePart, cfg: IngestConfig) -> Iterator[list[Record]]:
    file = part.files[0]
    with _open(file) as fh:
        reader = _arrow_reader(fh, file)
        try:
            if part.stop < 0:
                batches: Iterable[pa.RecordBatch] = reader
            else:
                batches = (reader.get_batch(i) for i in range(part.start, part.stop))
            for batch in batches:
                for lo in range(0, batch.num_rows, BATCH):
                    yield _records(batch.slice(lo, BATCH), cfg)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(
                f"{file.url}: corrupt Arrow data ({_first_line(exc)}); the file is truncated or corrupt: "
                "write it again"
            ) from None


def _decompressed(fh: Any, codec: str | None) -> Any:
    if codec is None:
        return fh
    if codec == "xz":
        return lzma.LZMAFile(fh)  # pyarrow has no xz codec
    return pa.CompressedInputStream(fh, codec)


def _lines(stream: Any, start: int, stop: int, block_size: int = READ_BLOCK) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line of `stream` that starts in [start, stop) (stop -1: to the end).

    The stream is positioned at `start`; a part that starts mid-line leaves that line to the part
    before, which reads past its `stop` to finish its last line.
    """
    pos, skip_first = start, False
    if start > 0:
        stream.seek(start - 1)  # a line starts at `start` exactly when the byte before is a newline
        pos, skip_first = start - 1, True
    rest = b""
    while True:
        block = stream.read(block_size)
        if not block:
            break
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if skip_first:
                skip_first = False
            elif 0 <= stop <= pos:
                return
            else:
                yield pos, line
            pos += len(line) + 1
        if 0 <= stop <= pos and not skip_first:
            return
    if rest and not skip_first and not 0 <= stop <= pos:
        yield pos, rest


def _line_number(file: SourceFile, first: int, seen: int) -> int:
    """The 1-based line number of the part's `seen`-th line, the part's first line starting at
    byte `first`: the newlines before `first` are counted only now, on the error path."""
    before = 0
    if first > 0:
        with _open(file) as fh:
            left = first
            while left > 0 and (block := fh.read(min(READ_BLOCK, left))):
                before += block.count(b"\n")
                left -= len(block)
    return before + seen


def _read_jsonl(part: SourcePart, cfg: IngestConfig) -> Iterator[list[Record]]:
    import json

    file = part.files[0]
    codec = _compression(file.url)
    batch: list[Record] = []
    first, seen, offset = None, 0, 0

    def where() -> str:
        return f"{file.url}:{_line_number(file, first or 0, seen)}"

    with _open(file) as fh:
        try:
            for offset, line in _lines(
                _decompressed(fh, codec), part.start, part.stop, STREAM_BLOCK if codec else READ_BLOCK
            ):
                first = offset if first is None else first
                seen += 1
                if not line.strip():
                    continue
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    # Bad bytes are a document problem (counted), not a broken file: they stay as
                    # surrogate escapes so --on-invalid-utf8 decides to skip or replace them.
                    text = line.decode("utf-8", errors="surrogateescape")
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise InputError(
                        f"{where()}: not valid JSON ({exc.args[0] if exc.args else exc}); fix or remove the line"
                    ) from None
                if not isinstance(obj, dict):
                    raise InputError(f"{where()}: expected a JSON object per line, got {type(obj).__name__}")
                if cfg.text_column not in obj:
                    raise InputError(
                        f"{where()}: key {cfg.text_column!r} missing (found: {', '.join(obj)}); "
                        "pass --text-column with one of them"
                    )
                batch.append((obj.get(cfg.id_column), obj.get(cfg.domain_column), obj[cfg.text_column]))
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
            after = (
                f" after line {seen} (byte {offset} of the {'decompressed ' if codec else ''}data)"
                if seen
                else ""
            )
            raise InputError(
                f"{file.url}: could not read{after} ({_first_line(exc)}); the file is truncated or corrupt: "
                "write or download it again"
            ) from None
    if batch:
        yield batch


READERS: dict[str, Callable[[SourcePart, IngestConfig], Iterator[list[Record]]]] = {
    "parquet": _read_parquet,
    "arrow": _read_arrow,
    "jsonl": _read_jsonl,
}


def _domain_for(cfg: IngestConfig, value: Any, file: SourceFile) -> str | None:
    """The document's domain by --domain-from; `auto` is column, else --domain, else the name."""
    from_column = None if value is None or not str(value) else str(value)
    return {
        "flag": cfg.domain,
        "column": from_column,
        "file": file.stem,
        "folder": file.folder,
        "auto": from_column or cfg.domain or file.fallback,
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


SCRATCH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("domain", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
    ]
)
DOCUMENTS_DIR = "documents"


def _batches_of(part: SourcePart, cfg: IngestConfig) -> Iterator[tuple[SourceFile, list[Record]]]:
    if part.files[0].kind == "text":
        for file in part.files:
            with _open(file) as fh:
                try:
                    yield file, [(None, None, fh.read())]
                except OSError as exc:
                    raise InputError(f"{file.url}: could not read ({_first_line(exc)})") from None
        return
    for batch in READERS[part.files[0].kind](part, cfg):
        yield part.files[0], batch


def ingest_part(part: SourcePart, cfg: IngestConfig, work: str) -> dict[str, Any]:
    """Read one partition, keep its usable documents in scratch; return its counts (a Dask task).

    Documents keep their row within the file (counted over every record, kept or not, from the
    part's start); ids are derived later, once the rows before this part are known.
    """
    marker = TaskMarkers(str(Path(work) / "markers" / "ingest"))
    done = marker.get(part.name)
    if done is not None:
        return done
    columns: dict[str, list] = {name: [] for name in SCRATCH_SCHEMA.names}
    skipped: dict[str, Counter] = {}
    per_domain: Counter = Counter()
    records = 0
    for file, batch in _batches_of(part, cfg):
        row = 0 if len(part.files) > 1 else records  # a group of text files: each file is row 1
        for given_id, domain_value, raw in batch:  # per-record checks decide skip vs keep
            row += 1
            records += 1
            text, counted = clean_text(raw, cfg)
            if counted is not None:
                skipped.setdefault(file.source, Counter())[counted] += 1
            if text is None:
                continue
            domain = _domain_for(cfg, domain_value, file)
            if not domain:
                skipped.setdefault(file.source, Counter())["no_domain"] += 1
                continue
            doc_id = None if given_id is None else str(given_id)
            if doc_id is not None and not _utf8_ok(doc_id):  # bad bytes in a JSONL id or domain
                doc_id = _repair_utf8(doc_id)
            if not _utf8_ok(domain):
                domain = _repair_utf8(domain)
            for name, value in zip(SCRATCH_SCHEMA.names, (doc_id, domain, text, file.source, row)):
                columns[name].append(value)
            per_domain[domain] += 1
    kept = len(columns["text"])
    result = {
        "records": records,
        "kept": kept,
        "skipped": {source: dict(c) for source, c in skipped.items()},
        "per_domain": dict(per_domain),
    }
    try:
        # Into folders the client made: if the run failed elsewhere and removed its partial dir
        # while this task ran, the write fails instead of bringing the directory back.
        if kept:  # never a 0-row file, not even in scratch
            table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in SCRATCH_SCHEMA})
            path = _scratch(work, part)
            tmp = path.with_name(f".{path.name}.tmp")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        marker.mark(part.name, result)
    except OSError:  # pyarrow words a vanished folder as OSError, Python as FileNotFoundError
        if Path(work).is_dir():
            raise
        return {"records": records, "kept": 0, "skipped": {}, "per_domain": {}}
    return result


def _scratch(work: str, part: SourcePart) -> Path:
    return Path(work) / "parts" / f"{part.name}.parquet"


def write_shard(index: int, pieces: Sequence[tuple[str, int, int, int]], out: str) -> int:
    """Output shard `index` from scratch rows: (scratch file, first row, stop row, row base) pieces.

    Ids are derived here, where each document's row in its file is known (part base + row).
    """
    tables = []
    for path, lo, hi, base in pieces:
        t = pq.read_table(path).slice(lo, hi - lo)
        rows = pc.add(t["row"], base).to_pylist()
        ids = [
            given if given is not None else document_id(source, row, text)
            for given, source, row, text in zip(
                t["id"].to_pylist(), t["source"].to_pylist(), rows, t["text"].to_pylist()
            )
        ]
        tables.append(t.select(["domain", "text", "source"]).add_column(0, "id", pa.array(ids, pa.string())))
    table = pa.concat_tables(tables).combine_chunks()
    if Path(out).is_dir():  # else the run failed elsewhere and its partial dir is gone
        write_table(table, Path(out) / shard_name(index), row_group_size=DOCUMENT_ROW_GROUP)
    return table.num_rows


def plan_shards(
    parts: Sequence[SourcePart], results: Sequence[Mapping[str, Any]], rows: int, work: str
) -> list[list[tuple[str, int, int, int]]]:
    """Each output shard's pieces of scratch: `rows` documents per shard over all parts in order."""
    base: dict[tuple[SourceFile, ...], int] = {}  # records of the earlier parts of the same file
    spans = []  # (scratch file, kept, row base)
    for part, result in zip(parts, results):
        row_base = base.get(part.files, 0) if len(part.files) == 1 else 0
        base[part.files] = row_base + result["records"]
        if result["kept"]:
            spans.append((str(_scratch(work, part)), result["kept"], row_base))
    shards: list[list[tuple[str, int, int, int]]] = [[]]
    for path, kept, row_base in spans:
        lo = 0
        while lo < kept:
            if sum(hi - a for _, a, hi, _ in shards[-1]) == rows:
                shards.append([])
            room = rows - sum(hi - a for _, a, hi, _ in shards[-1])
            hi = min(kept, lo + room)
            shards[-1].append((path, lo, hi, row_base))
            lo = hi
    return [s for s in shards if s]


def _run_tasks(client: Any, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
    """`fn(*args)` for every args of `calls`, as Dask tasks when there is a client; results in order."""
    if client is None:
        return [fn(*args) for args in calls]
    futures = [client.submit(fn, *args, pure=False) for args in calls]
    try:
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)  # one part's error ends the stage: the others need not run on
        raise


def check_unique_ids(out: Path, files_by_source: Mapping[str, Sequence[str]], cfg: IngestConfig) -> None:
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


def _url_fingerprints(files: Sequence[SourceFile]) -> dict[str, str]:
    """Fingerprints of URL inputs from their listing (name, size; what fsspec's ukey knows), never
    their bytes. Until `stage.fingerprint` reads URLs (storage, issue 14.1), they enter the stage
    key this way."""
    h: dict[str, Any] = {}
    for file in files:
        if _is_url(file.url):
            fs, path = _filesystem(file.url, file.storage_options)
            try:
                version = str(fs.ukey(path))
            except Exception:  # a store without a version tag: name and size only
                version = ""
            h.setdefault("urls", xxhash.xxh3_128()).update(f"{file.url}\0{file.size}\0{version}\0".encode())
    return {k: v.hexdigest() for k, v in h.items()}


def run_ingest(
    inputs: Inputs, cfg: IngestConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Read every input of `inputs["sources"]` (paths or fsspec URLs) into the documents contract.

    See the module docstring. With a Dask `client` each partition is a task that opens its file
    itself; without one the same tasks run in this process.
    """
    inputs = absolute_inputs(inputs)
    sources = inputs.get("sources")
    paths = [sources] if isinstance(sources, (str, Path)) else list(sources or [])
    if not paths:
        raise InputError("ingest: no inputs given")
    files = discover(paths, cfg.glob)
    local = [p for p in paths if not _is_url(p)]
    remote = _url_fingerprints(files)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        parts = plan_parts(files, cfg)
        work = str(stage.work)
        TaskMarkers.in_work(stage.work, "ingest")
        (stage.work / "parts").mkdir(exist_ok=True)  # the tasks write into it, never create it
        results = _run_tasks(client, ingest_part, [(part, cfg, work) for part in parts])
        per_domain: Counter = Counter()
        skipped: dict[str, Counter] = {}
        for result in results:
            per_domain.update(result["per_domain"])
            for source, c in result["skipped"].items():
                skipped.setdefault(source, Counter()).update(c)
        totals = dict(sum(skipped.values(), Counter()))
        written = sum(per_domain.values())
        files_by_source: dict[str, list[str]] = {}  # two roots may hold the same relative name
        for file in files:
            files_by_source.setdefault(file.source, []).append(file.url)
        if written == 0:
            example = next(iter(skipped.items()), None)
            where = f"; e.g. {files_by_source[example[0]][0]}: {dict(example[1])}" if example else ""
            raise InputError(
                f"ingest: no usable documents in {', '.join(map(str, paths))} (skipped: {totals}{where}); "
                + no_documents_advice(totals, cfg)
            )
        docs = stage.out / DOCUMENTS_DIR
        docs.mkdir(parents=True, exist_ok=True)
        shards = plan_shards(parts, results, cfg.rows_per_file, work)
        _run_tasks(client, write_shard, [(i, pieces, str(docs)) for i, pieces in enumerate(shards)])
        check_unique_ids(docs, files_by_source, cfg)
        for source, c in skipped.items():
            log(f"ingest: {source}: skipped {dict(c)}")
        counts = {
            "documents": written,
            "skipped": sum(v for k, v in totals.items() if k != "utf8_replaced"),
            "files": len(files),
            "shards": len(shards),
        }
        stats = {
            "per_domain": dict(per_domain),
            "skipped": totals,
            "skipped_per_source": {s: dict(c) for s, c in skipped.items()},
            "partitions": len(parts),
        }
        return counts, stats

    return run_stage(
        "ingest",
        cfg,
        {"sources": local} if local else {},
        out_dir,
        body,
        force=force,
        extra_key=remote or None,
    )
