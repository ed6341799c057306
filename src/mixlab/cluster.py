"""Getting a Dask client: the caller's, a scheduler address, or a LocalCluster mixlab owns.

Order: the client passed in, ``--scheduler-address``, the ``DASK_SCHEDULER_ADDRESS``
environment variable, the user's dask config (``scheduler-address``, e.g. in
``~/.config/dask/*.yaml``), else a LocalCluster of processes sized to the machine. mixlab
shuts down only what it started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from mixlab.console import log
from mixlab.errors import MixlabError


def scheduler_address_from(flag: str | None = None) -> str | None:
    """The scheduler to use: the flag, else DASK_SCHEDULER_ADDRESS, else dask config; None for a LocalCluster."""
    import dask.config

    return (
        flag or os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None) or None
    )


def local_cluster_size() -> tuple[int, int]:
    """(workers, threads per worker) for a LocalCluster on this machine: one process per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores), 1


@contextlib.contextmanager
def dask_client(
    client: Any = None,
    scheduler_address: str | None = None,
    n_workers: int | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """Yield a `distributed.Client`; close it (and its LocalCluster) only if mixlab made it."""
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    address = scheduler_address_from(scheduler_address)
    if address:
        try:
            owned = Client(address, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:
            # OSError: nothing listening; ValueError / TypeError: an address that is not one.
            raise MixlabError(
                f"could not connect to Dask scheduler at {address!r} ({exc}); expected an address like "
                "tcp://HOST:8786 of a running `dask scheduler`"
            ) from None
        if not quiet:
            log(f"dask: connected to {address}; dashboard: {owned.dashboard_link}")
        try:
            yield owned
        finally:
            owned.close()  # closes our connection only; the user's cluster keeps running
        return
    workers, threads = local_cluster_size()
    if n_workers:
        workers = n_workers
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=":0",
        silence_logs=40,
        # Workers inherit these so numeric libraries and tokenizers do not oversubscribe cores.
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    owned = Client(cluster)
    if not quiet:
        log(f"dask: LocalCluster with {workers} worker process(es); dashboard: {owned.dashboard_link}")
    try:
        yield owned
    finally:
        owned.close()
        cluster.close()


def has_gpu_workers(client: Any) -> bool:
    """True when any worker declares a GPU resource (`dask worker --resources GPU=1`)."""
    info = client.scheduler_info()
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.get("workers", {}).values())
