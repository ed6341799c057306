"""Bad inputs of `pipeline run` and `report`: refused before any stage writes."""

from __future__ import annotations

import pytest
from fault_harness import Case, case_ids, generic_cases

pytestmark = pytest.mark.faults


def pipeline(text: str, *flags):
    """`pipeline run` of the YAML `text`, stopping after synth (a refusal must come first)."""
    return lambda s, b: ["pipeline", "run", b.raw("p.yaml", text), "--out", "run", "--until", "synth", *flags]


def foreign_stage_dir(s, b):
    b.folder("run/00_synth", {})
    b.json("run/00_synth/manifest.json", {"hello": 1})
    return ["pipeline", "run", b.raw("p.yaml", SYNTH), "--out", "run", "--until", "synth"]


SYNTH = "synth: {docs_per_domain: 5, doc_words: 20, near_dup_clusters: 1, exact_dups: 1}\n"

PIPELINE_CASES = [
    Case(
        "missing-pipeline-file",
        lambda s, b: ["pipeline", "run", "nosuch.yaml", "--out", "run"],
        (r"nosuch\.yaml",),
        advice=False,
    ),
    Case("malformed-yaml", pipeline("dedup: {threshold: [1, 2\n"), (r"p\.yaml", r"yaml")),
    Case("top-level-not-a-mapping", pipeline("- synth\n- dedup\n"), (r"p\.yaml", r"mapping")),
    Case("unknown-section", pipeline("dedupe: {threshold: 0.8}\n"), (r"dedupe", r"stages|sections")),
    Case("unknown-key-in-a-section", pipeline("dedup: {thresh: 0.8}\n"), (r"dedup", r"thresh", r"valid")),
    Case("section-not-a-mapping", pipeline("dedup: 5\n"), (r"dedup", r"mapping")),
    Case(
        "out-of-range-value",
        pipeline("tokenizer_train: {vocab_size: 10}\n"),
        (r"vocab", r"tokenizer_train|vocab_size|--vocab-size"),
    ),
    Case("non-numeric-value", pipeline("dedup: {threshold: high}\n"), (r"threshold", r"high")),
    Case(
        "blend-not-summing-to-1",
        pipeline("synth: {domains: [prose, code], target_blend: {prose: 0.5, code: 0.2}}\n"),
        (r"target.blend", r"sum|1"),
    ),
    Case(
        "blend-unknown-domain",
        pipeline("synth: {domains: [prose, code], target_blend: {prose: 0.5, legal: 0.5}}\n"),
        (r"target.blend", r"legal"),
    ),
    Case(
        "unknown-mixture-search",
        pipeline("mixture_search: regmix\n"),
        (r"mixture_search", r"regmix", r"one-shot, iterative"),
    ),
    Case(
        "unknown-until-stage", pipeline("synth: {}\n", "--until", "pretraining"), (r"pretraining", r"stages")
    ),
    Case(
        "from-an-unfinished-stage",
        pipeline("synth: {}\n", "--from", "dedup", "--until", "dedup"),
        (r"--from", r"synth"),
    ),
    Case(
        "missing-inputs",
        lambda s, b: [
            "pipeline",
            "run",
            b.raw("p.yaml", "inputs: [nosuch]\n"),
            "--out",
            "run",
            "--until",
            "ingest",
        ],
        (r"nosuch",),
        advice=False,
    ),
    Case(
        "scheduler-address-notaurl",
        lambda s, b: [
            "pipeline",
            "run",
            b.raw("p.yaml", SYNTH),
            "--out",
            "run",
            "--until",
            "dedup",
            "--scheduler-address",
            "notaurl",
        ],
        (r"notaurl", r"scheduler|connect"),
    ),
    Case("foreign-stage-dir-in-the-run", foreign_stage_dir, (r"manifest", r"not a mixlab")),
]


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=case_ids(PIPELINE_CASES))
def test_pipeline_run_bad_input(case: Case, check_case) -> None:
    check_case(case)


REPORT_CASES = [
    Case("missing-run", lambda s, b: ["report", "nosuch", "--out", "out"], (r"nosuch",), advice=False),
    Case(
        "empty-folder",
        lambda s, b: ["report", b.folder("run", {}), "--out", "out"],
        (r"run", r"pipeline run|stage"),
    ),
    Case(
        "folder-of-other-files",
        lambda s, b: ["report", b.folder("run"), "--out", "out"],
        (r"run", r"pipeline run|stage"),
    ),
    Case(
        "foreign-manifest-in-a-stage-dir",
        lambda s, b: ["report", b.folder("run", {"00_synth/manifest.json": '{"hello": 1}'}), "--out", "out"],
        (r"manifest|stage output", r"not a mixlab|no finished"),
    ),
    Case(
        "max-runs-plotted-negative",
        lambda s, b: ["report", s.root, "--max-runs-plotted", -1, "--out", "out"],
        (r"--max-runs-plotted",),
    ),
    *generic_cases(lambda s, b: ["report", s.root], "title"),
]


@pytest.mark.parametrize("case", REPORT_CASES, ids=case_ids(REPORT_CASES))
def test_report_bad_input(case: Case, check_case) -> None:
    check_case(case)
