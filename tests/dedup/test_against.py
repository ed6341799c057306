"""--keep-signatures keeps the signatures as a parquet output; --against OLD removes the documents
of a new corpus that duplicate a document OLD kept, from OLD's stored signatures."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mixlab.cli import main
from mixlab.dedup import DedupConfig, run_dedup
from mixlab.errors import InputError
from mixlab.synth import jaccard

CFG = DedupConfig(partition_docs=60, keep_signatures=True)


@pytest.fixture(scope="module")
def halves(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """The synthetic corpus split in two by id: an old crawl and a new one sharing duplicates."""
    docs = pl.read_parquet(corpus / "documents").sort("id")
    root = tmp_path_factory.mktemp("halves")
    old, new = root / "old", root / "new"
    for folder, part in ((old, docs[0::2]), (new, docs[1::2])):
        folder.mkdir()
        part.write_parquet(folder / "d.parquet")
    return old, new


@pytest.fixture(scope="module")
def old_out(halves, dask_client, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("old") / "out"
    run_dedup({"documents": halves[0]}, CFG, out, dask_client)
    return out


def test_keep_signatures_writes_one_parquet_row_per_kept_document(old_out):
    folder = old_out / "signatures"
    assert all(f.suffix == ".parquet" for f in folder.iterdir())
    sig = pq.read_table(folder)
    assert sig.schema.names == ["id", "domain", "text_hash", "signature"]
    assert sig.schema.field("signature").type.list_size == CFG.num_perm
    kept = pl.read_parquet(old_out / "documents").filter(pl.col("text").str.strip_chars() != "")
    assert sorted(sig.column("id").to_pylist()) == sorted(kept["id"].to_list())
    assert all(pq.ParquetFile(f).metadata.num_rows > 0 for f in folder.iterdir())


def test_without_keep_signatures_no_signatures_are_written(halves, dask_client, tmp_path):
    run_dedup(
        {"documents": halves[0]}, dataclasses.replace(CFG, keep_signatures=False), tmp_path / "o", dask_client
    )
    assert not (tmp_path / "o" / "signatures").exists()


def _expected_against(halves: tuple[Path, Path], old_out: Path) -> dict[str, float]:
    """Brute force: every new document's best exact Jaccard to a document the old output kept."""
    kept = pl.read_parquet(old_out / "documents")
    new = pl.read_parquet(halves[1])
    best = {}
    for nid, ntext in zip(new["id"], new["text"]):
        if ntext is None or not ntext.strip():
            continue
        j = max(jaccard(ntext, otext) for otext in kept["text"] if otext is not None and otext.strip())
        if j >= CFG.threshold:
            best[nid] = j
    return best


def test_against_removes_new_documents_that_duplicate_kept_old_ones(halves, old_out, dask_client, tmp_path):
    m = run_dedup({"documents": halves[1], "against": old_out}, CFG, tmp_path / "new", dask_client)
    expected = _expected_against(halves, old_out)
    dup = pl.read_parquet(tmp_path / "new" / "duplicates.parquet")
    old_kept = set(pl.read_parquet(old_out / "documents")["id"])
    against = dup.filter(pl.col("kept_id").is_in(list(old_kept)))
    assert len(expected) >= 10
    assert set(against["id"]) <= set(expected)  # nothing removed that is not a duplicate of OLD
    assert len(set(against["id"])) >= 0.95 * len(expected)
    texts = dict(
        pl.concat([pl.read_parquet(halves[1]), pl.read_parquet(old_out / "documents")])
        .select("id", "text")
        .iter_rows()
    )
    for row in against.iter_rows(named=True):
        assert row["cluster_id"] == row["kept_id"]
        assert row["jaccard"] == pytest.approx(jaccard(texts[row["id"]], texts[row["kept_id"]]))
        assert row["kind"] == "near" or row["jaccard"] == 1.0
    a = m.stats["against"]
    assert a["removed_exact"] + a["removed_near"] == against.height and a["documents"] == len(
        pq.read_table(old_out / "signatures")
    )
    kept = set(pl.read_parquet(tmp_path / "new" / "documents")["id"])
    assert not kept & set(against["id"])
    assert m.counts["documents_out"] == len(kept) == m.counts["documents_in"] - dup.height


def test_against_gives_the_same_result_whatever_the_partitions(halves, old_out, dask_client, tmp_path):
    for name, docs in (("a", 500), ("b", 23)):
        cfg = dataclasses.replace(CFG, partition_docs=docs)
        run_dedup({"documents": halves[1], "against": old_out}, cfg, tmp_path / name, dask_client)
    a, b = (pl.read_parquet(tmp_path / n / "duplicates.parquet") for n in ("a", "b"))
    assert a.equals(b) and a.height > 0


def test_new_documents_not_in_old_are_deduplicated_among_themselves(halves, old_out, dask_client, tmp_path):
    plain = run_dedup({"documents": halves[1]}, CFG, tmp_path / "plain", dask_client)
    against = run_dedup({"documents": halves[1], "against": old_out}, CFG, tmp_path / "against", dask_client)
    assert plain.counts["documents_out"] >= against.counts["documents_out"]
    dup = pl.read_parquet(tmp_path / "against" / "duplicates.parquet")
    new_ids = set(pl.read_parquet(halves[1])["id"])
    inside = dup.filter(pl.col("kept_id").is_in(list(new_ids)))
    assert set(inside["kept_id"]) <= set(pl.read_parquet(tmp_path / "against" / "documents")["id"])


def test_against_an_output_without_signatures_is_refused(halves, dask_client, tmp_path):
    run_dedup({"documents": halves[0]}, DedupConfig(partition_docs=60), tmp_path / "plain", dask_client)
    with pytest.raises(InputError, match="--keep-signatures"):
        run_dedup({"documents": halves[1], "against": tmp_path / "plain"}, CFG, tmp_path / "x", dask_client)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "change",
    [{"num_perm": 64}, {"ngram": 4}, {"lowercase": True}, {"perm_seed": 2}, {"bands": 16, "rows": 8}],
)
def test_against_an_output_signed_otherwise_is_refused_naming_the_setting(
    halves, old_out, dask_client, tmp_path, change
):
    cfg = dataclasses.replace(CFG, **change)
    with pytest.raises(InputError, match="signed with other settings") as err:
        run_dedup({"documents": halves[1], "against": old_out}, cfg, tmp_path / "x", dask_client)
    assert next(iter(change)) in str(err.value) or "bands x rows" in str(err.value)
    assert not (tmp_path / "x").exists()


def test_against_something_not_a_dedup_output_is_refused(halves, corpus, dask_client, tmp_path):
    with pytest.raises(InputError, match="not a dedup output"):
        run_dedup({"documents": halves[1], "against": corpus}, CFG, tmp_path / "x", dask_client)


def test_cli_dedup_against(halves, old_out, dask_client, tmp_path):
    out = tmp_path / "cli"
    args = ["dedup", str(halves[1]), "--against", str(old_out), "--keep-signatures", "--partition-docs", "60"]
    result = CliRunner().invoke(
        main, [*args, "--out", str(out), "--scheduler-address", dask_client.scheduler.address]
    )
    assert result.exit_code == 0, result.output
    assert "--against" in CliRunner().invoke(main, ["dedup", "--help"]).output
    assert (out / "signatures").is_dir() and pl.read_parquet(out / "duplicates.parquet").height > 0


def test_against_with_the_minhash_estimate_uses_the_stored_signatures(halves, old_out, dask_client, tmp_path):
    cfg = dataclasses.replace(CFG, verify=False)
    m = run_dedup({"documents": halves[1], "against": old_out}, cfg, tmp_path / "est", dask_client)
    expected = _expected_against(halves, old_out)
    old_kept = set(pl.read_parquet(old_out / "documents")["id"])
    dup = pl.read_parquet(tmp_path / "est" / "duplicates.parquet")
    found = set(dup.filter(pl.col("kept_id").is_in(list(old_kept)))["id"])
    assert len(found & set(expected)) >= 0.9 * len(expected)
    assert m.stats["against"]["removed_exact"] + m.stats["against"]["removed_near"] == len(found)


def test_against_an_output_whose_signatures_were_damaged_is_refused(old_out, halves, dask_client, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(old_out, damaged)
    shard = sorted((damaged / "signatures").glob("*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated copy
    with pytest.raises(InputError, match="missing or changed") as err:
        run_dedup({"documents": halves[1], "against": damaged}, CFG, tmp_path / "x", dask_client)
    assert shard.name in str(err.value) and not (tmp_path / "x").exists()
