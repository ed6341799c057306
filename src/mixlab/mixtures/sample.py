"""`mixlab mixtures sample`: candidate mixtures around the token prior, RegMix style.

Reads ``token_counts.parquet`` of a tokenize output (train split: the prior) and writes
``candidates.parquet`` (run_id, seed, kind, spread, w.<domain>): the natural and uniform
mixtures, then Dirichlet draws whose concentration is the prior raised to a power and
scaled by a spread from log-spaced values; small weights floored to zero, a per-domain
repetition cap, near-identical candidates dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.mixtures.config import SampleConfig
from mixlab.stage import Manifest, StageDir, run_stage
from mixlab.tables import write_table
from mixlab.tokenize.shards import read_token_counts

CANDIDATES = "candidates.parquet"


def train_prior(tokens_dir: Path | str, cfg: SampleConfig) -> dict[str, int]:
    """Train tokens per mixable domain, from token_counts.parquet."""
    counts = read_token_counts(tokens_dir).to_pylist()
    train: dict[str, int] = {}
    for r in counts:
        if r["split"] == "train":
            train[r["domain"]] = train.get(r["domain"], 0) + int(r["tokens"])
    if cfg.domains:
        unknown = [d for d in cfg.domains if d not in train]
        if unknown:
            raise ConfigError(
                f"--domains: {unknown} have no train tokens in {tokens_dir} (found: {sorted(train)})"
            )
        train = {d: train[d] for d in cfg.domains}
    prior = {d: n for d, n in sorted(train.items()) if n > 0 and d not in cfg.holdout_domains}
    if len(prior) < 2:
        raise InputError(
            f"{tokens_dir}: need at least two domains with train tokens to mix, found {sorted(prior)}"
        )
    return prior


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


def sample_candidates(prior_tokens: Mapping[str, int], cfg: SampleConfig, proxy_tokens: int) -> pa.Table:
    """The candidate table: natural, uniform, then distinct Dirichlet draws (deterministic given the seed)."""
    names = list(prior_tokens)
    D = len(names)
    tokens = np.array([prior_tokens[d] for d in names], dtype=np.float64)
    prior = tokens / tokens.sum()
    cap = np.minimum(1.0, tokens * cfg.max_epochs / proxy_tokens)  # (D,)
    if cap.sum() < 1 - 1e-9:
        raise ConfigError(
            f"--max-epochs {cfg.max_epochs}: the corpus ({int(tokens.sum()):,} train tokens) cannot fill one proxy's "
            f"{proxy_tokens:,} tokens without repeating data more often; raise --max-epochs, lower --proxy-tokens "
            "or the swarm's steps / batch size, or add data"
        )
    alpha = prior**cfg.prior_power
    alpha = alpha / alpha.sum()  # (D,)
    levels = np.logspace(np.log10(cfg.spread_min), np.log10(cfg.spread_max), cfg.spread_levels)

    rows: list[tuple[str, float, np.ndarray]] = []
    for kind, w in (("natural", prior), ("uniform", np.full(D, 1.0 / D))):
        capped = cap_weights(w, cap)
        rows.append((kind, float("nan"), capped / capped.sum()))  # cap_weights succeeds: cap.sum() >= 1

    rng = np.random.default_rng(xxhash.xxh3_64_intdigest(b"mixtures/sample", seed=cfg.seed))
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
    if len(rows) < cfg.candidates:
        log(
            f"mixtures sample: only {len(rows)} distinct candidates found (asked for {cfg.candidates}); "
            "lower --min-distance for more"
        )

    run_ids = [f"r{i:05d}" for i in range(len(rows))]
    columns: dict[str, Any] = {
        "run_id": pa.array(run_ids, pa.string()),
        "seed": pa.array(
            [xxhash.xxh3_64_intdigest(r.encode(), seed=cfg.seed) & 0x7FFF_FFFF for r in run_ids], pa.int64()
        ),
        "kind": pa.array([k for k, _, _ in rows], pa.string()),
        "spread": pa.array([s for _, s, _ in rows], pa.float64()),
    }
    weights = np.stack([w for _, _, w in rows])
    for j, d in enumerate(names):
        columns[f"w.{d}"] = pa.array(weights[:, j], pa.float64())
    return pa.table(columns)


def run_sample(
    inputs: Mapping[str, Path | str] | Path | str,
    cfg: SampleConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
) -> Manifest:
    """Write candidates.parquet for the tokens directory `inputs` (or {"tokens": dir})."""
    tokens_dir = Path(inputs["tokens"] if isinstance(inputs, Mapping) else inputs)
    prior_tokens = train_prior(tokens_dir, cfg)
    if cfg.proxy_tokens:
        proxy_tokens = cfg.proxy_tokens
    else:
        from mixlab.proxy_models.config import SwarmConfig

        proxy_tokens = SwarmConfig().train_tokens

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        table = sample_candidates(prior_tokens, cfg, proxy_tokens)
        write_table(table, stage.out / CANDIDATES)
        total = sum(prior_tokens.values())
        stats = {
            "domains": list(prior_tokens),
            "prior": {d: n / total for d, n in prior_tokens.items()},
            "proxy_tokens": proxy_tokens,
            "cap": {d: min(1.0, n * cfg.max_epochs / proxy_tokens) for d, n in prior_tokens.items()},
        }
        return {"candidates": table.num_rows}, stats

    return run_stage("mixtures-sample", cfg, {"tokens": tokens_dir}, out_dir, body, force=force)
