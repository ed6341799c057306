"""Relative paths on an external Dask cluster whose workers run in another directory.

The cluster's worker processes start in this process's working directory; each command then
runs in a case folder with relative paths, so a path that reaches a worker unresolved breaks.
"""

from __future__ import annotations

import os

import pytest
from fault_harness import Bad, differences, invoke, leftovers_beside

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    from distributed import LocalCluster

    elsewhere = tmp_path_factory.mktemp("workers_cwd")
    old = os.getcwd()
    os.chdir(elsewhere)  # the workers' working directory is not the case folder
    try:
        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0")
    finally:
        os.chdir(old)
    yield cluster.scheduler_address
    cluster.close()


def test_dedup_with_a_relative_input_runs_on_an_external_cluster(inputs, scheduler_address, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    Bad(folder).copy(inputs.ingest, "ing")
    out = invoke(
        ["dedup", "ing", "--num-perm", 32, "--out", "dd", "--scheduler-address", scheduler_address], folder
    )
    assert out.exit_code == 0 and not out.crash, f"dedup ing --scheduler-address: {out.tail()}"
    assert not leftovers_beside(folder / "dd"), leftovers_beside(folder / "dd")
    # The pipeline ran the same dedup (same flags) on the same documents.
    diffs = differences(inputs.dedup, folder / "dd", roots=[inputs.root.parent, folder])
    assert not [d for d in diffs if "manifest.json" not in d], diffs


def test_tokenize_with_a_relative_tokenizer_runs_on_an_external_cluster(inputs, scheduler_address, tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    bad = Bad(folder)
    bad.copy(inputs.tokenizer, "tok")
    bad.copy(inputs.documents, "docs")
    out = invoke(
        ["tokenize", "docs", "--tokenizer", "tok", "--out", "tk", "--scheduler-address", scheduler_address],
        folder,
    )
    assert out.exit_code == 0 and not out.crash, (
        f"tokenize docs --tokenizer tok --scheduler-address: {out.tail()}"
    )
    assert (folder / "tk" / "token_counts.parquet").is_file()
    assert not leftovers_beside(folder / "tk"), leftovers_beside(folder / "tk")
