"""Getting a Dask client: the caller's, a scheduler address, or a LocalCluster mixlab owns.

Order: the client passed in, ``--scheduler-address``, the ``DASK_SCHEDULER_ADDRESS``
environment variable, a pipeline's ``scheduler_address:``, the user's dask config
(``scheduler-address``, e.g. in ``~/.config/dask/*.yaml``), else a LocalCluster of processes
sized to the machine. mixlab shuts down only what it started, and quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from mixlab.console import log
from mixlab.errors import MixlabError


def scheduler_address_from(flag: str | None = None, pipeline: str | None = None) -> str | None:
    """The scheduler to use: the flag, DASK_SCHEDULER_ADDRESS, the pipeline's, dask config; None: a LocalCluster."""
    import dask.config

    return (
        flag
        or os.environ.get("DASK_SCHEDULER_ADDRESS")
        or pipeline
        or dask.config.get("scheduler-address", None)
        or None
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
    pipeline_address: str | None = None,
) -> Iterator[Any]:
    """Yield a `distributed.Client`; close it (and its LocalCluster) only if mixlab made it.

    `pipeline_address` is a pipeline YAML's `scheduler_address:`, used when neither the flag
    nor DASK_SCHEDULER_ADDRESS names a scheduler.
    """
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
        return
    address = scheduler_address_from(scheduler_address, pipeline_address)
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
            with quiet_shutdown():
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
        with quiet_shutdown(owned):
            owned.close()
            cluster.close()


def silence_distributed_logs() -> list[tuple[logging.Logger, int]]:
    """Raise every `distributed.*` logger above CRITICAL; returns the previous levels."""
    names = {"distributed"} | {n for n in logging.Logger.manager.loggerDict if n.startswith("distributed.")}
    saved = []
    for name in sorted(names):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
    return saved


def _silence_worker() -> None:
    silence_distributed_logs()


@contextlib.contextmanager
def quiet_shutdown(client: Any = None) -> Iterator[None]:
    """Shut a cluster down without distributed's shutdown noise.

    While a LocalCluster closes, a worker's heartbeat can race the scheduler's exit and log a
    `CommClosedError` traceback although nothing failed (every result was already gathered).
    So the workers of a cluster mixlab owns (`client` given) and this process's distributed
    loggers are silenced for the shutdown only; this process's levels are restored after.
    """
    if client is not None:
        with contextlib.suppress(Exception):  # a worker already gone has nothing left to say
            client.run(_silence_worker, on_error="ignore")
    saved = silence_distributed_logs()
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def has_gpu_workers(client: Any) -> bool:
    """True when any worker declares a GPU resource (`dask worker --resources GPU=1`)."""
    info = client.scheduler_info()
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in info.get("workers", {}).values())
