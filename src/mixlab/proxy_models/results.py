"""What `pretrain` and `distill` write about the models they trained (torch-free).

``trajectories.parquet`` (swarm): one row per proxy per evaluation (run_id, step, tokens,
train_loss, loss.<domain>...). ``metrics.parquet``: one row per model per evaluation (step, model, tokens, lr, train_loss,
loss.<domain>..., target). ``comparison.json`` / ``comparison.parquet``: every model's target
and per-domain losses at equal tokens and each one's gap to the reference model; the report
reads its keys (target, tokens, reference, models, gap_vs_reference, best, noise_floor,
summary, and beats_all_by_more_than_noise when a noise floor is known). And the training
facts kept in each model directory's ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from mixlab.console import log
from mixlab.mixture import LOSS_PREFIX, Target
from mixlab.stage import write_json
from mixlab.tables import write_table
from mixlab.tokenize.shards import TOKENIZER_DIR, TokenShards

METRICS = "metrics.parquet"
COMPARISON = "comparison.parquet"
COMPARISON_JSON = "comparison.json"
METRIC_COLUMNS = ("step", "model", "tokens", "lr", "train_loss")
TRAJECTORIES = "trajectories.parquet"
TRAJECTORY_COLUMNS = ("run_id", "step", "tokens", "train_loss")


def metrics_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows in one fixed column order, whether they came from this process or a checkpoint."""
    losses = sorted({k for row in rows for k in row if k.startswith(LOSS_PREFIX)})
    columns = [*METRIC_COLUMNS, *losses, *(["target"] if rows and "target" in rows[0] else [])]
    return pa.table({c: [row[c] for row in rows] for c in columns})


def trajectory_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training loop's metrics rows as trajectory rows: the model is the run, the losses kept."""
    return [
        {
            "run_id": r["model"],
            "step": int(r["step"]),
            "tokens": int(r["tokens"]),
            "train_loss": float(r["train_loss"]),
            **{k: v for k, v in r.items() if k.startswith(LOSS_PREFIX)},
        }
        for r in rows
    ]


def trajectories_table(rows: list[dict[str, Any]]) -> pa.Table:
    """trajectories.parquet's table: fixed columns first, then the losses by name."""
    losses = sorted({k for row in rows for k in row if k.startswith(LOSS_PREFIX)})
    types = {"run_id": pa.string(), "step": pa.int64(), "tokens": pa.int64(), "train_loss": pa.float64()}
    columns = {c: pa.array([row[c] for row in rows], types[c]) for c in TRAJECTORY_COLUMNS}
    columns.update({c: pa.array([row.get(c) for row in rows], pa.float64()) for c in losses})
    return pa.table(columns)


def final_rows(rows: list[dict[str, Any]], steps: int) -> dict[str, dict[str, Any]]:
    """Each model's row at the last step."""
    return {r["model"]: r for r in rows if r["step"] == steps}


def val_losses(row: Mapping[str, Any]) -> dict[str, float]:
    return {k.removeprefix(LOSS_PREFIX): v for k, v in row.items() if k.startswith(LOSS_PREFIX)}


def tokenizer_source(tokens: TokenShards) -> Path | None:
    path = tokens.path / TOKENIZER_DIR
    return path if path.is_dir() else None


def training_target(
    spec: str | None, recorded: Any, domains: list[str], scored: list[str], where: str
) -> Target:
    """The target models are scored by: --target, else the one recorded with the mixture, else the mean."""
    if spec:
        return Target.parse(spec, domains, scored)
    if recorded:
        return Target.from_record(recorded, scored, where)
    return Target.parse("mean", domains, scored)


def model_facts(
    stage: str,
    row: Mapping[str, Any],
    mixture: Mapping[str, float],
    target: Target,
    tokens: int,
    **extra: Any,
) -> dict[str, Any]:
    """The training facts a model directory's config.json keeps beside its GPTConfig."""
    return {
        "stage": stage,
        **extra,
        "mixture": dict(mixture),
        "target": target.to_record(),
        "tokens": tokens,
        "target_loss": row["target"],
        "val_losses": val_losses(row),
    }


def compare(
    final: Mapping[str, Mapping[str, Any]],
    mixtures: Mapping[str, Mapping[str, float]],
    target: Target,
    tokens: int,
    noise: float | None,
    reference: str,
) -> dict[str, Any]:
    """Target and per-domain losses of every model at equal tokens, and each one's gap to `reference`."""
    rows, models = [], {}
    for name, row in final.items():
        losses = val_losses(row)
        weights = mixtures.get(name, {})
        rows.append(
            {
                "model": name,
                **{f"w.{d}": w for d, w in weights.items()},
                "tokens": tokens,
                "target": row["target"],
                **{f"loss.{d}": v for d, v in losses.items()},
            }
        )
        models[name] = {"weights": dict(weights), "target": row["target"], "losses": losses}
    ref = models[reference]["target"]
    gaps = {n: m["target"] - ref for n, m in models.items() if n != reference}
    summary = [f"{reference} target loss {ref:.4f}"] + [
        f"{n}: {models[n]['target']:.4f} ({'+' if g >= 0 else ''}{g:.4f} vs {reference})"
        for n, g in gaps.items()
    ]
    out = {
        "target": target.to_record(),
        "tokens": tokens,
        "reference": reference,
        "models": models,
        "gap_vs_reference": gaps,
        "best": min(models, key=lambda n: models[n]["target"]),
        "noise_floor": noise,
        "summary": summary,
        "rows": rows,
    }
    if noise is not None:
        out["beats_all_by_more_than_noise"] = all(g > noise for g in gaps.values())
    return out


def write_results(
    out: Path, stage: str, rows: list[dict[str, Any]], comparison: dict[str, Any] | None
) -> None:
    """metrics.parquet, and comparison.json / .parquet when there is a comparison (logged too)."""
    write_table(metrics_table(rows), out / METRICS)
    if comparison is None:
        return
    write_table(pa.Table.from_pylist(comparison.pop("rows")), out / COMPARISON)
    write_json(out / COMPARISON_JSON, comparison)
    for line in comparison["summary"]:
        log(f"{stage}: {line}")
