"""URLs in and out: memory:// for the mechanism, a real S3 API server (moto) for the store.

What is pinned down: a stage's --out may be a URL (uploaded, manifest last, rerun a no-op,
a killed upload never trusted and replaced by the rerun); a URL input is read back (a
mixlab output from a local cache keyed by its manifest, raw parquet through fsspec);
unreachable endpoints, missing buckets and credentials, refused permissions are one line
naming the URL, with nothing published.
"""

from __future__ import annotations

import gzip
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import pyarrow as pa
import pytest

from mixlab import storage
from mixlab.config import ConfigError, load_storage_options, resolve_config
from mixlab.errors import InputError, MixlabError
from mixlab.stage import (
    Manifest,
    check_output_dir,
    fingerprint,
    has_manifest,
    output_lock,
    partial_dir,
    run_stage,
)
from mixlab.stages import STAGES
from mixlab.synth import SynthConfig
from mixlab.tables import parquet_files, plan_partitions, read_partition, read_table, write_table

sys.path.insert(0, str(Path(__file__).parent))
pytest_plugins = ["s3server"]  # the `s3` fixture: a real S3 API server on 127.0.0.1

if TYPE_CHECKING:
    from s3server import S3

SYNTH = [
    "synth",
    "--docs-per-domain",
    "20",
    "--doc-words",
    "30",
    "--near-dup-clusters",
    "2",
    "--exact-dups",
    "1",
]


@pytest.fixture
def memory(monkeypatch, tmp_path):
    """A fresh memory:// bucket and a fresh local cache."""
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "cache"))
    name = f"memory://b{uuid.uuid4().hex[:8]}"
    yield name
    fs = fsspec.filesystem("memory")
    if fs.exists(name.removeprefix("memory://")):
        fs.rm(name.removeprefix("memory://"), recursive=True)


def table_body(rows: int = 3, fail_after: bool = False):
    def body(stage):
        write_table(pa.table({"x": list(range(rows))}), stage.out / "data" / "shard_00000.parquet")
        (stage.out / "note.txt").write_text("hello")
        return {"rows": rows}, {}

    return body


# --- paths and URLs ---------------------------------------------------------------------------


def test_urls_stay_strings_and_join_like_paths():
    assert storage.is_url("s3://b/k") and not storage.is_url(Path("s3://b/k")) and not storage.is_url("a/b")
    assert storage.join("s3://b/run/", "04_tokenize", "x") == "s3://b/run/04_tokenize/x"
    assert storage.join(Path("/r"), "a") == Path("/r/a")
    assert storage.name_of("s3://b/run/04_tokenize/") == "04_tokenize"


def test_expand_lists_files_recursively_skipping_mixlab_files_and_honours_a_glob(memory):
    fs = fsspec.filesystem("memory")
    base = memory.removeprefix("memory://")
    for rel in ("a.jsonl", "sub/b.py", "sub/c.txt", "_mixlab/manifest.json", ".hidden"):
        fs.pipe_file(f"{base}/corpus/{rel}", b"x")
    files = storage.expand(f"{memory}/corpus")
    assert files == [f"{memory}/corpus/a.jsonl", f"{memory}/corpus/sub/b.py", f"{memory}/corpus/sub/c.txt"]
    assert storage.expand(f"{memory}/corpus", "**/*.py") == [f"{memory}/corpus/sub/b.py"]
    assert storage.expand(f"{memory}/corpus/a.jsonl") == [f"{memory}/corpus/a.jsonl"]


def test_open_input_decompresses_by_name(memory):
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{memory.removeprefix('memory://')}/d.jsonl.gz", gzip.compress(b'{"text": "hi"}\n'))
    with storage.open_input(f"{memory}/d.jsonl.gz", compression="infer") as fh:
        assert fh.read() == b'{"text": "hi"}\n'
    with pytest.raises(InputError, match=r"d\.missing: no such file or directory"):
        storage.open_input(f"{memory}/d.missing")


def test_storage_options_can_be_keyed_by_protocol():
    both = {"s3": {"endpoint_url": "http://a"}, "gs": {"project": "p"}}
    assert storage.options_for("s3://b/k", both) == {"endpoint_url": "http://a"}
    flat = {"endpoint_url": "http://a", "client_kwargs": {"region_name": "x"}}
    assert storage.options_for("s3://b/k", flat) == flat


def test_a_protocol_without_its_package_is_one_line_naming_the_extra():
    with pytest.raises(MixlabError, match=r"gs://b/k: gs:// needs a package.*mixlab\[gcs\]"):
        storage.filesystem("gs://b/k")


# --- tables read URLs where they are read -----------------------------------------------------


def test_parquet_readers_and_partitions_take_urls(memory):
    fs = fsspec.filesystem("memory")
    base = memory.removeprefix("memory://")
    for i in range(2):
        with fs.open(f"{base}/docs/part-{i}.parquet", "wb") as fh:
            import pyarrow.parquet as pq

            pq.write_table(pa.table({"id": [f"{i}-{j}" for j in range(5)], "v": list(range(5))}), fh)
    fs.pipe_file(f"{base}/docs/_mixlab/manifest.json", b"{}")  # not data: skipped
    files = parquet_files(f"{memory}/docs")
    assert files == [f"{memory}/docs/part-0.parquet", f"{memory}/docs/part-1.parquet"]
    assert read_table(f"{memory}/docs", ["id"]).num_rows == 10
    parts = plan_partitions(files, max_rows=3, min_rows=1)
    assert len(parts) > 2 and {p.file for p in parts} == set(files)
    assert sum(read_partition(p).num_rows for p in parts) == 10
    with pytest.raises(InputError, match=r"/nothing: no such file or directory"):
        read_table(f"{memory}/nothing")


def test_a_url_input_is_fingerprinted_by_metadata_and_changes_with_the_file(memory):
    fs = fsspec.filesystem("memory")
    url = f"{memory}/raw/a.jsonl"
    fs.pipe_file(url.removeprefix("memory://"), b"one")
    first = fingerprint(url)
    assert fingerprint(url) == first
    fs.pipe_file(url.removeprefix("memory://"), b"other bytes")
    assert fingerprint(url) != first


# --- --out URL ----------------------------------------------------------------------------------


def test_a_stage_writes_to_a_url_with_its_manifest_and_reruns_as_a_no_op(memory):
    out = f"{memory}/out"
    made = run_stage("demo", {"a": 1}, {}, out, table_body())
    assert made.path == out and not made.skipped and has_manifest(out)
    assert Manifest.load(out).outputs == made.outputs
    again = run_stage("demo", {"a": 1}, {}, out, table_body())
    assert again.skipped
    with pytest.raises(MixlabError, match="config changed"):
        run_stage("demo", {"a": 2}, {}, out, table_body())
    assert run_stage("demo", {"a": 2}, {}, out, table_body(rows=5), force=True).counts == {"rows": 5}
    assert read_table(f"{out}/data").num_rows == 5


def test_a_url_output_is_read_back_from_a_cache_keyed_by_its_manifest(memory, tmp_path, monkeypatch):
    out = f"{memory}/out"
    run_stage("demo", {"a": 1}, {}, out, table_body())
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "fresh"))  # another machine: nothing cached
    local = storage.localize({"data": f"{out}/data", "raw": f"{memory}/raw.jsonl", "none": None})
    assert isinstance(local["data"], Path) and local["data"].parts[-1] == "data"
    assert read_table(local["data"]).num_rows == 3
    assert local["raw"] == f"{memory}/raw.jsonl" and local["none"] is None  # raw URLs stay for workers
    assert str(local["data"]).startswith(str(tmp_path / "fresh" / "outputs"))
    # what a stage records of its input (fit.json's prior source, distill's teacher) is the URL
    assert storage.origin(local["data"]) == f"{out}/data"
    assert storage.origin(local["data"].parent) == out
    assert storage.origin(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")


def test_an_upload_killed_before_its_manifest_is_not_trusted_and_the_rerun_replaces_it(memory, monkeypatch):
    out = f"{memory}/out"
    fs = fsspec.filesystem("memory")
    real_put = type(fs).put_file
    calls = []

    def dying_put(self, lpath, rpath, **kw):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionResetError("connection reset by peer")
        return real_put(self, lpath, rpath, **kw)

    monkeypatch.setattr(type(fs), "put_file", dying_put)
    with pytest.raises(MixlabError, match=r"/out: storage error"):
        run_stage("demo", {"a": 1}, {}, out, table_body())
    monkeypatch.setattr(type(fs), "put_file", real_put)
    assert not has_manifest(out)  # files are there, the manifest is not: not a finished output
    with pytest.raises(InputError, match="not a finished mixlab stage output"):
        Manifest.load(out)
    assert check_output_dir(out) is None  # mixlab's own unfinished upload: replaced, not refused
    done = run_stage("demo", {"a": 1}, {}, out, table_body())
    assert not done.skipped and has_manifest(out)


def test_a_deleted_manifest_makes_an_output_untrusted_for_readers_and_rebuilt_by_a_rerun(memory):
    out = f"{memory}/out"
    run_stage("demo", {"a": 1}, {}, out, table_body())
    fsspec.filesystem("memory").rm_file(f"{out.removeprefix('memory://')}/_mixlab/manifest.json")
    assert storage.localize(out) == out  # no manifest: not a mixlab output, never read from cache
    assert not run_stage("demo", {"a": 1}, {}, out, table_body()).skipped


def test_a_killed_run_into_a_url_resumes_from_its_local_partial_keyed_by_the_url(memory):
    out = f"{memory}/out"

    def killed(stage):
        (stage.work / "part_0.done").write_text("1")
        raise RuntimeError("kill -9 stand-in")

    with pytest.raises(RuntimeError):
        run_stage("demo", {"a": 1}, {}, out, killed)
    assert not has_manifest(out) and partial_dir(out).is_dir()
    seen = []

    def resumed(stage):
        seen.append((stage.work / "part_0.done").is_file())
        return table_body()(stage)

    run_stage("demo", {"a": 1}, {}, out, resumed)
    assert seen == [True] and has_manifest(out) and not partial_dir(out).exists()


def test_a_second_run_into_the_same_url_on_this_machine_is_refused(memory):
    out = f"{memory}/out"
    with output_lock(out):
        with pytest.raises(MixlabError, match=r"/out: another mixlab run is writing it"):
            run_stage("demo", {"a": 1}, {}, out, table_body())
    assert not has_manifest(out)


def test_a_url_prefix_with_foreign_files_is_refused(memory):
    fsspec.filesystem("memory").pipe_file(f"{memory.removeprefix('memory://')}/theirs/data.csv", b"a,b")
    with pytest.raises(MixlabError, match=r"theirs: holds files and no _mixlab/manifest.json"):
        run_stage("demo", {"a": 1}, {}, f"{memory}/theirs", table_body())


# --- storage_options from YAML ---------------------------------------------------------------


def test_storage_options_come_from_the_config_file_with_variables_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    flat = tmp_path / "flat.yaml"
    flat.write_text("docs_per_domain: 700\nstorage_options: {key: k, secret: '${MY_SECRET}'}\n")
    assert load_storage_options(flat) == {"key": "k", "secret": "s3cr3t"}
    assert resolve_config(SynthConfig, flat, section="synth").docs_per_domain == 700  # not a stage key
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("synth: {docs_per_domain: 900}\nstorage_options: {client_kwargs: {region_name: r}}\n")
    assert load_storage_options(pipeline) == {"client_kwargs": {"region_name": "r"}}
    assert resolve_config(SynthConfig, pipeline, section="synth").docs_per_domain == 900
    bad = tmp_path / "bad.yaml"
    bad.write_text("storage_options: {secret: '${NOT_SET_ANYWHERE}'}\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_storage_options(bad)


# --- a real S3 API server ---------------------------------------------------------------------


def config_file(tmp_path: Path, s3: S3, extra: str = "") -> Path:
    path = tmp_path / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(s3.yaml() + extra)
    return path


def test_cli_writes_a_stage_to_s3_and_the_next_stage_reads_it_back(s3, cli, tmp_path, monkeypatch):
    cfg = config_file(tmp_path, s3)
    corpus = f"{s3.url}/synth"
    result = cli(*[*SYNTH, "--config", str(cfg), "--out", corpus])
    assert result.exit_code == 0, result.output + result.stderr
    fs = s3.fs()
    assert fs.exists(f"{s3.bucket}/synth/_mixlab/manifest.json")
    again = cli(*[*SYNTH, "--config", str(cfg), "--out", corpus])
    assert again.exit_code == 0 and "already up to date" in again.output
    # Another machine (nothing cached) ingests the corpus from S3 into S3.
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "other-machine"))
    result = cli(*["ingest", f"{corpus}/documents", "--config", str(cfg), "--out", f"{s3.url}/ingest"])
    assert result.exit_code == 0, result.output + result.stderr
    with storage.using(s3.options):
        ingested = Manifest.load(f"{s3.url}/ingest")
        documents = read_table(f"{corpus}/documents", ["id"]).num_rows  # raw parquet read through s3fs
    assert ingested.stage == "ingest" and ingested.counts["documents"] == documents > 0


def test_stage_invoke_reads_an_s3_output_through_the_cache(s3, tmp_path):
    with storage.using(s3.options):
        made = STAGES["synth"].invoke(
            {},
            SynthConfig(docs_per_domain=10, doc_words=20, near_dup_clusters=2, exact_dups=1),
            f"{s3.url}/c",
        )
        assert made.path == f"{s3.url}/c"
        local = storage.localize(f"{s3.url}/c/documents")
        assert Path(local).is_dir() and read_table(local).num_rows > 0


def one_line_failure(result) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output + result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: ")
    return lines[-1]


def test_a_bucket_that_does_not_exist_is_one_line_and_nothing_runs(s3, cli, tmp_path):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/out"
    line = one_line_failure(cli(*[*SYNTH, "--config", str(config_file(tmp_path, s3)), "--out", url]))
    assert url in line and "no such bucket" in line


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_endpoint_is_one_line_naming_the_url(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"storage_options: {{endpoint_url: 'http://127.0.0.1:{free_port()}', key: k, secret: s,"
        " config_kwargs: {retries: {max_attempts: 1}, connect_timeout: 2}}\n"
    )
    line = one_line_failure(cli(*[*SYNTH, "--config", str(cfg), "--out", "s3://bucket/out"]))
    assert "s3://bucket/out" in line and "cannot reach the storage endpoint" in line
    assert not (tmp_path / "cache" / "outputs").exists()


def test_missing_credentials_are_one_line(s3, cli, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage_options: {{endpoint_url: '{s3.endpoint}'}}\n")
    line = one_line_failure(cli(*[*SYNTH, "--config", str(cfg), "--out", f"{s3.url}/out"]))
    assert f"{s3.url}/out" in line and "no credentials" in line
    assert not s3.fs().exists(f"{s3.bucket}/out")


def test_credentials_the_store_refuses_are_a_permission_error_and_nothing_is_published(s3, cli, tmp_path):
    from moto import settings

    cfg = config_file(tmp_path, s3)
    saved = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # the server now checks keys: "testing" is unknown to it
    try:
        line = one_line_failure(cli(*[*SYNTH, "--config", str(cfg), "--out", f"{s3.url}/out"]))
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
    assert f"{s3.url}/out" in line and "permission denied" in line
    assert not s3.fs().exists(f"{s3.bucket}/out")


def read_only_target(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        return Path("/sys/mixlab-test-out")  # root ignores file modes; sysfs refuses everyone
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


@pytest.mark.parametrize("as_url", [True, False], ids=["file-url", "local-path"])
def test_an_output_in_a_read_only_folder_is_a_permission_error(cli, tmp_path, monkeypatch, as_url):
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "cache"))
    target = read_only_target(tmp_path)
    out = f"file://{target}" if as_url else str(target)
    line = one_line_failure(cli(*[*SYNTH, "--out", out]))
    assert out in line and "permission denied" in line
    assert not target.exists()


def test_a_pipeline_whose_input_url_does_not_exist_fails_before_any_stage(memory, tmp_path):
    from mixlab.pipelines.run import run_pipeline

    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"inputs: [{memory}/corpus/web.jsonl]\n")
    with pytest.raises(
        ConfigError, match=r"inputs: memory://.*/corpus/web\.jsonl: no such file or directory"
    ):
        run_pipeline(yaml, f"{memory}/run")
    assert not storage.exists(f"{memory}/run")


@pytest.mark.slow
def test_tokenize_workers_read_raw_parquet_from_s3_and_give_the_local_tokens(s3, cli, tiny_corpus, tmp_path):
    s3.fs().put(str(tiny_corpus / "documents"), f"{s3.bucket}/raw/", recursive=True)  # no manifest: raw
    tokenizer = tmp_path / "tok"
    assert (
        cli(
            "tokenizer", "train", tiny_corpus / "documents", "--vocab-size", 300, "--out", tokenizer
        ).exit_code
        == 0
    )
    cfg = config_file(tmp_path, s3)
    remote = cli(
        "tokenize", f"{s3.url}/raw", "--tokenizer", tokenizer, "--config", cfg, "--out", f"{s3.url}/tok"
    )
    assert remote.exit_code == 0, remote.output
    local = tmp_path / "tok-local"
    assert cli("tokenize", tiny_corpus / "documents", "--tokenizer", tokenizer, "--out", local).exit_code == 0
    with storage.using(s3.options):
        there = Manifest.load(f"{s3.url}/tok")
        assert there.counts == Manifest.load(local).counts
        for rel in there.outputs:
            if rel.endswith(".parquet"):
                assert read_table(f"{s3.url}/tok/{rel}", allow_empty=True).equals(
                    read_table(local / rel, allow_empty=True)
                ), rel


def test_an_s3_upload_that_fails_midway_leaves_no_manifest_and_the_rerun_publishes(s3, monkeypatch):
    import s3fs

    real = s3fs.S3FileSystem._put_file
    sent = []

    async def failing(self, lpath, rpath, **kw):
        sent.append(rpath)
        if len(sent) == 2:
            raise ConnectionResetError("connection reset by peer")
        return await real(self, lpath, rpath, **kw)

    out = f"{s3.url}/out"
    with storage.using(s3.options):
        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing)
        with pytest.raises(MixlabError, match=r"/out: "):
            run_stage("demo", {"a": 1}, {}, out, table_body())
        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", real)
        assert not has_manifest(out) and storage.localize(out) == out
        assert not run_stage("demo", {"a": 1}, {}, out, table_body()).skipped
        assert run_stage("demo", {"a": 1}, {}, out, table_body()).skipped
    assert s3.fs().exists(f"{s3.bucket}/out/_mixlab/manifest.json")


def test_without_storage_options_the_stores_own_environment_variables_apply(s3, cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # botocore reads these, as for any AWS tool
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = cli(*SYNTH, "--out", f"{s3.url}/from-env")
    assert result.exit_code == 0, result.output
    assert s3.fs().exists(f"{s3.bucket}/from-env/_mixlab/manifest.json")


def test_a_documents_stage_output_url_reads_as_its_documents(memory):
    def body(stage):
        write_table(
            pa.table({"id": ["a"], "domain": ["d"], "text": ["t"]}), stage.out / "documents" / "d.parquet"
        )
        write_table(pa.table({"id": ["b"], "kept_id": ["a"]}), stage.out / "duplicates.parquet")
        return {}, {}

    run_stage("dedup", {}, {}, f"{memory}/dedup", body)
    assert parquet_files(f"{memory}/dedup") == [f"{memory}/dedup/documents/d.parquet"]


def test_an_input_in_a_bucket_that_does_not_exist_is_one_line_naming_it(s3, cli, tmp_path):
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/tokens"
    cfg = config_file(tmp_path, s3)
    line = one_line_failure(cli("mixtures", "sample", url, "--config", cfg, "--out", tmp_path / "cands"))
    assert url in line and "no such bucket" in line
    assert not (tmp_path / "cands").exists()


def test_a_url_that_only_mixlab_reads_is_fetched_once_and_again_when_it_changes(memory):
    fs = fsspec.filesystem("memory")
    url = f"{memory}/mine/mixture.json"
    fs.pipe_file(url.removeprefix("memory://"), b'{"a": 0.5, "b": 0.5}')
    first = storage.localize(url, raw=False)
    assert isinstance(first, Path) and first.name == "mixture.json" and first.read_bytes().startswith(b'{"a"')
    assert storage.localize(url, raw=False) == first
    fs.pipe_file(url.removeprefix("memory://"), b'{"a": 1.0}')
    again = storage.localize(url, raw=False)
    assert again != first and again.read_bytes() == b'{"a": 1.0}'
    assert storage.origin(again) == url
    fs.pipe_file(f"{memory.removeprefix('memory://')}/tok/tokenizer.json", b"{}")
    folder = storage.localize(f"{memory}/tok", raw=False)
    assert (folder / "tokenizer.json").is_file()
    assert storage.localize(url) == url  # a corpus input: kept for the workers
