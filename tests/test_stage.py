"""Parquet contracts, fingerprints and atomic stage outputs (publish, no-op rerun, refuse, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixlab.errors import InputError, MixlabError
from mixlab.stage import MANIFEST, META, Manifest, fingerprint, partial_dir, run_stage, write_json
from mixlab.synth import SynthConfig
from mixlab.tables import check_documents, parquet_files, shard_name, write_table


def documents(ids, domains=None, texts=None, **extra) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "domain": pa.array(domains or ["web"] * n, pa.string()),
            "text": pa.array(texts or [f"document {i}" for i in range(n)], pa.string()),
            **extra,
        }
    )


# --- the documents contract -----------------------------------------------------------------


def test_valid_documents_return_their_files_and_keep_extra_columns(tmp_path):
    write_table(documents(["a", "b"], url=pa.array(["u1", "u2"])), tmp_path / "docs" / "part-1.parquet")
    write_table(documents(["c"]), tmp_path / "docs" / "part-2.parquet")
    assert [f.name for f in check_documents(tmp_path / "docs")] == ["part-1.parquet", "part-2.parquet"]


def test_missing_text_column_names_the_file_the_columns_found_and_the_fix(tmp_path):
    table = pa.table({"id": ["a"], "domain": ["web"], "body": ["hello"], "url": ["u"]})
    write_table(table, tmp_path / "raw.parquet")
    with pytest.raises(InputError) as err:
        check_documents(tmp_path / "raw.parquet")
    message = str(err.value)
    assert "raw.parquet" in message
    assert "column 'text' missing" in message
    assert "found: id, domain, body, url" in message
    assert "--text-column" in message and "body" in message


def test_a_non_string_column_is_an_error_naming_its_type(tmp_path):
    table = pa.table({"id": pa.array([1, 2]), "domain": ["a", "b"], "text": ["x", "y"]})
    write_table(table, tmp_path / "docs.parquet")
    with pytest.raises(InputError, match=r"column 'id' has type int64, expected string"):
        check_documents(tmp_path / "docs.parquet")


def test_duplicate_ids_across_files_are_reported_with_examples(tmp_path):
    write_table(documents(["a", "b"]), tmp_path / "docs" / "one.parquet")
    write_table(documents(["b", "c"]), tmp_path / "docs" / "two.parquet")
    with pytest.raises(InputError, match=r"ids are not unique \(1 repeated, e\.g\. \['b'\]\)"):
        check_documents(tmp_path / "docs")
    assert check_documents(tmp_path / "docs", check_unique=False)


def test_null_ids_and_null_domains_are_errors(tmp_path):
    write_table(documents(["a", None]), tmp_path / "ids.parquet")
    with pytest.raises(InputError, match="null id"):
        check_documents(tmp_path / "ids.parquet")
    write_table(documents(["a", "b"], domains=["web", None]), tmp_path / "domains.parquet")
    with pytest.raises(InputError, match="null domain"):
        check_documents(tmp_path / "domains.parquet")


def test_a_corrupt_parquet_file_is_an_input_error(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(InputError, match="broken.parquet: not a readable parquet file"):
        check_documents(tmp_path / "broken.parquet")


def test_parquet_files_skips_hidden_and_underscored_paths_and_reports_empty_folders(tmp_path):
    for name in ("b.parquet", "a.parquet", ".partial/x.parquet", "_work/y.parquet", "sub/c.parquet"):
        write_table(documents(["a"]), tmp_path / "d" / name)
    assert [p.relative_to(tmp_path / "d").as_posix() for p in parquet_files(tmp_path / "d")] == [
        "a.parquet",
        "b.parquet",
        "sub/c.parquet",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        parquet_files(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        parquet_files(tmp_path / "absent")


# --- small writers and fingerprints --------------------------------------------------------------


def test_writers_leave_no_temporary_files(tmp_path):
    write_table(documents(["a"]), tmp_path / "t" / shard_name(3))
    write_json(tmp_path / "t" / "info.json", {"path": Path("x"), "n": 1})
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["info.json", "shard_00003.parquet"]
    assert json.loads((tmp_path / "t" / "info.json").read_text()) == {"n": 1, "path": "x"}
    assert pq.read_table(tmp_path / "t" / "shard_00003.parquet").num_rows == 1


def test_fingerprint_follows_content_and_uses_the_manifest_of_stage_outputs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("one")
    first = fingerprint(tmp_path / "d")
    assert fingerprint(tmp_path / "d") == first
    (tmp_path / "d" / "a.txt").write_text("two")
    assert fingerprint(tmp_path / "d") != first
    (tmp_path / "d" / META).mkdir()
    (tmp_path / "d" / META / MANIFEST).write_text('{"stage": "x"}')
    with_manifest = fingerprint(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("three")  # atomic outputs: the manifest identifies them
    assert fingerprint(tmp_path / "d") == with_manifest


# --- atomic stage outputs --------------------------------------------------------------------------


def write_marker_body(text: str = "result"):
    calls = []

    def body(stage):
        calls.append(stage)
        (stage.out / "result.txt").write_text(text)
        return {"rows": 1}, {"note": text}

    return body, calls


def test_a_finished_stage_is_published_with_its_manifest(tmp_path):
    (tmp_path / "input.txt").write_text("data")
    body, _ = write_marker_body()
    cfg = SynthConfig(seed=5)
    manifest = run_stage("demo", cfg, {"src": tmp_path / "input.txt"}, tmp_path / "out", body)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [META, "result.txt"]
    assert not partial_dir(out).exists()
    loaded = Manifest.load(out)
    assert loaded == manifest
    assert loaded.config["seed"] == 5
    assert loaded.inputs == {"src": fingerprint(tmp_path / "input.txt")}
    assert loaded.counts == {"rows": 1} and loaded.stats == {"note": "result"}
    assert {"python", "numpy", "pyarrow", "mixlab"} <= set(loaded.versions)
    assert loaded.wall_s >= 0 and loaded.created


@pytest.mark.parametrize("error", [InputError("bad input"), MixlabError("bad")])
def test_a_user_error_leaves_neither_output_nor_partial(tmp_path, error):
    def body(stage):
        (stage.out / "half.txt").write_text("half")
        raise error

    with pytest.raises(MixlabError):
        run_stage("demo", {"k": 1}, {}, tmp_path / "out", body)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_killed_run_leaves_only_a_hidden_partial_that_does_not_look_finished(tmp_path, error):
    def body(stage):
        (stage.out / "half.txt").write_text("half")
        raise error()

    with pytest.raises(error):
        run_stage("demo", {"k": 1}, {}, tmp_path / "out", body)
    assert [p.name for p in tmp_path.iterdir()] == [".out.partial"]
    assert not (tmp_path / ".out.partial" / META / MANIFEST).exists()
    with pytest.raises(InputError, match="not a finished mixlab stage output"):
        Manifest.load(tmp_path / ".out.partial")


def test_a_rerun_after_a_kill_resumes_with_the_work_dir_then_cleans_it(tmp_path):
    done_by_first_run = []

    def body(stage):
        for part in range(4):
            marker = stage.work / f"part-{part}.done"
            if marker.exists():
                continue
            if part == 2 and not done_by_first_run:
                done_by_first_run.extend(sorted(p.name for p in stage.work.iterdir()))
                raise KeyboardInterrupt
            (stage.out / f"part-{part}.txt").write_text(str(part))
            marker.write_text("")
        return {"parts": 4}, {"resumed_from": done_by_first_run}

    with pytest.raises(KeyboardInterrupt):
        run_stage("demo", {"k": 1}, {}, tmp_path / "out", body)
    assert done_by_first_run == ["part-0.done", "part-1.done"]

    def resumed(stage):
        seen = sorted(p.name for p in stage.work.iterdir())
        assert seen == ["part-0.done", "part-1.done"]
        return body(stage)

    manifest = run_stage("demo", {"k": 1}, {}, tmp_path / "out", resumed)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [META] + [f"part-{i}.txt" for i in range(4)]
    assert manifest.counts == {"parts": 4}
    assert not partial_dir(out).exists()


def test_a_partial_from_a_different_config_is_discarded(tmp_path):
    def killed(stage):
        (stage.work / "stale.done").write_text("")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("demo", {"k": 1}, {}, tmp_path / "out", killed)

    def fresh(stage):
        assert list(stage.work.iterdir()) == []
        return {}, {}

    run_stage("demo", {"k": 2}, {}, tmp_path / "out", fresh)
    assert (tmp_path / "out" / META / MANIFEST).is_file()


def test_a_rerun_with_the_same_config_and_inputs_is_a_no_op(tmp_path):
    (tmp_path / "input.txt").write_text("data")
    body, calls = write_marker_body()
    first = run_stage("demo", {"k": 1}, {"src": tmp_path / "input.txt"}, tmp_path / "out", body)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = run_stage("demo", {"k": 1}, {"src": tmp_path / "input.txt"}, tmp_path / "out", body)
    assert len(calls) == 1
    assert again.skipped and not first.skipped
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before


def test_a_changed_config_refuses_without_force_and_replaces_with_force(tmp_path):
    old_body, _ = write_marker_body("old")
    run_stage("demo", {"k": 1, "j": 0}, {}, tmp_path / "out", old_body)
    (tmp_path / "out" / "leftover.txt").write_text("from the old output")
    new_body, calls = write_marker_body("new")
    with pytest.raises(MixlabError) as err:
        run_stage("demo", {"k": 2, "j": 0}, {}, tmp_path / "out", new_body)
    assert "config changed (k)" in str(err.value) and "--force" in str(err.value)
    assert calls == [] and (tmp_path / "out" / "result.txt").read_text() == "old"

    manifest = run_stage("demo", {"k": 2, "j": 0}, {}, tmp_path / "out", new_body, force=True)
    assert manifest.config == {"k": 2, "j": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [META, "result.txt"]
    assert (tmp_path / "out" / "result.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no trash or partial left behind


def test_changed_inputs_refuse_without_force(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text("v1")
    body, _ = write_marker_body()
    run_stage("demo", {"k": 1}, {"src": src}, tmp_path / "out", body)
    src.write_text("v2")
    with pytest.raises(MixlabError, match="inputs changed"):
        run_stage("demo", {"k": 1}, {"src": src}, tmp_path / "out", body)


def test_another_stage_output_is_not_overwritten_without_force(tmp_path):
    body, _ = write_marker_body()
    run_stage("first", {"k": 1}, {}, tmp_path / "out", body)
    with pytest.raises(MixlabError, match="earlier first run"):
        run_stage("second", {"k": 1}, {}, tmp_path / "out", body)


def test_a_foreign_directory_or_file_is_never_overwritten(tmp_path):
    body, calls = write_marker_body()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(MixlabError, match="not a mixlab stage output"):
            run_stage("demo", {}, {}, tmp_path / "mine", body, force=force)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(MixlabError, match="is a file"):
        run_stage("demo", {}, {}, tmp_path / "file", body)
    assert calls == []


def test_an_existing_empty_directory_is_used(tmp_path):
    (tmp_path / "out").mkdir()
    body, _ = write_marker_body()
    run_stage("demo", {}, {}, tmp_path / "out", body)
    assert (tmp_path / "out" / "result.txt").is_file()


def test_a_missing_input_is_an_input_error_before_any_work(tmp_path):
    body, calls = write_marker_body()
    with pytest.raises(InputError, match="no such file"):
        run_stage("demo", {}, {"src": tmp_path / "absent"}, tmp_path / "out", body)
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_list_of_inputs_is_fingerprinted_in_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a")
    b.write_text("b")
    body, _ = write_marker_body()
    one = run_stage("demo", {}, {"src": [a, b]}, tmp_path / "one", body)
    two = run_stage("demo", {}, {"src": [b, a]}, tmp_path / "two", body)
    assert one.inputs != two.inputs


def test_a_corrupt_manifest_is_reported(tmp_path):
    (tmp_path / "out" / META).mkdir(parents=True)
    (tmp_path / "out" / META / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="corrupt manifest"):
        Manifest.load(tmp_path / "out")


def _rows_file(path: Path, n: int, row_group_size: int | None = None) -> Path:
    from mixlab.tables import write_table

    write_table(
        pa.table({"id": [f"d{i:05d}" for i in range(n)], "x": list(range(n))}),
        path,
        row_group_size=row_group_size,
    )
    return path


def test_partitions_cover_every_row_once_and_respect_the_cap(tmp_path: Path) -> None:
    from mixlab.tables import plan_partitions, read_partition

    files = [
        _rows_file(tmp_path / "a.parquet", 5000, row_group_size=700),
        _rows_file(tmp_path / "b.parquet", 3),
    ]
    parts = plan_partitions(files, max_rows=1000)
    assert [p.index for p in parts] == list(range(len(parts)))
    assert all(p.stop - p.start <= 1000 for p in parts)
    ids = [i for p in parts for i in read_partition(p, ["id"])["id"].to_pylist()]
    assert ids == [f"d{i:05d}" for i in range(5000)] + [f"d{i:05d}" for i in range(3)]


def test_a_small_corpus_is_still_split_for_every_worker_but_not_into_crumbs(tmp_path: Path) -> None:
    from mixlab.tables import plan_partitions

    small = _rows_file(tmp_path / "small.parquet", 40_000)
    assert len(plan_partitions([small], max_rows=20_000)) == 8  # 5,000 rows each: eight workers busy
    tiny = _rows_file(tmp_path / "tiny.parquet", 3000)
    assert len(plan_partitions([tiny], max_rows=20_000)) == 2  # never below 2,000 rows a part
    assert plan_partitions([small], max_rows=20_000) == plan_partitions([small], max_rows=20_000)


# --- the output lock, complete outputs, foreign manifests ------------------------------------------


def test_a_second_run_into_a_locked_output_is_refused_naming_the_owner(tmp_path):
    import fcntl
    import os

    from mixlab.stage import lock_file

    out = tmp_path / "out"
    lock = lock_file(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds it (a separate open file counts as another owner)
    try:
        body, calls = write_marker_body()
        with pytest.raises(MixlabError, match=r"another mixlab run is writing it \(pid 4242\)"):
            run_stage("demo", {}, {}, out, body)
        assert calls == [] and not out.exists() and not partial_dir(out).exists()
    finally:
        os.close(fd)


def test_a_stale_lock_file_of_a_dead_run_is_taken_over(tmp_path):
    from mixlab.stage import lock_file

    out = tmp_path / "out"
    lock_file(out).write_text("999999")  # left by a killed run: the file exists but nobody locks it
    body, calls = write_marker_body()
    run_stage("demo", {}, {}, out, body)
    assert len(calls) == 1 and (out / "result.txt").is_file()
    assert not lock_file(out).exists()


def test_an_output_missing_a_listed_file_is_rebuilt_not_up_to_date(tmp_path):
    body, calls = write_marker_body()
    run_stage("demo", {}, {}, tmp_path / "out", body)
    assert Manifest.load(tmp_path / "out").outputs == {"result.txt": len("result")}
    (tmp_path / "out" / "result.txt").unlink()
    run_stage("demo", {}, {}, tmp_path / "out", body)
    assert len(calls) == 2 and (tmp_path / "out" / "result.txt").is_file()


@pytest.mark.parametrize("text", ['{"hello": 1}', "[1, 2]", '{"stage": 3, "config": {}}'])
@pytest.mark.parametrize("where", [f"{META}/{MANIFEST}", MANIFEST])
def test_a_foreign_manifest_is_not_a_mixlab_output_and_is_never_overwritten(tmp_path, text, where):
    file = tmp_path / "out" / where
    file.parent.mkdir(parents=True)
    file.write_text(text)
    with pytest.raises(InputError, match="not a mixlab output|not a finished mixlab stage output"):
        Manifest.load(tmp_path / "out")
    body, calls = write_marker_body()
    with pytest.raises(MixlabError, match="refusing to overwrite it|not a mixlab stage output"):
        run_stage("demo", {}, {}, tmp_path / "out", body, force=True)
    assert calls == [] and file.read_text() == text


def test_an_output_of_an_older_mixlab_with_its_manifest_at_the_top_still_reads(tmp_path):
    body, _ = write_marker_body()
    made = run_stage("demo", {}, {}, tmp_path / "out", body)
    old = tmp_path / "out" / MANIFEST
    (tmp_path / "out" / META / MANIFEST).rename(old)
    (tmp_path / "out" / META).rmdir()
    assert Manifest.load(tmp_path / "out").stage == made.stage == "demo"
    assert run_stage("demo", {}, {}, tmp_path / "out", body).skipped


# --- task markers, derived randomness, absolute inputs --------------------------------------------


def test_task_markers_record_finished_tasks_for_a_resumed_run(tmp_path):
    import pickle

    from mixlab.stage import TaskMarkers

    markers = TaskMarkers.in_work(tmp_path / "work", "parts")
    assert markers.finished() == {} and markers.get("part_00001") is None
    pickle.loads(pickle.dumps(markers)).mark("part_00001", {"rows": 3})  # as a worker would
    markers.mark("part_00000", {"rows": 2})
    assert markers.finished() == {"part_00000": {"rows": 2}, "part_00001": {"rows": 3}}
    assert sorted(p.name for p in (tmp_path / "work" / "markers" / "parts").iterdir()) == [
        "part_00000.json",
        "part_00001.json",
    ]


def test_derived_seeds_depend_on_the_seed_and_the_names_only():
    from mixlab.stage import derive_rng, derive_seed

    assert derive_seed(0, "init", "r1") == derive_seed(0, "init", "r1")
    assert (
        len({derive_seed(0, "init", "r1"), derive_seed(1, "init", "r1"), derive_seed(0, "init", "r2")}) == 3
    )
    assert derive_seed(0, "a", bits=31) < 2**31
    assert derive_rng(3, "x").random() == derive_rng(3, "x").random()
    assert derive_rng(3, "x").random() != derive_rng(3, "y").random()


def test_absolute_inputs_resolve_relative_paths_and_keep_urls(tmp_path, monkeypatch):
    from mixlab.stage import absolute_inputs

    monkeypatch.chdir(tmp_path)
    out = absolute_inputs(
        {"one": "rel/a", "many": [Path("b"), "s3://bucket/c"], "none": None, "named": {"t": "t"}}
    )
    assert out == {
        "one": tmp_path / "rel" / "a",
        "many": [tmp_path / "b", "s3://bucket/c"],
        "none": None,
        "named": {"t": tmp_path / "t"},
    }
