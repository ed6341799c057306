"""Getting a Dask client: the caller's, a scheduler address, or a LocalCluster mixlab owns.

Order: the client passed in, ``--scheduler-address``, the ``DASK_SCHEDULER_ADDRESS``
environment variable, a pipeline's ``scheduler_address:``, the user's dask config
(``scheduler-address``, e.g. in ``~/.config/dask/*.yaml``), else a LocalCluster of processes
sized to the machine: one worker pinned to each local GPU (``CUDA_VISIBLE_DEVICES``, resource
``GPU=1``; ``--gpus`` chooses which), plus CPU workers for the text stages. mixlab shuts down
only what it started, and quietly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
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


# Workers inherit these so numeric libraries and tokenizers do not oversubscribe cores.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries; [] without any.

    Read from CUDA_VISIBLE_DEVICES when set, else from `nvidia-smi`: no torch import, so
    starting a cluster for a text stage stays light.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """A LocalCluster's workers: one per GPU in `gpus` (its CUDA_VISIBLE_DEVICES entry), and CPU ones."""

    gpus: tuple[str, ...]
    cpu_workers: int
    threads: int = 1

    def worker_env(self, gpu: str | None = None) -> dict[str, str]:
        """A worker's environment: single-threaded numerics; a GPU worker sees only its own device."""
        return WORKER_ENV if gpu is None else {**WORKER_ENV, "CUDA_VISIBLE_DEVICES": gpu}


def plan_local_cluster(
    cores: int, visible: Sequence[str], gpus: str | None = None, n_workers: int | None = None
) -> ClusterPlan:
    """The workers of a LocalCluster on a machine with `cores` cores and `visible` GPUs.

    `gpus` is the `--gpus` flag: "0,1" picks by position among the visible GPUs (as
    CUDA_VISIBLE_DEVICES numbers them), "none" (or "") uses none; None: every visible GPU.
    Every GPU gets one worker declaring ``GPU=1``; the remaining cores (at least one) get CPU
    workers, or `n_workers` of them when given. Without GPUs this is today's cluster: one
    single-threaded process per core.
    """
    visible = list(visible)
    if gpus is None:
        chosen = visible
    elif gpus.strip().lower() in ("", "none"):
        chosen = []
    else:
        chosen = []
        for part in gpus.split(","):
            part = part.strip()
            if not part.isdigit() or int(part) >= len(visible):
                raise MixlabError(
                    f"--gpus {gpus}: {part!r} is not a GPU of this machine "
                    f"({len(visible)} visible: {', '.join(map(str, range(len(visible)))) or 'none'}); "
                    "pass positions like 0,1, or none"
                )
            if visible[int(part)] in chosen:
                raise MixlabError(f"--gpus {gpus}: GPU {part} listed twice")
            chosen.append(visible[int(part)])
    cpu = n_workers if n_workers else max(1, cores - len(chosen))
    return ClusterPlan(tuple(chosen), cpu)


def start_local_cluster(plan: ClusterPlan) -> Any:
    """A LocalCluster of `plan`'s CPU workers, then one GPU worker per planned GPU."""
    from distributed import LocalCluster, Nanny

    cluster = LocalCluster(
        n_workers=plan.cpu_workers,
        threads_per_worker=plan.threads,
        processes=True,
        dashboard_address=":0",
        silence_logs=40,
        env=plan.worker_env(),
    )
    if plan.gpus:
        for gpu in plan.gpus:
            cluster.worker_spec[f"gpu-{gpu}"] = {
                "cls": Nanny,
                "options": {
                    **cluster.new_spec["options"],
                    "nthreads": 1,
                    "resources": {"GPU": 1},
                    "env": plan.worker_env(gpu),
                },
            }
        cluster.sync(cluster._correct_state)
    return cluster


@contextlib.contextmanager
def dask_client(
    client: Any = None,
    scheduler_address: str | None = None,
    n_workers: int | None = None,
    quiet: bool = False,
    pipeline_address: str | None = None,
    gpus: str | None = None,
) -> Iterator[Any]:
    """Yield a `distributed.Client`; close it (and its LocalCluster) only if mixlab made it.

    `pipeline_address` is a pipeline YAML's `scheduler_address:`, used when neither the flag
    nor DASK_SCHEDULER_ADDRESS names a scheduler. `gpus` (the `--gpus` flag) chooses the
    GPUs a LocalCluster pins workers to (see `plan_local_cluster`); None: every visible one.
    """
    from distributed import Client

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
    cores, _ = local_cluster_size()
    plan = plan_local_cluster(cores, visible_gpus(), gpus, n_workers)
    cluster = start_local_cluster(plan)
    owned = Client(cluster)
    if plan.gpus:
        owned.wait_for_workers(plan.cpu_workers + len(plan.gpus), timeout=120)
    if not quiet:
        on_gpus = f" + {len(plan.gpus)} GPU worker(s) ({','.join(plan.gpus)})" if plan.gpus else ""
        log(
            f"dask: LocalCluster with {plan.cpu_workers} worker process(es){on_gpus}; "
            f"dashboard: {owned.dashboard_link}"
        )
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
    return gpu_worker_count(client) > 0


def gpu_worker_count(client: Any) -> int:
    """How many workers declare a GPU resource: the swarm spreads its packs over at least that many."""
    info = client.scheduler_info()
    return sum(1 for w in info.get("workers", {}).values() if w.get("resources", {}).get("GPU", 0) > 0)
