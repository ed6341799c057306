"""Bad inputs of the data stages (synth, ingest, dedup): refused in one line, or kept and counted."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_harness import Case, case_ids, find_values, generic_cases, manifest_of, read_parquet_dir

pytestmark = pytest.mark.faults


def doc_rows(n: int, domain: str = "prose", prefix: str = "d") -> dict[str, list[str]]:
    """`n` documents of `domain` that share no 5-gram (none is a duplicate of another)."""
    rng = random.Random(f"{domain}/{prefix}")
    words = [f"w{i}" for i in range(500)]
    return {
        "id": [f"{prefix}{i}" for i in range(n)],
        "domain": [domain] * n,
        "text": [" ".join(rng.choice(words) for _ in range(30)) for _ in range(n)],
    }


# --- synth ------------------------------------------------------------------------------------

SYNTH = "synth --domains prose,code --docs-per-domain 5 --doc-words 20 --near-dup-clusters 1 --exact-dups 1".split()
SYNTH_CASES = [
    Case(
        "docs-per-domain-0",
        lambda s, b: [*SYNTH, "--docs-per-domain", 0, "--out", "out"],
        (r"--docs-per-domain",),
    ),
    Case("doc-words-too-few", lambda s, b: [*SYNTH, "--doc-words", 5, "--out", "out"], (r"--doc-words",)),
    Case("negative-dups", lambda s, b: [*SYNTH, "--exact-dups", -1, "--out", "out"], (r"--exact-dups",)),
    Case(
        "near-dup-level-1.5",
        lambda s, b: [*SYNTH, "--near-dup-levels", "0.9,1.5", "--out", "out"],
        (r"--near-dup-levels",),
    ),
    Case(
        "unknown-domain",
        lambda s, b: [*SYNTH, "--domains", "prose,klingon", "--out", "out"],
        (r"--domains", r"klingon"),
    ),
    Case(
        "not-an-integer",
        lambda s, b: [*SYNTH, "--docs-per-domain", "many", "--out", "out"],
        (r"--docs-per-domain",),
        advice=False,
    ),
    Case(
        "blend-not-summing-to-1",
        lambda s, b: [*SYNTH, "--target-blend", "prose=0.5,code=0.2", "--out", "out"],
        (r"--target-blend", r"sum|1"),
    ),
    Case(
        "blend-negative",
        lambda s, b: [*SYNTH, "--target-blend", "prose=1.5,code=-0.5", "--out", "out"],
        (r"--target-blend", r"negative"),
    ),
    Case(
        "blend-non-numeric",
        lambda s, b: [*SYNTH, "--target-blend", "prose=lots,code=0.5", "--out", "out"],
        (r"--target-blend", r"lots|number"),
    ),
    Case(
        "blend-unknown-domain",
        lambda s, b: [*SYNTH, "--target-blend", "prose=0.5,legal=0.5", "--out", "out"],
        (r"--target-blend", r"legal"),
    ),
    Case("out-is-a-file", lambda s, b: [*SYNTH, "--out", b.raw("out", "a file\n")], (r"\bout\b", r"--out")),
    *generic_cases(lambda s, b: SYNTH, "docs_per_domain"),
]


@pytest.mark.parametrize("case", SYNTH_CASES, ids=case_ids(SYNTH_CASES))
def test_synth_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- ingest -----------------------------------------------------------------------------------


def ingested(n: int, *, skipped: int | None = None):
    """A check: the ingest output holds `n` documents with unique ids and a domain each."""

    def check(s, folder: Path, outcome) -> None:
        table = read_parquet_dir(folder / "out", columns=["id", "domain", "text"])
        assert table.num_rows == n, f"ingest wrote {table.num_rows} documents, expected {n}"
        ids = table["id"].to_pylist()
        assert len(set(ids)) == n and None not in ids and None not in table["domain"].to_pylist()
        if skipped is not None:
            counted = manifest_of(folder / "out")["counts"].get("skipped")
            assert counted == skipped, f"manifest counts skipped={counted}, expected {skipped}"

    return check


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


INGEST_CASES = [
    Case(
        "missing-file",
        lambda s, b: ["ingest", "nosuch.parquet", "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "folder-without-documents",
        lambda s, b: ["ingest", b.folder("raw", {"a.csv": "x,y\n"}), "--out", "out"],
        (r"raw", r"parquet|jsonl"),
    ),
    Case("unknown-file-type", lambda s, b: ["ingest", b.raw("a.csv", "x,y\n"), "--out", "out"], (r"a\.csv",)),
    Case(
        "missing-text-column",
        lambda s, b: ["ingest", b.variant("raw.parquet", s.documents_file, drop=["text"]), "--out", "out"],
        (r"raw\.parquet", r"text", r"--text-column"),
    ),
    Case(
        "missing-text-key-jsonl",
        lambda s, b: ["ingest", b.raw("raw.jsonl", jsonl([{"body": "hello world"}])), "--out", "out"],
        (r"raw\.jsonl", r"text", r"--text-column"),
    ),
    Case(
        "missing-id-column-derives-ids",
        lambda s, b: [
            "ingest",
            b.variant("raw.parquet", s.documents_file, rows=10, drop=["id"]),
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(10),
    ),
    Case(
        "missing-domain-column-uses-file-name",
        lambda s, b: [
            "ingest",
            b.variant("raw.parquet", s.documents_file, rows=10, drop=["domain"]),
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(10),
    ),
    Case(
        "missing-domain-column-with-domain-from-column",
        lambda s, b: [
            "ingest",
            b.variant("raw.parquet", s.documents_file, drop=["domain"]),
            "--domain-from",
            "column",
            "--out",
            "out",
        ],
        (r"raw\.parquet", r"domain", r"--domain"),
    ),
    Case(
        "some-null-empty-whitespace-text-skipped-and-counted",
        lambda s, b: [
            "ingest",
            b.docs(
                "raw.parquet", id=["a", "b", "c", "d"], domain=["p"] * 4, text=["ok text", None, "", " \n\t "]
            ),
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(1, skipped=3),
    ),
    Case(
        "all-null-text",
        lambda s, b: [
            "ingest",
            b.docs("raw.parquet", id=["a", "b"], domain=["p", "p"], text=[None, None]),
            "--out",
            "out",
        ],
        (r"raw\.parquet|no usable documents", r"null"),
    ),
    Case(
        "all-whitespace-text",
        lambda s, b: [
            "ingest",
            b.docs("raw.parquet", id=["a", "b"], domain=["p", "p"], text=["  ", "\n\t"]),
            "--out",
            "out",
        ],
        (r"raw\.parquet|no usable documents", r"empty"),
    ),
    Case(
        "zero-rows",
        lambda s, b: ["ingest", b.docs("raw.parquet", id=[], domain=[], text=[]), "--out", "out"],
        (r"raw\.parquet", r"no (usable )?(documents|rows)"),
    ),
    Case(
        "non-utf8-jsonl-all-lines",
        lambda s, b: [
            "ingest",
            b.raw(
                "raw.jsonl",
                "".join(
                    json.dumps({"id": f"x{i}", "text": "caf\u00e9 au lait"}, ensure_ascii=False) + "\n"
                    for i in range(3)
                ).encode("latin-1"),
            ),
            "--out",
            "out",
        ],
        (r"raw\.jsonl|no usable documents", r"utf-?8", r"--on-invalid-utf8"),
    ),
    Case(
        "non-utf8-jsonl-one-line-skipped-and-counted",
        lambda s, b: [
            "ingest",
            b.raw(
                "raw.jsonl",
                jsonl([{"id": "a", "text": "good text"}]).encode()
                + '{"id": "b", "text": "caf\u00e9"}\n'.encode("latin-1"),
            ),
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(1, skipped=1),
    ),
    Case(
        "non-utf8-jsonl-replaced",
        lambda s, b: [
            "ingest",
            b.raw("raw.jsonl", '{"id": "b", "text": "caf\u00e9"}\n'.encode("latin-1")),
            "--on-invalid-utf8",
            "replace",
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(1),
    ),
    Case(
        "broken-jsonl-line",
        lambda s, b: [
            "ingest",
            b.raw("raw.jsonl", jsonl([{"text": "fine"}]) + '{"text": "unterminated\n'),
            "--out",
            "out",
        ],
        (r"raw\.jsonl:2", r"json"),
    ),
    Case(
        "truncated-jsonl-gz",
        lambda s, b: [
            "ingest",
            b.raw("raw.jsonl.gz", gzip.compress(jsonl([{"text": "x " * 500}] * 20).encode())[:60]),
            "--out",
            "out",
        ],
        (r"raw\.jsonl\.gz",),
    ),
    Case(
        "duplicate-ids",
        lambda s, b: [
            "ingest",
            b.docs("raw.parquet", id=["a", "a", "b"], domain=["p"] * 3, text=["one", "two", "three"]),
            "--out",
            "out",
        ],
        (r"raw\.parquet", r"\bid", r"unique|repeated|duplicate"),
        reject=(r"\.partial", r"without --id-column"),
    ),
    Case(
        "duplicate-ids-across-files",
        lambda s, b: [
            "ingest",
            b.docs("raw/a.parquet", id=["a", "b"], domain=["p"] * 2, text=["one", "two"]),
            b.docs("raw/b.parquet", id=["a"], domain=["p"], text=["three"]),
            "--out",
            "out",
        ],
        (r"raw", r"\bid", r"unique|repeated|duplicate"),
        reject=(r"\.partial", r"without --id-column"),
    ),
    Case(
        "truncated-parquet",
        lambda s, b: ["ingest", b.truncated("raw.parquet", s.documents_file), "--out", "out"],
        (r"raw\.parquet", r"parquet"),
    ),
    Case(
        "one-document",
        lambda s, b: [
            "ingest",
            b.docs("raw.parquet", id=["a"], domain=["p"], text=["just one"]),
            "--out",
            "out",
        ],
        ok=True,
        check=ingested(1),
    ),
    Case(
        "rows-per-file-0",
        lambda s, b: ["ingest", s.documents_file, "--rows-per-file", 0, "--out", "out"],
        (r"--rows-per-file",),
    ),
    Case(
        "domain-from-flag-without-domain",
        lambda s, b: ["ingest", s.documents_file, "--domain-from", "flag", "--out", "out"],
        (r"--domain",),
    ),
    Case(
        "bad-choice",
        lambda s, b: ["ingest", s.documents_file, "--on-invalid-utf8", "explode", "--out", "out"],
        (r"--on-invalid-utf8",),
        advice=False,
    ),
    *generic_cases(lambda s, b: ["ingest", s.documents_file], "rows_per_file"),
]


@pytest.mark.parametrize("case", INGEST_CASES, ids=case_ids(INGEST_CASES))
def test_ingest_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- dedup ------------------------------------------------------------------------------------


def deduped(n_in: int, kept: int | None = None, counted: dict[str, int] | None = None):
    """A check: dedup read `n_in` documents, kept `kept` (default: all) and counted the bad ones."""

    def check(s, folder: Path, outcome) -> None:
        manifest = manifest_of(folder / "out")
        counts = manifest["counts"]
        assert counts["documents_in"] == n_in, counts
        expected = n_in if kept is None else kept
        assert counts["documents_out"] == expected, counts
        docs = folder / "out" / "documents"
        rows = (
            sum(pq.ParquetFile(f).metadata.num_rows for f in docs.rglob("*.parquet")) if docs.exists() else 0
        )
        assert rows == expected, f"documents/ holds {rows} rows, expected {expected}"
        for key, n in (counted or {}).items():
            found = find_values(manifest["stats"], key)
            assert n in found, f"the manifest does not count {n} {key} documents (found {found})"

    return check


DEDUP = ["dedup", "--num-perm", "16"]


def mixed(s, b, text):
    """The first 20 real documents with the first 3 texts replaced."""
    real = pq.read_table(s.documents_file).slice(0, 20)["text"].to_pylist()
    return b.variant("docs.parquet", s.documents_file, rows=20, replace={"text": [*text, *real[3:]]})


DEDUP_CASES = [
    Case(
        "missing-file",
        lambda s, b: [*DEDUP, "nosuch.parquet", "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "folder-without-parquet",
        lambda s, b: [*DEDUP, b.folder("docs"), "--out", "out"],
        (r"docs", r"parquet"),
    ),
    Case(
        "missing-id-column",
        lambda s, b: [*DEDUP, b.variant("docs.parquet", s.documents_file, drop=["id"]), "--out", "out"],
        (r"docs\.parquet", r"'id'", r"ingest"),
    ),
    Case(
        "missing-domain-column",
        lambda s, b: [*DEDUP, b.variant("docs.parquet", s.documents_file, drop=["domain"]), "--out", "out"],
        (r"docs\.parquet", r"'domain'", r"ingest"),
    ),
    Case(
        "missing-text-column",
        lambda s, b: [*DEDUP, b.variant("docs.parquet", s.documents_file, drop=["text"]), "--out", "out"],
        (r"docs\.parquet", r"'text'", r"ingest"),
    ),
    Case(
        "text-is-binary-not-utf8",
        lambda s, b: [
            *DEDUP,
            b.table(
                "docs.parquet",
                pa.table({"id": ["a"], "domain": ["p"], "text": pa.array([b"caf\xe9"], pa.binary())}),
            ),
            "--out",
            "out",
        ],
        (r"docs\.parquet", r"text", r"string|utf-?8", r"ingest"),
    ),
    Case(
        "null-domain",
        lambda s, b: [
            *DEDUP,
            b.docs("docs.parquet", id=["a", "b"], domain=["p", None], text=["x y z", "y z w"]),
            "--out",
            "out",
        ],
        (r"docs\.parquet", r"domain"),
    ),
    Case(
        "duplicate-ids",
        lambda s, b: [
            *DEDUP,
            b.docs(
                "docs.parquet",
                id=["a", "a", "b"],
                domain=["p"] * 3,
                text=["one two", "three four", "five six"],
            ),
            "--out",
            "out",
        ],
        (r"docs\.parquet", r"\bids?\b", r"unique|repeated|duplicate"),
        reject=(r"\.partial",),
    ),
    Case(
        "truncated-parquet",
        lambda s, b: [*DEDUP, b.truncated("docs.parquet", s.documents_file), "--out", "out"],
        (r"docs\.parquet", r"parquet"),
    ),
    Case(
        "some-null-empty-whitespace-text-kept-and-counted",
        lambda s, b: [*DEDUP, mixed(s, b, [None, "", " \n\t "]), "--out", "out"],
        ok=True,
        check=deduped(20, None, {"null_text": 1, "empty": 2}),
    ),
    Case(
        "all-null-text",
        lambda s, b: [
            *DEDUP,
            b.docs("docs.parquet", id=["a", "b", "c"], domain=["p"] * 3, text=[None] * 3),
            "--out",
            "out",
        ],
        ok=True,
        check=deduped(3, 3, {"null_text": 3}),
    ),
    Case(
        "all-whitespace-text",
        lambda s, b: [
            *DEDUP,
            b.docs("docs.parquet", id=["a", "b", "c"], domain=["p"] * 3, text=["  ", "\n", "\t \t"]),
            "--out",
            "out",
        ],
        ok=True,
        check=deduped(3, 3, {"empty": 3}),
    ),
    Case(
        "zero-rows",
        lambda s, b: [*DEDUP, b.docs("docs.parquet", id=[], domain=[], text=[]), "--out", "out"],
        ok=True,
        check=deduped(0, 0),
    ),
    Case(
        "one-document",
        lambda s, b: [*DEDUP, b.variant("docs.parquet", s.documents_file, rows=1), "--out", "out"],
        ok=True,
        check=deduped(1, 1),
    ),
    Case(
        "one-document-domain",
        lambda s, b: [
            *DEDUP,
            b.docs("docs/a.parquet", **doc_rows(8, "prose")),
            b.docs("docs/b.parquet", **doc_rows(1, "code", "c")),
            "--out",
            "out",
        ],
        ok=True,
        check=deduped(9),
    ),
    Case(
        "threshold-above-1",
        lambda s, b: [*DEDUP, s.documents, "--threshold", 1.5, "--out", "out"],
        (r"--threshold",),
    ),
    Case("num-perm-1", lambda s, b: [*DEDUP, s.documents, "--num-perm", 1, "--out", "out"], (r"--num-perm",)),
    Case(
        "bands-without-rows",
        lambda s, b: [*DEDUP, s.documents, "--bands", 4, "--out", "out"],
        (r"--bands", r"--rows"),
    ),
    Case("ngram-0", lambda s, b: [*DEDUP, s.documents, "--ngram", 0, "--out", "out"], (r"--ngram",)),
    Case(
        "bad-keep-policy",
        lambda s, b: [*DEDUP, s.documents, "--keep", "random", "--out", "out"],
        (r"--keep",),
        advice=False,
    ),
    Case(
        "scheduler-address-notaurl",
        lambda s, b: [*DEDUP, s.documents, "--scheduler-address", "notaurl", "--out", "out"],
        (r"notaurl", r"scheduler|connect", r"--scheduler-address|tcp://"),
    ),
    *generic_cases(lambda s, b: [*DEDUP, s.documents], "threshold"),
]


@pytest.mark.parametrize("case", DEDUP_CASES, ids=case_ids(DEDUP_CASES))
def test_dedup_bad_input(case: Case, check_case) -> None:
    check_case(case)
