"""Bad inputs of ingest's formats (compressed JSONL, Arrow, --glob, split files): refused in one line, or read."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from fault_harness import Case, case_ids, manifest_of, read_parquet_dir

pytestmark = pytest.mark.faults


def jsonl(n: int, width: int = 200) -> bytes:
    """`n` JSON lines, each a document of about `width` bytes (enough to fill compressed blocks)."""
    return "".join(json.dumps({"text": f"record {i} " + "z" * width}) + "\n" for i in range(n)).encode()


def compressed(data: bytes, codec: str) -> bytes:
    if codec == "xz":
        return lzma.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def arrow_file(n: int) -> bytes:
    table = pa.table({"text": [f"row {i} " + "q" * 50 for i in range(n)]})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=10)
    return sink.getvalue().to_pybytes()


def ingested(n: int, *, partitions_at_least: int = 1):
    """A check: the output holds `n` documents under documents/, with unique ids, in enough partitions."""

    def check(s, folder: Path, outcome) -> None:
        out = folder / "out"
        table = read_parquet_dir(out / "documents", columns=["id", "domain", "text"])
        assert table.num_rows == n, f"ingest wrote {table.num_rows} documents, expected {n}"
        assert len(set(table["id"].to_pylist())) == n
        assert not list(out.glob("*.parquet")), "shards beside the manifest: they belong in documents/"
        parts = manifest_of(out)["stats"]["partitions"]
        assert parts >= partitions_at_least, f"read in {parts} partitions, expected >= {partitions_at_least}"

    return check


CODECS = [(".gz", "gzip"), (".zst", "zstd"), (".bz2", "bz2"), (".xz", "xz")]

CASES = [
    *(
        Case(
            f"truncated-jsonl{suffix.replace('.', '-')}",
            lambda s, b, suffix=suffix, codec=codec: [
                "ingest",
                b.raw(f"raw.jsonl{suffix}", truncated(compressed(jsonl(2000), codec))),
                "--out",
                "out",
            ],
            (rf"raw\.jsonl\{suffix}", r"truncated|corrupt"),
        )
        for suffix, codec in CODECS
    ),
    Case(
        "not-really-zstd",
        lambda s, b: ["ingest", b.raw("raw.jsonl.zst", jsonl(3)), "--out", "out"],
        (r"raw\.jsonl\.zst", r"could not read", r"corrupt"),
    ),
    Case(
        "broken-line-in-a-later-byte-range",
        lambda s, b: [
            "ingest",
            b.raw("raw.jsonl", jsonl(300, 20)[:-400] + b'{"text": "unterminated\n' + jsonl(5, 20)),
            "--partition-bytes",
            512,
            "--out",
            "out",
        ],
        (r"raw\.jsonl:\d{3}:", r"not valid JSON"),
    ),
    Case(
        "truncated-arrow-file",
        lambda s, b: ["ingest", b.raw("raw.arrow", truncated(arrow_file(200))), "--out", "out"],
        (r"raw\.arrow", r"arrow"),
    ),
    Case(
        "non-utf8-text-folder",
        lambda s, b: [
            "ingest",
            b.folder("texts", {"a.txt": "caf\u00e9".encode("latin-1")}),  # type: ignore[dict-item]
            "--out",
            "out",
        ],
        (r"texts/a\.txt", r"utf-?8", r"--on-invalid-utf8"),
    ),
    Case(
        "glob-matches-nothing",
        lambda s, b: [
            "ingest",
            b.folder("repo", {"main.rs": "fn main() {}\n"}),
            "--glob",
            "**/*.py",
            "--out",
            "out",
        ],
        (r"repo", r"--glob", r"matched no files", r"main\.rs"),
    ),
    Case(
        "glob-absolute",
        lambda s, b: ["ingest", b.folder("repo", {"a.py": "x = 1\n"}), "--glob", "/etc/*", "--out", "out"],
        (r"--glob", r"relative"),
    ),
    Case(
        "unknown-extension-lists-supported",
        lambda s, b: ["ingest", b.raw("corpus.csv", "a,b\n"), "--out", "out"],
        (r"corpus\.csv", r"unknown input type", r"\.zst", r"\.arrow", r"--glob"),
    ),
    Case(
        "partition-bytes-0",
        lambda s, b: ["ingest", s.documents_file, "--partition-bytes", 0, "--out", "out"],
        (r"--partition-bytes",),
    ),
    Case(
        "zstd-jsonl-read-as-one-stream",
        lambda s, b: [
            "ingest",
            b.raw("raw.jsonl.zst", compressed(jsonl(50), "zstd")),
            "--partition-bytes",
            64,
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(50),
    ),
    Case(
        "plain-jsonl-in-many-byte-ranges",
        lambda s, b: ["ingest", b.raw("raw.jsonl", jsonl(50)), "--partition-bytes", 300, "--out", "out"],
        ok=True,
        check=ingested(50, partitions_at_least=20),
    ),
    Case(
        "glob-code-corpus",
        lambda s, b: [
            "ingest",
            b.folder(
                "repo", {"pkg/__init__.py": "", "pkg/core.py": "def f():\n    pass\n", "README.md": "# hi\n"}
            ),
            "--glob",
            "**/*.py",
            "--domain",
            "code",
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(1),  # the empty __init__.py is skipped (and counted)
    ),
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_ingest_format_bad_input(case: Case, check_case) -> None:
    check_case(case)
