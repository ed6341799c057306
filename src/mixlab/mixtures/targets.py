"""Reading a swarm's runs table and turning its losses into the target the search minimises.

Reads ``runs.parquet`` (``run_id``, ``seed``, ``w.<domain>`` ..., ``loss.<name>`` ...). The
target (`mixlab.mixture.Target`) is a weighted sum of loss columns: ``code=0.5,prose=0.5``,
``mean`` (every weight domain's validation loss, equally weighted), or one name (``code``, or
``target`` for a separate validation corpus recorded as ``loss.target``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from mixlab.errors import InputError
from mixlab.mixture import LOSS_PREFIX, WEIGHT_PREFIX, Target
from mixlab.tables import check_numeric, parquet_files, read_table

RUNS = "runs.parquet"


@dataclasses.dataclass(frozen=True)
class Runs:
    """The usable rows of a runs table: mixture weights and the target loss of each run."""

    domains: list[str]  # weight domains, in the order of the columns of `weights`
    weights: np.ndarray  # (n_runs, n_domains), rows sum to 1
    target_loss: np.ndarray  # (n_runs,)
    run_ids: list[str]
    target: Target
    dropped_nan: int  # runs dropped because a weight or a loss the target needs was NaN / null / inf


def read_runs(path: Path | str) -> pl.DataFrame:
    """The runs table of a file or a directory of parquet files (e.g. a swarm output)."""
    files = parquet_files(path)
    if Path(path).is_dir():
        named = [f for f in files if f.name == RUNS]
        files = named or files
    fix = "pass the runs of `mixlab swarm train`"
    tables = [pl.from_arrow(read_table(f, fix=fix)) for f in files]
    try:
        return pl.concat(tables, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{path}: could not read the runs table ({exc})") from None


def weight_domains(columns: list[str]) -> list[str]:
    return [c[len(WEIGHT_PREFIX) :] for c in columns if c.startswith(WEIGHT_PREFIX)]


def loss_names(columns: list[str]) -> list[str]:
    return [c[len(LOSS_PREFIX) :] for c in columns if c.startswith(LOSS_PREFIX)]


def load_runs(path: Path | str, target_spec: str) -> Runs:
    """Read the runs, compute the target loss, drop (and count) runs whose numbers are missing."""
    table = read_runs(path)
    columns = table.columns
    domains = weight_domains(columns)
    if len(domains) < 2:
        raise InputError(
            f"{path}: expected weight columns w.<domain> for at least two domains, found "
            f"{domains or 'none'} (columns: {', '.join(columns)}); pass the runs of `mixlab swarm train`"
        )
    losses = loss_names(columns)
    if not losses:
        raise InputError(
            f"{path}: the runs have no loss columns loss.<name> at all (columns: {', '.join(columns)}), "
            "so there is no target loss to fit; pass the runs of `mixlab swarm train`"
        )
    target = Target.parse(target_spec, domains, losses, source="the runs")
    check_numeric(
        table.to_arrow().schema,
        [WEIGHT_PREFIX + d for d in domains] + [LOSS_PREFIX + n for n in target.terms],
        path,
        "weights and losses must be numbers; pass the runs of `mixlab swarm train`",
    )
    weights = table.select([pl.col(WEIGHT_PREFIX + d).cast(pl.Float64) for d in domains]).to_numpy()
    target_loss = target.loss_columns(
        {LOSS_PREFIX + n: table[LOSS_PREFIX + n].cast(pl.Float64).to_numpy() for n in target.terms}
    )
    ok = np.isfinite(weights).all(axis=1) & np.isfinite(target_loss)
    dropped = int((~ok).sum())
    weights, target_loss = weights[ok], target_loss[ok]
    if (weights < 0).any():
        raise InputError(f"{path}: negative mixture weights in {int((weights < 0).any(axis=1).sum())} runs")
    sums = weights.sum(axis=1)
    if (sums <= 0).any():
        raise InputError(f"{path}: {int((sums <= 0).sum())} runs have all-zero mixture weights")
    if (np.abs(sums - 1.0) > 1e-3).any():
        raise InputError(
            f"{path}: mixture weights of {int((np.abs(sums - 1) > 1e-3).sum())} runs do not sum to 1 "
            f"(e.g. {float(sums[np.abs(sums - 1) > 1e-3][0]):.4g}); the w.<domain> columns must hold shares"
        )
    weights = weights / sums[:, None]
    if "run_id" in columns:
        run_ids = [str(r) for r, keep in zip(table["run_id"].to_list(), ok) if keep]
    else:
        run_ids = [str(i) for i in np.flatnonzero(ok)]
    return Runs(domains, weights, target_loss, run_ids, target, dropped)


def mixture_groups(weights: np.ndarray, decimals: int = 9) -> np.ndarray:
    """A group id per run: runs with the same mixture (repeated seeds) share one."""
    _, inverse = np.unique(np.round(weights, decimals), axis=0, return_inverse=True)
    return inverse.reshape(-1)


def noise_floor(weights: np.ndarray, target_loss: np.ndarray) -> dict[str, float] | None:
    """The seed-to-seed spread of the target loss at a fixed mixture, from repeated seeds.

    Returns the pooled within-mixture standard deviation (an RMSE no regressor can beat)
    and how many repeated mixtures it came from; None without repeats.
    """
    groups = mixture_groups(weights)
    counts = np.bincount(groups)
    repeated = counts >= 2
    if not repeated.any():
        return None
    sums = np.bincount(groups, weights=target_loss)
    means = sums / counts
    resid = target_loss - means[groups]
    in_rep = repeated[groups]
    dof = int((counts[repeated] - 1).sum())
    rmse = float(np.sqrt((resid[in_rep] ** 2).sum() / dof))
    return {"rmse": rmse, "mixtures": int(repeated.sum()), "runs": int(in_rep.sum())}
