from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.dedup import DedupConfig, run_dedup
from mixlab.dedup.clusters import keep_per_group
from mixlab.dedup.shingles import NULL, OK
from mixlab.dedup.stage import Candidates, Nodes, choose_kept, exact_representatives, signature_partition
from mixlab.errors import ConfigError, InputError, MixlabError
from mixlab.stage import Manifest, partial_dir, run_stage
from mixlab.synth import jaccard
from mixlab.tables import check_documents, plan_partitions

CFG = DedupConfig(partition_docs=150)


def _removed(out: Path) -> set[str]:
    return set(pq.read_table(out / "duplicates.parquet", columns=["id"]).column(0).to_pylist())


def _texts(corpus: Path) -> dict[str, str]:
    docs = pl.concat([pl.read_parquet(f) for f in sorted((corpus / "documents").glob("*.parquet"))])
    return dict(zip(docs["id"], docs["text"]))


@pytest.fixture(scope="module")
def deduped(corpus, dask_client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dedup_out") / "out"
    run_dedup({"documents": corpus / "documents"}, CFG, out, dask_client)
    return out


def test_near_duplicates_at_or_above_threshold_are_removed(corpus, deduped):
    truth = pl.read_parquet(corpus / "near_duplicates.parquet").filter(pl.col("jaccard") >= 0.8)
    removed = _removed(deduped)
    found = sum(a in removed or b in removed for a, b in zip(truth["id_a"], truth["id_b"]))
    assert len(truth) > 20 and found / len(truth) >= 0.98


def test_every_removed_document_is_a_true_near_duplicate_of_its_kept_one(corpus, deduped):
    texts = _texts(corpus)
    dup = pl.read_parquet(deduped / "duplicates.parquet")
    assert dup.columns == ["id", "domain", "cluster_id", "kept_id", "kind", "jaccard"]
    for row in dup.iter_rows(named=True):
        true = jaccard(texts[row["id"]], texts[row["kept_id"]])
        assert true >= 0.8 and row["jaccard"] == pytest.approx(true)
        assert row["id"] != row["kept_id"] and row["kind"] in ("exact", "near")
    assert (dup["kind"] == "exact").sum() >= 4 * 3 // 2  # planted exact copies (some are copies of copies)


def test_kept_documents_follow_the_documents_contract_and_keep_other_columns(corpus, deduped):
    files = check_documents(deduped / "documents")
    kept = pl.concat([pl.read_parquet(f) for f in files])
    removed = _removed(deduped)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in (corpus / "documents").glob("*.parquet"))
    assert kept.height + len(removed) == total
    assert not set(kept["id"]) & removed


def test_manifest_reports_per_domain_counts_phases_and_verification(deduped):
    m = Manifest.load(deduped)
    stats = m.stats
    assert set(stats["domains"]) == {"prose", "code", "tabular", "legal"}
    d = stats["domains"]["prose"]
    assert d["documents_in"] - d["documents_out"] == d["removed_exact"] + d["removed_near"]
    assert d["bytes_out"] < d["bytes_in"]
    assert stats["candidates"]["checked"] >= stats["candidates"]["rejected"]
    assert stats["banding"]["p_candidate_at_threshold"] >= 0.99
    assert set(stats["seconds"]) == {"signatures", "exact", "candidates", "verify", "cluster", "write"}
    assert sum(stats["clusters"]["size_histogram"].values()) == stats["clusters"]["count"]
    assert m.counts["removed_exact"] + m.counts["removed_near"] == len(_removed(deduped))


def test_removed_set_is_the_same_whatever_partitions_and_workers(corpus, deduped, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as one_worker:
            run_dedup(
                {"documents": corpus / "documents"},
                dataclasses.replace(CFG, partition_docs=37),
                tmp_path / "a",
                one_worker,
            )
    assert _removed(tmp_path / "a") == _removed(deduped)
    a = pl.read_parquet(tmp_path / "a" / "duplicates.parquet")
    b = pl.read_parquet(deduped / "duplicates.parquet")
    assert a.sort("id").equals(b.sort("id"))


def test_killed_run_resumes_only_unfinished_partitions(corpus, deduped, dask_client, tmp_path):
    out = tmp_path / "out"
    inputs = corpus / "documents"
    files = check_documents(inputs)
    parts = plan_partitions(files, CFG.partition_docs)

    def killed(stage):  # what a run killed after two partitions leaves behind
        for part in parts[:2]:
            signature_partition(part, CFG, str(stage.work))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("dedup", CFG, {"documents": [inputs]}, out, killed)
    manifest = run_dedup({"documents": inputs}, CFG, out, dask_client)
    assert manifest.stats["partitions"] == {"total": len(parts), "reused": 2}
    assert (
        pl.read_parquet(out / "duplicates.parquet")
        .sort("id")
        .equals(pl.read_parquet(deduped / "duplicates.parquet").sort("id"))
    )


def test_rerun_is_a_no_op_and_changed_config_needs_force(corpus, deduped, dask_client):
    assert run_dedup({"documents": corpus / "documents"}, CFG, deduped, dask_client).skipped
    with pytest.raises(MixlabError, match="--force"):
        run_dedup(
            {"documents": corpus / "documents"}, dataclasses.replace(CFG, threshold=0.9), deduped, dask_client
        )


def _bad_corpus(path: Path, copies: int = 1500) -> Path:
    words = [f"w{i}" for i in range(120)]
    base = " ".join(words)
    ids, texts = [], []
    for i in range(copies):  # a giant exact cluster
        ids.append(f"copy-{i:05d}")
        texts.append(base if i % 2 else "  " + base + "\n")
    for i in range(200):  # and a giant near cluster: one word changed each
        w = list(words)
        w[60] = f"changed{i}"
        ids.append(f"near-{i:05d}")
        texts.append(" ".join(w))
    ids += ["empty-1", "empty-2", "blank", "null", "short-1", "short-2", "huge"]
    texts += ["", "", " \n\t ", None, "tiny doc", "tiny doc", " ".join(f"h{i}" for i in range(40000))]
    table = pa.table(
        {
            "id": ids,
            "domain": ["web"] * len(ids),
            "text": pa.array(texts, pa.string()),
            "url": [f"u{i}" for i in range(len(ids))],
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "web.parquet")
    return path


def test_bad_input_is_counted_never_dropped_silently(tmp_path, dask_client):
    inputs = _bad_corpus(tmp_path / "in")
    cfg = DedupConfig(partition_docs=400, huge_doc_bytes=100_000)
    m = run_dedup({"documents": inputs}, cfg, tmp_path / "out", dask_client)
    bad = m.stats["bad_input"]
    assert (bad["empty"], bad["null_text"], bad["short"], bad["huge"]) == (3, 1, 2, 1)
    kept = set(pl.read_parquet(tmp_path / "out" / "documents")["id"])
    assert {"empty-1", "empty-2", "blank", "null", "huge", "short-1"} <= kept
    assert "short-2" not in kept  # short documents are still deduplicated (one shingle)
    dup = pl.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert dup.filter(pl.col("kind") == "exact").height == 1500 - 1 + 1
    assert dup.filter(pl.col("id").str.starts_with("near")).height == 200
    assert m.stats["candidates"]["largest_bucket"] >= 100  # most near copies share most bands
    assert m.stats["clusters"]["largest"] == 1500 + 200
    assert m.counts["documents_out"] == len(kept)


def test_keep_policy_longest_and_domain_priority(tmp_path, dask_client):
    body = " ".join(f"w{i}" for i in range(80))
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "domain": ["web", "books", "web"],
            "text": [body, body + " tail", body + "    "],
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "d.parquet")
    run_dedup(
        {"documents": tmp_path / "in"},
        DedupConfig(keep="longest", threshold=0.9),
        tmp_path / "long",
        dask_client,
    )
    assert set(pl.read_parquet(tmp_path / "long" / "duplicates.parquet")["kept_id"]) == {"b"}
    cfg = DedupConfig(keep="domain-priority", domain_priority=("books",), threshold=0.9)
    run_dedup({"documents": tmp_path / "in"}, cfg, tmp_path / "prio", dask_client)
    assert set(pl.read_parquet(tmp_path / "prio" / "documents")["id"]) == {"b"}


def test_no_verify_uses_the_minhash_estimate(corpus, dask_client, tmp_path):
    m = run_dedup(
        {"documents": corpus / "documents"},
        dataclasses.replace(CFG, verify=False),
        tmp_path / "nv",
        dask_client,
    )
    assert m.stats["candidates"]["verified_by"] == "minhash_estimate"
    assert m.counts["removed_near"] > 0


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--bands / --rows"):
        DedupConfig(bands=4)
    with pytest.raises(ConfigError, match="exceeds --num-perm"):
        DedupConfig(bands=20, rows=10)
    with pytest.raises(ConfigError, match="--domain-priority"):
        DedupConfig(keep="domain-priority")
    with pytest.raises(ConfigError, match="--threshold"):
        DedupConfig(threshold=1.5)


def test_input_without_text_column_is_refused(tmp_path, dask_client):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["a"], "domain": ["x"], "body": ["t"]}), tmp_path / "in" / "d.parquet")
    with pytest.raises(InputError, match="'text' missing"):
        run_dedup({"documents": tmp_path / "in"}, DedupConfig(), tmp_path / "out", dask_client)
    assert not (tmp_path / "out").exists()


def test_cli_dedup_help_and_run(corpus, dask_client, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(main, ["dedup", "--help"]).output
    assert "--threshold" in help_text and "--no-verify" in help_text and "--keep" in help_text
    out = tmp_path / "cli"
    result = runner.invoke(
        main,
        [
            "dedup",
            str(corpus / "documents"),
            "--out",
            str(out),
            "--partition-docs",
            "150",
            "--scheduler-address",
            dask_client.scheduler.address,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "dedup: wrote" in result.output
    assert json.loads((out / "_mixlab" / "manifest.json").read_text())["config"]["partition_docs"] == 150
    bad = runner.invoke(main, ["dedup", str(corpus / "documents"), "--out", str(out), "--bands", "3"])
    assert bad.exit_code == 1 and "--bands / --rows" in bad.output


@pytest.mark.slow
def test_ten_megabyte_documents_are_deduplicated_in_bounded_chunks(tmp_path, dask_client):
    words = [f"w{i % 50_000}q{i % 7}" for i in range(1_250_000)]  # ~10 MB of text
    edited = list(words)
    for i in range(0, len(edited), 5000):
        edited[i] = "edit"
    table = pa.table(
        {
            "id": ["big-a", "big-b", "small"],
            "domain": ["web"] * 3,
            "text": [" ".join(words), " ".join(edited), "a small unrelated document here"],
        }
    )
    assert len(table["text"][0].as_py()) > 10_000_000
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "d.parquet")
    m = run_dedup({"documents": tmp_path / "in"}, DedupConfig(), tmp_path / "out", dask_client)
    assert m.stats["bad_input"]["huge"] == 2
    dup = pl.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert dup["id"].to_list() == ["big-b"] and dup["jaccard"][0] == pytest.approx(
        jaccard(table["text"][0].as_py(), table["text"][1].as_py())
    )


# --- nothing to deduplicate: the policy holds at every size, including zero -------------------


@pytest.mark.parametrize("texts", [[], [None], [None, None, None], ["  "], [" \n", "\t", ""], [None, " "]])
def test_a_table_with_nothing_to_deduplicate_is_kept_whole_and_counted(tmp_path, dask_client, texts):
    ids = [f"d{i}" for i in range(len(texts))]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "domain": pa.array(["web"] * len(ids), pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "d.parquet")
    m = run_dedup({"documents": tmp_path / "in"}, DedupConfig(), tmp_path / "out", dask_client)
    bad = m.stats["bad_input"]
    assert bad["null_text"] == sum(t is None for t in texts)
    assert bad["empty"] == sum(t is not None for t in texts)
    assert m.counts == {
        "documents_in": len(texts),
        "documents_out": len(texts),
        "removed_exact": 0,
        "removed_near": 0,
    }
    shards = sorted((tmp_path / "out" / "documents").glob("*.parquet"))
    if not texts:  # no 0-row shards: an empty input gives an empty documents folder
        assert shards == []
    else:
        kept = pq.read_table(tmp_path / "out" / "documents")
        assert sorted(kept["id"].to_pylist()) == ids and kept.schema.names == ["id", "domain", "text"]
    assert pq.read_table(tmp_path / "out" / "duplicates.parquet").num_rows == 0
    assert not partial_dir(tmp_path / "out").exists()


def test_ids_repeated_across_inputs_are_refused_naming_both_files(tmp_path, dask_client):
    for name, ids in (("a", ["x", "y"]), ("b", ["y", "z"])):
        (tmp_path / name).mkdir()
        pq.write_table(
            pa.table({"id": ids, "domain": ["web"] * 2, "text": ["one two", "three four"]}),
            tmp_path / name / "d.parquet",
        )
    with pytest.raises(InputError, match="ids are not unique") as err:
        run_dedup(
            {"documents": [tmp_path / "a", tmp_path / "b"]}, DedupConfig(), tmp_path / "out", dask_client
        )
    assert str(tmp_path / "a" / "d.parquet") in str(err.value) and str(tmp_path / "b" / "d.parquet") in str(
        err.value
    )
    assert not (tmp_path / "out").exists()


def test_exact_groups_keep_their_preferred_member_and_skip_ineligible_documents():
    text_hash = np.array([7, 7, 3, 7, 3, 9], dtype=np.uint64)
    eligible = np.array([True, True, True, True, True, False])
    pref = np.array([2, 0, 1, 3, 0, 4])
    assert exact_representatives(text_hash, eligible, pref).tolist() == [1, 1, 4, 1, 4, 5]
    assert exact_representatives(text_hash[:0], eligible[:0], pref[:0]).tolist() == []
    assert keep_per_group(np.zeros(0, np.uint64), np.zeros(0, np.int64)).tolist() == []


def _nodes(text_hash: list[int], status: list[int]) -> Nodes:
    n = len(text_hash)
    return Nodes(
        ids=pl.Series([f"n{i}" for i in range(n)]),
        domains=pl.Series(["web"] * n),
        part_of=np.zeros(n, np.int64),
        row_of=np.arange(n),
        gidx=np.arange(n),
        nbytes=np.full(n, 10),
        status=np.array(status, np.int8),
        text_hash=np.array(text_hash, np.uint64),
        pref=np.arange(n),
    )


def test_choose_kept_removes_only_true_near_duplicates_of_the_kept_document():
    # 0~1 and 1~2 are near duplicates, 0 and 2 are not: a chain; 3 is an exact copy of 0.
    nodes = _nodes([10, 11, 12, 10, 13], [OK, OK, OK, OK, NULL])
    rep = exact_representatives(nodes.text_hash, nodes.eligible, nodes.pref)
    similar = {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.1}
    u, v = np.array([0, 1]), np.array([1, 2])
    candidates = Candidates(u, v, np.array([0.9, 0.9]), checked=2, rejected=0, buckets=Counter())

    def similarity(x, y):
        return np.array([similar[(int(a), int(b))] for a, b in zip(x, y)])

    removals = choose_kept(nodes, rep, candidates, similarity, threshold=0.8)
    assert removals.r.tolist() == [1, 3] and removals.kept_of_r.tolist() == [0, 0]
    assert removals.is_exact.tolist() == [False, True] and removals.jaccard.tolist() == [0.9, 1.0]
    assert not removals.removed[2] and not removals.removed[4]  # 2 survives: not similar to its keeper


def test_relative_inputs_reach_the_workers_as_absolute_paths(corpus, dask_client, tmp_path, monkeypatch):
    from mixlab.dedup import stage

    shutil.copytree(corpus / "documents", tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    planned = []  # the partitions every task is given
    real = stage.plan_partitions
    monkeypatch.setattr(stage, "plan_partitions", lambda *a, **k: planned.extend(real(*a, **k)) or planned)
    m = run_dedup({"documents": "docs"}, CFG, "out", dask_client)
    assert planned and all(Path(part.file).is_absolute() for part in planned)
    assert m.path == tmp_path / "out" and _removed(tmp_path / "out")
