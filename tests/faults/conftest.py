"""Fixtures of the fault suite: one tiny pipeline run made once, reused by every case.

The harness itself (cases, the refusal contract, killable runs) is `fault_harness`, put on
the path here so the case tables can import it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fault_harness import (  # noqa: E402
    TINY_PIPELINE,
    Case,
    Inputs,
    LongRun,
    Timeline,
    pretrain_partial,
    run_case,
)


@pytest.fixture(scope="session")
def pipeline_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("yaml") / "tiny.yaml"
    path.write_text(TINY_PIPELINE)
    return path


@pytest.fixture(scope="session")
def pipeline_reference(
    tmp_path_factory: pytest.TempPathFactory, pipeline_yaml: Path
) -> tuple[Path, Timeline]:
    """One uninterrupted tiny pipeline run, as a user runs it (`--out run` in its folder).

    Returns the folder it ran in and when its pretrain stage wrote its files (the pipeline
    kill test draws its kill point from that).
    """
    cwd = tmp_path_factory.mktemp("pipeline") / "ref"
    run = LongRun(["pipeline", "run", pipeline_yaml, "--out", "run"], cwd, pretrain_partial(cwd / "run"))
    timeline = run.reference(timeout=600)
    return cwd, timeline


@pytest.fixture(scope="session")
def inputs(pipeline_reference: tuple[Path, Timeline]) -> Inputs:
    """Every stage's output of the reference pipeline run: the inputs of every case.

    Made read-only, so a case that writes beside its inputs fails loudly.
    """
    root = pipeline_reference[0] / "run"
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return Inputs(root)


@pytest.fixture
def check_case(inputs: Inputs, tmp_path: Path) -> Callable[[Case], None]:
    """`check_case(case)`: run it in a fresh folder and assert the contract."""
    return lambda case: run_case(case, inputs, tmp_path / "case")


@pytest.fixture
def long_run() -> Iterator[Callable[..., LongRun]]:
    """LongRun factory; whatever it started and is still running is killed after the test."""
    made: list[LongRun] = []

    def make(args: Sequence[Any], cwd: Path, watch: Callable[[], Path | None]) -> LongRun:
        made.append(LongRun(args, cwd, watch))
        return made[-1]

    yield make
    for run in made:
        run.stop()


@pytest.fixture(scope="session")
def references() -> dict[tuple[str, ...], tuple[Path, str]]:
    """Uninterrupted runs shared by the kill and the concurrency tests: command line -> (out, log)."""
    return {}
