"""`mixlab swarm train`: candidate mixtures -> packs of small GPT proxies -> runs.parquet.

Reads ``candidates.parquet`` (run_id, seed, w.<domain>) and a tokenize output directory.
Candidates are packed into swarms (one Dask task per pack, ``resources={"GPU": 1}`` when the
workers declare GPUs); every member is scored on each domain's validation split (fixed
windows, the same for every run), including validation-only domains such as ``target``.
Writes ``runs.parquet`` (one row per run), ``trajectories.parquet`` (every evaluation of every
run: run_id, step, tokens, train_loss, loss.<domain>...; ``--eval-every`` sets how often, the
last one is the runs' row) and ``noise_floor.parquet`` when ``--repeats`` > 1. Each finished
pack's rows are kept in the stage's work dir and its completion marker written after them
(`TaskMarkers`), so a rerun of a killed swarm trains only the unfinished packs. ``--logger``
also logs each proxy's evaluations (csv, TensorBoard or offline W&B under logs/).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from mixlab.cluster import dask_client, gpu_worker_count
from mixlab.console import StepProgress, log
from mixlab.errors import ConfigError, InputError
from mixlab.mixture import LOSS_PREFIX, WEIGHT_PREFIX, Mixture
from mixlab.proxy_models.config import GPTConfig, SwarmConfig, count_params
from mixlab.proxy_models.data import MixtureLoader, check_train_tokens, run_init_seed
from mixlab.proxy_models.loggers import MetricLogger, open_logger, stage_key
from mixlab.proxy_models.results import TRAJECTORIES, final_rows, trajectories_table, trajectory_rows
from mixlab.stage import (
    Inputs,
    Manifest,
    OutDir,
    StageDir,
    TaskMarkers,
    absolute_inputs,
    derive_seed,
    run_stage,
)
from mixlab.tables import check_numeric, read_table, write_table
from mixlab.tokenize.shards import SPLITS, TokenShards

RUNS = "runs.parquet"
NOISE_FLOOR = "noise_floor.parquet"
PACKS = "packs"  # the work dir's finished packs: markers/packs/<task>.json, packs/<task>.parquet
TRAJECTORY_SUFFIX = ".trajectory.parquet"  # beside each pack's rows: packs/<task>.trajectory.parquet


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One proxy to train: its id, its seed, its mixture, and the run it repeats (itself if none)."""

    run_id: str
    seed: int
    weights: dict[str, float]
    repeat_of: str


# --- candidates -> runs -------------------------------------------------------------------


def read_candidates(path: Path | str, tokens: TokenShards) -> tuple[list[RunSpec], list[str]]:
    """Validate candidates against the tokens directory; returns the runs and the mixture domains."""
    make = "make candidates with `mixlab mixtures sample TOKENS --out DIR`"
    table = read_table(path, required=("run_id", "seed"), fix=make)
    weight_cols = [c for c in table.column_names if c.startswith(WEIGHT_PREFIX)]
    if not weight_cols:
        raise InputError(
            f"{path}: no w.<domain> weight columns (found: {', '.join(table.column_names)}); {make}"
        )
    mix_domains = [c.removeprefix(WEIGHT_PREFIX) for c in weight_cols]
    unknown = [d for d in mix_domains if d not in tokens.domains]
    if unknown:
        raise InputError(
            f"{path}: weights name domain(s) {unknown} that {tokens.path} does not have "
            f"(it has: {', '.join(tokens.domains)}); sample candidates from the same tokens directory"
        )
    run_ids = table.column("run_id").cast(pa.string()).to_pylist()
    if len(set(run_ids)) != len(run_ids) or None in run_ids:
        raise InputError(f"{path}: run_id values must be unique and non-null")
    check_numeric(table.schema, [*weight_cols, "seed"], path, "make candidates with `mixlab mixtures sample`")
    w = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in weight_cols]
    )
    bad = np.flatnonzero(
        ~np.isfinite(w).all(axis=1) | (w < 0).any(axis=1) | (np.abs(w.sum(axis=1) - 1) > 1e-6)
    )
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{path}: run {run_ids[i]!r} has weights that are negative or do not sum to 1 "
            f"(sum {w[i].sum():.6g}; {bad.size} such row(s)); weights must be non-negative and sum to one"
        )
    seeds = table.column("seed").to_numpy(zero_copy_only=False).astype(np.int64)
    runs = [
        RunSpec(run_ids[i], int(seeds[i]), {d: float(w[i, j]) for j, d in enumerate(mix_domains)}, run_ids[i])
        for i in range(len(run_ids))
    ]
    return runs, mix_domains


def with_repeats(runs: Sequence[RunSpec], repeats: int, repeat_mixtures: int) -> list[RunSpec]:
    """The runs plus, for the first `repeat_mixtures`, repeats - 1 more seeds of the same mixture."""
    out = list(runs)
    for base in runs[:repeat_mixtures] if repeats > 1 else []:
        for k in range(1, repeats):
            out.append(
                RunSpec(
                    f"{base.run_id}~s{k}",
                    derive_seed(base.seed, "repeat", k, bits=31),
                    base.weights,
                    base.run_id,
                )
            )
    return out


# --- training one pack -----------------------------------------------------------------------


def train_pack(
    runs: Sequence[RunSpec],
    cfg: SwarmConfig,
    tokens_dir: Path | str,
    scored: Sequence[str],
    threads: int = 0,
    *,
    desc: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train one swarm (one member per run) and score it; returns one runs.parquet row per run.

    `desc` shows its progress here; `on_step` gets the steps done (a Dask task reports them).
    """
    return train_pack_with_trajectory(runs, cfg, tokens_dir, scored, threads, desc=desc, on_step=on_step)[0]


def train_pack_with_trajectory(
    runs: Sequence[RunSpec],
    cfg: SwarmConfig,
    tokens_dir: Path | str,
    scored: Sequence[str],
    threads: int = 0,
    *,
    desc: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`train_pack`, and every evaluation of every run: (runs.parquet rows, trajectories.parquet rows)."""
    from mixlab.proxy_models import train

    pack = Pack.start(runs, cfg, tokens_dir, scored, threads)
    metrics = train.train(pack.loop, pack.recipe, cfg.seq_len, desc=desc, on_step=on_step)
    return pack.rows(final_rows(metrics, cfg.steps)), trajectory_rows(metrics)


@dataclasses.dataclass
class Pack:
    """A pack of proxies set up to train as one swarm (swarm packs, and the data experts)."""

    runs: Sequence[RunSpec]
    loop: Any  # train.LMLoop: the packed model, its optimiser and evaluation windows
    recipe: Any  # the swarm's Recipe with this task's threads
    device: Any
    model_cfg: GPTConfig
    loaders: dict[str, MixtureLoader]
    began: float  # perf_counter when the pack was set up

    @classmethod
    def start(
        cls,
        runs: Sequence[RunSpec],
        cfg: SwarmConfig,
        tokens_dir: Path | str,
        scored: Sequence[str],
        threads: int,
    ) -> Pack:
        from mixlab.proxy_models import train

        start = time.perf_counter()
        recipe = dataclasses.replace(cfg.recipe, threads=threads)
        device = train.setup_device(recipe.device, recipe.threads)
        model_cfg = cfg.model_config(TokenShards.open(tokens_dir).vocab_size)
        loaders = {
            r.run_id: MixtureLoader(tokens_dir, r.weights, cfg.seq_len, cfg.batch_size, r.seed, r.run_id)
            for r in runs
        }
        seeds = [run_init_seed(r.seed, r.run_id) for r in runs]
        loop = train.lm_loop(model_cfg, seeds, loaders, recipe, device, tokens_dir, scored)
        return cls(runs, loop, recipe, device, model_cfg, loaders, start)

    def rows(self, final: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """runs.parquet rows from each run's final evaluation; wall time shared over the pack so far."""
        from mixlab.proxy_models import train

        wall_s = (time.perf_counter() - self.began) / len(self.runs)
        name = train.device_name(self.device)
        return [
            _run_row(r, final[r.run_id], self.loaders[r.run_id], self.model_cfg, wall_s, name)
            for r in self.runs
        ]


def task_threads(cfg: SwarmConfig, workers_per_host: Mapping[str, int]) -> int:
    """Threads for a pack on this Dask worker: --threads, or with 0 its worker's share of the host's cores."""
    if cfg.threads:
        return cfg.threads
    from distributed import get_worker

    try:
        host = urlparse(get_worker().address).hostname
    except ValueError:  # not inside a worker (e.g. a synchronous client)
        host = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers_per_host.get(host, 1)))


def _run_row(
    run: RunSpec,
    final: Mapping[str, Any],
    loader: MixtureLoader,
    model_cfg: GPTConfig,
    wall_s: float,
    device: str,
) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": run.run_id, "seed": run.seed, "repeat_of": run.repeat_of}
    row.update({f"w.{d}": w for d, w in run.weights.items()})
    row.update({k: v for k, v in final.items() if k.startswith(LOSS_PREFIX)})
    row["tokens"] = sum(loader.tokens.values())
    row.update({f"tokens.{d}": loader.tokens.get(d, 0) for d in run.weights})
    row.update(
        params=count_params(model_cfg),
        params_nonembedding=count_params(model_cfg, non_embedding=True),
        wall_s=wall_s,
        device=device,
    )
    return row


def train_mixtures(
    tokens_dir: Path | str,
    mixtures: Sequence[Mapping[str, float]],
    cfg: SwarmConfig | None = None,
    seeds: Sequence[int] | None = None,
    run_ids: Sequence[str] | None = None,
    desc: str | None = None,
) -> pa.Table:
    """Train one proxy per mixture in this process and score it: the rows runs.parquet would hold.

    For quick checks from Python (e.g. confirming a regression's ranking at a second model
    size: pass a `SwarmConfig` with other sizes). Mixtures are {domain: weight} summing to 1;
    a run's data and initialisation derive from its seed and run id (default ``mix00000``...).
    `desc` names the packs' progress (None: silent).
    """
    cfg = cfg or SwarmConfig()
    seeds = list(seeds) if seeds is not None else list(range(len(mixtures)))
    run_ids = list(run_ids) if run_ids is not None else [f"mix{i:05d}" for i in range(len(mixtures))]
    if not len(seeds) == len(run_ids) == len(mixtures) or len(set(run_ids)) != len(run_ids):
        raise ConfigError(
            f"train_mixtures: {len(mixtures)} mixtures, {len(seeds)} seeds, {len(run_ids)} run ids "
            f"({len(set(run_ids))} distinct); give one distinct run id and one seed per mixture"
        )
    tokens = TokenShards.open(tokens_dir)
    runs = [
        RunSpec(r, int(s), Mixture.check(m, "mixtures", tokens.domains), r)
        for r, m, s in zip(run_ids, mixtures, seeds)
    ]
    check_train_tokens(tokens, [r.weights for r in runs], cfg.seq_len)
    scored = tokens.scored_domains(cfg.seq_len)
    rows: list[dict[str, Any]] = []
    packs = range(0, len(runs), cfg.pack_size)
    for k, i in enumerate(packs, 1):
        name = f"{desc} (pack {k}/{len(packs)})" if desc and len(packs) > 1 else desc
        rows += train_pack(runs[i : i + cfg.pack_size], cfg, tokens.path, scored, cfg.threads, desc=name)
    return _runs_table(rows)


# --- the stage --------------------------------------------------------------------------------


def _runs_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table with every column present (absent weights are 0, absent token counts 0)."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    fill = {k: 0.0 if k.startswith("w.") else 0 for k in names if k.startswith(("w.", "tokens."))}
    return pa.Table.from_pylist([{**fill, **row} for row in rows])


def _order_columns(table: pa.Table) -> pa.Table:
    first = ["run_id", "seed", "repeat_of"]
    groups = [sorted(c for c in table.column_names if c.startswith(p)) for p in ("w.", "loss.", "tokens.")]
    last = ["tokens", "params", "params_nonembedding", "wall_s", "device"]
    rest = [c for c in table.column_names if c not in first + last and not any(c in g for g in groups)]
    order = first + groups[0] + groups[1] + ["tokens"] + groups[2] + last[1:] + rest
    return table.select([c for c in order if c in table.column_names])


def noise_floor(runs: pa.Table) -> dict[str, float]:
    """Per-domain std of the loss across seeds of the same mixture, averaged over repeated mixtures."""
    df = pl.from_arrow(runs)
    losses = [c for c in df.columns if c.startswith("loss.")]
    groups = df.group_by("repeat_of").agg(pl.len().alias("n"), *[pl.col(c).std(ddof=1) for c in losses])
    groups = groups.filter(pl.col("n") > 1)
    if groups.height == 0:
        return {}
    return {c.removeprefix("loss."): float(groups[c].mean()) for c in losses}


def _packs(runs: Sequence[RunSpec], pack_size: int, min_packs: int) -> list[list[RunSpec]]:
    """Contiguous packs of at most pack_size, at least min_packs of them (to use every worker)."""
    n_packs = max(math.ceil(len(runs) / pack_size), min(min_packs, len(runs)))
    bounds = np.linspace(0, len(runs), n_packs + 1).round().astype(int)
    return [list(runs[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _pack_task(pack: Sequence[RunSpec]) -> str:
    """A pack's name (its marker and, prefixed, its Dask key): from its run ids only."""
    return xxhash.xxh3_64_hexdigest("|".join(r.run_id for r in pack).encode())


def _workers_per_host(client: Any) -> dict[str, int]:
    """Dask workers per host, so a CPU task can take its share of the host's cores."""
    workers = client.scheduler_info().get("workers", {})
    per_host: dict[str, int] = {}
    for address in workers:
        host = urlparse(address).hostname or address
        per_host[host] = per_host.get(host, 0) + 1
    return per_host


def _train_pack_task(
    runs: list[RunSpec],
    cfg: SwarmConfig,
    tokens_dir: str,
    scored: list[str],
    workers_per_host: dict[str, int],
    task: str = "",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A pack on a Dask worker; with --threads 0 it takes its worker's share of the host's cores.

    Returns its runs rows and trajectory rows. Its steps go to the client as `PROGRESS_TOPIC`
    events (see `_pack_progress`).
    """
    threads = task_threads(cfg, workers_per_host)
    return train_pack_with_trajectory(
        runs, cfg, tokens_dir, scored, threads, on_step=_pack_progress(task, cfg.steps)
    )


PROGRESS_TOPIC = "mixlab-swarm-progress"  # a pack's steps done, worker -> client (Dask events)


def _pack_progress(task: str, steps: int, every: float = 1.0) -> Callable[[int], None] | None:
    """On a Dask worker: send `(task, steps done)` to the client at most every `every` seconds.

    Through the scheduler's event log (`log_event` / `subscribe_topic`), so progress reaches
    the user's terminal wherever the workers run; outside a worker, None (no reporting).
    """
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    last = [0.0]

    def report(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every or done == steps:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, {"task": task, "done": done})

    return report


@dataclasses.dataclass(frozen=True)
class SwarmPlan:
    """Everything checked before any training: the runs, what they are scored on, the proxy."""

    tokens: TokenShards
    runs: list[RunSpec]  # candidates, then the repeats
    domains: list[str]  # the mixture domains
    scored: list[str]  # every validation domain (mixture domains and extras such as `target`)
    model: GPTConfig


def plan_swarm(candidates: Path, tokens_dir: Path, cfg: SwarmConfig) -> SwarmPlan:
    tokens = TokenShards.open(tokens_dir)
    runs, mix_domains = read_candidates(candidates, tokens)
    runs = with_repeats(runs, cfg.repeats, cfg.repeat_mixtures)
    check_train_tokens(tokens, [r.weights for r in runs], cfg.seq_len)
    scored = tokens.scored_domains(cfg.seq_len)
    missing_valid = [d for d in mix_domains if d not in scored]
    if missing_valid:
        raise InputError(
            f"{tokens_dir}: domain(s) {missing_valid} have no validation split of at least --seq-len {cfg.seq_len} + 1 "
            f"tokens (splits: {', '.join(SPLITS)}); re-tokenize with a validation split or lower --seq-len"
        )
    return SwarmPlan(tokens, runs, mix_domains, scored, cfg.model_config(tokens.vocab_size))


def run_swarm_train(
    inputs: Inputs, cfg: SwarmConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Train every candidate (plus repeats) as proxies; inputs: {"candidates": file or dir, "tokens": dir}.

    Packs run on `client` (else the Dask cluster `dask_client` finds or starts). A rerun with the
    same config and inputs trains only the packs a killed run had not finished; `force` starts over.
    """
    inputs = absolute_inputs(inputs)
    candidates, tokens_dir = Path(inputs["candidates"]), Path(inputs["tokens"])
    plan = plan_swarm(candidates, tokens_dir, cfg)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        if force:  # --force starts over: no pack of an earlier run is kept
            shutil.rmtree(stage.work, ignore_errors=True)
        markers = TaskMarkers.in_work(stage.work, PACKS)
        finished = {run_id for result in markers.finished().values() for run_id in result["runs"]}
        todo = [r for r in plan.runs if r.run_id not in finished]
        if finished:
            log(f"swarm: {len(finished)} run(s) already finished; training the other {len(todo)}")
        if todo:
            _train_packs(plan, cfg, todo, stage, markers, client)
        table = _collect_runs(plan, stage.work, markers)
        # --- experts (issue 16.2): the one-hot proxies, their rows and token log-probabilities ---
        if cfg.experts:
            from mixlab.proxy_models.experts import train_experts_into  # here: experts.py imports this module

            table = train_experts_into(plan, cfg, stage, table, client)
        # --- end experts ---
        write_table(table, stage.out / RUNS)
        write_table(_collect_trajectories(plan, stage.work, markers), stage.out / TRAJECTORIES)
        floor = noise_floor(table)
        if floor:
            write_table(
                pa.table({"domain": list(floor), "loss_std": list(floor.values())}), stage.out / NOISE_FLOOR
            )
        counts = {"runs": table.num_rows, "tokens": int(sum(table.column("tokens").to_pylist()))}
        stats = {
            "domains": plan.domains,
            "eval_domains": plan.scored,
            "params": count_params(plan.model),
            "params_nonembedding": count_params(plan.model, non_embedding=True),
            "train_tokens_per_run": cfg.train_tokens,
            "noise_floor": floor,
            "device": table.column("device")[0].as_py() if table.num_rows else None,
        }
        return counts, stats

    # Keyed without --logger (it changes no output): an output made without one is still up to date.
    return run_stage(
        "swarm_train",
        stage_key(cfg),
        {"candidates": candidates, "tokens": tokens_dir},
        out_dir,
        body,
        force=force,
    )


def _train_packs(
    plan: SwarmPlan, cfg: SwarmConfig, todo: list[RunSpec], stage: StageDir, markers: TaskMarkers, client: Any
) -> None:
    """Train `todo` in packs on Dask; each finished pack's rows go to the work dir, then its marker."""
    from distributed import as_completed

    work = stage.work
    with dask_client(client) as dask:
        gpus = gpu_worker_count(dask)
        gpu = gpus > 0
        per_host = _workers_per_host(dask)
        # One pack per GPU at least, so every GPU worker has one; packs do not change any run's numbers.
        packs = _packs(todo, cfg.pack_size, gpus if gpu else max(1, sum(per_host.values())))
        log(
            f"swarm: {len(todo)} proxies of {count_params(plan.model, True):,} non-embedding params "
            f"in {len(packs)} pack(s) on {'GPU' if gpu else 'CPU'} workers"
        )
        futures = {}
        steps = _SwarmSteps(packs, cfg)
        metrics = open_logger(cfg.logger, stage.out, "swarm")
        dask.subscribe_topic(PROGRESS_TOPIC, steps.event)
        for pack in packs:
            task = _pack_task(pack)
            future = dask.submit(
                _train_pack_task,
                pack,
                cfg,
                str(plan.tokens.path),
                plan.scored,
                per_host,
                task,
                key=f"swarm-pack-{task}",
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            futures[future] = (task, pack)
        try:
            for finished, future in enumerate(as_completed(futures), start=1):
                task, pack = futures[future]
                rows, trajectory = future.result()
                write_table(_runs_table(rows), work / PACKS / f"{task}.parquet")
                write_table(pa.Table.from_pylist(trajectory), work / PACKS / f"{task}{TRAJECTORY_SUFFIX}")
                markers.mark(task, {"runs": [r.run_id for r in pack]})  # after its rows: a kill loses no run
                steps.event((time.time(), {"task": task, "done": cfg.steps}))
                log(f"swarm: pack of {len(rows)} finished ({finished}/{len(futures)})")
                if metrics is not None:
                    log_pack(metrics, trajectory, offset=(finished - 1) * cfg.steps)
        finally:
            dask.unsubscribe_topic(PROGRESS_TOPIC)
            steps.progress.close()
            if metrics is not None:
                metrics.close()


def log_pack(metrics: MetricLogger, trajectory: Sequence[Mapping[str, Any]], offset: int) -> None:
    """A finished pack's evaluations to --logger: one series per proxy (named by its run id).

    W&B wants steps that only increase, so there the packs lie end to end on its step axis
    (`offset` is the steps of the packs logged before); csv and TensorBoard keep each proxy's step.
    """
    shift = offset if metrics.kind == "wandb" else 0
    rows = sorted(trajectory, key=lambda r: r["step"])  # each evaluation once, every proxy at it
    metrics.log(
        [
            {"model": r["run_id"], **{k: v for k, v in r.items() if k != "run_id"}, "step": r["step"] + shift}
            for r in rows
        ]
    )


class _SwarmSteps:
    """The client's view of every pack's steps (from `PROGRESS_TOPIC` events), as one progress."""

    def __init__(self, packs: Sequence[Sequence[RunSpec]], cfg: SwarmConfig):
        self.size = {_pack_task(p): len(p) for p in packs}
        self.done = dict.fromkeys(self.size, 0)
        self.tokens_per_step = cfg.batch_size * cfg.seq_len  # per proxy
        self.progress = StepProgress("swarm", cfg.steps * len(packs))

    def event(self, event: tuple[float, Mapping[str, Any]]) -> None:
        _, msg = event
        task = msg.get("task")
        if task not in self.done:
            return
        self.done[task] = max(self.done[task], int(msg["done"]))
        tokens = sum(self.done[t] * self.size[t] * self.tokens_per_step for t in self.done)
        self.progress.set(sum(self.done.values()), tokens)


def _collect_trajectories(plan: SwarmPlan, work: Path, markers: TaskMarkers) -> pa.Table:
    """Every finished pack's evaluations, in candidate order then step, as trajectories.parquet's table."""
    tables = [read_table(work / PACKS / f"{task}{TRAJECTORY_SUFFIX}") for task in markers.finished()]
    order = {r.run_id: i for i, r in enumerate(plan.runs)}
    rows = [row for t in tables for row in t.to_pylist()]
    rows.sort(key=lambda r: (order[r["run_id"]], r["step"]))
    return trajectories_table(rows)


def _collect_runs(plan: SwarmPlan, work: Path, markers: TaskMarkers) -> pa.Table:
    """Every finished pack's rows, in candidate order, as runs.parquet's table."""
    rows = [
        row for task in markers.finished() for row in read_table(work / PACKS / f"{task}.parquet").to_pylist()
    ]
    order = {r.run_id: i for i, r in enumerate(plan.runs)}
    rows.sort(key=lambda r: order[r["run_id"]])
    return _order_columns(_runs_table(rows))
