"""`mixlab mixtures sample`: candidate mixtures around the token prior, RegMix style.

Reads a tokenize output's train token counts (the prior) and writes ``candidates.parquet``
(run_id, seed, kind, spread, w.<domain>): the natural and uniform mixtures, then Dirichlet
draws whose concentration is the prior raised to a power and scaled by a spread from
log-spaced values; small weights floored to zero, a per-domain repetition cap against the
swarm's proxy tokens (``--proxy-tokens``), near-identical candidates dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.mixtures.config import SampleConfig
from mixlab.stage import (
    Inputs,
    Manifest,
    OutDir,
    StageDir,
    absolute_inputs,
    derive_rng,
    derive_seed,
    run_stage,
)
from mixlab.tables import write_table
from mixlab.tokenize.shards import TOKEN_COUNTS, TokenShards

CANDIDATES = "candidates.parquet"


def open_tokens(path: Path) -> TokenShards:
    """The tokenize output at `path`, opened once; a folder without token counts is named as not one."""
    if path.is_dir() and not (path / TOKEN_COUNTS).is_file():
        raise InputError(f"{path}: no {TOKEN_COUNTS}; pass the output directory of `mixlab tokenize`")
    return TokenShards.open(path)


def train_prior(shards: TokenShards, cfg: SampleConfig) -> dict[str, int]:
    """Train tokens per mixable domain (sorted by name), from the tokenize output's counts."""
    train = shards.tokens("train")
    if cfg.domains:
        unknown = [d for d in cfg.domains if d not in train]
        if unknown:
            raise ConfigError(
                f"--domains: {unknown} have no train tokens in {shards.path} (found: {sorted(train)})"
            )
        train = {d: train[d] for d in cfg.domains}
    prior = {d: n for d, n in sorted(train.items()) if n > 0 and d not in cfg.holdout_domains}
    if len(prior) < 2:
        raise InputError(
            f"{shards.path}: need at least two domains with train tokens to mix, found {sorted(prior)}"
        )
    return prior


def repetition_cap(tokens: np.ndarray, cfg: SampleConfig) -> np.ndarray:
    """(D,) the largest weight each domain may take within one proxy's --proxy-tokens (0: no cap)."""
    if not cfg.proxy_tokens:
        return np.ones(len(tokens))
    cap = np.minimum(1.0, tokens * cfg.max_epochs / cfg.proxy_tokens)
    if cap.sum() < 1 - 1e-9:
        raise ConfigError(
            f"--max-epochs {cfg.max_epochs}: the corpus ({int(tokens.sum()):,} train tokens) cannot fill one proxy's "
            f"{cfg.proxy_tokens:,} tokens without repeating data more often; raise --max-epochs, lower --proxy-tokens "
            "or the swarm's steps / batch size, or add data"
        )
    return cap


def cap_weights(w: np.ndarray, cap: np.ndarray) -> np.ndarray | None:
    """Clip weights to per-domain caps, handing the excess to domains with room (None if impossible)."""
    w = w.copy()
    for _ in range(len(w) + 1):
        over = w > cap
        if not over.any():
            return w
        excess = float((w[over] - cap[over]).sum())
        w[over] = cap[over]
        room = np.where(w < cap, cap - w, 0.0)
        if room.sum() < excess - 1e-12:
            return None
        # Prefer domains already in the mixture (keeps sparse draws sparse), else any with room.
        share = np.where(room > 0, w, 0.0)
        if share.sum() <= 0:
            share = room
        w = w + excess * share / share.sum()
    return w if (w <= cap + 1e-12).all() else None


Row = tuple[str, float, np.ndarray]  # (kind, spread, weights)


def sample_candidates(prior_tokens: Mapping[str, int], cfg: SampleConfig) -> pa.Table:
    """The candidate table: natural, uniform, then distinct Dirichlet draws (deterministic given the seed)."""
    names = list(prior_tokens)
    D = len(names)
    tokens = np.array([prior_tokens[d] for d in names], dtype=np.float64)
    prior = tokens / tokens.sum()
    cap = repetition_cap(tokens, cfg)  # (D,)
    rows: list[Row] = []
    for kind, w in (("natural", prior), ("uniform", np.full(D, 1.0 / D))):
        capped = cap_weights(w, cap)
        rows.append((kind, float("nan"), capped / capped.sum()))  # cap_weights succeeds: cap.sum() >= 1
    rows = draw_dirichlet(rows, prior, cap, cfg)
    if len(rows) < cfg.candidates:
        log(
            f"mixtures sample: only {len(rows)} distinct candidates found (asked for {cfg.candidates}); "
            "lower --min-distance for more"
        )
    return candidates_table(names, rows, cfg.seed)


def draw_dirichlet(rows: list[Row], prior: np.ndarray, cap: np.ndarray, cfg: SampleConfig) -> list[Row]:
    """`rows` extended by distinct capped Dirichlet draws up to --candidates (or 200 tries per candidate)."""
    alpha = prior**cfg.prior_power
    alpha = alpha / alpha.sum()  # (D,)
    levels = np.logspace(np.log10(cfg.spread_min), np.log10(cfg.spread_max), cfg.spread_levels)
    rows = list(rows)
    rng = derive_rng(cfg.seed, "mixtures", "sample")
    accepted = np.stack([w for _, _, w in rows])  # (n, D)
    attempts = 0
    while len(rows) < cfg.candidates and attempts < 200 * cfg.candidates:
        K = 4 * cfg.candidates
        attempts += K
        spreads = rng.choice(levels, size=K)  # (K,)
        # Dirichlet via normalised Gamma draws: tiny concentrations may underflow to all-zero rows.
        g = rng.gamma(alpha[None, :] * spreads[:, None])  # (K, D)
        for k in range(K):  # sequential: each draw is checked against those accepted before it
            total = g[k].sum()
            if not np.isfinite(total) or total <= 0:
                continue
            w = g[k] / total
            w[w < cfg.min_weight] = 0.0
            if w.sum() <= 0:
                continue
            w = cap_weights(w / w.sum(), cap)
            if w is None:
                continue
            w = w / w.sum()
            if np.abs(accepted - w).sum(axis=1).min() < cfg.min_distance:
                continue
            rows.append(("dirichlet", float(spreads[k]), w))
            accepted = np.vstack([accepted, w])
            if len(rows) == cfg.candidates:
                break
    return rows


def candidates_table(names: list[str], rows: list[Row], seed: int) -> pa.Table:
    """run_id, seed (derived from the global seed and the run_id), kind, spread, w.<domain>."""
    run_ids = [f"r{i:05d}" for i in range(len(rows))]
    columns: dict[str, Any] = {
        "run_id": pa.array(run_ids, pa.string()),
        "seed": pa.array([derive_seed(seed, r, bits=31) for r in run_ids], pa.int64()),
        "kind": pa.array([k for k, _, _ in rows], pa.string()),
        "spread": pa.array([s for _, s, _ in rows], pa.float64()),
    }
    weights = np.stack([w for _, _, w in rows])
    for j, d in enumerate(names):
        columns[f"w.{d}"] = pa.array(weights[:, j], pa.float64())
    return pa.table(columns)


def run_mixtures_sample(
    inputs: Inputs, cfg: SampleConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Write candidates.parquet for the tokenize output `inputs["tokens"]` (small: no Dask client used)."""
    inputs = absolute_inputs(inputs)
    shards = open_tokens(inputs["tokens"])
    prior_tokens = train_prior(shards, cfg)
    if not cfg.proxy_tokens:
        log("mixtures sample: --proxy-tokens 0: no repetition cap (pass the swarm's steps x batch x seq_len)")

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        table = sample_candidates(prior_tokens, cfg)
        write_table(table, stage.out / CANDIDATES)
        total = sum(prior_tokens.values())
        stats = {
            "domains": list(prior_tokens),
            "prior": {d: n / total for d, n in prior_tokens.items()},
            "proxy_tokens": cfg.proxy_tokens,
            # None: no repetition cap, because the proxies' token budget was not given (--proxy-tokens 0)
            "cap": {d: min(1.0, n * cfg.max_epochs / cfg.proxy_tokens) for d, n in prior_tokens.items()}
            if cfg.proxy_tokens
            else None,
        }
        return {"candidates": table.num_rows}, stats

    return run_stage("mixtures_sample", cfg, {"tokens": shards.path}, out_dir, body, force=force)
