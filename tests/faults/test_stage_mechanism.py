"""The stage mechanism itself (`mixlab.stage.run_stage`): what an existing --out may and may not be."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mixlab.errors import MixlabError
from mixlab.stage import TaskMarkers, run_stage

pytestmark = pytest.mark.faults


class Body:
    """A stage body that writes `data.txt` and counts how often it ran."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, stage):
        self.calls += 1
        (stage.out / "data.txt").write_text("payload\n")
        markers = TaskMarkers.in_work(stage.work, "parts")
        self.finished = sorted(markers.finished())
        markers.mark("part_0", {"rows": 1})
        if self.fail is not None:
            raise self.fail
        return {"rows": 1}, {}


def run(out: Path, body: Body, config: dict | None = None):
    return run_stage("faults", config or {"size": 1}, {}, out, body)


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def test_a_foreign_manifest_is_refused_as_not_a_mixlab_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"hello": 1}))
    body = Body()
    with pytest.raises(MixlabError, match=r"not a mixlab output"):
        run(out, body)
    assert body.calls == 0
    assert json.loads((out / "manifest.json").read_text()) == {"hello": 1}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] and siblings(out) == []


def test_a_non_empty_folder_without_a_manifest_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(MixlabError, match=r"not a mixlab"):
        run_stage("faults", {"size": 1}, {}, out, Body(), force=True)
    assert (out / "notes.txt").read_text() == "mine\n" and siblings(out) == []


def test_the_same_config_again_is_up_to_date(tmp_path):
    out, body = tmp_path / "out", Body()
    run(out, body)
    again = run(out, body)
    assert again.skipped and body.calls == 1


def test_an_output_missing_a_listed_file_is_rebuilt_not_up_to_date(tmp_path):
    out, body = tmp_path / "out", Body()
    run(out, body)
    (out / "data.txt").unlink()
    again = run(out, body)
    assert not again.skipped and body.calls == 2
    assert (out / "data.txt").read_text() == "payload\n"


def test_a_manifest_alone_is_not_a_complete_output(tmp_path):
    out, body = tmp_path / "out", Body()
    run(out, body)
    for path in out.iterdir():
        if path.name != "manifest.json" and path.is_file():
            path.unlink()
    again = run(out, body)
    assert not again.skipped and (out / "data.txt").is_file()


def test_a_changed_config_is_refused_without_force(tmp_path):
    out = tmp_path / "out"
    run(out, Body())
    with pytest.raises(MixlabError, match=r"--force"):
        run(out, Body(), {"size": 2})


def test_a_user_error_leaves_nothing_behind(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(MixlabError):
        run(out, Body(fail=MixlabError("bad input")))
    assert not out.exists() and siblings(out) == []


def test_a_crash_keeps_its_markers_for_the_rerun_and_releases_the_lock(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        run(out, Body(fail=RuntimeError("killed mid-way")))
    assert not out.exists()
    assert not [name for name in siblings(out) if re.search(r"\.lock$", name)], siblings(out)
    body = Body()
    manifest = run(out, body)
    assert body.finished == ["part_0"], "the rerun did not see the finished task of the crashed run"
    assert manifest.counts == {"rows": 1} and siblings(out) == []
