"""Every stage's data folder opens whole in the readers people use: pyarrow.dataset, polars with a
recursive glob, HF `datasets` and datatrove's ParquetReader, each giving exactly the stage's rows.

One tiny pipeline (synth -> ingest -> dedup -> tokenizer train -> tokenize -> sample -> swarm ->
fit) is run once for the module; each test opens one data folder with one reader. A data folder
holds parquet only and no 0-row file; mixlab's own files (`_mixlab/`) sit beside it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from mixlab.stage import META, Manifest
from mixlab.synth import SynthConfig

SYNTH = SynthConfig(
    docs_per_domain=40,
    doc_words=40,
    near_dup_clusters=4,
    exact_dups=2,
    target_blend={"prose": 0.5, "code": 0.5},
    target_docs=20,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline's outputs under one root (each stage in its own folder)."""
    from distributed import Client, LocalCluster

    from mixlab.dedup.config import DedupConfig
    from mixlab.dedup.stage import run_dedup
    from mixlab.ingest import IngestConfig, run_ingest
    from mixlab.synth import run_synth
    from mixlab.tokenize.config import TokenizeConfig, TokenizerTrainConfig
    from mixlab.tokenize.corpus import run_tokenize
    from mixlab.tokenize.train import run_tokenizer_train

    root = tmp_path_factory.mktemp("open") / "run"
    run_synth({}, SYNTH, root / "synth")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            run_ingest(
                {"sources": [root / "synth" / "documents"]}, IngestConfig(rows_per_file=50), root / "ingest"
            )
            run_dedup(
                {"documents": _documents_folder(root / "ingest")}, DedupConfig(), root / "dedup", client
            )
            tok = TokenizerTrainConfig(model="bpe", vocab_size=300, sample_bytes=500_000)
            run_tokenizer_train({"documents": [root / "dedup" / "documents"]}, tok, root / "tokenizer")
            run_tokenize(
                {
                    "documents": [root / "dedup" / "documents"],
                    "targets": [root / "synth" / "target"],
                    "tokenizer": root / "tokenizer",
                },
                TokenizeConfig(rows_per_task=30, shard_tokens=4000),  # several shards per split
                root / "tokenize",
                client,
            )
            _mixture_search(root, client)
    return root


def _mixture_search(root: Path, client) -> None:
    from mixlab.mixtures.config import FitConfig, SampleConfig
    from mixlab.mixtures.fit import run_mixtures_fit
    from mixlab.mixtures.sample import run_mixtures_sample
    from mixlab.proxy_models.config import SwarmConfig
    from mixlab.proxy_models.swarm import run_swarm_train

    sample = SampleConfig(candidates=12, proxy_tokens=640)
    run_mixtures_sample({"tokens": root / "tokenize"}, sample, root / "sample")
    swarm = SwarmConfig(
        n_layer=1,
        n_head=2,
        n_embd=16,
        seq_len=16,
        batch_size=2,
        steps=4,
        warmup_steps=1,
        eval_sequences=4,
        pack_size=6,
        threads=1,
    )
    inputs = {"candidates": root / "sample" / "candidates.parquet", "tokens": root / "tokenize"}
    run_swarm_train(inputs, swarm, root / "swarm", client=client)
    fit = FitConfig(target="target", max_rounds=20)
    run_mixtures_fit({"runs": root / "swarm" / "runs.parquet", "candidates": None}, fit, root / "fit")


def _documents_folder(out: Path) -> Path:
    """A documents stage's data folder: OUT/documents/ (ingest on main still writes its shards at OUT/)."""
    return out / "documents" if (out / "documents").is_dir() else out


def _expected(run: Path) -> dict[str, Counter]:
    """Each data folder's ids (a multiset), from what the stages say they wrote, not from the folder."""
    synth = Counter(_ids(sorted((run / "synth" / "documents").glob("*.parquet"))))
    target = Counter(f"target-{d}-{i:06d}" for d in ("prose", "code") for i in range(SYNTH.target_docs // 2))
    removed = Counter(pq.read_table(run / "dedup" / "duplicates.parquet", columns=["id"])["id"].to_pylist())
    kept = synth - removed
    assert sum(synth.values()) == Manifest.load(run / "synth").counts["documents"]
    assert sum(kept.values()) == Manifest.load(run / "dedup").counts["documents_out"] > 0
    return {
        "synth/documents": synth,
        "synth/target": target,
        "ingest": synth,
        "dedup": kept,
        "tokens": kept + target,
    }


def _ids(files: list[Path]) -> list[str]:
    return [i for f in files for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


FOLDERS = {
    "synth/documents": lambda run: run / "synth" / "documents",
    "synth/target": lambda run: run / "synth" / "target",
    "ingest": lambda run: run / "ingest" / "documents",
    "dedup": lambda run: run / "dedup" / "documents",
    "tokens": lambda run: run / "tokenize" / "tokens",
}


def _folder(run: Path, name: str) -> Path:
    folder = FOLDERS[name](run)
    assert folder.is_dir(), f"{name}: no data folder {folder}"
    return folder


def read_pyarrow(folder: Path, tmp: Path) -> list[str]:
    return pads.dataset(folder, format="parquet").to_table(columns=["id"])["id"].to_pylist()


def read_polars(folder: Path, tmp: Path) -> list[str]:
    import polars as pl

    return pl.scan_parquet(f"{folder}/**/*.parquet").select("id").collect()["id"].to_list()


def read_hf_datasets(folder: Path, tmp: Path) -> list[str]:
    datasets = pytest.importorskip("datasets", reason="HF datasets not installed (pip install mixlab[dev])")
    datasets.disable_progress_bars()
    loaded = datasets.load_dataset("parquet", data_dir=str(folder), cache_dir=str(tmp / "hf-cache"))
    # folders named train/valid become splits; the rows are every split's together
    return [i for split in loaded.values() for i in split["id"]]


def read_datatrove(folder: Path, tmp: Path) -> list[str]:
    readers = pytest.importorskip(
        "datatrove.pipeline.readers", reason="datatrove not installed (pip install mixlab[dev])"
    )
    text = "tokens" if folder.name == "tokens" else "text"
    return [doc.id for doc in readers.ParquetReader(str(folder), text_key=text)()]


READERS = [read_pyarrow, read_polars, read_hf_datasets, read_datatrove]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__.removeprefix("read_"))
@pytest.mark.parametrize("name", list(FOLDERS))
def test_every_data_folder_opens_whole_with_exactly_its_rows(
    run: Path, name: str, reader, tmp_path: Path
) -> None:
    folder = _folder(run, name)
    assert Counter(reader(folder, tmp_path)) == _expected(run)[name]


@pytest.mark.parametrize("name", list(FOLDERS))
def test_data_folders_hold_only_nonempty_parquet_and_mixlab_files_sit_beside(run: Path, name: str) -> None:
    folder = _folder(run, name)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".parquet" for p in files), sorted(map(str, files))
    assert all(pq.ParquetFile(p).metadata.num_rows > 0 for p in files)
    assert not any(META in p.relative_to(folder).parts for p in files)
    assert (folder.parent / META / "manifest.json").is_file()


def test_a_validation_only_domain_has_no_train_shards(run: Path) -> None:
    from mixlab.tokenize.shards import TokenShards, read_token_counts

    shards = TokenShards.open(run / "tokenize")
    counts = {
        (r["domain"], r["split"]): r["documents"] for r in read_token_counts(run / "tokenize").to_pylist()
    }
    assert counts[("target", "train")] == 0 and counts[("target", "valid")] == SYNTH.target_docs
    assert not shards.split_dir("target", "train").exists() and len(shards.stream("target", "train")) == 0
    streams = run / "tokenize" / META / "streams"
    assert sorted(p.relative_to(streams).as_posix() for p in streams.rglob("*.npy")) == sorted(
        f"{d}/{s}.npy" for (d, s), n in counts.items() if n
    )


def test_token_rows_read_by_a_dataset_reader_are_the_training_streams(run: Path) -> None:
    """The tokens a reader of tokens/ sees, in id order per domain/split, are the stream training uses."""
    import numpy as np

    from mixlab.tokenize.shards import TokenShards

    shards = TokenShards.open(run / "tokenize")
    # pyarrow's dataset keeps the files' order (shard_00000, shard_00001, ...) and each file's rows
    for domain in shards.domains:
        for split in ("train", "valid"):
            folder = shards.split_dir(domain, split)
            if not folder.exists():
                continue
            got = pads.dataset(folder, format="parquet").to_table(columns=["tokens"])["tokens"]
            assert np.array_equal(pc.list_flatten(got).to_numpy(), shards.stream(domain, split))


@pytest.mark.parametrize(
    ("stage", "table"),
    [
        ("synth", "near_duplicates.parquet"),
        ("dedup", "duplicates.parquet"),
        ("tokenize", "token_counts.parquet"),
        ("sample", "candidates.parquet"),
        ("swarm", "runs.parquet"),
        ("fit", "predictions.parquet"),
    ],
)
def test_single_tables_read_with_pyarrow(run: Path, stage: str, table: str) -> None:
    path = run / stage / table
    read = pq.read_table(path)
    assert read.num_rows > 0
    assert pads.dataset(path, format="parquet").count_rows() == read.num_rows


def test_an_empty_table_writes_no_shard(tmp_path: Path) -> None:
    from mixlab.tables import write_shard

    empty = pa.table({"id": pa.array([], pa.string())})
    assert not write_shard(empty, tmp_path / "d" / "shard_00000.parquet") and not (tmp_path / "d").exists()
    assert write_shard(pa.table({"id": ["a"]}), tmp_path / "d" / "shard_00000.parquet")
    assert pq.read_table(tmp_path / "d").num_rows == 1
