from __future__ import annotations

from pathlib import Path

import pytest

from mixlab.synth import SynthConfig, run_synth


@pytest.fixture(scope="session")
def dask_client():
    """One in-process Dask cluster for the dedup tests (real scheduler, fast to start)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus with planted near-duplicate clusters and exact copies."""
    out = tmp_path_factory.mktemp("dedup") / "corpus"
    run_synth({}, SynthConfig(docs_per_domain=100, doc_words=60, near_dup_clusters=10, exact_dups=3), out)
    return out
