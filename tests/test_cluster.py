"""Dask clients: mixlab closes what it starts and only that, quietly; the scheduler address order;
an external cluster whose workers run in another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from distributed import Client, LocalCluster

import mixlab
from mixlab.cluster import (
    ClusterPlan,
    dask_client,
    gpu_worker_count,
    has_gpu_workers,
    local_cluster_size,
    plan_local_cluster,
    scheduler_address_from,
    visible_gpus,
)
from mixlab.errors import MixlabError
from mixlab.tables import write_table

SRC = str(Path(mixlab.__file__).resolve().parents[1])  # the mixlab under test, for subprocesses


@pytest.fixture(scope="module")
def user_cluster():
    """A cluster the 'user' started: mixlab must use it when pointed at it and leave it running."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster


def test_a_local_cluster_is_started_and_closed(capsys):
    with dask_client(n_workers=1) as client:
        cluster = client.cluster
        assert isinstance(cluster, LocalCluster)
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(client.scheduler_info()["workers"]) == 1
    assert client.status == "closed"
    assert cluster.status.name == "closed"
    assert "dashboard:" in capsys.readouterr().err


def test_a_client_passed_in_is_used_and_not_closed(user_cluster):
    with Client(user_cluster) as mine:
        with dask_client(mine) as client:
            assert client is mine
        assert mine.status == "running"
        assert mine.submit(abs, -2).result() == 2


def test_the_scheduler_address_environment_variable_is_honoured(user_cluster, monkeypatch, capsys):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", user_cluster.scheduler_address)
    with dask_client() as client:
        assert client.scheduler.address == user_cluster.scheduler_address
        assert client.submit(max, [4, 9]).result() == 9
    assert client.status == "closed"  # our connection is closed...
    assert user_cluster.status.name == "running"  # ...the user's cluster keeps running
    assert f"connected to {user_cluster.scheduler_address}" in capsys.readouterr().err


def test_an_explicit_scheduler_address_wins_over_the_environment(user_cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")  # nothing listens there
    with dask_client(scheduler_address=user_cluster.scheduler_address, quiet=True) as client:
        assert client.scheduler.address == user_cluster.scheduler_address


def test_local_clusters_use_one_single_threaded_process_per_core():
    workers, threads = local_cluster_size()
    assert workers >= 1 and threads == 1


def test_clusters_without_gpu_resources_have_no_gpu_workers(user_cluster):
    with Client(user_cluster) as client:
        assert not has_gpu_workers(client)


def test_the_scheduler_address_order_is_flag_environment_pipeline_dask_config(monkeypatch):
    import dask

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": "tcp://config:1"}):
        assert scheduler_address_from() == "tcp://config:1"
        assert scheduler_address_from(None, "tcp://pipeline:1") == "tcp://pipeline:1"
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://env:1")
        assert scheduler_address_from(None, "tcp://pipeline:1") == "tcp://env:1"
        assert scheduler_address_from("tcp://flag:1", "tcp://pipeline:1") == "tcp://flag:1"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    assert scheduler_address_from() is None


def test_a_scheduler_named_only_in_dask_config_is_connected_to(user_cluster, monkeypatch, capsys):
    import dask

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": user_cluster.scheduler_address}):
        with dask_client() as client:
            assert client.scheduler.address == user_cluster.scheduler_address
            assert client.submit(min, [4, 9]).result() == 4
    assert user_cluster.status.name == "running"
    assert f"connected to {user_cluster.scheduler_address}" in capsys.readouterr().err


def test_a_dask_config_file_names_the_scheduler_and_the_flag_and_environment_win_over_it(tmp_path):
    (tmp_path / "cluster.yaml").write_text("scheduler-address: tcp://from-config-file:8786\n")
    code = (
        f"import sys; sys.path.insert(0, {SRC!r}); from mixlab.cluster import scheduler_address_from; "
        "print(scheduler_address_from(), scheduler_address_from('tcp://flag:1'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    env["DASK_CONFIG"] = str(tmp_path)  # where dask reads the user's YAML config files
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tcp://from-config-file:8786", "tcp://flag:1"]
    env["DASK_SCHEDULER_ADDRESS"] = "tcp://env:1"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["tcp://env:1", "tcp://flag:1"]


NOISY_SHUTDOWN = """
import logging, sys
sys.path.insert(0, {src!r})
from distributed import WorkerPlugin
from mixlab.cluster import dask_client


class ShutdownNoise(WorkerPlugin):
    def teardown(self, worker):
        logging.getLogger("distributed.worker").error("planted shutdown noise: CommClosedError")


if __name__ == "__main__":
    with dask_client(n_workers=1, quiet=True) as client:
        client.register_plugin(ShutdownNoise())
        assert client.submit(sum, [1, 2]).result() == 3
    logging.getLogger("distributed.worker").error("after shutdown, logging works again")
"""


def test_distributed_logs_nothing_while_mixlab_shuts_its_local_cluster_down(tmp_path):
    script = tmp_path / "noisy.py"
    script.write_text(NOISY_SHUTDOWN.format(src=SRC))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "planted shutdown noise" not in done.stderr
    assert "after shutdown, logging works again" in done.stderr


def test_a_stage_on_a_local_cluster_ends_without_shutdown_tracebacks(tmp_path):
    write_table(
        pa.table({"id": ["a", "b"], "domain": ["x", "x"], "text": ["one two", "three"]}),
        tmp_path / "d.parquet",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mixlab", "dedup", "d.parquet", "--out", "out"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "CommClosedError" not in done.stderr, done.stderr
    assert "dedup: wrote" in done.stdout


@pytest.fixture
def external_cluster(tmp_path):
    """A `dask scheduler` and a `dask worker` started elsewhere: the worker's working directory
    is not the client's, as on a real cluster."""
    env = {**os.environ, "PYTHONPATH": SRC}
    scheduler_file = tmp_path / "scheduler.json"
    elsewhere = tmp_path / "worker_cwd"
    elsewhere.mkdir()
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
        + ["--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        deadline = time.time() + 60
        while not scheduler_file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file)]
            + ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
            cwd=elsewhere,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        address = json.loads(scheduler_file.read_text())["address"]
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in (worker, scheduler):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def test_relative_paths_work_on_an_external_cluster_whose_workers_run_elsewhere(
    external_cluster, cli, tmp_path, monkeypatch
):
    data = tmp_path / "client_cwd"
    (data / "ing").mkdir(parents=True)
    texts = [f"document {i} " + "word " * (i % 7) for i in range(40)] + ["document 0 "] * 3
    ids = [f"d{i}" for i in range(len(texts))]
    write_table(
        pa.table({"id": ids, "domain": ["x"] * len(ids), "text": texts}), data / "ing" / "shard_00000.parquet"
    )
    monkeypatch.chdir(data)
    result = cli("dedup", "ing", "--out", "dd", "--scheduler-address", external_cluster)
    assert result.exit_code == 0, result.output
    assert (data / "dd" / "documents").is_dir()
    assert not list(data.glob(".*partial"))


# --- GPU workers: the plan is a pure function; a faked device list drives it on CPU ----------------


def test_without_gpus_the_local_cluster_is_one_cpu_worker_per_core():
    assert plan_local_cluster(8, []) == ClusterPlan((), 8)
    assert plan_local_cluster(8, [], n_workers=3) == ClusterPlan((), 3)


def test_every_visible_gpu_gets_its_own_pinned_worker_and_the_other_cores_cpu_workers():
    plan = plan_local_cluster(16, ["0", "1", "2", "3"])
    assert plan.gpus == ("0", "1", "2", "3") and plan.cpu_workers == 12
    env = plan.worker_env("2")
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["OMP_NUM_THREADS"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in plan.worker_env()


def test_gpus_flag_picks_by_position_among_the_visible_devices():
    # CUDA_VISIBLE_DEVICES=4,6 makes them positions 0 and 1; workers keep the real ids.
    assert plan_local_cluster(4, ["4", "6"], "1").gpus == ("6",)
    assert plan_local_cluster(4, ["4", "6"], "0,1").gpus == ("4", "6")
    assert plan_local_cluster(4, ["4", "6"], "none") == ClusterPlan((), 4)
    assert plan_local_cluster(2, ["0", "1", "2"]).cpu_workers == 1  # never without a CPU worker


@pytest.mark.parametrize("flag", ["2", "x", "0,0"])
def test_a_gpus_flag_naming_no_visible_gpu_is_one_clear_error(flag):
    with pytest.raises(MixlabError, match="--gpus"):
        plan_local_cluster(4, ["0", "1"], flag)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


def _cuda_visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpu_tasks_land_on_the_worker_pinned_to_its_gpu(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # a faked machine with one GPU, numbered 7
    with dask_client(n_workers=1, gpus="0") as client:
        assert has_gpu_workers(client) and gpu_worker_count(client) == 1
        seen = client.submit(_cuda_visible_devices, resources={"GPU": 1}, pure=False).result()
        assert seen == "7"
        assert len(client.scheduler_info()["workers"]) == 2  # the CPU worker beside it
    assert "1 GPU worker(s) (7)" in capsys.readouterr().err


def test_gpus_flag_is_offered_on_dask_commands_and_pipeline_run(cli):
    assert "--gpus" in cli("dedup", "--help").output
    assert "--gpus" in cli("pipeline", "run", "--help").output
    result = cli("pipeline", "run", "quickstart", "--gpus", "0", "--scheduler-address", "tcp://127.0.0.1:1")
    assert result.exit_code != 0 and "--gpus" in result.output
