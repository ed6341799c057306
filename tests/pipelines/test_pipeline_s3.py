"""The tiny pipeline with its run root on a real S3 API server gives what it gives on local disk."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

pytest_plugins = ["s3server"]  # the `s3` fixture: a real S3 API server on 127.0.0.1

from test_pipeline import TINY  # noqa: E402

from mixlab.cli import main  # noqa: E402
from mixlab.pipelines.run import PIPELINE, run_pipeline  # noqa: E402


@pytest.mark.slow
def test_the_tiny_pipeline_on_s3_chooses_the_same_mixture_with_the_same_losses(s3, tmp_path, monkeypatch):
    yaml = tmp_path / "p.yaml"
    yaml.write_text(TINY + s3.yaml())
    until = "pretrain"
    local = tmp_path / "run"
    run_pipeline(yaml, local, until_stage=until)

    root = f"{s3.url}/run"
    result = CliRunner().invoke(main, ["pipeline", "run", str(yaml), "--out", root, "--until", until])
    assert result.exit_code == 0, result.output

    fs = s3.fs()
    stages = PIPELINE[: PIPELINE.index(until) + 1]
    for i, name in enumerate(stages):
        assert fs.exists(f"{s3.bucket}/run/{i:02d}_{name}/_mixlab/manifest.json"), name
    assert fs.exists(f"{s3.bucket}/run/run.json") and fs.exists(f"{s3.bucket}/run/pipeline.yaml")
    assert json.loads(fs.cat_file(f"{s3.bucket}/run/run.json"))["stages"]["pretrain"]["status"] == "done"

    def local_json(rel: str) -> dict:
        return json.loads((local / rel).read_text())

    def remote_json(rel: str) -> dict:
        return json.loads(fs.cat_file(f"{s3.bucket}/run/{rel}"))

    mixture = "08_mixtures_select/mixture.json"
    assert remote_json(mixture)["weights"] == local_json(mixture)["weights"]
    assert remote_json(mixture)["predicted_target_loss"] == local_json(mixture)["predicted_target_loss"]
    comparison = "09_pretrain/comparison.json"
    here, there = local_json(comparison), remote_json(comparison)
    assert there["models"] == here["models"]  # every model's weights and per-domain losses
    assert there["gap_vs_reference"] == here["gap_vs_reference"] and there["best"] == here["best"]

    # A rerun from a machine with nothing cached reads the manifests on S3 and does nothing.
    monkeypatch.setenv("MIXLAB_CACHE", str(tmp_path / "empty-cache"))
    again = run_pipeline(yaml, root, until_stage=until)
    assert all(m.skipped for m in again.values())
    shutil.rmtree(tmp_path / "empty-cache", ignore_errors=True)
