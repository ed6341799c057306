"""Bad inputs of the model stages (swarm train, pretrain, distill, export hf): refused before training."""

from __future__ import annotations

import pyarrow as pa
import pytest
from fault_harness import SWARM_FLAGS, TRAIN_FLAGS, Case, case_ids, generic_cases

pytestmark = pytest.mark.faults


def set_column(name: str, values):
    """A table change: column `name` becomes `values` (repeated to the table's length)."""

    def change(t: pa.Table) -> pa.Table:
        column = pa.array((list(values) * t.num_rows)[: t.num_rows])
        return t.set_column(t.schema.get_field_index(name), name, column)

    return change


def rename(old: str, new: str):
    return lambda t: t.rename_columns([new if c == old else c for c in t.schema.names])


def corrupt_model(s, b, name: str = "model") -> str:
    """A copy of the pretrained model with its weights file cut in half."""
    b.copy(s.model, name)
    path = b.root / name / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return name


# --- swarm train --------------------------------------------------------------------------------

SWARM = ["swarm", "train"]


def swarm_candidates(change):
    return lambda s, b: [
        *SWARM,
        b.edit("candidates.parquet", s.candidates_file, change),
        s.tokens,
        *SWARM_FLAGS,
        "--out",
        "out",
    ]


def swarm_with(*flags):
    return lambda s, b: [*SWARM, s.candidates, s.tokens, *SWARM_FLAGS, *flags, "--out", "out"]


SWARM_CASES = [
    Case(
        "missing-candidates",
        lambda s, b: [*SWARM, "nosuch.parquet", s.tokens, "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "missing-tokens",
        lambda s, b: [*SWARM, s.candidates, "nosuch", "--out", "out"],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "folder-without-candidates",
        lambda s, b: [*SWARM, b.folder("cand"), s.tokens, "--out", "out"],
        (r"cand", r"candidates|parquet"),
    ),
    Case(
        "zero-row-candidates",
        swarm_candidates(lambda t: t.slice(0, 0)),
        (r"candidates\.parquet", r"no (rows|candidates)"),
    ),
    Case(
        "truncated-candidates",
        lambda s, b: [*SWARM, b.truncated("candidates.parquet", s.candidates_file), s.tokens, "--out", "out"],
        (r"candidates\.parquet", r"parquet"),
    ),
    Case(
        "no-weight-columns",
        swarm_candidates(lambda t: t.drop_columns([c for c in t.schema.names if c.startswith("w.")])),
        (r"candidates\.parquet", r"w\.|weight"),
    ),
    Case(
        "weights-not-summing-to-1",
        swarm_candidates(set_column("w.prose", [0.9])),
        (r"candidates\.parquet", r"sum|1"),
    ),
    Case(
        "negative-weight",
        swarm_candidates(set_column("w.prose", [-0.2])),
        (r"candidates\.parquet", r"negative"),
    ),
    Case(
        "non-numeric-weight",
        swarm_candidates(set_column("w.prose", ["lots"])),
        (r"candidates\.parquet", r"w\.prose", r"number|numeric|float|type"),
    ),
    Case("unknown-domain", swarm_candidates(rename("w.legal", "w.klingon")), (r"klingon",)),
    Case(
        "duplicate-run-ids",
        swarm_candidates(set_column("run_id", ["r1"])),
        (r"candidates\.parquet", r"run_id", r"unique|duplicate|repeated"),
    ),
    Case(
        "tokens-not-a-tokenize-output",
        lambda s, b: [*SWARM, s.candidates, b.folder("tokens"), *SWARM_FLAGS, "--out", "out"],
        (r"tokens", r"tokenize|token_counts"),
    ),
    Case("n-head-not-dividing-n-embd", swarm_with("--n-head", 3), (r"--n-head", r"--n-embd")),
    Case("steps-0", swarm_with("--steps", 0), (r"--steps",)),
    Case("lr-negative", swarm_with("--lr", -1), (r"--lr",)),
    Case("bad-device-choice", swarm_with("--device", "tpu"), (r"--device",)),
    Case(
        "scheduler-address-notaurl",
        swarm_with("--scheduler-address", "notaurl"),
        (r"notaurl", r"scheduler|connect"),
    ),
    *generic_cases(lambda s, b: [*SWARM, s.candidates, s.tokens, *SWARM_FLAGS], "steps"),
]


@pytest.mark.parametrize("case", SWARM_CASES, ids=case_ids(SWARM_CASES))
def test_swarm_train_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- pretrain -----------------------------------------------------------------------------------


def pretrain_mixture(data):
    def argv(s, b):
        name = b.raw("mix.json", data) if isinstance(data, str) else b.json("mix.json", data)
        return ["pretrain", "--tokens", s.tokens, "--mixture", name, *TRAIN_FLAGS, "--out", "out"]

    return argv


def pretrain_with(*flags):
    return lambda s, b: [
        "pretrain",
        "--tokens",
        s.tokens,
        "--mixture",
        s.mixture,
        *TRAIN_FLAGS,
        *flags,
        "--out",
        "out",
    ]


PRETRAIN_CASES = [
    Case(
        "missing-mixture",
        lambda s, b: ["pretrain", "--tokens", s.tokens, "--mixture", "nosuch.json", "--out", "out"],
        (r"nosuch\.json",),
        advice=False,
    ),
    Case(
        "missing-tokens",
        lambda s, b: ["pretrain", "--tokens", "nosuch", "--mixture", s.mixture, "--out", "out"],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "mixture-not-summing-to-1",
        pretrain_mixture({"prose": 0.5, "code": 0.2, "legal": 0.1}),
        (r"mix\.json", r"sum|1"),
    ),
    Case("mixture-negative", pretrain_mixture({"prose": 1.5, "code": -0.5}), (r"mix\.json", r"negative")),
    Case("mixture-non-numeric", pretrain_mixture({"prose": "lots", "code": 0.5}), (r"mix\.json", r"number")),
    Case(
        "mixture-unknown-domain", pretrain_mixture({"prose": 0.5, "klingon": 0.5}), (r"mix\.json", r"klingon")
    ),
    Case("mixture-malformed-json", pretrain_mixture('{"prose": 0.5,'), (r"mix\.json", r"json")),
    Case("mixture-without-weights", pretrain_mixture({}), (r"mix\.json", r"weights")),
    Case("mixture-a-list", pretrain_mixture([0.5, 0.5]), (r"mix\.json",)),
    Case("target-unknown-domain", pretrain_with("--target", "klingon"), (r"--target", r"klingon")),
    Case("target-non-numeric", pretrain_with("--target", "prose=lots"), (r"--target", r"lots|number")),
    Case(
        "tokens-not-a-tokenize-output",
        lambda s, b: [
            "pretrain",
            "--tokens",
            b.folder("tokens"),
            "--mixture",
            s.mixture,
            *TRAIN_FLAGS,
            "--out",
            "out",
        ],
        (r"tokens", r"tokenize|token_counts"),
    ),
    Case("n-head-not-dividing-n-embd", pretrain_with("--n-head", 3), (r"--n-head", r"--n-embd")),
    Case("steps-0", pretrain_with("--steps", 0), (r"--steps",)),
    Case("decay-fraction-0", pretrain_with("--decay-fraction", 0), (r"--decay-fraction",)),
    Case("unknown-baseline", pretrain_with("--baselines", "natural,best"), (r"--baselines", r"best")),
    Case("model-file-missing", pretrain_with("--model", "nosuch.yaml"), (r"nosuch\.yaml",), advice=False),
    Case(
        "model-file-unknown-key",
        lambda s, b: [
            *pretrain_with()(s, b)[:-2],
            "--model",
            b.raw("size.yaml", "n_layers: 2\n"),
            "--out",
            "out",
        ],
        (r"size\.yaml", r"n_layers"),
    ),
    Case("resume-flag-is-accepted", pretrain_with("--resume"), ok=True),
    *generic_cases(lambda s, b: pretrain_with()(s, b)[:-2], "steps"),
]


@pytest.mark.parametrize("case", PRETRAIN_CASES, ids=case_ids(PRETRAIN_CASES))
def test_pretrain_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- distill ------------------------------------------------------------------------------------


def distill_with(*flags):
    return lambda s, b: [
        "distill",
        "--teacher",
        s.model,
        "--tokens",
        s.tokens,
        *TRAIN_FLAGS,
        *flags,
        "--out",
        "out",
    ]


DISTILL_CASES = [
    Case(
        "missing-teacher",
        lambda s, b: ["distill", "--teacher", "nosuch", "--tokens", s.tokens, "--out", "out"],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "teacher-folder-without-model",
        lambda s, b: [
            "distill",
            "--teacher",
            b.folder("teacher"),
            "--tokens",
            s.tokens,
            *TRAIN_FLAGS,
            "--out",
            "out",
        ],
        (r"teacher", r"model|config\.json|safetensors"),
    ),
    Case(
        "teacher-weights-truncated",
        lambda s, b: [
            "distill",
            "--teacher",
            corrupt_model(s, b, "teacher"),
            "--tokens",
            s.tokens,
            *TRAIN_FLAGS,
            "--out",
            "out",
        ],
        (r"teacher", r"safetensors|weights"),
    ),
    Case(
        "tokens-not-a-tokenize-output",
        lambda s, b: [
            "distill",
            "--teacher",
            s.model,
            "--tokens",
            b.folder("tokens"),
            *TRAIN_FLAGS,
            "--out",
            "out",
        ],
        (r"tokens", r"tokenize|token_counts"),
    ),
    Case(
        "mixture-unknown-domain",
        lambda s, b: [
            *distill_with()(s, b)[:-2],
            "--mixture",
            b.json("mix.json", {"prose": 0.5, "klingon": 0.5}),
            "--out",
            "out",
        ],
        (r"mix\.json", r"klingon"),
    ),
    Case(
        "mixture-not-summing-to-1",
        lambda s, b: [
            *distill_with()(s, b)[:-2],
            "--mixture",
            b.json("mix.json", {"prose": 0.5, "code": 0.1}),
            "--out",
            "out",
        ],
        (r"mix\.json", r"sum|1"),
    ),
    Case("alpha-2", distill_with("--alpha", 2), (r"--alpha",)),
    Case("tau-0", distill_with("--tau", 0), (r"--tau",)),
    Case("logit-chunk-0", distill_with("--logit-chunk", 0), (r"--logit-chunk",)),
    Case("target-unknown-domain", distill_with("--target", "klingon"), (r"--target", r"klingon")),
    Case("resume-flag-is-accepted", distill_with("--resume"), ok=True),
    *generic_cases(lambda s, b: distill_with()(s, b)[:-2], "alpha"),
]


@pytest.mark.parametrize("case", DISTILL_CASES, ids=case_ids(DISTILL_CASES))
def test_distill_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- export hf ----------------------------------------------------------------------------------

EXPORT = ["export", "hf"]

EXPORT_CASES = [
    Case("missing-model", lambda s, b: [*EXPORT, "nosuch", "--out", "out"], (r"nosuch",), advice=False),
    Case(
        "folder-without-model",
        lambda s, b: [*EXPORT, b.folder("model"), "--out", "out"],
        (r"model", r"config\.json|safetensors|model"),
    ),
    Case(
        "weights-truncated",
        lambda s, b: [*EXPORT, corrupt_model(s, b), "--out", "out"],
        (r"model", r"safetensors|weights"),
    ),
    Case(
        "bad-dtype-choice", lambda s, b: [*EXPORT, s.model, "--dtype", "int8", "--out", "out"], (r"--dtype",)
    ),
    Case("a-student-exports", lambda s, b: [*EXPORT, s.student, "--out", "out"], ok=True),
    *generic_cases(lambda s, b: [*EXPORT, s.model], "dtype"),
]


@pytest.mark.parametrize("case", EXPORT_CASES, ids=case_ids(EXPORT_CASES))
def test_export_hf_bad_input(case: Case, check_case) -> None:
    check_case(case)
