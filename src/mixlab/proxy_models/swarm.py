"""`mixlab swarm train`: candidate mixtures -> packs of small GPT proxies -> runs.parquet.

Reads ``candidates.parquet`` (run_id, seed, w.<domain>) and a tokenize output directory.
Candidates are packed into swarms (one Dask task per pack, ``resources={"GPU": 1}`` when the
workers declare GPUs); every member is scored on each domain's validation split (fixed
windows, the same for every run), including validation-only domains such as ``target``.
Writes ``runs.parquet`` (one row per run), ``noise_floor.parquet`` when ``--repeats`` > 1.
Finished packs are kept in the stage's work dir, so a restarted swarm skips finished runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from mixlab.console import log, progress
from mixlab.errors import ConfigError, InputError
from mixlab.proxy_models.config import SwarmConfig
from mixlab.stage import Manifest, StageDir, run_stage
from mixlab.tables import parquet_files, write_table
from mixlab.tokenize.shards import SPLITS, domains, read_token_counts, split_dir, tokens_info

RUNS = "runs.parquet"
NOISE_FLOOR = "noise_floor.parquet"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One proxy to train: its id, its seed, its mixture, and the run it repeats (itself if none)."""

    run_id: str
    seed: int
    weights: dict[str, float]
    repeat_of: str


# --- candidates -> runs -------------------------------------------------------------------


def read_candidates(path: Path | str, tokens_dir: Path | str) -> tuple[list[RunSpec], list[str]]:
    """Validate candidates against the tokens directory; returns the runs and the mixture domains."""
    files = parquet_files(path)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    where = files[0] if len(files) == 1 else path
    missing = [c for c in ("run_id", "seed") if c not in table.column_names]
    weight_cols = [c for c in table.column_names if c.startswith("w.")]
    if missing or not weight_cols:
        raise InputError(
            f"{where}: expected columns run_id, seed, w.<domain> (missing: {missing or 'w.<domain> columns'}); "
            "make candidates with `mixlab mixtures sample TOKENS --out DIR`"
        )
    mix_domains = [c[2:] for c in weight_cols]
    available = set(domains(tokens_dir))
    unknown = [d for d in mix_domains if d not in available]
    if unknown:
        raise InputError(
            f"{where}: weights name domain(s) {unknown} that {tokens_dir} does not have "
            f"(it has: {', '.join(sorted(available))}); sample candidates from the same tokens directory"
        )
    run_ids = table.column("run_id").cast(pa.string()).to_pylist()
    if len(set(run_ids)) != len(run_ids) or None in run_ids:
        raise InputError(f"{where}: run_id values must be unique and non-null")
    w = np.column_stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in weight_cols]
    )
    bad = np.flatnonzero(
        ~np.isfinite(w).all(axis=1) | (w < 0).any(axis=1) | (np.abs(w.sum(axis=1) - 1) > 1e-6)
    )
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{where}: run {run_ids[i]!r} has weights that are negative or do not sum to 1 "
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
            seed = xxhash.xxh3_64_intdigest(f"repeat/{k}".encode(), seed=base.seed) & 0x7FFF_FFFF
            out.append(RunSpec(f"{base.run_id}~s{k}", seed, base.weights, base.run_id))
    return out


def check_train_tokens(tokens_dir: Path | str, runs: Sequence[RunSpec], seq_len: int) -> None:
    """Every domain a run trains on needs at least one train sequence; fails before any training."""
    counts = read_token_counts(tokens_dir).to_pylist()
    train = {r["domain"]: r["tokens"] for r in counts if r["split"] == "train"}
    used = {d for r in runs for d, w in r.weights.items() if w > 0}
    short = {d: train.get(d, 0) for d in sorted(used) if train.get(d, 0) < seq_len + 1}
    if short:
        raise InputError(
            f"{tokens_dir}: domain(s) with fewer train tokens than one sequence of --seq-len {seq_len} + 1: "
            f"{short}; lower --seq-len or give those domains zero weight"
        )


def eval_domains(tokens_dir: Path | str, seq_len: int) -> list[str]:
    """Domains with a validation split long enough to score (mixture domains and extras like `target`)."""
    counts = read_token_counts(tokens_dir).to_pylist()
    return sorted(
        r["domain"]
        for r in counts
        if r["split"] == "valid"
        and r["tokens"] >= seq_len + 1
        and split_dir(tokens_dir, r["domain"], "valid").is_dir()
    )


# --- training one pack -----------------------------------------------------------------------


def pick_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device visible to this worker; use --device auto or cpu")
    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def lr_at(step: int, cfg: SwarmConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio x lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_pack(
    runs: Sequence[RunSpec],
    cfg: SwarmConfig,
    tokens_dir: str,
    scored_domains: Sequence[str],
    threads: int = 0,
) -> list[dict[str, Any]]:
    """Train one swarm (one member per run) and score it; returns one runs.parquet row per run."""
    import torch

    from mixlab.proxy_models.data import MixtureLoader, run_init_seed
    from mixlab.proxy_models.model import GPT, count_params

    start = time.perf_counter()
    device = pick_device(cfg.device)
    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    info = tokens_info(tokens_dir)
    model_cfg = cfg.model_config(int(info["vocab_size"]))
    model = GPT(model_cfg, [run_init_seed(r.seed, r.run_id) for r in runs]).to(device)
    optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay)
    loaders = [
        MixtureLoader(tokens_dir, r.weights, cfg.seq_len, cfg.batch_size, r.seed, r.run_id) for r in runs
    ]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    model.train()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = torch.from_numpy(np.stack([loader.next_batch() for loader in loaders])).to(
            device
        )  # (M, B, T+1)
        with autocast:
            _, loss = model(batch[..., :-1], batch[..., 1:])  # loss: (M,)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        model.clip_grad_norm_per_model(cfg.grad_clip)
        optimizer.step()

    losses = evaluate(model, tokens_dir, scored_domains, cfg, device)  # domain -> (M,)
    wall = time.perf_counter() - start
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    params, params_ne = count_params(model_cfg), count_params(model_cfg, non_embedding=True)
    rows = []
    for m, (run, loader) in enumerate(zip(runs, loaders)):
        row: dict[str, Any] = {"run_id": run.run_id, "seed": run.seed, "repeat_of": run.repeat_of}
        row.update({f"w.{d}": w for d, w in run.weights.items()})
        row.update({f"loss.{d}": float(losses[d][m]) for d in scored_domains})
        row["tokens"] = sum(loader.tokens.values())
        row.update({f"tokens.{d}": loader.tokens.get(d, 0) for d in run.weights})
        row.update(params=params, params_nonembedding=params_ne, wall_s=wall / len(runs), device=device_name)
        rows.append(row)
    return rows


def evaluate(
    model: Any, tokens_dir: str, scored_domains: Sequence[str], cfg: SwarmConfig, device: str
) -> dict:
    """Mean next-token loss of every member on each domain's fixed validation windows: domain -> (M,)."""
    import torch

    from mixlab.proxy_models.data import eval_windows

    model.eval()
    out = {}
    M = model.M
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        for d in scored_domains:
            win = torch.from_numpy(eval_windows(tokens_dir, d, cfg.seq_len, cfg.eval_sequences)).to(device)
            total = torch.zeros(M, device=device)
            for chunk in win.split(cfg.batch_size):  # (b, T+1), the same windows for every member
                batch = chunk.unsqueeze(0).expand(M, -1, -1)  # (M, b, T+1)
                _, loss = model(batch[..., :-1], batch[..., 1:])
                total += loss.float() * chunk.shape[0]
            out[d] = (total / win.shape[0]).cpu().numpy()
    return out


def train_mixtures(
    tokens_dir: Path | str,
    mixtures: Sequence[Mapping[str, float]],
    cfg: SwarmConfig | None = None,
    seeds: Sequence[int] | None = None,
    run_ids: Sequence[str] | None = None,
) -> pa.Table:
    """Train one proxy per mixture in this process and score it: the rows runs.parquet would hold.

    For quick checks from Python (e.g. confirming a regression's ranking at a second model
    size: pass a `SwarmConfig` with other sizes). Mixtures are {domain: weight} summing to 1;
    a run's data and initialisation derive from its seed and run id (default ``mix00000``...).
    """
    from mixlab.config import check_weights

    cfg = cfg or SwarmConfig()
    seeds = list(seeds) if seeds is not None else list(range(len(mixtures)))
    run_ids = list(run_ids) if run_ids is not None else [f"mix{i:05d}" for i in range(len(mixtures))]
    if not len(seeds) == len(run_ids) == len(mixtures):
        raise ConfigError(
            f"train_mixtures: {len(mixtures)} mixtures, {len(seeds)} seeds, {len(run_ids)} run ids"
        )
    for mix in mixtures:
        check_weights(mix, "mixtures")
    runs = [RunSpec(r, int(s), dict(m), r) for r, m, s in zip(run_ids, mixtures, seeds)]
    check_train_tokens(tokens_dir, runs, cfg.seq_len)
    scored = eval_domains(tokens_dir, cfg.seq_len)
    rows: list[dict[str, Any]] = []
    for i in range(0, len(runs), cfg.pack_size):
        rows += train_pack(runs[i : i + cfg.pack_size], cfg, str(tokens_dir), scored, cfg.threads)
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
    import polars as pl

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


def _workers_per_host(client: Any) -> dict[str, int]:
    """Dask workers per host, so a CPU task can take its share of the host's cores."""
    from urllib.parse import urlparse

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
) -> list[dict[str, Any]]:
    threads = cfg.threads
    if threads == 0:
        from urllib.parse import urlparse

        from distributed import get_worker

        try:
            host = urlparse(get_worker().address).hostname
        except ValueError:  # not inside a worker (e.g. a synchronous client)
            host = None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(1, workers_per_host.get(host, 1)))
    return train_pack(runs, cfg, tokens_dir, scored, threads)


def run_swarm(
    inputs: Mapping[str, Path | str],
    cfg: SwarmConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
    scheduler_address: str | None = None,
) -> Manifest:
    """Train every candidate (plus repeats) as proxies; inputs: {"candidates": path, "tokens": dir}."""
    candidates, tokens_dir = Path(inputs["candidates"]), Path(inputs["tokens"])
    # Everything that can be wrong with the inputs is checked before any training starts.
    info = tokens_info(tokens_dir)
    runs, mix_domains = read_candidates(candidates, tokens_dir)
    runs = with_repeats(runs, cfg.repeats, cfg.repeat_mixtures)
    check_train_tokens(tokens_dir, runs, cfg.seq_len)
    scored = eval_domains(tokens_dir, cfg.seq_len)
    missing_valid = [d for d in mix_domains if d not in scored]
    if missing_valid:
        raise InputError(
            f"{tokens_dir}: domain(s) {missing_valid} have no validation split of at least --seq-len {cfg.seq_len} + 1 "
            f"tokens (splits: {', '.join(SPLITS)}); re-tokenize with a validation split or lower --seq-len"
        )
    model_cfg = cfg.model_config(int(info["vocab_size"]))

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        from distributed import as_completed

        from mixlab.cluster import dask_client, has_gpu_workers
        from mixlab.proxy_models.model import count_params

        done_files = sorted(stage.work.glob("pack_*.parquet"))
        finished = {
            rid for f in done_files for rid in pq.read_table(f, columns=["run_id"]).column(0).to_pylist()
        }
        todo = [r for r in runs if r.run_id not in finished]
        if finished:
            log(f"swarm: {len(finished)} run(s) already finished; training the other {len(todo)}")
        if todo:
            with dask_client(client, scheduler_address) as dask:
                gpu = has_gpu_workers(dask)
                per_host = _workers_per_host(dask)
                n_workers = max(1, sum(per_host.values()))
                packs = _packs(todo, cfg.pack_size, 1 if gpu else n_workers)
                log(
                    f"swarm: {len(todo)} proxies of {count_params(model_cfg, True):,} non-embedding params "
                    f"in {len(packs)} pack(s) on {'GPU' if gpu else 'CPU'} workers"
                )
                futures = {}
                for pack in packs:
                    key = "swarm-pack-" + xxhash.xxh3_64_hexdigest("|".join(r.run_id for r in pack).encode())
                    future = dask.submit(
                        _train_pack_task,
                        pack,
                        cfg,
                        str(tokens_dir),
                        scored,
                        per_host,
                        key=key,
                        pure=False,
                        resources={"GPU": 1} if gpu else None,
                    )
                    futures[future] = key
                for future in progress(as_completed(futures), len(futures), "swarm packs", "pack"):
                    rows = future.result()
                    # One file per finished pack: a restart reads these and skips their runs.
                    write_table(_runs_table(rows), stage.work / f"pack_{futures[future]}.parquet")
                    log(
                        f"swarm: pack of {len(rows)} finished ({sum(f.done() for f in futures)}/{len(futures)})"
                    )
        tables = [pq.read_table(f) for f in sorted(stage.work.glob("pack_*.parquet"))]
        rows = [row for t in tables for row in t.to_pylist()]
        order = {r.run_id: i for i, r in enumerate(runs)}
        rows.sort(key=lambda r: order[r["run_id"]])
        table = _order_columns(_runs_table(rows))
        write_table(table, stage.out / RUNS)
        floor = noise_floor(table)
        if floor:
            write_table(
                pa.table({"domain": list(floor), "loss_std": list(floor.values())}), stage.out / NOISE_FLOOR
            )
        counts = {"runs": table.num_rows, "tokens": int(sum(table.column("tokens").to_pylist()))}
        stats = {
            "domains": mix_domains,
            "eval_domains": scored,
            "params": count_params(model_cfg),
            "params_nonembedding": count_params(model_cfg, non_embedding=True),
            "train_tokens_per_run": cfg.train_tokens,
            "noise_floor": floor,
            "device": table.column("device")[0].as_py() if table.num_rows else None,
        }
        return counts, stats

    return run_stage(
        "swarm", cfg, {"candidates": candidates, "tokens": tokens_dir}, out_dir, body, force=force
    )
