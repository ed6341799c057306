"""The worker-side dedup (band keys shuffled by hash range, pairs verified on workers, scipy
components) removes, clusters, keeps and reports exactly what main's client-side dedup did
(`legacy_stage.py`, a frozen copy), for any partitioning and worker count."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixlab.dedup import DedupConfig, run_dedup
from mixlab.stage import Manifest


def _legacy():
    """tests/dedup/legacy_stage.py, loaded by path (pytest's importlib mode puts no test folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("legacy_stage", Path(__file__).with_name("legacy_stage.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["legacy_stage"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run_legacy_dedup = _legacy().run_legacy_dedup


def _kept_ids(out: Path) -> list[str]:
    return sorted(pl.read_parquet(out / "documents")["id"].to_list())


def _report(out: Path) -> tuple[dict, dict]:
    m = Manifest.load(out)
    stats = {k: v for k, v in m.stats.items() if k not in ("seconds", "partitions")}
    return m.counts, stats


def _assert_same(new: Path, old: Path) -> None:
    a = pl.read_parquet(new / "duplicates.parquet")
    b = pl.read_parquet(old / "duplicates.parquet")
    assert a.equals(b), "duplicates.parquet differs (rows, order, cluster_id, kept_id, kind or jaccard)"
    assert _kept_ids(new) == _kept_ids(old)
    assert _report(new) == _report(old)
    assert all(pq.ParquetFile(f).metadata.num_rows > 0 for f in (new / "documents").glob("*.parquet"))


def _corpus_with_chains(path: Path) -> Path:
    """Chains A~B~C (so the keep rounds must look past the candidates), exact copies with
    whitespace changes, giant buckets, null, blank and short texts, two domains."""
    words = [f"w{i}" for i in range(100)]
    ids, texts, domains = [], [], []
    for c in range(30):
        base = [f"c{c}x{i}" for i in range(100)]
        for k in range(6):  # member k edits k words (nested): J(k, k+1) ~ 0.9, J(k, k+3) < 0.8
            w = list(base)
            for j in range(k):
                w[5 + 15 * j] = f"e{c}j{j}"
            ids.append(f"chain-{c:02d}-{k}")
            texts.append(" ".join(w))
            domains.append("web" if k % 2 else "books")
    for i in range(300):
        w = list(words)
        w[i % 100] = f"changed{i}"
        ids.append(f"near-{i:04d}")
        texts.append(" ".join(w) + ("  " if i % 3 else ""))
        domains.append("web")
    ids += ["null", "blank", "short-1", "short-2", "short-3"]
    texts += [None, "   ", "tiny doc", "tiny doc", "tiny  doc "]
    domains += ["web"] * 5
    order = sorted(range(len(ids)), key=lambda i: (hash(ids[i]) % 97, ids[i]))  # ids not in file order
    table = pa.table(
        {
            "id": [ids[i] for i in order],
            "domain": [domains[i] for i in order],
            "text": pa.array([texts[i] for i in order], pa.string()),
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "a.parquet", row_group_size=100)
    return path


@pytest.mark.parametrize(
    "cfg",
    [
        DedupConfig(partition_docs=150),
        DedupConfig(partition_docs=37, keep="longest"),
        DedupConfig(partition_docs=1000, threshold=0.7, num_perm=64, verify=False),
        DedupConfig(partition_docs=90, keep="domain-priority", domain_priority=("legal", "code")),
    ],
    ids=["default", "longest-37", "estimate-one-part", "priority-90"],
)
def test_synthetic_corpus_gives_what_main_gave(corpus, dask_client, tmp_path, cfg):
    inputs = {"documents": corpus / "documents"}
    run_legacy_dedup(inputs, cfg, tmp_path / "old", dask_client)
    run_dedup(inputs, cfg, tmp_path / "new", dask_client)
    _assert_same(tmp_path / "new", tmp_path / "old")


@pytest.mark.parametrize("partition_docs", [2000, 77, 13])
def test_chains_copies_and_bad_rows_give_what_main_gave_whatever_the_partitions(
    dask_client, tmp_path, partition_docs
):
    inputs = {"documents": _corpus_with_chains(tmp_path / "in")}
    cfg = DedupConfig(partition_docs=partition_docs, threshold=0.8, max_bucket=40)
    run_legacy_dedup(inputs, dataclasses.replace(cfg, partition_docs=2000), tmp_path / "old", dask_client)
    m = run_dedup(inputs, cfg, tmp_path / "new", dask_client)
    assert m.stats["clusters"]["keep_rounds"] > 1 and m.stats["candidates"]["giant_buckets"] > 0
    _assert_same(tmp_path / "new", tmp_path / "old")


def test_one_worker_gives_what_main_gave(corpus, tmp_path):
    from distributed import Client, LocalCluster

    cfg = DedupConfig(partition_docs=60)
    inputs = {"documents": corpus / "documents"}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            run_legacy_dedup(inputs, cfg, tmp_path / "old", client)
            run_dedup(inputs, cfg, tmp_path / "new", client)
    _assert_same(tmp_path / "new", tmp_path / "old")
