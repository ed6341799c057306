"""Shared fixtures: a tiny seeded synthetic corpus and a CLI runner that keeps stderr apart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

from mixlab.stage import run_stage
from mixlab.synth import SynthConfig
from mixlab.tables import shard_name, write_table
from mixlab.tokenize.shards import TOKEN_COUNTS, token_dtype

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


def write_tokens_dir(
    out: Path,
    streams: dict[str, dict[str, np.ndarray]],
    vocab_size: int = 64,
) -> Path:
    """A tokenize output made by a test: streams[domain][split] -> shards (documents of 100
    tokens, EOS = id 0) + token_counts + manifest, in the older top-level <domain>/<split>/
    layout (which mixlab still reads)."""

    def body(stage):
        rows = []
        dtype = token_dtype(vocab_size)
        for domain, splits in streams.items():
            for split, tokens in splits.items():
                docs = [tokens[i : i + 100].astype(dtype) for i in range(0, len(tokens), 100)]
                table = pa.table(
                    {
                        "id": [f"{domain}-{split}-{i}" for i in range(len(docs))],
                        "domain": [domain] * len(docs),
                        "tokens": pa.array([d.tolist() for d in docs], pa.list_(pa.from_numpy_dtype(dtype))),
                    }
                )
                write_table(table, stage.out / domain / split / shard_name(0))
                rows.append({"domain": domain, "split": split, "documents": len(docs), "tokens": len(tokens)})
        write_table(pa.Table.from_pylist(rows), stage.out / TOKEN_COUNTS)
        return {"tokens": sum(r["tokens"] for r in rows)}, {"vocab_size": vocab_size, "eos_id": 0}

    run_stage("tokenize", {"test": str(out)}, {}, out, body)
    return out


@pytest.fixture(scope="session")
def make_tokens() -> Callable[..., Path]:
    """`write_tokens_dir`, for tests in any folder (module-scoped fixtures included)."""
    return write_tokens_dir
