"""The second-scale check: re-train the chosen, natural and uniform mixtures at a larger proxy size.

Reads a tokenize output (the same one the swarm trained on) and the swarm settings recorded
in fit.json; trains with `mixlab.proxy_models.swarm.train_mixtures` and reports whether the
predicted ordering of the three mixtures holds before anyone pays for the full run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.console import log


def larger_proxy(swarm_config: Mapping[str, Any] | None, scale: float) -> Any:
    """The swarm's proxy grown by `scale`: width and training steps (so tokens seen) multiplied.

    The learning rate is divided by the width's growth, as muP prescribes for Adam on hidden
    matrices: at the swarm's rate a twice-wider proxy trains erratically (seed-to-seed spread
    of the target loss about 0.1 nats on the quickstart corpus against 0.03 at rate / 2), and
    the check would then measure noise, not the mixtures.
    """
    from mixlab.proxy_models.config import SwarmConfig

    known = {f.name for f in dataclasses.fields(SwarmConfig)}
    base = SwarmConfig(
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in (swarm_config or {}).items() if k in known}
    )
    step = 2 * base.n_head  # keeps the width divisible by the heads with an even head size
    width = max(step, int(round(base.n_embd * scale / step)) * step)
    steps = max(1, int(round(base.steps * scale)))
    return dataclasses.replace(
        base,
        n_embd=width,
        steps=steps,
        mlp_hidden=None,
        lr=base.lr * base.n_embd / width,
        warmup_steps=min(base.warmup_steps, steps - 1) if steps > 1 else 0,
    )


def compare(chosen: np.ndarray, baseline: np.ndarray) -> dict[str, Any]:
    """How much lower the chosen mixture's measured loss is than a baseline's, against seed noise.

    `gap` > 0 means chosen is better. With two or more seeds each, the gap is called real when
    it exceeds twice its standard error; with one seed there is no noise estimate and the
    verdict rests on the single difference (said so in `verdict`).
    """
    gap = float(baseline.mean() - chosen.mean())
    if min(len(chosen), len(baseline)) < 2:
        return {
            "gap": gap,
            "stderr": None,
            "verdict": ("better" if gap > 0 else "worse") + " (one seed, no noise estimate)",
        }
    stderr = float(np.sqrt(chosen.var(ddof=1) / len(chosen) + baseline.var(ddof=1) / len(baseline)))
    verdict = "better" if gap > 2 * stderr else "worse" if gap < -2 * stderr else "within seed noise"
    return {"gap": gap, "stderr": stderr, "verdict": verdict}


def verify_mixtures(
    tokens: Path,
    mixtures: Mapping[str, Mapping[str, float]],
    predicted: Mapping[str, float],
    target: Mapping[str, float],
    swarm_config: Mapping[str, Any] | None,
    scale: float,
    seeds: int,
) -> dict[str, Any]:
    """Train every mixture `seeds` times at the larger size; measured target loss and the ordering check."""
    from mixlab.proxy_models.model import count_params
    from mixlab.proxy_models.swarm import train_mixtures
    from mixlab.tokenize.shards import tokens_info

    cfg = larger_proxy(swarm_config, scale)
    names = list(mixtures)
    runs = [dict(mixtures[n]) for n in names for _ in range(seeds)]
    log(
        f"mixtures select: verifying {len(names)} mixtures x {seeds} seeds at width {cfg.n_embd}, {cfg.steps} steps"
    )
    table = train_mixtures(tokens, runs, cfg, seeds=[1000 + s for _ in names for s in range(seeds)])
    missing = [t for t in target if f"loss.{t}" not in table.column_names]
    if missing:
        from mixlab.errors import InputError

        raise InputError(
            f"{tokens}: no validation split for target loss(es) {missing}; --verify needs the swarm's tokens"
        )
    loss = sum(c * table.column(f"loss.{t}").to_numpy() for t, c in target.items())
    measured = {n: loss[i * seeds : (i + 1) * seeds] for i, n in enumerate(names)}
    result: dict[str, Any] = {
        "proxy": {
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "steps": cfg.steps,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "params": count_params(cfg.model_config(int(tokens_info(tokens)["vocab_size"]))),
        },
        "scale": scale,
        "seeds": seeds,
        "mixtures": {
            n: {
                "predicted": float(predicted[n]),
                "measured": float(measured[n].mean()),
                "measured_std": float(measured[n].std()) if seeds > 1 else None,
            }
            for n in names
        },
    }
    order_pred = sorted(names, key=lambda n: predicted[n])
    order_meas = sorted(names, key=lambda n: measured[n].mean())
    result["predicted_order"] = order_pred
    result["measured_order"] = order_meas
    result["ordering_holds"] = order_pred == order_meas
    if "chosen" in measured:
        result["comparisons"] = {n: compare(measured["chosen"], measured[n]) for n in names if n != "chosen"}
        result["chosen_beats_baselines"] = all(
            c["verdict"].startswith("better") for c in result["comparisons"].values()
        )
        for n, c in result["comparisons"].items():
            noise = f" +- {c['stderr']:.3f}" if c["stderr"] is not None else ""
            log(
                f"mixtures select: chosen vs {n} at the larger size: {c['gap']:+.4f}{noise} nats lower: {c['verdict']}"
            )
    log(f"mixtures select: at the larger size, measured order {order_meas} (predicted {order_pred})")
    return result


def as_weights(domains: list[str], w: np.ndarray) -> dict[str, float]:
    """Weights as a {domain: weight} summing to one exactly enough for the swarm's check."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    w = w / w.sum()
    return {d: float(x) for d, x in zip(domains, w)}
