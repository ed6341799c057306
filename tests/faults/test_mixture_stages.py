"""Bad inputs of the mixture search (mixtures sample, fit, select): refused before any work."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest
from fault_harness import Case, case_ids, generic_cases

pytestmark = pytest.mark.faults


def without(prefix: str):
    """A table change: drop every column whose name starts with `prefix`."""
    return lambda t: t.drop_columns([c for c in t.schema.names if c.startswith(prefix)])


def tokens_with(change_counts):
    """A copy of the tokens folder whose token_counts.parquet went through `change_counts`."""

    def make(s, b):
        name = b.copy(s.tokens, "tokens")
        path = b.root / name / "token_counts.parquet"
        if change_counts == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            b.edit(f"{name}/token_counts.parquet", path, change_counts)
        return name

    return make


# --- mixtures sample ----------------------------------------------------------------------------

SAMPLE = ["mixtures", "sample"]

SAMPLE_CASES = [
    Case("missing-tokens", lambda s, b: [*SAMPLE, "nosuch", "--out", "out"], (r"nosuch",), advice=False),
    Case(
        "folder-without-tokens",
        lambda s, b: [*SAMPLE, b.folder("tokens"), "--out", "out"],
        (r"tokens", r"tokenize|token_counts"),
    ),
    Case(
        "truncated-token-counts",
        lambda s, b: [*SAMPLE, tokens_with("truncate")(s, b), "--out", "out"],
        (r"token_counts\.parquet",),
    ),
    Case(
        "zero-row-token-counts",
        lambda s, b: [*SAMPLE, tokens_with(lambda t: t.slice(0, 0))(s, b), "--out", "out"],
        (r"token_counts|tokens", r"no (rows|tokens|domains)|empty|found \[\]"),
    ),
    Case(
        "candidates-1",
        lambda s, b: [*SAMPLE, s.tokens, "--candidates", 1, "--out", "out"],
        (r"--candidates",),
    ),
    Case(
        "spread-min-0",
        lambda s, b: [*SAMPLE, s.tokens, "--spread-min", 0, "--out", "out"],
        (r"--spread-min",),
    ),
    Case(
        "min-weight-1.5",
        lambda s, b: [*SAMPLE, s.tokens, "--min-weight", 1.5, "--out", "out"],
        (r"--min-weight",),
    ),
    Case(
        "max-epochs-0",
        lambda s, b: [*SAMPLE, s.tokens, "--max-epochs", 0, "--out", "out"],
        (r"--max-epochs",),
    ),
    Case(
        "unknown-domain",
        lambda s, b: [*SAMPLE, s.tokens, "--domains", "prose,klingon", "--out", "out"],
        (r"klingon",),
    ),
    Case(
        "one-domain",
        lambda s, b: [*SAMPLE, s.tokens, "--domains", "prose", "--out", "out"],
        (r"--domains|two domains", r"two|2|at least"),
    ),
    *generic_cases(lambda s, b: [*SAMPLE, s.tokens], "candidates"),
]


@pytest.mark.parametrize("case", SAMPLE_CASES, ids=case_ids(SAMPLE_CASES))
def test_mixtures_sample_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- mixtures fit -------------------------------------------------------------------------------

FIT = ["mixtures", "fit"]


def fit_runs(change=None, *flags):
    def argv(s, b):
        runs = b.edit("runs.parquet", s.runs_file, change) if change else s.runs
        return [*FIT, runs, *flags, "--out", "out"]

    return argv


FIT_CASES = [
    Case(
        "missing-runs",
        lambda s, b: [*FIT, "nosuch.parquet", "--out", "out"],
        (r"nosuch\.parquet",),
        advice=False,
    ),
    Case(
        "folder-without-runs",
        lambda s, b: [*FIT, b.folder("swarm"), "--out", "out"],
        (r"swarm", r"runs|parquet"),
    ),
    Case(
        "zero-runs", fit_runs(lambda t: t.slice(0, 0)), (r"runs\.parquet", r"no (rows|runs)|0 (usable )?runs")
    ),
    Case(
        "truncated-runs",
        lambda s, b: [*FIT, b.truncated("runs.parquet", s.runs_file), "--out", "out"],
        (r"runs\.parquet", r"parquet"),
    ),
    Case(
        "too-few-runs", fit_runs(lambda t: t.slice(0, 5)), (r"runs", r"--candidates"), reject=(r"--runs\b",)
    ),
    Case("no-weight-columns", fit_runs(without("w.")), (r"runs", r"w\.|weight")),
    Case(
        "no-loss-columns",
        fit_runs(without("loss."), "--target", "mean"),
        (r"loss",),
        reject=(r"e\.g\. --target\s*(;|$)",),
    ),
    Case("target-unknown-domain", fit_runs(None, "--target", "klingon"), (r"--target", r"klingon")),
    Case(
        "target-unknown-domain-in-weights",
        fit_runs(None, "--target", "prose=0.5,klingon=0.5"),
        (r"--target", r"klingon"),
    ),
    Case("target-non-numeric", fit_runs(None, "--target", "prose=lots"), (r"--target", r"lots|number")),
    Case("target-negative", fit_runs(None, "--target", "prose=1.5,code=-0.5"), (r"--target", r"negative")),
    Case("folds-1", fit_runs(None, "--folds", 1), (r"--folds",)),
    Case("learning-rate-0", fit_runs(None, "--learning-rate", 0), (r"--learning-rate",)),
    Case(
        "prior-not-summing-to-1",
        fit_runs(None, "--prior", "prose=0.5,code=0.2,legal=0.1"),
        (r"--prior", r"sum|1"),
    ),
    Case("bad-model-choice", fit_runs(None, "--model", "xgboost"), (r"--model",)),
    Case(
        "candidates-folder-not-a-sample",
        lambda s, b: [*FIT, s.runs, "--candidates", b.folder("cand"), "--out", "out"],
        (r"cand", r"candidates|mixtures sample"),
    ),
    Case(
        "runs-with-non-numeric-loss",
        fit_runs(
            lambda t: t.set_column(
                t.schema.get_field_index("loss.prose"), "loss.prose", pa.array(["high"] * t.num_rows)
            )
        ),
        (r"runs\.parquet", r"loss\.prose", r"number|numeric|float|type"),
    ),
    # --- issue 16: trajectories, CSV runs, weights off their sum ---
    Case(
        "at-step-without-trajectories",
        lambda s, b: [*FIT, swarm_without_trajectories(s, b), "--at-step", 2, "--out", "out"],
        (r"trajectories\.parquet", r"--at-step"),
    ),
    Case(
        "at-step-not-recorded",
        fit_runs(None, "--at-step", 3),
        (r"--at-step 3 was not recorded", r"recorded steps: 4"),
    ),
    Case(
        "trajectory-with-one-recorded-step",
        fit_runs(None, "--trajectory"),
        (r"--trajectory", r"--eval-every"),
    ),
    Case(
        "csv-ratios-without-run-id",
        lambda s, b: [*FIT, csv_pair(b, "prose,code\n0.5,0.5\n"), "--metrics", "metrics.csv", "--out", "out"],
        (r"ratios\.csv", r"run id"),
    ),
    Case(
        "csv-metrics-without-run-id",
        lambda s, b: [
            *FIT,
            csv_pair(b, metrics="id,x\nr1,1.0\n"),
            "--metrics",
            "metrics.csv",
            "--out",
            "out",
        ],
        (r"metrics\.csv", r"'run'"),
    ),
    Case(
        "csv-runs-without-weight-columns",
        lambda s, b: [*FIT, b.raw("runs.csv", "run,prose,code\nr1,0.5,0.5\n"), "--out", "out"],
        (r"runs\.csv", r"w\.<domain>", r"--metrics"),
    ),
    Case(
        "weights-not-summing-to-1",
        fit_runs(
            lambda t: t.set_column(
                t.schema.get_field_index("w.prose"), "w.prose", pa.compute.multiply(t["w.prose"], 0.9)
            )
        ),
        (r"runs\.parquet", r"do not sum to 1", r"--renormalize"),
    ),
    Case(
        "experts-missing-for-a-domain",
        lambda s, b: [*FIT, swarm_with_experts(s, b, drop="legal"), "--out", "out"],
        (r"experts", r"no expert for domain\(s\) \['legal'\]", r"swarm train --experts"),
    ),
    # --- end issue 16 ---
    *generic_cases(lambda s, b: [*FIT, s.runs], "folds"),
]


def swarm_without_trajectories(s, b) -> str:
    """A copy of the swarm output made before trajectories were kept (no trajectories.parquet)."""
    name = b.copy(s.runs, "swarm")
    (b.root / name / "trajectories.parquet").unlink(missing_ok=True)
    return name


def swarm_with_experts(s, b, drop: str) -> str:
    """A copy of the swarm output with experts/ log-probabilities for every domain but `drop`."""
    import numpy as np

    from mixlab.mixtures.experts import EXPERTS_DIR, write_logprobs

    name = b.copy(s.runs, "swarm")
    experts = [d for d in s.domains if d != drop]
    logp = {d: np.full((len(experts), 8), -2.0) for d in [*s.domains, "target"]}
    write_logprobs(b.root / name / EXPERTS_DIR, experts, logp, window_len=4)
    return name


def csv_pair(
    b, ratios: str = "run,prose,code\nr1,0.5,0.5\nr2,0.2,0.8\n", metrics: str = "run,x\nr1,1.0\n"
) -> str:
    """Olmix-shaped ratios.csv and metrics.csv in the case's folder; returns the ratios' name."""
    b.raw("metrics.csv", metrics)
    return b.raw("ratios.csv", ratios)


@pytest.mark.parametrize("case", FIT_CASES, ids=case_ids(FIT_CASES))
def test_mixtures_fit_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- mixtures select ----------------------------------------------------------------------------

SELECT = ["mixtures", "select"]


def select_with(*flags):
    return lambda s, b: [*SELECT, s.fit, "--samples", 200, "--top-k", 8, *flags, "--out", "out"]


def fit_copy_with(fit_json: str):
    def make(s, b):
        name = b.copy(s.fit, "fit")
        (b.root / name / "fit.json").write_text(fit_json)
        return name

    return make


SELECT_CASES = [
    Case("missing-fit", lambda s, b: [*SELECT, "nosuch", "--out", "out"], (r"nosuch",), advice=False),
    Case(
        "folder-without-fit",
        lambda s, b: [*SELECT, b.folder("fit"), "--out", "out"],
        (r"fit", r"mixtures fit|fit\.json"),
    ),
    Case(
        "corrupt-fit-json", lambda s, b: [*SELECT, fit_copy_with("{")(s, b), "--out", "out"], (r"fit\.json",)
    ),
    Case("min-weight-without-domain", select_with("--min-weight", 0.5), (r"--min-weight", r"=")),
    Case(
        "min-weight-unknown-domain", select_with("--min-weight", "klingon=0.1"), (r"--min-weight", r"klingon")
    ),
    Case(
        "min-weights-above-1-in-total",
        select_with("--min-weight", "prose=0.7,code=0.7"),
        (r"--min-weight", r"sum|infeasible|exceed|more than|cannot|above"),
    ),
    Case("max-weight-1.5", select_with("--max-weight", "prose=1.5"), (r"--max-weight",)),
    Case("top-k-above-samples", select_with("--top-k", 300), (r"--top-k",)),
    Case("samples-0", select_with("--samples", 0), (r"--samples",)),
    Case("verify-without-tokens", select_with("--verify"), (r"--verify", r"--tokens")),
    Case(
        "tokens-not-a-tokenize-output",
        lambda s, b: [*SELECT, s.fit, "--tokens", b.folder("tokens"), "--token-budget", 1000, "--out", "out"],
        (r"tokens", r"tokenize|token_counts"),
    ),
    Case("bad-method-choice", select_with("--method", "greedy"), (r"--method",)),
    *generic_cases(lambda s, b: [*SELECT, s.fit], "samples"),
]


@pytest.mark.parametrize("case", SELECT_CASES, ids=case_ids(SELECT_CASES))
def test_mixtures_select_bad_input(case: Case, check_case) -> None:
    check_case(case)


# --- search (issue 16.3) --------------------------------------------------------------------------

SEARCH_CASES = [
    Case(
        "budget-smaller-than-one-round",
        lambda s, b: ["search", s.tokens, "--budget", 6, "--out", "out"],
        (r"--budget 6: smaller than one round", r"at least 10 runs", r"raise --budget"),
    ),
    Case(
        "budget-below-2",
        lambda s, b: ["search", s.tokens, "--budget", 1, "--out", "out"],
        (r"--budget", r"at least 2"),
    ),
    Case(
        "swarm-key-the-search-sets",
        lambda s, b: ["search", s.tokens, "--swarm", "repeats=3", "--out", "out"],
        (r"--swarm", r"repeats", r"--repeats"),
    ),
]


@pytest.mark.parametrize("case", SEARCH_CASES, ids=case_ids(SEARCH_CASES))
def test_search_bad_input(case: Case, check_case) -> None:
    check_case(case)
