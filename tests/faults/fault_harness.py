"""The fault suite's harness: bad-input cases, the refusal contract, and runs that can be killed.

A `Case` builds one bad (or merely odd) input in its own folder from the session's tiny
pipeline run; `run_case` runs the CLI there and checks the contract every refusal keeps: a
non-zero exit, one ``Error:`` line naming the file or flag and what to do, no traceback, and
nothing new on disk. `LongRun` starts the CLI as a subprocess, watches its partial output
folder, and kills the whole process group (SIGKILL) at a seeded point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

import mixlab

# Sized so the whole flow runs in ~20 s on 2 cores, and every stage still has several tasks.
TINY_PIPELINE = """\
seed: 3
synth: {domains: [prose, code, legal], docs_per_domain: 40, doc_words: 40, near_dup_clusters: 4,
        exact_dups: 2, target_blend: {prose: 0.7, code: 0.3}, target_docs: 20}
dedup: {num_perm: 32}
tokenizer_train: {vocab_size: 300, sample_bytes: 200000}
tokenize: {valid_fraction: 0.2}
mixtures_sample: {candidates: 12}
swarm_train: {n_layer: 1, n_embd: 16, n_head: 2, seq_len: 16, batch_size: 2, steps: 4, warmup_steps: 1,
              eval_sequences: 2, repeats: 2, repeat_mixtures: 1, pack_size: 4, device: cpu}
mixtures_fit: {target: target, folds: 2}
mixtures_select: {samples: 200, top_k: 8}
pretrain: {n_layer: 1, n_embd: 16, n_head: 2, seq_len: 16, batch_size: 2, steps: 40, warmup_steps: 1,
           eval_every: 10, eval_sequences: 2, checkpoint_every: 4, device: cpu}
distill: {n_layer: 1, n_embd: 16, n_head: 2, seq_len: 16, batch_size: 2, steps: 4, warmup_steps: 1,
          eval_every: 2, eval_sequences: 2, device: cpu}
"""

# Flags that make a proxy or a model train in a blink, for cases that must get past the config.
SWARM_FLAGS = (
    "--n-layer 1 --n-embd 16 --n-head 2 --seq-len 16 --batch-size 2 --steps 2 --warmup-steps 1 "
    "--eval-sequences 2 --pack-size 8 --device cpu"
).split()
TRAIN_FLAGS = (
    "--n-layer 1 --n-embd 16 --n-head 2 --seq-len 16 --batch-size 2 --steps 2 --warmup-steps 1 "
    "--eval-every 2 --eval-sequences 2 --device cpu"
).split()

# A refusal says what to do: an action, the rule that was broken, or the values to choose from.
ACTIONS = (
    "pass run rerun re-run use choose give set remove delete fix write make train point add raise lower "
    "name wait try check re-create recreate"
).split()
RULES = (
    "expected|expect|must|should|needs?|cannot|exceeds?|valid|known|one of|at least|at most|between|lie|"
    "instead|not 1|not in|not among|not a number"
)
ADVICE = re.compile(
    rf"\b({'|'.join(ACTIONS)}|{RULES})\b"
    r"|[<>]|\((\w+ )*(domains|known|valid|found|have|losses|stages|choices)\b[^)]*:",
    re.IGNORECASE,
)
# Never in a message: a flag spelled with four dashes (a flag name run through flag_name twice).
ALWAYS_REJECT = (r"----",)


def stage_dir(root: Path, name: str) -> Path:
    """`<root>/NN_<name>`, whatever its number."""
    found = sorted(root.glob(f"[0-9][0-9]_{name}"))
    assert found, f"the pipeline run {root} has no {name} stage output"
    return found[0]


def manifest_of(out: Path) -> dict[str, Any]:
    """The manifest of a finished output (beside the data, or in its `_mixlab/` folder)."""
    for path in (out / "manifest.json", out / "_mixlab" / "manifest.json"):
        if path.is_file():
            return json.loads(path.read_text())
    raise AssertionError(f"{out}: no manifest.json")


def read_parquet_dir(folder: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Every data file of an output folder as one table (hidden and `_` entries skipped)."""
    files = sorted(
        p
        for p in folder.rglob("*.parquet")
        if not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )
    assert files, f"{folder}: no parquet files"
    return pa.concat_tables(pq.read_table(f, columns=columns) for f in files)


def find_values(data: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(data, dict):
        return [v for k, v in data.items() if k == key] + [
            x for v in data.values() for x in find_values(v, key)
        ]
    if isinstance(data, list):
        return [x for v in data for x in find_values(v, key)]
    return []


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Every stage's output from one tiny pipeline run (read-only; copy before changing)."""

    root: Path

    @property
    def corpus(self) -> Path:
        return stage_dir(self.root, "synth")

    @property
    def raw_documents(self) -> Path:
        return self.corpus / "documents"

    @property
    def target_documents(self) -> Path:
        return self.corpus / "target" / "documents.parquet"

    @property
    def ingest(self) -> Path:
        return stage_dir(self.root, "ingest")

    @property
    def dedup(self) -> Path:
        return stage_dir(self.root, "dedup")

    @property
    def documents(self) -> Path:
        return self.dedup / "documents"

    @property
    def documents_file(self) -> Path:
        return sorted(self.documents.glob("*.parquet"))[0]

    @property
    def tokenizer(self) -> Path:
        return stage_dir(self.root, "tokenizer_train")

    @property
    def tokens(self) -> Path:
        return stage_dir(self.root, "tokenize")

    @property
    def candidates(self) -> Path:
        return stage_dir(self.root, "mixtures_sample")

    @property
    def candidates_file(self) -> Path:
        return self.candidates / "candidates.parquet"

    @property
    def runs(self) -> Path:
        return stage_dir(self.root, "swarm_train")

    @property
    def runs_file(self) -> Path:
        return self.runs / "runs.parquet"

    @property
    def fit(self) -> Path:
        return stage_dir(self.root, "mixtures_fit")

    @property
    def mixture(self) -> Path:
        return stage_dir(self.root, "mixtures_select") / "mixture.json"

    @property
    def model(self) -> Path:
        return stage_dir(self.root, "pretrain")

    @property
    def student(self) -> Path:
        return stage_dir(self.root, "distill")

    @property
    def domains(self) -> list[str]:
        return sorted(json.loads(self.mixture.read_text())["weights"])


def mixlab_env() -> dict[str, str]:
    """The environment of a subprocess run: this checkout's mixlab, a LocalCluster of its own."""
    env = dict(os.environ)
    src = str(Path(mixlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


MIXLAB = (sys.executable, "-m", "mixlab.cli")


# --- bad inputs ------------------------------------------------------------------------------


class Bad:
    """Makes one case's inputs in its folder (the CLI's working directory); returns relative names."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def table(self, name: str, table: pa.Table) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return name

    def docs(self, name: str, **columns: Sequence[Any]) -> str:
        """A parquet file of the given string columns."""
        return self.table(name, pa.table({k: pa.array(list(v), pa.string()) for k, v in columns.items()}))

    def variant(
        self,
        name: str,
        src: Path,
        *,
        rows: int | None = None,
        drop: Sequence[str] = (),
        replace: dict[str, Sequence[Any]] | None = None,
    ) -> str:
        """A copy of the parquet `src` (first `rows` rows, `drop` columns gone, columns replaced)."""
        table = pq.read_table(src)
        if rows is not None:
            table = table.slice(0, rows)
        table = table.drop_columns(list(drop))
        for column, values in (replace or {}).items():
            values = list(values)
            values = (values * table.num_rows)[: table.num_rows] if len(values) != table.num_rows else values
            array = pa.array(
                values, table.schema.field(column).type if column in table.schema.names else None
            )
            if column in table.schema.names:
                table = table.set_column(table.schema.get_field_index(column), column, array)
            else:
                table = table.append_column(column, array)
        return self.table(name, table)

    def edit(self, name: str, src: Path, change: Callable[[pa.Table], pa.Table]) -> str:
        """A copy of the parquet `src` changed by `change`."""
        return self.table(name, change(pq.read_table(src)))

    def truncated(self, name: str, src: Path) -> str:
        data = Path(src).read_bytes()
        return self.raw(name, data[: len(data) // 2])

    def raw(self, name: str, data: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return name

    def json(self, name: str, data: Any) -> str:
        return self.raw(name, json.dumps(data))

    def folder(self, name: str, files: dict[str, str] | None = None) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        for file, text in (files or {"README.txt": "not parquet\n"}).items():
            self.raw(f"{name}/{file}", text)
        return name

    def copy(self, src: Path, name: str) -> str:
        """A writable copy of a file or folder."""
        dst = self.root / name
        if Path(src).is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
        for path in [dst, *dst.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return name

    def foreign_out(self) -> str:
        """A non-empty folder mixlab did not write."""
        return self.folder("out", {"notes.txt": "my own files\n"})

    def foreign_manifest(self) -> str:
        """A folder whose manifest.json is not a mixlab one."""
        self.folder("out", {})
        self.json("out/manifest.json", {"hello": 1})
        return "out"


@dataclasses.dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    crash: str | None  # the traceback of an exception that escaped the CLI

    @property
    def text(self) -> str:
        return self.stdout + self.stderr + (self.crash or "")

    def tail(self) -> str:
        lines = [line for line in (self.crash or self.stderr or self.stdout).splitlines() if line.strip()]
        return lines[-1].strip() if lines else "(no output)"


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad (or merely odd) input of a stage and what the CLI must do with it.

    `argv(inputs, bad)` builds the command line (creating the case's files). A refusal's one
    error line must match every `expect` pattern (the file or flag, the fix) and no `reject`
    pattern. `ok` cases must succeed instead; `check(inputs, folder, outcome)` then looks at
    what they wrote and said.
    """

    id: str
    argv: Callable[[Inputs, Bad], Sequence[Any]]
    expect: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    ok: bool = False
    check: Callable[[Inputs, Path, Outcome], None] | None = None
    advice: bool = True  # False for click's own usage errors ("Path 'x' does not exist.")


def generic_cases(base: Callable[[Inputs, Bad], Sequence[Any]], yaml_key: str) -> list[Case]:
    """The cases every stage shares: a foreign --out (two kinds), a malformed and a wrong YAML.

    `base` is a valid command line without --out; `yaml_key` a real key of the stage's config.
    """
    return [
        Case(
            "foreign-out",
            lambda s, b: [*base(s, b), "--out", b.foreign_out()],
            expect=(r"\bout\b", r"not a mixlab", r"--out|remove"),
        ),
        Case(
            "foreign-manifest",
            lambda s, b: [*base(s, b), "--out", b.foreign_manifest()],
            expect=(r"\bout\b", r"not a mixlab", r"--out|remove"),
        ),
        Case(
            "malformed-yaml",
            lambda s, b: [*base(s, b), "--config", b.raw("bad.yaml", f"{yaml_key}: [1, 2\n"), "--out", "out"],
            expect=(r"bad\.yaml", r"yaml"),
        ),
        Case(
            "unknown-yaml-key",
            lambda s, b: [*base(s, b), "--config", b.raw("bad.yaml", "bogus_key: 1\n"), "--out", "out"],
            expect=(r"bad\.yaml", r"bogus_key", r"valid"),
        ),
    ]


def snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `roots`: files with (size, mtime), folders as names."""
    out: dict[str, tuple[int, int] | None] = {}
    for root in roots:
        for path in root.rglob("*"):
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[str(path)] = None if path.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def invoke(args: Sequence[Any], cwd: Path) -> Outcome:
    """The CLI in-process (click's CliRunner), in `cwd`."""
    from mixlab.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    finally:
        os.chdir(old)
    crash = None
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crash = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, crash)


def problems_with_refusal(out: Outcome, case: Case) -> list[str]:
    """What breaks the refusal contract (empty: it holds)."""
    problems = []
    if out.crash:
        problems.append(f"crashed: {out.tail()}")
    if out.exit_code == 0:
        problems.append(f"exit 0, expected a refusal; last line: {out.tail()}")
    if "Traceback" in out.stdout + out.stderr:
        problems.append("a traceback in the output")
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    if not out.crash and out.exit_code != 0:
        if len(errors) != 1:
            problems.append(f"{len(errors)} 'Error:' lines, expected one; last line: {out.tail()}")
        elif lines[-1] != errors[0]:
            problems.append(f"the error is not one line (more follows it): {errors[0]!r} ... {lines[-1]!r}")
    message = errors[0] if errors else out.tail()
    for pattern in case.expect:
        if not re.search(pattern, message, re.IGNORECASE):
            problems.append(f"message lacks /{pattern}/: {message}")
    for pattern in (*case.reject, *ALWAYS_REJECT):
        if re.search(pattern, message, re.IGNORECASE):
            problems.append(f"message has /{pattern}/: {message}")
    if case.advice and errors and not ADVICE.search(message):
        problems.append(f"message does not say what to do: {message}")
    return problems


def run_case(case: Case, inputs: Inputs, folder: Path) -> None:
    """Run one case in `folder` and assert the contract (a clean refusal, or success for `ok`)."""
    folder.mkdir()
    argv = [str(a) for a in case.argv(inputs, Bad(folder))]
    before = snapshot(folder, inputs.root)
    out = invoke(argv, folder)
    after = snapshot(folder, inputs.root)
    command = "mixlab " + " ".join(argv)
    if case.ok:
        assert out.exit_code == 0 and not out.crash, f"{command}: failed: {out.tail()}"
        assert "Traceback" not in out.text, f"{command}: printed a traceback"
        leftovers = [os.path.relpath(p, folder) for p in after if re.search(r"\.(partial|lock|tmp)$", p)]
        assert not leftovers, f"{command}: left {leftovers}"
        if case.check is not None:
            case.check(inputs, folder, out)
        return
    problems = problems_with_refusal(out, case)
    new = sorted(os.path.relpath(p, folder) for p in set(after) - set(before))
    touched = sorted(p for p in before if after.get(p, "gone") != before[p])
    if new:
        problems.append(f"left on disk: {new[:4]}")
    if touched:
        problems.append(f"changed or deleted existing files: {touched[:4]}")
    assert not problems, f"{command}: " + "; ".join(problems)


def case_ids(cases: Sequence[Case]) -> list[str]:
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), f"case ids repeat: {ids}"
    return ids


# --- long runs: kill -9 at a seeded point ------------------------------------------------------


class Writes:
    """Counts the writes seen in a partial folder: every new (file, size, mtime) is one.

    A checkpoint rewritten in place still counts, so the count follows the stage's progress
    whether it adds files (markers, shards) or overwrites them (training state).
    """

    def __init__(self) -> None:
        self.seen: set[tuple[str, int, int]] = set()

    def update(self, folder: Path) -> int:
        try:
            for path in folder.rglob("*"):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    if path.is_file():
                        self.seen.add((str(path), st.st_size, st.st_mtime_ns))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return len(self.seen)


@dataclasses.dataclass
class Timeline:
    """How many writes the reference run's partial folder had seen, and when."""

    events: list[tuple[float, int]]  # (seconds since the partial folder appeared, writes seen)


@dataclasses.dataclass
class KillPoint:
    """Kill as soon as `writes` writes have been seen in the partial folder."""

    writes: int

    @classmethod
    def draw(cls, timeline: Timeline, seed: str) -> KillPoint:
        """A seeded point after the stage's first piece of work, well before its last write."""
        counts = [n for _, n in timeline.events]
        first = counts[1] if len(counts) > 1 else counts[0]  # counts[0]: the stage's key file
        last = max(first, round(0.8 * counts[-1]))
        return cls(random.Random(seed).randint(first, last))


def traceback_summary(text: str) -> str:
    """The line before a printed traceback and the exception it ends in, in one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    raised = ""
    for line in lines[start + 1 :]:
        if not line.strip() or line[0].isspace() or line.startswith(("Traceback", "The above", "During")):
            continue
        if not re.match(r"[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
            break  # the traceback (and any chained one) is over
        raised = line.strip()
    before = lines[start - 1].strip() if start else ""
    return f"{before} -> {raised}"[:400]


class LongRun:
    """The CLI in a subprocess of its own process group, watched through its partial folder."""

    def __init__(self, args: Sequence[Any], cwd: Path, watch: Callable[[], Path | None]) -> None:
        self.args = [str(a) for a in args]
        self.cwd = cwd
        self.watch = watch  # the partial folder (None while it cannot be known yet)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str) -> subprocess.Popen:
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log = self.cwd.parent / f"{self.cwd.name}.{name}.log"
        with open(self.log, "w") as log:
            proc = subprocess.Popen(
                [*MIXLAB, *self.args],
                cwd=self.cwd,
                env=mixlab_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return self.log.read_text()

    def _partial(self) -> Path | None:
        folder = self.watch()
        return folder if folder is not None and folder.is_dir() else None

    def complete(self, name: str, timeout: float = 300) -> str:
        """Run to the end; assert it succeeded without a traceback; return its output."""
        proc = self.start(name)
        proc.wait(timeout=timeout)
        return self.succeeded(proc)

    def succeeded(self, proc: subprocess.Popen) -> str:
        text = self.output()
        command = "mixlab " + " ".join(self.args)
        assert proc.returncode == 0, f"{command} failed: {text.strip().splitlines()[-1:]}"
        assert "Traceback" not in text, f"{command} printed a traceback: {traceback_summary(text)}"
        return text

    def reference(self, timeout: float = 300) -> Timeline:
        """Run to the end uninterrupted, recording how the partial folder fills."""
        proc = self.start("reference")
        events: list[tuple[float, int]] = []
        writes, t0 = Writes(), None
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"mixlab {self.args}: still running after {timeout}s"
            folder = self._partial()
            if folder is not None:
                t0 = time.monotonic() if t0 is None else t0
                n = writes.update(folder)
                if n > (events[-1][1] if events else 0):
                    events.append((round(time.monotonic() - t0, 3), n))
            time.sleep(0.005)
        self.succeeded(proc)
        assert events, f"mixlab {self.args}: its partial folder was never seen"
        return Timeline(events)

    def kill_at(self, point: KillPoint, timeout: float = 300) -> bool:
        """Start, and SIGKILL the process group at `point`; False if the stage finished first."""
        proc = self.start("killed")
        writes, started = Writes(), False
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, f"mixlab {self.args}: kill point {point} never reached"
            folder = self._partial()
            if folder is not None:
                started = True
                if writes.update(folder) >= point.writes:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True
            elif started:  # published before the point was seen: a miss (stop what follows)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return False
            time.sleep(0.002)
        return False

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def kill_then_rerun(
    run: LongRun, timeline: Timeline, seed: str, out: Path, clean: Sequence[Path] = ()
) -> tuple[str, list[str]]:
    """Kill `run` at a seeded point (the first one if it finished first), then rerun it to the end.

    `out` is the output the kill must land before; `clean` the outputs to delete (with their
    partial folders) before another try (default: `out`). Returns the rerun's output and the
    files the partial folder held at the kill. Asserts the rerun left no partial folder or lock.
    """
    point = KillPoint.draw(timeline, seed)
    first = KillPoint(timeline.events[1][1] if len(timeline.events) > 1 else 1)
    tries = []
    for attempt in (point, first):
        killed = run.kill_at(attempt)
        tries.append(f"{attempt}: {'killed' if killed else 'missed'}")
        if killed:
            break
        for path in clean or [out]:  # a missed kill: undo what the run finished, try earlier
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(partial_of(path), ignore_errors=True)
    else:
        raise AssertionError(f"mixlab {' '.join(run.args)}: finished before every kill point ({tries})")
    print(f"reference writes {timeline.events}; kill points {tries}")
    assert not out.exists(), f"{out}: published by a run that was killed at {attempt}"
    folder = run.watch()
    at_kill = [] if folder is None else [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
    text = run.complete("rerun")
    assert not leftovers_beside(out), f"the rerun left {leftovers_beside(out)} beside {out}"
    return text, at_kill


def pretrain_partial(root: Path) -> Callable[[], Path | None]:
    """The partial folder of a pipeline run's pretrain stage, once it exists."""
    return lambda: next(iter(sorted(root.glob(".[0-9][0-9]_pretrain.partial"))), None)


def partial_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def leftovers_beside(out: Path) -> list[str]:
    """Hidden work folders and lock files of `out` left in its parent."""
    if not out.parent.exists():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


VOLATILE_COLUMNS = {"wall_s"}  # a run's measured duration cannot repeat
SKIPPED_FILES = {"report.html", "report.md"}  # the report quotes wall times
RUN_RECORD = "run.json"  # a pipeline's run-level manifest: compared on its stages' dirs and counts


def differences(ref: Path, got: Path, roots: Sequence[Path] = ()) -> list[str]:
    """Files that differ between two output trees (text compared with the `roots` masked).

    Parquet must be byte-identical, except a table whose only difference is a measured wall
    time; manifests must agree on stage, config, counts and the files they list.
    """

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    def mask(text: str) -> str:
        for root in roots:
            text = text.replace(str(root), "<ROOT>")
        return text

    out = []
    a, b = files(ref), files(got)
    out += [f"only in the reference: {p}" for p in sorted(a - b)]
    out += [f"only after the kill and rerun: {p}" for p in sorted(b - a)]
    for rel in sorted(a & b):
        x, y = ref / rel, got / rel
        if x.name in SKIPPED_FILES:
            continue
        if x.name == RUN_RECORD:
            rx, ry = (json.loads(mask(p.read_text())) for p in (x, y))
            kept = [
                {n: (s.get("dir"), s.get("counts")) for n, s in r.get("stages", {}).items()} for r in (rx, ry)
            ]
            if kept[0] != kept[1]:
                out.append(f"{rel}: its stages' directories or counts differ")
            continue
        if x.name == "manifest.json":
            mx, my = (json.loads(mask(p.read_text())) for p in (x, y))
            keep = ("stage", "config", "counts")
            if {k: mx.get(k) for k in keep} != {k: my.get(k) for k in keep} or sorted(
                mx.get("outputs", {})
            ) != sorted(my.get("outputs", {})):
                out.append(f"{rel}: stage, config, counts or listed files differ")
            continue
        bx, by = x.read_bytes(), y.read_bytes()
        if bx == by:
            continue
        if x.name.endswith(".parquet"):
            tx, ty = pq.read_table(x), pq.read_table(y)
            drop = sorted(VOLATILE_COLUMNS & set(tx.schema.names))
            if tx.schema.names == ty.schema.names and tx.drop_columns(drop).equals(ty.drop_columns(drop)):
                if drop:
                    continue
                out.append(f"{rel}: same table, different bytes")
            else:
                out.append(f"{rel}: table content differs")
            continue
        try:
            if mask(bx.decode()) == mask(by.decode()):
                continue
        except UnicodeDecodeError:
            pass
        out.append(f"{rel}: bytes differ")
    return out
