"""Dask clients: mixlab closes what it starts and only that; DASK_SCHEDULER_ADDRESS is honoured."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

from mixlab.cluster import dask_client, has_gpu_workers, local_cluster_size


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
