"""Two runs into one --out: one refuses, naming the other's pid; a dead run's lock is taken over.

The dedup runs are subprocesses started together. Whichever takes the output's lock is
stopped (SIGSTOP) while the other tries, so the refusal never depends on timing; it then
continues and must publish exactly what it publishes alone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_harness import Case, differences, invoke, leftovers_beside, problems_with_refusal, snapshot

pytestmark = pytest.mark.faults

LOCKED = "another mixlab run is writing"


def dedup_args(inputs, *flags) -> list[str]:
    """The same command line as the dedup kill test (so its reference is reused)."""
    return [
        str(a)
        for a in ("dedup", inputs.ingest, "--num-perm", 32, "--partition-docs", 10, *flags, "--out", "out")
    ]


def lock_owner(lock: Path, procs: dict[int, subprocess.Popen], timeout: float = 120) -> int:
    """The pid written in `lock` once one of `procs` holds it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(lock.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid in procs:
            return pid
        assert any(p.poll() is None for p in procs.values()), "both runs ended before either held the lock"
        time.sleep(0.005)
    raise AssertionError(f"no run wrote its pid into {lock} within {timeout}s")


def test_two_dedup_runs_into_one_out_one_refuses_the_other_completes(inputs, tmp_path, long_run, references):
    cwd = tmp_path / "both"
    plain, lower = dedup_args(inputs), dedup_args(inputs, "--lowercase")
    runs = {
        "plain": long_run(plain, cwd, lambda: cwd / ".out.partial"),
        "lower": long_run(lower, cwd, lambda: cwd / ".out.partial"),
    }
    procs = {name: run.start(name) for name, run in runs.items()}
    by_pid = {p.pid: name for name, p in procs.items()}
    owner = by_pid[lock_owner(cwd / ".out.lock", {p.pid: p for p in procs.values()})]
    other = "lower" if owner == "plain" else "plain"

    os.killpg(procs[owner].pid, signal.SIGSTOP)
    try:
        procs[other].wait(timeout=120)
    finally:
        os.killpg(procs[owner].pid, signal.SIGCONT)
    refusal = runs[other].output()
    procs[owner].wait(timeout=300)
    runs[owner].succeeded(procs[owner])

    lines = [line for line in refusal.splitlines() if line.startswith("Error:")]
    assert procs[other].returncode != 0, f"the second run did not refuse: {refusal[-600:]}"
    assert "Traceback" not in refusal, refusal[-2000:]
    assert len(lines) == 1 and LOCKED in lines[0], f"expected one '{LOCKED}' error, got: {refusal[-600:]}"
    assert f"pid {procs[owner].pid}" in lines[0], (
        f"the refusal does not name pid {procs[owner].pid}: {lines[0]}"
    )
    assert not leftovers_beside(cwd / "out"), leftovers_beside(cwd / "out")

    args = plain if owner == "plain" else lower
    if tuple(args) not in references:
        ref = tmp_path / "ref"
        text = long_run(args, ref, lambda: ref / ".out.partial").complete("reference")
        references[tuple(args)] = (ref / "out", text)
    ref_out = references[tuple(args)][0]
    diffs = differences(ref_out, cwd / "out", roots=[ref_out.parent, cwd])
    assert not diffs, f"the run that held the lock ({owner}) published something else: " + "; ".join(diffs)


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, str(os.getpid()).encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.fixture
def lock_holder(tmp_path):
    """A process that holds `case/.out.lock` the way a running mixlab does (flock + its pid)."""
    folder = tmp_path / "case"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder / ".out.lock")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_held_lock_is_refused_with_its_pid(inputs, lock_holder):
    folder, holder = lock_holder
    before = snapshot(folder)
    out = invoke(["mixtures", "sample", inputs.tokens, "--out", "out"], folder)
    problems = problems_with_refusal(
        out, Case("held-lock", lambda s, b: [], (re.escape(LOCKED), rf"pid {holder.pid}\b"))
    )
    if snapshot(folder) != before:
        problems.append(f"left on disk: {sorted(set(snapshot(folder)) - set(before))}")
    assert not problems, "; ".join(problems)


def test_the_stale_lock_of_a_killed_run_is_taken_over(inputs, lock_holder):
    folder, holder = lock_holder
    holder.kill()  # SIGKILL: its lock file stays behind, with its pid in it
    holder.wait()
    assert (folder / ".out.lock").is_file()
    out = invoke(["mixtures", "sample", inputs.tokens, "--out", "out"], folder)
    assert out.exit_code == 0 and not out.crash, f"a stale lock blocked the run: {out.tail()}"
    assert (folder / "out" / "candidates.parquet").is_file()
    assert not leftovers_beside(folder / "out"), f"left {leftovers_beside(folder / 'out')}"
