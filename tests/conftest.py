"""Shared fixtures: a tiny seeded synthetic corpus and a CLI runner that keeps stderr apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mixlab.synth import SynthConfig

TINY_SYNTH = SynthConfig(docs_per_domain=100, doc_words=60, near_dup_clusters=10, exact_dups=3)


@pytest.fixture(scope="session")
def tiny_config() -> SynthConfig:
    """The config `tiny_corpus` was made with (small sizes for tests)."""
    return TINY_SYNTH


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `mixlab synth` output (4 domains, ~100 documents each, planted duplicates). Read-only."""
    from mixlab.synth import run_synth

    out = tmp_path_factory.mktemp("synth") / "corpus"
    run_synth({}, TINY_SYNTH, out)
    return out


@pytest.fixture
def cli():
    """Run the `mixlab` CLI in-process: `cli("ingest", path, "--out", out)` -> click Result."""
    from mixlab.cli import main

    runner = CliRunner()

    def invoke(*args: object) -> Result:
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=True)

    return invoke
