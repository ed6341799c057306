from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from mixlab.errors import InputError
from mixlab.stage import WORK, partial_dir
from mixlab.tables import write_table
from mixlab.tokenize.config import TokenizeConfig
from mixlab.tokenize.corpus import run_tokenize
from mixlab.tokenize.shards import domain_stream, read_token_counts, split_dir, stream_path, tokens_info

from .conftest import HARD_TEXTS

CFG = TokenizeConfig(rows_per_task=60)


@pytest.fixture(scope="module")
def target_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mixlab.synth import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("synth-target") / "corpus"
    run_synth(
        {},
        SynthConfig(
            docs_per_domain=40,
            doc_words=40,
            near_dup_clusters=4,
            exact_dups=1,
            target_blend={"prose": 0.5, "code": 0.5},
            target_docs=30,
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def tokens(target_corpus: Path, hard_documents: Path, bpe_dir: Path, dask_threads, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "tokens"
    inputs = {
        "documents": [target_corpus / "documents", target_corpus / "target", hard_documents],
        "tokenizer": bpe_dir,
    }
    run_tokenize(inputs, CFG, out, dask_threads)
    return out


def _documents(corpus: Path, hard: Path) -> pa.Table:
    files = sorted((corpus / "documents").glob("*.parquet")) + [corpus / "target" / "documents.parquet", hard]
    return pa.concat_tables([pq.read_table(f, columns=["id", "domain", "text"]) for f in files])


def test_shards_decode_back_to_the_documents_with_eos_appended(
    tokens: Path, target_corpus: Path, hard_documents: Path
) -> None:
    info = tokens_info(tokens)
    assert info["token_dtype"] == "uint16" and info["eos_id"] == 0
    assert info["domains"] == ["code", "hard", "legal", "prose", "tabular", "target"]
    tok = Tokenizer.from_file(str(tokens / "tokenizer" / "tokenizer.json"))
    texts = dict(zip(*_documents(target_corpus, hard_documents).select(["id", "text"]).to_pydict().values()))
    seen = 0
    for shard in sorted((tokens / "tokens").glob("*/*/shard_*.parquet")):
        table = pq.read_table(shard)
        assert table.schema.field("tokens").type == pa.list_(pa.uint16())
        assert table["id"].to_pylist() == sorted(table["id"].to_pylist())
        for row in table.to_pylist():
            assert row["tokens"][-1] == info["eos_id"] and info["eos_id"] not in row["tokens"][:-1]
            assert tok.decode(row["tokens"][:-1]) == texts[row["id"]]
            seen += 1
    assert seen == len(texts)


def test_token_counts_match_shards_and_streams(tokens: Path) -> None:
    counts = read_token_counts(tokens).to_pylist()
    for row in counts:
        stream = domain_stream(tokens, row["domain"], row["split"])
        shards = pq.read_table(split_dir(tokens, row["domain"], row["split"]))
        assert len(stream) == row["tokens"] == pc.sum(pc.list_value_length(shards["tokens"])).as_py()
        assert shards.num_rows == row["documents"]
        assert int((np.asarray(stream) == 0).sum()) == row["documents"]  # one EOS per document
    by_domain = {(r["domain"], r["split"]): r["documents"] for r in counts}
    for domain in ("code", "hard", "legal", "prose", "tabular", "target"):
        assert by_domain[(domain, "valid")] >= 1 and by_domain[(domain, "train")] >= 1


def test_output_does_not_depend_on_partitioning_or_workers(
    tokens: Path, target_corpus: Path, hard_documents: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    from distributed import Client

    inputs = {
        "documents": [target_corpus / "documents", target_corpus / "target", hard_documents],
        "tokenizer": bpe_dir,
    }
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as one:
        run_tokenize(
            inputs, dataclasses.replace(CFG, rows_per_task=7, shard_tokens=500), tmp_path / "other", one
        )
    for domain in ("code", "target", "hard"):
        for split in ("train", "valid"):
            a = pq.read_table(split_dir(tokens, domain, split))
            b = pq.read_table(split_dir(tmp_path / "other", domain, split))
            assert a.equals(b)
            assert np.array_equal(
                np.load(stream_path(tokens, domain, split)),
                np.load(stream_path(tmp_path / "other", domain, split)),
            )
    assert len(list(split_dir(tmp_path / "other", "code", "train").glob("shard_*.parquet"))) > 1


def test_valid_domains_put_the_target_set_wholly_in_valid(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(CFG, valid_domains=("target",))
    run_tokenize(
        {"documents": [target_corpus / "target"], "tokenizer": bpe_dir}, cfg, tmp_path / "t", dask_threads
    )
    counts = {
        (r["domain"], r["split"]): r["documents"] for r in read_token_counts(tmp_path / "t").to_pylist()
    }
    assert counts == {("target", "train"): 0, ("target", "valid"): 30}
    assert len(domain_stream(tmp_path / "t", "target", "train")) == 0


def test_null_texts_are_counted_and_skipped(bpe_dir: Path, dask_threads, tmp_path: Path) -> None:
    write_table(
        pa.table(
            {"id": ["a", "b", "c"], "domain": ["d"] * 3, "text": pa.array(["x y", None, HARD_TEXTS[0]])}
        ),
        tmp_path / "docs.parquet",
    )
    m = run_tokenize(
        {"documents": tmp_path / "docs.parquet", "tokenizer": bpe_dir}, CFG, tmp_path / "t", dask_threads
    )
    assert m.counts["documents"] == 2 and m.stats["skipped_null_text"] == {"d": 1}


def test_a_killed_run_resumes_from_finished_parts(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mixlab.stage import partial_dir
    from mixlab.tokenize import corpus

    inputs = {"documents": [target_corpus / "target"], "tokenizer": bpe_dir}
    cfg = dataclasses.replace(CFG, rows_per_task=10)
    out = tmp_path / "t"

    def killed(*args, **kwargs):
        raise RuntimeError("killed while merging")

    with monkeypatch.context() as m:
        m.setattr(corpus, "assemble_split", killed)
        with pytest.raises(RuntimeError):
            run_tokenize(inputs, cfg, out, dask_threads)
    markers = list((partial_dir(out) / WORK / "markers" / "encode").glob("part_*.json"))
    assert len(markers) == 3 and not out.exists()
    encoded = []
    real = corpus.encode_part
    monkeypatch.setattr(corpus, "encode_part", lambda *a, **k: encoded.append(a[0]) or real(*a, **k))
    manifest = run_tokenize(inputs, cfg, out, dask_threads)
    assert encoded == [] and manifest.counts["documents"] == 30 and not partial_dir(out).exists()


def test_unusable_domain_names_and_missing_inputs_are_clear_errors(bpe_dir: Path, tmp_path: Path) -> None:
    write_table(pa.table({"id": ["a"], "domain": ["_hidden"], "text": ["x"]}), tmp_path / "docs.parquet")
    with pytest.raises(InputError, match="folder names"):
        run_tokenize({"documents": tmp_path / "docs.parquet", "tokenizer": bpe_dir}, CFG, tmp_path / "t")
    with pytest.raises(InputError, match="no tokenizer.json"):
        run_tokenize({"documents": tmp_path / "docs.parquet", "tokenizer": tmp_path}, CFG, tmp_path / "t")


@pytest.mark.slow
def test_tokenize_on_a_local_cluster_of_processes_matches_in_process_workers(
    tokens: Path, target_corpus: Path, hard_documents: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    inputs = {
        "documents": [target_corpus / "documents", target_corpus / "target", hard_documents],
        "tokenizer": bpe_dir,
    }
    run_tokenize(
        inputs, CFG, tmp_path / "procs"
    )  # mixlab starts (and stops) its own LocalCluster of processes
    assert read_token_counts(tmp_path / "procs").equals(read_token_counts(tokens))
    for domain in ("prose", "hard"):
        assert pq.read_table(split_dir(tokens, domain, "train")).equals(
            pq.read_table(split_dir(tmp_path / "procs", domain, "train"))
        )


# --- targets: validation-only domains, given as their own input ---------------------------------


def test_a_target_input_is_validation_only_and_matches_valid_domains(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path
) -> None:
    docs, target = target_corpus / "documents", target_corpus / "target" / "documents.parquet"
    as_target = run_tokenize(
        {"documents": [docs], "tokenizer": bpe_dir, "targets": [target]}, CFG, tmp_path / "a", dask_threads
    )
    run_tokenize(
        {"documents": [docs, target], "tokenizer": bpe_dir},
        dataclasses.replace(CFG, valid_domains=("target",)),
        tmp_path / "b",
        dask_threads,
    )
    counts = {
        (r["domain"], r["split"]): r["documents"] for r in read_token_counts(tmp_path / "a").to_pylist()
    }
    assert counts[("target", "train")] == 0 and counts[("target", "valid")] == 30
    assert not split_dir(
        tmp_path / "a", "target", "train"
    ).exists()  # no 0-row shard (HF datasets refuses them)
    assert len(domain_stream(tmp_path / "a", "target", "train")) == 0
    assert as_target.stats["valid_only_domains"] == ["target"]
    assert read_token_counts(tmp_path / "a").equals(read_token_counts(tmp_path / "b"))
    for shard in sorted((tmp_path / "b" / "tokens").glob("*/*/shard_*.parquet")):
        rel = shard.relative_to(tmp_path / "b")
        assert pq.read_table(tmp_path / "a" / rel).equals(pq.read_table(shard))
        domain, split = rel.parts[1:3]
        a, b = (stream_path(tmp_path / x, domain, split) for x in ("a", "b"))
        assert a.read_bytes() == b.read_bytes()
    assert not split_dir(tmp_path / "b", "target", "train").exists()


def test_a_target_domain_that_is_also_a_corpus_domain_is_refused_naming_both(
    target_corpus: Path, bpe_dir: Path, tmp_path: Path
) -> None:
    write_table(
        pa.table({"id": ["t1"], "domain": ["prose"], "text": ["a target text"]}), tmp_path / "t.parquet"
    )
    docs = target_corpus / "documents"
    with pytest.raises(InputError) as err:
        run_tokenize(
            {"documents": [docs], "tokenizer": bpe_dir, "targets": [tmp_path / "t.parquet"]},
            CFG,
            tmp_path / "o",
        )
    message = str(err.value)
    assert str(tmp_path / "t.parquet") in message and str(docs) in message and "'prose'" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("texts", "what"), [([], "has no rows"), ([None, None], "every document has null text")]
)
def test_an_empty_or_all_null_table_is_refused_naming_it(
    bpe_dir: Path, dask_threads, tmp_path: Path, texts: list, what: str
) -> None:
    ids = [f"d{i}" for i in range(len(texts))]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "domain": pa.array(["d"] * len(ids), pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )
    write_table(table, tmp_path / "docs.parquet")
    with pytest.raises(InputError, match=what) as err:
        run_tokenize(
            {"documents": tmp_path / "docs.parquet", "tokenizer": bpe_dir}, CFG, tmp_path / "t", dask_threads
        )
    assert str(err.value).startswith(f"{tmp_path / 'docs.parquet'}: ") and "\n" not in str(err.value)
    assert not (tmp_path / "t").exists() and not partial_dir(tmp_path / "t").exists()


def test_an_all_null_target_is_refused_naming_it(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path
) -> None:
    table = pa.table({"id": ["t1"], "domain": ["target"], "text": pa.array([None], pa.string())})
    write_table(table, tmp_path / "t.parquet")
    inputs = {
        "documents": [target_corpus / "documents"],
        "tokenizer": bpe_dir,
        "targets": [tmp_path / "t.parquet"],
    }
    with pytest.raises(InputError, match=f"target {tmp_path / 't.parquet'}: every document has null text"):
        run_tokenize(inputs, CFG, tmp_path / "o", dask_threads)


def test_relative_inputs_reach_the_workers_as_absolute_paths(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mixlab.tokenize import corpus

    shutil.copytree(target_corpus / "target", tmp_path / "docs")
    shutil.copytree(bpe_dir, tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    planned = []  # what the tasks are given: Partition.file (and the tokenizer dir, in the stats)
    real = corpus.plan_partitions
    monkeypatch.setattr(corpus, "plan_partitions", lambda *a, **k: planned.extend(real(*a, **k)) or planned)
    m = run_tokenize({"documents": "docs", "tokenizer": "tok"}, CFG, "out", dask_threads)
    assert planned and all(Path(part.file).is_absolute() for part in planned)
    assert (
        m.stats["tokenizer"] == str(tmp_path / "tok")
        and (tmp_path / "out" / "token_counts.parquet").is_file()
    )


# --- the layout: a data folder of parquet only, streams in _mixlab/ -------------------------------


def test_shards_sit_in_one_parquet_only_folder_and_streams_in_mixlab(tokens: Path) -> None:
    data = sorted(p.relative_to(tokens / "tokens").as_posix() for p in (tokens / "tokens").rglob("*"))
    files = [p for p in data if "." in p]
    assert files and all(p.endswith(".parquet") and "/shard_" in p for p in files)
    assert sorted(p.name for p in tokens.iterdir()) == [
        "_mixlab",
        "token_counts.parquet",
        "tokenizer",
        "tokens",
    ]
    streams = sorted((tokens / "_mixlab" / "streams").glob("*/*.npy"))
    counts = read_token_counts(tokens).to_pylist()
    assert len(streams) == sum(1 for r in counts if r["documents"]) > 0


def test_a_stream_is_a_npy_whose_header_a_raw_memmap_must_skip(tokens: Path) -> None:
    path = stream_path(tokens, "code", "train")
    loaded = np.load(path, mmap_mode="r")
    with open(path, "rb") as fh:  # the header layout shards.py documents: magic, version, length, dict
        assert fh.read(6) == b"\x93NUMPY" and fh.read(2) == b"\x01\x00"
        header = int(np.frombuffer(fh.read(2), "<u2")[0])
    offset = 10 + header
    assert offset % 64 == 0
    raw = np.memmap(path, dtype=loaded.dtype, mode="r", offset=offset)
    assert loaded.dtype == np.uint16 and np.array_equal(raw, loaded)
    assert np.array_equal(
        loaded, pc.list_flatten(pq.read_table(split_dir(tokens, "code", "train"))["tokens"])
    )


def test_an_output_in_the_older_layout_reads_the_same_streams(tokens: Path, tmp_path: Path) -> None:
    """Shards at <domain>/<split>/, the stream beside them as _stream.npy, no shards_dir recorded."""
    import json

    from mixlab.stage import manifest_path
    from mixlab.tokenize.shards import TokenShards

    old = tmp_path / "old"
    shutil.copytree(tokens, old)
    for split_folder in sorted((old / "tokens").glob("*/*")):
        domain, split = split_folder.parts[-2:]
        (old / domain).mkdir(exist_ok=True)
        shutil.move(split_folder, old / domain / split)
        shutil.move(
            old / "_mixlab" / "streams" / domain / f"{split}.npy", old / domain / split / "_stream.npy"
        )
    shutil.rmtree(old / "tokens")
    shutil.rmtree(old / "_mixlab" / "streams")
    record = json.loads(manifest_path(old).read_text())
    del record["stats"]["shards_dir"]
    manifest_path(old).write_text(json.dumps(record))
    assert stream_path(old, "code", "train") == old / "code" / "train" / "_stream.npy"
    shards = TokenShards.open(old)
    assert shards.scored_domains(8) == TokenShards.open(tokens).scored_domains(8)
    for row in read_token_counts(tokens).to_pylist():
        a = domain_stream(tokens, row["domain"], row["split"])
        assert np.array_equal(shards.stream(row["domain"], row["split"]), a)


def test_without_streams_the_shards_are_read_instead(
    target_corpus: Path, bpe_dir: Path, dask_threads, tmp_path: Path
) -> None:
    inputs = {"documents": [target_corpus / "documents"], "tokenizer": bpe_dir}
    run_tokenize(inputs, CFG, tmp_path / "with", dask_threads)
    run_tokenize(inputs, dataclasses.replace(CFG, write_stream=False), tmp_path / "without", dask_threads)
    assert not (tmp_path / "without" / "_mixlab" / "streams").exists()
    for domain in ("code", "prose"):
        for split in ("train", "valid"):
            assert np.array_equal(
                domain_stream(tmp_path / "with", domain, split),
                domain_stream(tmp_path / "without", domain, split),
            )


def test_passing_the_data_folder_instead_of_the_output_names_the_output(tokens: Path) -> None:
    from mixlab.tokenize.shards import TokenShards

    with pytest.raises(InputError, match=f"this is its data folder: pass {tokens}$"):
        TokenShards.open(tokens / "tokens")
