"""`mixlab ingest`: every input kind into the documents contract; bad documents counted, bad files refused."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixlab.errors import InputError
from mixlab.ingest import IngestConfig, document_id, run_ingest
from mixlab.stage import MANIFEST, partial_dir
from mixlab.tables import check_documents, parquet_files


def read_docs(out: Path) -> pl.DataFrame:
    check_documents(out)
    return pl.read_parquet(out / "documents" / "*.parquet").sort("source", "id")


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


RECORDS = [{"text": "the first document"}, {"text": "the second one"}, {"text": "a third"}]


def test_parquet_with_id_and_domain_columns_keeps_them(tmp_path):
    table = pa.table(
        {"id": ["d1", "d2"], "domain": ["web", "code"], "text": ["hello world", "x = 1"], "url": ["u1", "u2"]}
    )
    pq.write_table(table, tmp_path / "raw.parquet")
    manifest = run_ingest({"sources": [tmp_path / "raw.parquet"]}, IngestConfig(), tmp_path / "out")
    docs = read_docs(tmp_path / "out")
    assert docs.select("id", "domain", "text").rows() == [
        ("d1", "web", "hello world"),
        ("d2", "code", "x = 1"),
    ]
    assert docs["source"].unique().to_list() == ["raw.parquet"]
    assert manifest.counts["documents"] == 2 and manifest.counts["skipped"] == 0
    assert manifest.stats["per_domain"] == {"web": 1, "code": 1}


def test_parquet_without_id_or_domain_gets_stable_ids_and_the_file_name_as_domain(tmp_path):
    pq.write_table(pa.table({"body": ["same text", "same text", "other"]}), tmp_path / "legal.parquet")
    cfg = IngestConfig(text_column="body")
    run_ingest({"sources": [tmp_path / "legal.parquet"]}, cfg, tmp_path / "a")
    run_ingest({"sources": [tmp_path / "legal.parquet"]}, cfg, tmp_path / "b")
    a, b = read_docs(tmp_path / "a"), read_docs(tmp_path / "b")
    assert a["domain"].to_list() == ["legal"] * 3
    assert a["id"].n_unique() == 3  # repeated texts still get distinct ids
    assert a["id"].to_list() == b["id"].to_list()


def test_jsonl_and_gzipped_jsonl_give_the_same_documents(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "zipped").mkdir()
    write_jsonl(tmp_path / "plain" / "news.jsonl", RECORDS)
    write_jsonl(tmp_path / "zipped" / "news.jsonl.gz", RECORDS, gz=True)
    run_ingest({"sources": [tmp_path / "plain" / "news.jsonl"]}, IngestConfig(), tmp_path / "out1")
    run_ingest({"sources": [tmp_path / "zipped" / "news.jsonl.gz"]}, IngestConfig(), tmp_path / "out2")
    one, two = read_docs(tmp_path / "out1"), read_docs(tmp_path / "out2")
    assert sorted(one["text"].to_list()) == sorted(r["text"] for r in RECORDS)
    assert one["domain"].unique().to_list() == ["news"] == two["domain"].unique().to_list()
    assert sorted(one["text"].to_list()) == sorted(two["text"].to_list())


def test_jsonl_keys_for_id_domain_and_text_are_configurable(tmp_path):
    records = [
        {"doc": "d1", "kind": "code", "content": "print(1)"},
        {"doc": "d2", "kind": "web", "content": "hi"},
    ]
    write_jsonl(tmp_path / "x.jsonl", records)
    cfg = IngestConfig(text_column="content", id_column="doc", domain_column="kind")
    run_ingest({"sources": [tmp_path / "x.jsonl"]}, cfg, tmp_path / "out")
    assert read_docs(tmp_path / "out").select("id", "domain", "text").rows() == [
        ("d1", "code", "print(1)"),
        ("d2", "web", "hi"),
    ]


def test_a_folder_of_text_files_takes_the_domain_from_the_folder(tmp_path):
    corpus = tmp_path / "corpus"
    for rel, text in [
        ("legal/a.txt", "contract one"),
        ("legal/2020/b.txt", "contract two"),
        ("code/c.md", "def f(): pass"),
        ("top.txt", "loose file"),
        (".hidden/x.txt", "no"),
    ]:
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    (corpus / "notes.csv").write_text("ignored,file\n")
    manifest = run_ingest({"sources": [corpus]}, IngestConfig(), tmp_path / "out")
    docs = read_docs(tmp_path / "out")
    assert dict(zip(docs["source"], docs["domain"])) == {
        "legal/a.txt": "legal",
        "legal/2020/b.txt": "legal",
        "code/c.md": "code",
        "top.txt": "corpus",
    }
    assert manifest.counts["files"] == 4


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"domain": "fallback"}, ["web", "fallback", "fallback"]),  # auto: column, else --domain
        ({}, ["web", "mixed", "mixed"]),  # auto: column, else the file name
        ({"domain_from": "flag", "domain": "forced"}, ["forced"] * 3),
        ({"domain_from": "file"}, ["mixed"] * 3),
        ({"domain_from": "folder"}, ["in"] * 3),
    ],
)
def test_domain_flags_choose_where_the_domain_comes_from(tmp_path, options, expected):
    cfg = IngestConfig(**options)
    records = [{"text": "one", "domain": "web"}, {"text": "two", "domain": None}, {"text": "three"}]
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "mixed.jsonl", records)
    run_ingest({"sources": [tmp_path / "in" / "mixed.jsonl"]}, cfg, tmp_path / "out")
    docs = pl.read_parquet(tmp_path / "out" / "documents" / "*.parquet")
    assert dict(zip(docs["text"], docs["domain"])) == dict(zip(["one", "two", "three"], expected))


def test_domain_from_column_skips_and_counts_documents_without_one(tmp_path):
    records = [{"text": "one", "domain": "web"}, {"text": "two"}]
    write_jsonl(tmp_path / "x.jsonl", records)
    manifest = run_ingest(
        {"sources": [tmp_path / "x.jsonl"]}, IngestConfig(domain_from="column"), tmp_path / "out"
    )
    assert manifest.counts["documents"] == 1
    assert manifest.stats["skipped"] == {"no_domain": 1}


def test_null_empty_and_non_utf8_documents_are_counted_not_fatal(tmp_path):
    table = pa.table(
        {"text": pa.array([b"good text", None, b"", b"  \n\t", b"bad \xff\xfe bytes"], pa.binary())}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "ok.txt").write_text("fine")
    (tmp_path / "t" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "t" / "blank.txt").write_text("   \n")
    (tmp_path / "j.jsonl").write_bytes(
        b'{"text": "json ok"}\n{"text": null}\n{"text": "raw \xff byte"}\n{"text": "\\ud800 lone"}\n'
        b'{"text": 17}\n\n{"text": ""}\n'
    )
    inputs = [tmp_path / "p.parquet", tmp_path / "t", tmp_path / "j.jsonl"]
    manifest = run_ingest({"sources": inputs}, IngestConfig(), tmp_path / "out")
    assert sorted(read_docs(tmp_path / "out")["text"].to_list()) == ["fine", "good text", "json ok"]
    assert manifest.stats["skipped"] == {"null_text": 2, "empty": 4, "invalid_utf8": 4, "not_text": 1}
    assert manifest.counts["skipped"] == 11
    assert manifest.stats["skipped_per_source"]["latin1.txt"] == {"invalid_utf8": 1}


def test_invalid_utf8_can_be_replaced_instead_of_skipped(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "j.jsonl").write_bytes(b'{"text": "raw \xff byte"}\n{"text": "\\ud800 lone"}\n')
    cfg = IngestConfig(on_invalid_utf8="replace")
    manifest = run_ingest({"sources": [tmp_path / "t", tmp_path / "j.jsonl"]}, cfg, tmp_path / "out")
    assert sorted(read_docs(tmp_path / "out")["text"].to_list()) == ["? lone", "caf\ufffd", "raw \ufffd byte"]
    assert manifest.counts["documents"] == 3 and manifest.counts["skipped"] == 0
    assert manifest.stats["skipped"] == {"utf8_replaced": 3}


def test_outputs_are_split_into_shards_of_rows_per_file(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"text": f"doc {i}"} for i in range(7)])
    manifest = run_ingest(
        {"sources": [tmp_path / "x.jsonl"]}, IngestConfig(rows_per_file=3), tmp_path / "out"
    )
    files = check_documents(tmp_path / "out")
    assert [f.name for f in files] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert [pq.read_metadata(f).num_rows for f in files] == [3, 3, 1]
    assert manifest.counts["shards"] == 3


def test_given_ids_repeated_across_inputs_are_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "two"}])
    with pytest.raises(InputError, match="ids are not unique"):
        run_ingest(
            {"sources": [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]}, IngestConfig(), tmp_path / "out"
        )
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_a_repeated_id_names_the_input_files_and_advises_only_flags_given(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}, {"key": "k1", "text": "uno"}])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "text": "two"}, {"key": "k1", "text": "dos"}])
    inputs = {"sources": [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]}
    with pytest.raises(InputError) as err:
        run_ingest(inputs, IngestConfig(), tmp_path / "out")
    message = str(err.value)
    assert f"{tmp_path / 'a.jsonl'}, {tmp_path / 'b.jsonl'}: ids are not unique" in message
    assert ".partial" not in message and "--id-column" not in message and "'x'" in message
    with pytest.raises(InputError) as err:
        run_ingest(inputs, IngestConfig(id_column="key"), tmp_path / "out")
    message = str(err.value)
    assert "a.jsonl" in message and "b.jsonl" in message and ".partial" not in message
    assert "drop --id-column key so ids are derived" in message and "'k1'" in message
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_ingest_of_a_synth_corpus_keeps_every_document(tiny_corpus, tmp_path):
    manifest = run_ingest({"sources": [tiny_corpus / "documents"]}, IngestConfig(), tmp_path / "out")
    synth = pl.read_parquet(tiny_corpus / "documents" / "*.parquet")
    docs = read_docs(tmp_path / "out")
    assert manifest.counts["documents"] == synth.height
    assert docs.select("id", "domain", "text").sort("id").equals(synth.sort("id"))


# --- through the CLI: errors are one line, exit non-zero, leave no output -------------------


def assert_clean_failure(result, out: Path, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not out.exists() and not partial_dir(out).exists()


def test_a_broken_jsonl_line_is_a_one_line_error_naming_file_and_line(tmp_path, cli):
    (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": "unterminated\n{"text": "ok"}\n')
    result = cli("ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", "x.jsonl:2", "not valid JSON")


def test_a_parquet_without_text_column_is_a_one_line_error_naming_the_fix(tmp_path, cli):
    pq.write_table(pa.table({"body": ["x"], "url": ["u"]}), tmp_path / "raw.parquet")
    result = cli("ingest", tmp_path / "raw.parquet", "--out", tmp_path / "out")
    assert_clean_failure(
        result, tmp_path / "out", "raw.parquet", "'text' missing", "body, url", "--text-column"
    )


def test_an_empty_folder_is_a_one_line_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    result = cli("ingest", tmp_path / "empty", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", "empty folder")


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("x.jsonl.gz", b"definitely not gzip", "could not read"),
        ("x.parquet", b"PAR1garbagePAR1", "not a readable parquet file"),
        ("x.csv", b"a,b\n", "unknown input type"),
        ("x.jsonl", b'["a list"]\n', "expected a JSON object"),
        ("x.jsonl", b'{"body": "x"}\n', "key 'text' missing"),
        ("x.jsonl", b'{"text": null}\n{"text": "  "}\n', "no usable documents"),
    ],
)
def test_unreadable_inputs_are_one_line_errors(tmp_path, cli, name, content, needle):
    (tmp_path / name).write_bytes(content)
    result = cli("ingest", tmp_path / name, "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", needle)


def test_a_missing_input_path_is_a_one_line_error(tmp_path, cli):
    result = cli("ingest", tmp_path / "absent", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", "no such file")


def test_running_the_same_ingest_twice_writes_nothing_new(tmp_path, cli):
    write_jsonl(tmp_path / "x.jsonl", RECORDS)
    first = cli("ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out")
    assert first.exit_code == 0, first.output
    assert "wrote" in first.stdout
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    second = cli("ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out")
    assert second.exit_code == 0
    assert "already up to date" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "x.jsonl"]


def test_a_changed_ingest_config_needs_force(tmp_path, cli):
    write_jsonl(tmp_path / "x.jsonl", RECORDS)
    assert cli("ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out").exit_code == 0
    refused = cli(
        "ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out", "--domain-from", "flag", "--domain", "web"
    )
    assert refused.exit_code == 1 and "--force" in refused.stderr
    forced = cli(
        "ingest",
        tmp_path / "x.jsonl",
        "--out",
        tmp_path / "out",
        "--domain-from",
        "flag",
        "--domain",
        "web",
        "--force",
    )
    assert forced.exit_code == 0, forced.output
    assert read_docs(tmp_path / "out")["domain"].unique().to_list() == ["web"]
    assert json.loads((tmp_path / "out" / "_mixlab" / MANIFEST).read_text())["config"]["domain"] == "web"


def test_skipped_documents_are_reported_on_stderr(tmp_path, cli):
    write_jsonl(tmp_path / "x.jsonl", [*RECORDS, {"text": None}])
    result = cli("ingest", tmp_path / "x.jsonl", "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert '"null_text": 1' in result.stderr


def test_bad_bytes_in_a_jsonl_id_or_domain_do_not_crash(tmp_path):
    (tmp_path / "j.jsonl").write_bytes(b'{"id": "a\xff", "domain": "w\xfeb", "text": "fine"}\n')
    run_ingest({"sources": [tmp_path / "j.jsonl"]}, IngestConfig(), tmp_path / "out")
    assert read_docs(tmp_path / "out").select("id", "domain").rows() == [("a\ufffd", "w\ufffdb")]


# --- input formats, partitions and URLs ------------------------------------------------------


def compressed(data: bytes, codec: str) -> bytes:
    """`data` compressed as the tools that make such files do (gzip, zstd, bz2 via pyarrow; xz via lzma)."""
    import lzma

    if codec == "xz":
        return lzma.compress(data)
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


MANY = [
    {"text": f"document number {i} " + "word " * (i % 7), **({"domain": "web"} if i % 3 else {})}
    for i in range(60)
]


def jsonl_bytes(records: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.mark.parametrize("suffix, codec", [(".gz", "gzip"), (".zst", "zstd"), (".bz2", "bz2"), (".xz", "xz")])
def test_compressed_jsonl_gives_the_documents_of_the_plain_file(tmp_path, suffix, codec):
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "news.jsonl").write_bytes(jsonl_bytes(MANY))
    (tmp_path / "packed" / f"news.jsonl{suffix}").write_bytes(compressed(jsonl_bytes(MANY), codec))
    run_ingest({"sources": [tmp_path / "plain" / "news.jsonl"]}, IngestConfig(), tmp_path / "a")
    manifest = run_ingest(
        {"sources": [tmp_path / "packed"]}, IngestConfig(partition_bytes=100), tmp_path / "b"
    )
    a, b = read_docs(tmp_path / "a"), read_docs(tmp_path / "b")
    assert a.select("domain", "text").sort("text").equals(b.select("domain", "text").sort("text"))
    assert manifest.stats["partitions"] == 1  # a compressed stream is never split


def test_arrow_ipc_file_stream_and_feather_give_the_documents_of_the_parquet(tmp_path):
    import pyarrow.feather as feather
    import pyarrow.ipc as ipc

    table = pa.table({"id": [f"d{i}" for i in range(50)], "text": [f"text {i}" for i in range(50)]})
    for name in ("ipc_file", "ipc_stream", "feather", "parquet"):
        (tmp_path / name).mkdir()
    pq.write_table(table, tmp_path / "parquet" / "corpus.parquet", row_group_size=7)
    with ipc.new_file(tmp_path / "ipc_file" / "corpus.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=6)
    with ipc.new_stream(tmp_path / "ipc_stream" / "corpus.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=6)
    feather.write_feather(table, tmp_path / "feather" / "corpus.feather", chunksize=9)
    outs = {}
    for name in ("parquet", "ipc_file", "ipc_stream", "feather"):
        m = run_ingest(
            {"sources": [tmp_path / name]}, IngestConfig(partition_bytes=64), tmp_path / f"out_{name}"
        )
        outs[name] = (read_docs(tmp_path / f"out_{name}").drop("source"), m.stats["partitions"])
    assert all(docs.equals(outs["parquet"][0]) for docs, _ in outs.values())
    assert outs["ipc_stream"][1] == 1 and outs["ipc_file"][1] > 1 and outs["parquet"][1] > 1


def mixed_corpus(root: Path) -> Path:
    """Every splittable kind at once, with derived ids (no id column) and skipped documents."""
    import pyarrow.ipc as ipc

    root.mkdir(parents=True)
    lines = []
    for i in range(300):
        lines.append(json.dumps({"text": f"line {i % 40} " + "x" * (i % 13)} if i % 17 else {"text": None}))
        if i % 23 == 0:
            lines.append("")  # blank lines do not count as records
    (root / "web.jsonl").write_text("\n".join(lines))  # no newline at the end
    texts = [f"row {i % 25}" if i % 11 else "" for i in range(400)]
    pq.write_table(pa.table({"text": texts}), root / "book.parquet", row_group_size=16)
    table = pa.table({"text": [f"batch row {i}" for i in range(90)]})
    with ipc.new_file(root / "table.arrow", table.schema) as writer:
        writer.write_table(table, max_chunksize=8)
    for i in range(25):
        (root / "notes" / f"n{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / "notes" / f"n{i % 3}" / f"{i}.txt").write_text(f"note {i % 5}")
    return root


@pytest.mark.parametrize("partition_bytes", [1, 37, 500, 1 << 20])
def test_rows_ids_and_shards_are_the_same_whatever_the_partitioning(tmp_path, partition_bytes):
    corpus = mixed_corpus(tmp_path / "corpus")
    whole = run_ingest({"sources": [corpus]}, IngestConfig(rows_per_file=170), tmp_path / "whole")
    cfg = IngestConfig(rows_per_file=170, partition_bytes=partition_bytes)
    split = run_ingest({"sources": [corpus]}, cfg, tmp_path / "split")
    a = sorted((tmp_path / "whole" / "documents").glob("*.parquet"))
    b = sorted((tmp_path / "split" / "documents").glob("*.parquet"))
    assert [f.name for f in a] == [f.name for f in b] and len(a) > 3
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    assert split.counts == whole.counts and split.stats["skipped"] == whole.stats["skipped"]
    if partition_bytes < 1000:
        assert split.stats["partitions"] > whole.stats["partitions"]


def test_a_dask_client_gives_the_same_output_as_in_process(tmp_path):
    from distributed import Client, LocalCluster

    corpus = mixed_corpus(tmp_path / "corpus")
    cfg = IngestConfig(rows_per_file=170, partition_bytes=300)
    run_ingest({"sources": [corpus]}, cfg, tmp_path / "here")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        run_ingest({"sources": [corpus]}, cfg, tmp_path / "dask", client)
    files = lambda out: [f.read_bytes() for f in sorted((out / "documents").glob("*.parquet"))]  # noqa: E731
    assert files(tmp_path / "here") == files(tmp_path / "dask")


def test_a_large_jsonl_split_in_byte_ranges_keeps_every_line_once(tmp_path):
    records = [{"id": f"r{i}", "text": "y" * (i % 50 + 1)} for i in range(500)]
    (tmp_path / "big.jsonl").write_bytes(jsonl_bytes(records))
    manifest = run_ingest(
        {"sources": [tmp_path / "big.jsonl"]}, IngestConfig(partition_bytes=64), tmp_path / "out"
    )
    docs = read_docs(tmp_path / "out")
    assert manifest.stats["partitions"] > 100
    assert sorted(docs["id"].to_list()) == sorted(r["id"] for r in records)


def test_a_broken_line_deep_in_a_split_jsonl_is_named_by_its_line_number(tmp_path):
    lines = [json.dumps({"text": f"fine {i}"}) for i in range(200)]
    lines[150] = '{"text": "unterminated'
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"x\.jsonl:151: not valid JSON"):
        run_ingest({"sources": [tmp_path / "x.jsonl"]}, IngestConfig(partition_bytes=100), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_a_glob_picks_a_code_corpus_named_by_relative_paths(tmp_path):
    repo = tmp_path / "repo"
    for rel, text in [
        ("pkg/__init__.py", "from .core import f"),
        ("pkg/core.py", "def f():\n    return 1\n"),
        ("setup.py", "import setuptools"),
        ("README.md", "# not code"),
        (".git/hooks/x.py", "hidden"),
        ("data/table.parquet.py", "odd name, still code"),
    ]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    cfg = IngestConfig(glob="**/*.py", domain="code")
    manifest = run_ingest({"sources": [repo]}, cfg, tmp_path / "out")
    docs = read_docs(tmp_path / "out")
    assert docs["source"].to_list() == ["data/table.parquet.py", "pkg/__init__.py", "pkg/core.py", "setup.py"]
    assert set(docs["domain"]) == {"code"} and manifest.counts["files"] == 4
    core = docs.filter(pl.col("source") == "pkg/core.py").row(0, named=True)
    assert core["id"] == document_id("pkg/core.py", 1, "def f():\n    return 1\n")
    shutil.copytree(repo, tmp_path / "moved" / "elsewhere")  # ids come from paths relative to the input
    run_ingest({"sources": [tmp_path / "moved" / "elsewhere"]}, cfg, tmp_path / "again")
    assert read_docs(tmp_path / "again")["id"].to_list() == docs["id"].to_list()


def test_a_glob_without_domain_takes_the_top_folder_as_domain(tmp_path):
    for rel in ("legal/a.txt", "legal/2020/b.txt", "code/c.py", "code/d.txt"):
        (tmp_path / "corpus" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / rel).write_text(rel)
    run_ingest({"sources": [tmp_path / "corpus"]}, IngestConfig(glob="*/*.txt"), tmp_path / "out")
    docs = read_docs(tmp_path / "out")
    assert dict(zip(docs["source"], docs["domain"])) == {"code/d.txt": "code", "legal/a.txt": "legal"}


def test_memory_and_file_urls_give_the_documents_of_the_local_path(tmp_path):
    import fsspec

    corpus = mixed_corpus(tmp_path / "corpus")
    memory = fsspec.filesystem("memory")
    for path in corpus.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"/url-test/corpus/{path.relative_to(corpus).as_posix()}", path.read_bytes())
    cfg = IngestConfig(rows_per_file=170, partition_bytes=200)
    try:
        run_ingest({"sources": [corpus]}, cfg, tmp_path / "local")
        run_ingest({"sources": [f"file://{corpus}"]}, cfg, tmp_path / "file")
        run_ingest({"sources": ["memory://url-test/corpus"]}, cfg, tmp_path / "memory")
        again = run_ingest({"sources": ["memory://url-test/corpus"]}, cfg, tmp_path / "memory")
        assert again.skipped  # the URL's listing fingerprints it: same listing, nothing to do
    finally:
        memory.rm("/url-test", recursive=True)
    files = lambda out: [f.read_bytes() for f in sorted((out / "documents").glob("*.parquet"))]  # noqa: E731
    assert files(tmp_path / "local") == files(tmp_path / "file") == files(tmp_path / "memory")


def test_a_hub_dataset_reads_its_data_files_named_after_the_dataset(tmp_path, monkeypatch):
    """The Hub path with a stand-in filesystem: hf://datasets/ORG/NAME resolved to a memory:// folder."""
    import fsspec

    import mixlab.ingest as ingest

    memory = fsspec.filesystem("memory")
    memory.pipe_file("/hub/datasets/org/tiny-stories/README.md", b"# a dataset card, not a document")
    memory.pipe_file("/hub/datasets/org/tiny-stories/.gitattributes", b"*.parquet filter=lfs")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["once upon a time", "the end"]}), sink)
    memory.pipe_file(
        "/hub/datasets/org/tiny-stories/data/train-00000-of-00001.parquet", sink.getvalue().to_pybytes()
    )
    memory.pipe_file(
        "/hub/datasets/org/tiny-stories/data/valid.jsonl.zst",
        compressed(jsonl_bytes([{"text": "moral"}]), "zstd"),
    )
    real = ingest._filesystem

    def stand_in(url, options=None):
        if url.startswith("hf://"):
            return memory, "/hub/" + url.removeprefix("hf://")
        return real(url, options)

    monkeypatch.setattr(ingest, "_filesystem", stand_in)
    monkeypatch.setattr(memory, "unstrip_protocol", lambda path: "hf://" + path.removeprefix("/hub/"))
    try:
        manifest = run_ingest(
            {"sources": ["hf://datasets/org/tiny-stories"]}, IngestConfig(), tmp_path / "out"
        )
    finally:
        memory.rm("/hub", recursive=True)
    docs = read_docs(tmp_path / "out")
    assert sorted(docs["text"]) == ["moral", "once upon a time", "the end"]
    assert set(docs["domain"]) == {"tiny-stories"} and manifest.counts["files"] == 2
    assert set(docs["source"]) == {"data/train-00000-of-00001.parquet", "data/valid.jsonl.zst"}


def test_an_unreachable_hub_is_one_line_naming_the_dataset(tmp_path, monkeypatch):
    from huggingface_hub import HfFileSystem

    import mixlab.ingest as ingest

    offline = HfFileSystem(endpoint="http://127.0.0.1:9", skip_instance_cache=True)  # nothing listens there
    monkeypatch.setattr(ingest, "_filesystem", lambda url, options=None: (offline, url.removeprefix("hf://")))
    with pytest.raises(InputError) as err:
        run_ingest({"sources": ["hf://datasets/org/name"]}, IngestConfig(), tmp_path / "out")
    message = str(err.value)
    assert message.startswith("hf://datasets/org/name: could not reach the Hugging Face Hub")
    assert "\n" not in message and "--local-dir" in message
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()


def test_no_shard_is_empty_even_when_whole_partitions_are_skipped(tmp_path):
    texts = [None] * 40 + ["kept one", "kept two"] + [""] * 40 + ["kept three"]
    pq.write_table(
        pa.table({"text": pa.array(texts, pa.string())}), tmp_path / "sparse.parquet", row_group_size=10
    )
    manifest = run_ingest(
        {"sources": [tmp_path / "sparse.parquet"]},
        IngestConfig(rows_per_file=2, partition_bytes=1),
        tmp_path / "out",
    )
    files = check_documents(tmp_path / "out")
    assert [pq.read_metadata(f).num_rows for f in files] == [2, 1]
    assert manifest.stats["partitions"] == 9 and manifest.counts["shards"] == 2
    assert sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()
    ) == [
        "_mixlab/manifest.json",
        "documents/shard_00000.parquet",
        "documents/shard_00001.parquet",
    ]


def test_a_stage_output_given_whole_means_its_documents(tiny_corpus, tmp_path):
    """A synth output holds other tables (planted pairs, the target set) beside documents/."""
    run_ingest({"sources": [tiny_corpus]}, IngestConfig(), tmp_path / "once")
    run_ingest({"sources": [tmp_path / "once"]}, IngestConfig(), tmp_path / "twice")
    synth = pl.read_parquet(tiny_corpus / "documents" / "*.parquet")
    for out in ("once", "twice"):
        assert read_docs(tmp_path / out).select("id", "domain", "text").sort("id").equals(synth.sort("id"))
    # and every reader of documents (dedup, tokenize through tables) resolves an output dir the same way
    assert parquet_files(tiny_corpus) == sorted((tiny_corpus / "documents").glob("*.parquet"))
    assert parquet_files(tmp_path / "once") == sorted((tmp_path / "once" / "documents").glob("*.parquet"))


@pytest.mark.parametrize("suffix, codec", [(".gz", "gzip"), (".zst", "zstd"), (".bz2", "bz2"), (".xz", "xz")])
def test_a_truncated_compressed_jsonl_is_a_one_line_error(tmp_path, cli, suffix, codec):
    data = compressed(jsonl_bytes([{"text": f"record {i} " + "z" * 200} for i in range(400)]), codec)
    (tmp_path / f"x.jsonl{suffix}").write_bytes(data[: len(data) // 2])
    result = cli("ingest", tmp_path / f"x.jsonl{suffix}", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", f"x.jsonl{suffix}: could not read", "truncated or corrupt")


def test_a_glob_matching_nothing_is_a_one_line_error(tmp_path, cli):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "main.rs").write_text("fn main() {}")
    result = cli("ingest", tmp_path / "repo", "--glob", "**/*.py", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", "repo: --glob '**/*.py' matched no files", "main.rs")


def test_an_unknown_extension_lists_the_supported_ones(tmp_path, cli):
    (tmp_path / "x.csv").write_text("a,b\n")
    result = cli("ingest", tmp_path / "x.csv", "--out", tmp_path / "out")
    assert_clean_failure(result, tmp_path / "out", "x.csv: unknown input type", ".zst", ".arrow", "--glob")


def test_an_ingest_killed_after_reading_resumes_without_reading_again(tmp_path, monkeypatch):
    import mixlab.ingest as ingest

    corpus = mixed_corpus(tmp_path / "corpus")
    cfg = IngestConfig(rows_per_file=170, partition_bytes=300)

    def killed(*args):
        raise KeyboardInterrupt  # as a kill: not a user error, so the partial dir stays

    monkeypatch.setattr(ingest, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        run_ingest({"sources": [corpus]}, cfg, tmp_path / "out")
    assert partial_dir(tmp_path / "out").is_dir() and not (tmp_path / "out").exists()
    monkeypatch.undo()
    reads: list[int] = []
    real = ingest._batches_of
    monkeypatch.setattr(ingest, "_batches_of", lambda part, cfg: reads.append(part.index) or real(part, cfg))
    run_ingest({"sources": [corpus]}, cfg, tmp_path / "out")
    assert reads == []  # every partition's marker was found
    run_ingest({"sources": [corpus]}, cfg, tmp_path / "fresh")
    files = lambda out: [f.read_bytes() for f in sorted((out / "documents").glob("*.parquet"))]  # noqa: E731
    assert files(tmp_path / "out") == files(tmp_path / "fresh") and reads


def test_a_bad_partition_on_dask_is_one_error_and_leaves_nothing(tmp_path):
    from distributed import Client, LocalCluster

    lines = [json.dumps({"text": f"fine {i}"}) for i in range(200)]
    lines[120] = "{not json"
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    cfg = IngestConfig(partition_bytes=200)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(InputError, match=r"x\.jsonl:121: not valid JSON"):
            run_ingest({"sources": [tmp_path / "x.jsonl"]}, cfg, tmp_path / "out", client)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]
