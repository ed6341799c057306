"""Bad inputs of the token stages (tokenizer train, tokenizer eval, tokenize): refused where they enter."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fault_harness import Case, case_ids, generic_cases, manifest_of

pytestmark = pytest.mark.faults


def blanks(s, b, text):
    """The first 20 real documents with every text replaced by `text`."""
    return b.variant("docs.parquet", s.documents_file, rows=20, replace={"text": [text]})


def warned_about_vocabulary(s, folder: Path, outcome) -> None:
    """A check: the run says, and the manifest records, that the vocabulary came out smaller."""
    said = [line for line in outcome.stderr.splitlines() if re.search(r"warn", line, re.I)]
    assert any(re.search(r"vocab", line, re.I) for line in said), (
        f"no warning about the smaller vocabulary on stderr (last line: {outcome.tail()})"
    )
    manifest = json.dumps(manifest_of(folder / "out"))
    assert re.search(r"warn", manifest, re.I), "the manifest records no warning"


# --- tokenizer train ----------------------------------------------------------------------------

TRAIN = ["tokenizer", "train", "--vocab-size", "300", "--sample-bytes", "100000"]


def train_with_mixture(data):
    def argv(s, b):
        name = b.raw("mix.json", data) if isinstance(data, str) else b.json("mix.json", data)
        return [*TRAIN, s.documents, "--mixture", name, "--out", "out"]

    return argv


TOKENIZER_TRAIN_CASES = [
    Case(
        "missing-file",
        lambda s, b: [*TRAIN, "nosuch.parquet", "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "folder-without-parquet",
        lambda s, b: [*TRAIN, b.folder("docs"), "--out", "out"],
        (r"docs", r"parquet"),
    ),
    Case(
        "missing-text-column",
        lambda s, b: [*TRAIN, b.variant("docs.parquet", s.documents_file, drop=["text"]), "--out", "out"],
        (r"docs\.parquet", r"'text'"),
    ),
    Case(
        "missing-domain-column",
        lambda s, b: [*TRAIN, b.variant("docs.parquet", s.documents_file, drop=["domain"]), "--out", "out"],
        (r"docs\.parquet", r"'domain'"),
    ),
    Case(
        "truncated-parquet",
        lambda s, b: [*TRAIN, b.truncated("docs.parquet", s.documents_file), "--out", "out"],
        (r"docs\.parquet", r"parquet"),
    ),
    Case(
        "zero-rows",
        lambda s, b: [*TRAIN, b.variant("docs.parquet", s.documents_file, rows=0), "--out", "out"],
        (r"docs\.parquet", r"no (rows|documents|text)|empty"),
    ),
    Case(
        "all-null-text",
        lambda s, b: [*TRAIN, blanks(s, b, None), "--out", "out"],
        (r"docs\.parquet", r"null|no text|empty"),
    ),
    Case(
        "whitespace-only-text",
        lambda s, b: [*TRAIN, blanks(s, b, " \n\t "), "--out", "out"],
        (r"docs\.parquet", r"whitespace|no text|empty"),
    ),
    Case(
        "one-document-warns-of-a-smaller-vocabulary",
        lambda s, b: [
            *TRAIN,
            b.variant("docs.parquet", s.documents_file, rows=1),
            "--valid-fraction",
            0,
            "--vocab-size",  # more than one document can teach
            5000,
            "--out",
            "out",
        ],
        ok=True,
        check=warned_about_vocabulary,
    ),
    Case(
        "vocab-larger-than-the-corpus-warns",
        lambda s, b: [*TRAIN, s.documents, "--vocab-size", 70000, "--out", "out"],
        ok=True,
        check=warned_about_vocabulary,
    ),
    Case(
        "vocab-size-10",
        lambda s, b: [*TRAIN, s.documents, "--vocab-size", 10, "--out", "out"],
        (r"--vocab-size",),
    ),
    Case(
        "min-frequency-0",
        lambda s, b: [*TRAIN, s.documents, "--min-frequency", 0, "--out", "out"],
        (r"--min-frequency",),
    ),
    Case(
        "valid-fraction-1.5",
        lambda s, b: [*TRAIN, s.documents, "--valid-fraction", 1.5, "--out", "out"],
        (r"--valid-fraction",),
    ),
    Case(
        "bad-model-choice",
        lambda s, b: [*TRAIN, s.documents, "--model", "bogus", "--out", "out"],
        (r"--model",),
    ),
    Case(
        "mixture-not-summing-to-1",
        train_with_mixture({"prose": 0.5, "code": 0.2, "legal": 0.1}),
        (r"--mixture|mix\.json", r"sum|1"),
    ),
    Case(
        "mixture-negative",
        train_with_mixture({"prose": 1.5, "code": -0.5}),
        (r"--mixture|mix\.json", r"negative"),
    ),
    Case(
        "mixture-non-numeric",
        train_with_mixture({"prose": "lots", "code": 0.5}),
        (r"--mixture|mix\.json", r"lots|number"),
    ),
    Case("mixture-unknown-domain", train_with_mixture({"prose": 0.5, "klingon": 0.5}), (r"klingon",)),
    Case("mixture-malformed-json", train_with_mixture('{"prose": 0.5,'), (r"mix\.json", r"json")),
    Case(
        "mixture-missing-file",
        lambda s, b: [*TRAIN, s.documents, "--mixture", "nosuch.json", "--out", "out"],
        (r"nosuch\.json",),
        advice=False,
    ),
    *generic_cases(lambda s, b: [*TRAIN, s.documents], "vocab_size"),
]


@pytest.mark.parametrize("case", TOKENIZER_TRAIN_CASES, ids=case_ids(TOKENIZER_TRAIN_CASES))
def test_tokenizer_train_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- tokenizer eval -----------------------------------------------------------------------------

EVAL = ["tokenizer", "eval"]

TOKENIZER_EVAL_CASES = [
    Case(
        "missing-tokenizer",
        lambda s, b: [*EVAL, "nosuch", s.documents, "--out", "out"],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "missing-documents",
        lambda s, b: [*EVAL, s.tokenizer, "nosuch.parquet", "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "folder-without-tokenizer",
        lambda s, b: [*EVAL, b.folder("tok"), s.documents, "--out", "out"],
        (r"tok", r"tokenizer"),
    ),
    Case(
        "corrupt-tokenizer-json",
        lambda s, b: [*EVAL, b.folder("tok", {"tokenizer.json": "{not json"}), s.documents, "--out", "out"],
        (r"tokenizer\.json",),
    ),
    Case(
        "folder-without-parquet",
        lambda s, b: [*EVAL, s.tokenizer, b.folder("docs"), "--out", "out"],
        (r"docs", r"parquet"),
    ),
    Case(
        "missing-text-column",
        lambda s, b: [
            *EVAL,
            s.tokenizer,
            b.variant("docs.parquet", s.documents_file, drop=["text"]),
            "--out",
            "out",
        ],
        (r"docs\.parquet", r"'text'"),
    ),
    Case(
        "zero-rows",
        lambda s, b: [
            *EVAL,
            s.tokenizer,
            b.variant("docs.parquet", s.documents_file, rows=0),
            "--out",
            "out",
        ],
        (r"docs\.parquet", r"no (rows|documents|held-out)|empty"),
    ),
    Case(
        "truncated-parquet",
        lambda s, b: [*EVAL, s.tokenizer, b.truncated("docs.parquet", s.documents_file), "--out", "out"],
        (r"docs\.parquet", r"parquet"),
    ),
    Case(
        "one-document-split-all",
        lambda s, b: [
            *EVAL,
            s.tokenizer,
            b.variant("docs.parquet", s.documents_file, rows=1),
            "--split",
            "all",
            "--out",
            "out",
        ],
        ok=True,
    ),
    Case(
        "renyi-alpha-1",
        lambda s, b: [*EVAL, s.tokenizer, s.documents, "--renyi-alpha", 1, "--out", "out"],
        (r"--renyi-alpha",),
    ),
    Case(
        "valid-fraction-0",
        lambda s, b: [*EVAL, s.tokenizer, s.documents, "--valid-fraction", 0, "--out", "out"],
        (r"--valid-fraction", r"--split"),
    ),
    Case(
        "bad-split-choice",
        lambda s, b: [*EVAL, s.tokenizer, s.documents, "--split", "bogus", "--out", "out"],
        (r"--split",),
    ),
    *generic_cases(lambda s, b: [*EVAL, s.tokenizer, s.documents], "renyi_alpha"),
]


@pytest.mark.parametrize("case", TOKENIZER_EVAL_CASES, ids=case_ids(TOKENIZER_EVAL_CASES))
def test_tokenizer_eval_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- tokenize -----------------------------------------------------------------------------------


def tokenized(documents: int):
    """A check: the token counts hold `documents` documents and some tokens."""

    def check(s, folder: Path, outcome) -> None:
        counts = pq.read_table(folder / "out" / "token_counts.parquet").to_pylist()
        assert sum(r["documents"] for r in counts) == documents, counts
        assert sum(r["tokens"] for r in counts) > 0, counts

    return check


def tokenize(*docs):
    return lambda s, b: [
        "tokenize",
        *(d(s, b) if callable(d) else d for d in docs),
        "--tokenizer",
        s.tokenizer,
        "--out",
        "out",
    ]


def tokenize_with(*flags):
    return lambda s, b: ["tokenize", s.documents, "--tokenizer", s.tokenizer, *flags, "--out", "out"]


TOKENIZE_CASES = [
    Case("missing-file", tokenize("nosuch.parquet"), (r"nosuch\.parquet",), advice=False),
    Case("folder-without-parquet", tokenize(lambda s, b: b.folder("docs")), (r"docs", r"parquet")),
    Case(
        "missing-id-column",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, drop=["id"])),
        (r"docs\.parquet", r"'id'"),
    ),
    Case(
        "missing-domain-column",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, drop=["domain"])),
        (r"docs\.parquet", r"'domain'"),
    ),
    Case(
        "missing-text-column",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, drop=["text"])),
        (r"docs\.parquet", r"'text'"),
    ),
    Case(
        "duplicate-ids",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, rows=4, replace={"id": ["same"]})),
        (r"docs\.parquet", r"\bids?\b", r"unique|repeated|duplicate"),
        reject=(r"\.partial",),
    ),
    Case(
        "truncated-parquet",
        tokenize(lambda s, b: b.truncated("docs.parquet", s.documents_file)),
        (r"docs\.parquet", r"parquet"),
    ),
    Case(
        "zero-rows",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, rows=0)),
        (r"docs\.parquet", r"no (rows|documents|text)|empty"),
    ),
    Case(
        "all-null-text",
        tokenize(lambda s, b: blanks(s, b, None)),
        (r"docs\.parquet", r"null|no text|no documents"),
    ),
    Case(
        "some-null-text-skipped",
        tokenize(
            lambda s, b: b.variant(
                "docs.parquet",
                s.documents_file,
                rows=20,
                replace={
                    "text": [None, None, *pq.read_table(s.documents_file).slice(2, 18)["text"].to_pylist()]
                },
            )
        ),
        ok=True,
        check=tokenized(18),
    ),
    Case(
        "one-document",
        tokenize(lambda s, b: b.variant("docs.parquet", s.documents_file, rows=1)),
        ok=True,
        check=tokenized(1),
    ),
    Case(
        "one-document-domain",
        tokenize(
            lambda s, b: b.variant(
                "docs.parquet", s.documents_file, rows=12, replace={"domain": ["prose"] * 11 + ["code"]}
            )
        ),
        ok=True,
        check=tokenized(12),
    ),
    Case(
        "tokenizer-missing",
        lambda s, b: ["tokenize", s.documents, "--tokenizer", "nosuch", "--out", "out"],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "tokenizer-folder-without-tokenizer-json",
        lambda s, b: ["tokenize", s.documents, "--tokenizer", b.folder("tok"), "--out", "out"],
        (r"tok", r"tokenizer"),
    ),
    Case("valid-fraction-1.5", tokenize_with("--valid-fraction", 1.5), (r"--valid-fraction",)),
    Case("rows-per-task-0", tokenize_with("--rows-per-task", 0), (r"--rows-per-task",)),
    Case(
        "valid-domain-unknown", tokenize_with("--valid-domains", "klingon"), (r"--valid-domains", r"klingon")
    ),
    Case(
        "scheduler-address-notaurl",
        tokenize_with("--scheduler-address", "notaurl"),
        (r"notaurl", r"scheduler|connect"),
    ),
    *generic_cases(lambda s, b: ["tokenize", s.documents, "--tokenizer", s.tokenizer], "valid_fraction"),
]


@pytest.mark.parametrize("case", TOKENIZE_CASES, ids=case_ids(TOKENIZE_CASES))
def test_tokenize_bad_input(case: Case, check_case) -> None:
    check_case(case)
