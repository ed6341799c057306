"""`swarm train --experts`: one proxy per domain (the one-hot mixtures), and its token log-probabilities.

The experts are trained beside the swarm with the same model and recipe (one pack, one Dask
task) and scored like every run; their rows (run ids ``expert.<domain>``) join runs.parquet.
Each expert's log-probability of every predicted token of every validation domain's fixed
windows goes to ``OUT/experts/<validation domain>.parquet`` (format and the mixture feature
built from it: `mixlab.mixtures.experts`). A finished expert pack is marked in the work dir, so
a killed swarm does not train it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.cluster import dask_client, gpu_worker_count
from mixlab.console import log
from mixlab.mixtures.experts import EXPERT_PREFIX, EXPERTS_DIR, write_logprobs
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.data import eval_windows
from mixlab.proxy_models.results import final_rows
from mixlab.proxy_models.swarm import (
    Pack,
    RunSpec,
    _order_columns,
    _runs_table,
    _workers_per_host,
    task_threads,
)
from mixlab.stage import StageDir, TaskMarkers, derive_seed
from mixlab.tables import read_table, write_table

MARKERS = "experts"
ROWS = "experts_runs.parquet"  # in the work dir until the swarm's runs.parquet takes them


def expert_runs(domains: Sequence[str]) -> list[RunSpec]:
    """The one-hot mixtures as runs: ``expert.<domain>``, each seed derived from its run id only."""
    return [
        RunSpec(
            f"{EXPERT_PREFIX}{d}",
            derive_seed(0, "expert", d, bits=31),
            {e: 1.0 if e == d else 0.0 for e in domains},
            f"{EXPERT_PREFIX}{d}",
        )
        for d in domains
    ]


def token_logprobs(
    model: Any,
    tokens_dir: Path | str,
    domains: Sequence[str],
    seq_len: int,
    eval_sequences: int,
    batch: int,
    device: str,
) -> dict[str, np.ndarray]:
    """Every member's log-probability of each predicted token of each domain's fixed validation
    windows: domain -> (M, windows x seq_len), in window order (the windows `train.evaluate` uses)."""
    import torch
    import torch.nn.functional as F

    from mixlab.proxy_models.train import autocast

    model.eval()
    out = {}
    M = model.M
    with torch.no_grad(), autocast(device):
        for d in domains:
            win = torch.from_numpy(eval_windows(tokens_dir, d, seq_len, eval_sequences)).to(device)
            parts = []
            for chunk in win.split(batch):  # (b, T+1), the same windows for every member
                ids = chunk.unsqueeze(0).expand(M, -1, -1)  # (M, b, T+1)
                logits, _ = model(ids[..., :-1])  # (M, b, T, V)
                logp = F.log_softmax(logits.float(), dim=-1)
                picked = logp.gather(-1, ids[..., 1:].unsqueeze(-1)).squeeze(-1)  # (M, b, T)
                parts.append(picked.reshape(M, -1))
            out[d] = torch.cat(parts, dim=1).double().cpu().numpy()
    return out


def train_experts(
    runs: Sequence[RunSpec], cfg: SwarmConfig, tokens_dir: Path | str, scored: Sequence[str], threads: int = 0
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train the experts as one swarm; their runs.parquet rows and log-probabilities (E, N) per domain."""
    from mixlab.proxy_models import train

    pack = Pack.start(runs, cfg, tokens_dir, scored, threads)
    final = final_rows(train.train(pack.loop, pack.recipe, cfg.seq_len), cfg.steps)
    logp = token_logprobs(
        pack.loop.model, tokens_dir, scored, cfg.seq_len, cfg.eval_sequences, cfg.batch_size, pack.device
    )
    return pack.rows(final), logp


def _experts_task(
    runs: list[RunSpec],
    cfg: SwarmConfig,
    tokens_dir: str,
    scored: list[str],
    workers_per_host: dict[str, int],
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The experts on a Dask worker, with its share of the host's cores when --threads is 0 (as a pack)."""
    return train_experts(runs, cfg, tokens_dir, scored, task_threads(cfg, workers_per_host))


def train_experts_into(
    plan: Any, cfg: SwarmConfig, stage: StageDir, table: pa.Table, client: Any
) -> pa.Table:
    """The swarm's runs table with the experts' rows added; their log-probabilities in OUT/experts/.

    `plan` is the swarm's `SwarmPlan`. Trained once: a rerun after a kill finds the marker.
    """
    markers = TaskMarkers.in_work(stage.work, MARKERS)
    if markers.get(MARKERS) is None:
        runs = expert_runs(plan.domains)
        with dask_client(client) as dask:
            gpu = gpu_worker_count(dask) > 0
            log(f"swarm: {len(runs)} data experts (one per domain) in one pack on {'GPU' if gpu else 'CPU'}")
            future = dask.submit(
                _experts_task,
                runs,
                cfg,
                str(plan.tokens.path),
                list(plan.scored),
                _workers_per_host(dask),
                key=f"swarm-experts-{len(runs)}",
                pure=False,
                resources={"GPU": 1} if gpu else None,
            )
            rows, logp = future.result()
        write_logprobs(stage.out / EXPERTS_DIR, list(plan.domains), logp, cfg.seq_len)
        write_table(_runs_table(rows), stage.work / ROWS)
        markers.mark(MARKERS, {"runs": [r["run_id"] for r in rows]})  # after its files: a kill loses nothing
        log("swarm: data experts finished")
    experts = read_table(stage.work / ROWS)
    merged = pa.concat_tables([table, experts.select(table.column_names)], promote_options="default")
    return _order_columns(merged)
