"""kill -9 at a seeded point of each long stage, then the same command again: the same bytes.

Each stage runs once uninterrupted (the reference, which also records when its partial folder
fills), then again in another folder, killed (the whole process group, SIGKILL) at a point
drawn from a seed, then rerun to the end. The rerun must resume, and its data files must be
byte-identical to the reference's (manifest wall times and a run's measured `wall_s` aside).
"""

from __future__ import annotations

import re

import pytest
from fault_harness import (
    TRAIN_FLAGS,
    differences,
    kill_then_rerun,
    pretrain_partial,
    stage_dir,
)

pytestmark = pytest.mark.faults

PROXY = (
    "--n-layer 1 --n-embd 16 --n-head 2 --seq-len 16 --batch-size 2 --steps 6 --warmup-steps 1 "
    "--eval-sequences 2 --device cpu --pack-size 3 --repeats 2 --repeat-mixtures 1"
).split()

# Each long stage with settings that split its work into many tasks (or checkpoints).
LONG_STAGES = {
    "dedup": lambda s: ["dedup", s.ingest, "--num-perm", 32, "--partition-docs", 10],
    "tokenize": lambda s: [
        "tokenize", s.documents, s.target_documents, "--tokenizer", s.tokenizer,
        "--valid-fraction", 0.2, "--rows-per-task", 10,
    ],
    "swarm-train": lambda s: ["swarm", "train", s.candidates, s.tokens, *PROXY],
    "pretrain": lambda s: [
        "pretrain", "--tokens", s.tokens, "--mixture", s.mixture, *TRAIN_FLAGS,
        "--steps", 40, "--checkpoint-every", 4, "--eval-every", 8,
    ],
}  # fmt: skip


def long_stage_args(name: str, inputs) -> list[str]:
    return [str(a) for a in (*LONG_STAGES[name](inputs), "--out", "out")]


def resumed_from_a_checkpoint(text: str) -> bool:
    return re.search(r"resum[^\n]*\bstep \d+", text, re.IGNORECASE) is not None


@pytest.mark.parametrize("stage", list(LONG_STAGES))
def test_a_killed_stage_reruns_to_byte_identical_outputs(stage, inputs, tmp_path, long_run, references):
    args = long_stage_args(stage, inputs)
    ref, killed = tmp_path / "ref", tmp_path / "kill"
    reference = long_run(args, ref, lambda: ref / ".out.partial")
    timeline = reference.reference()
    references[tuple(args)] = (ref / "out", reference.output())

    run = long_run(args, killed, lambda: killed / ".out.partial")
    text, at_kill = kill_then_rerun(run, timeline, f"kill -9/{stage}", killed / "out")

    problems = differences(ref / "out", killed / "out", roots=[ref, killed])
    if not re.search(r"resum", text, re.IGNORECASE):
        problems.append("the rerun did not resume the partial output")
    if any("checkpoint" in p for p in at_kill) and not resumed_from_a_checkpoint(text):
        problems.append("killed after a checkpoint, the rerun did not resume from it")
    assert not problems, f"kill -9 with {len(at_kill)} partial files, then rerun: " + "; ".join(problems)


def test_a_pipeline_killed_in_pretrain_resumes_it_to_byte_identical_outputs(
    pipeline_reference, pipeline_yaml, inputs, tmp_path, long_run
):
    ref, timeline = pipeline_reference
    killed = tmp_path / "kill"
    run = long_run(
        ["pipeline", "run", pipeline_yaml, "--out", "run"], killed, pretrain_partial(killed / "run")
    )
    pretrain = stage_dir(inputs.root, "pretrain").name
    later = [killed / "run" / p.name for p in sorted(inputs.root.iterdir()) if p.name >= pretrain]

    text, at_kill = kill_then_rerun(run, timeline, "kill -9/pipeline", killed / "run" / pretrain, clean=later)

    problems = differences(ref / "run", killed / "run", roots=[ref, killed])
    if re.search(r"discard", text, re.IGNORECASE):
        problems.append("the rerun discarded the interrupted stage's work")
    if any("checkpoint" in p for p in at_kill) and not resumed_from_a_checkpoint(text):
        problems.append("killed after a checkpoint, the rerun did not resume from it")
    assert not problems, "kill -9 in pretrain, then rerun: " + "; ".join(problems)


def test_swarm_progress_counts_each_pack_once(inputs, tmp_path, long_run, references):
    """`pack finished (k/N)` runs 1, 2, ..., N: no number repeated or skipped."""
    args = long_stage_args("swarm-train", inputs)
    if tuple(args) not in references:
        ref = tmp_path / "ref"
        run = long_run(args, ref, lambda: ref / ".out.partial")
        references[tuple(args)] = (ref / "out", run.complete("reference"))
    log = references[tuple(args)][1]
    counters = [(int(k), int(n)) for k, n in re.findall(r"^swarm:[^\n]*\((\d+)/(\d+)\)", log, re.MULTILINE)]
    assert counters, f"no `(k/N)` progress lines from swarm train: {log[-600:]}"
    total = counters[-1][1]
    assert [k for k, _ in counters] == list(range(1, total + 1)), f"progress counters {counters}"
