"""The second-scale check: re-train the chosen, natural and uniform mixtures at a larger proxy size.

Reads a tokenize output (the same one the swarm trained on) and the swarm settings recorded
in fit.json; trains with `mixlab.proxy_models.swarm.train_mixtures` and reports whether the
predicted ordering of the three mixtures holds before anyone pays for the full run. It is
the `--verify` hook of `mixtures select` (bound in the stage registry, so mixtures/ never
imports proxy_models/).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.console import log
from mixlab.errors import InputError
from mixlab.mixture import LOSS_PREFIX, Target
from mixlab.proxy_models.config import SwarmConfig
from mixlab.proxy_models.swarm import train_mixtures


def larger_proxy(swarm_config: Mapping[str, Any] | None, scale: float) -> SwarmConfig:
    """The swarm's proxy grown by `scale`: width and training steps (so tokens seen) multiplied.

    The learning rate is divided by the width's growth, as muP prescribes for Adam on hidden
    matrices: at the swarm's rate a twice-wider proxy trains erratically (seed-to-seed spread
    of the target loss about 0.1 nats on the quickstart corpus against 0.03 at rate / 2), and
    the check would then measure noise, not the mixtures.
    """
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
    target: Target,
    swarm_config: Mapping[str, Any] | None,
    scale: float,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Train every mixture once per seed at the larger size; measured target loss and the ordering check.

    Returns the record mixture.json keeps under ``verification``.
    """
    cfg = larger_proxy(swarm_config, scale)
    names, n = list(mixtures), len(seeds)
    log(
        f"mixtures select: verifying {len(names)} mixtures x {n} seeds at width {cfg.n_embd}, {cfg.steps} steps"
    )
    runs = [dict(mixtures[name]) for name in names for _ in seeds]
    table = train_mixtures(tokens, runs, cfg, seeds=[s for _ in names for s in seeds], desc="verify")
    missing = [t for t in target.terms if f"{LOSS_PREFIX}{t}" not in table.column_names]
    if missing:
        raise InputError(
            f"{tokens}: no validation split for target loss(es) {missing}; --verify needs the swarm's tokens"
        )
    losses = {c: table.column(c).to_numpy() for c in table.column_names if c.startswith(LOSS_PREFIX)}
    loss = target.loss_columns(losses)
    measured = {name: loss[i * n : (i + 1) * n] for i, name in enumerate(names)}
    result: dict[str, Any] = {
        "proxy": {
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "steps": cfg.steps,
            "seq_len": cfg.seq_len,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "params": table.column("params")[0].as_py(),
        },
        "scale": scale,
        "seeds": n,
        "mixtures": {
            name: {
                "predicted": float(predicted[name]),
                "measured": float(measured[name].mean()),
                "measured_std": float(measured[name].std()) if n > 1 else None,
            }
            for name in names
        },
    }
    result.update(_orderings(names, predicted, measured))
    return result


def _orderings(
    names: list[str], predicted: Mapping[str, float], measured: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Whether the measured order is the predicted one, and the chosen mixture against each other."""
    order_pred = sorted(names, key=lambda name: predicted[name])
    order_meas = sorted(names, key=lambda name: measured[name].mean())
    out: dict[str, Any] = {
        "predicted_order": order_pred,
        "measured_order": order_meas,
        "ordering_holds": order_pred == order_meas,
    }
    if "chosen" in measured:
        out["comparisons"] = {
            name: compare(measured["chosen"], measured[name]) for name in names if name != "chosen"
        }
        out["chosen_beats_baselines"] = all(
            c["verdict"].startswith("better") for c in out["comparisons"].values()
        )
        for name, c in out["comparisons"].items():
            noise = f" ± {c['stderr']:.3f}" if c["stderr"] is not None else ""
            log(
                f"mixtures select: chosen vs {name} at the larger size: {c['gap']:+.4f}{noise} nats lower: "
                f"{c['verdict']}"
            )
    log(
        f"mixtures select: at the larger size, measured order {' < '.join(order_meas)} "
        f"(predicted {' < '.join(order_pred)})"
    )
    return out
