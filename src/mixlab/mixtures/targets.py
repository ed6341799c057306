"""Reading a swarm's runs and turning their losses into the target the search minimises.

Reads ``runs.parquet`` (``run_id``, ``seed``, ``w.<domain>`` ..., ``loss.<name>`` ...), the same
table as CSV, or a pair of CSV files in Olmix's shape (``ratios.csv``: an id column ``run_id``,
``run`` or ``index`` and one weight column per domain; ``metrics.csv``: the same ids and one
column per loss) joined on the id; with ``at_step``, the losses at that step of the swarm's
``trajectories.parquet``. The target (`mixlab.mixture.Target`) is a weighted sum of loss columns:
``code=0.5,prose=0.5``, ``mean`` (every weight domain's validation loss, equally weighted; when
some domains have no loss column, the mean of those present, said in a log line), or one name
(``code``, or ``target`` for a separate validation corpus recorded as ``loss.target``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from mixlab.console import log
from mixlab.errors import InputError
from mixlab.mixture import LOSS_PREFIX, WEIGHT_PREFIX, Target
from mixlab.tables import check_numeric, parquet_files, read_table

RUNS = "runs.parquet"
TRAJECTORIES = "trajectories.parquet"  # the swarm's every evaluation (mixlab.proxy_models.results)
RATIOS_CSV, METRICS_CSV = "ratios.csv", "metrics.csv"  # Olmix's pair, joined on the run id
ID_COLUMNS = ("run_id", "run", "index")  # the run id column of a CSV, first found (RegMix: index)
LABEL_COLUMNS = ("name", "seed", "repeat_of", "kind", "spread")  # never weights or losses
WEIGHT_TOLERANCE = 1e-3  # weights summing this close to one are rescaled silently


@dataclasses.dataclass(frozen=True)
class Runs:
    """The usable rows of a runs table: mixture weights and the target loss of each run."""

    domains: list[str]  # weight domains, in the order of the columns of `weights`
    weights: np.ndarray  # (n_runs, n_domains), rows sum to 1
    target_loss: np.ndarray  # (n_runs,)
    run_ids: list[str]
    target: Target
    dropped_nan: int  # runs dropped because a weight or a loss the target needs was NaN / null / inf
    # With trajectories (fit --trajectory): the step of each row; rows of one run share its id.
    steps: np.ndarray | None = None


def runs_source(path: Path | str) -> str:
    """How a runs path reads: "parquet", "csv" (one CSV of w./loss. columns) or "pair" (Olmix's CSVs)."""
    path = Path(path)
    if path.is_dir() and (path / RATIOS_CSV).is_file() and not (path / RUNS).is_file():
        return "pair"
    return "csv" if path.suffix.lower() == ".csv" else "parquet"


def read_runs(path: Path | str, metrics: Path | str | None = None) -> pl.DataFrame:
    """The runs table of a parquet file or folder (e.g. a swarm output), a CSV, or a ratios/metrics pair.

    `metrics`: the metrics CSV when `path` is a ratios CSV (default for a folder holding
    ratios.csv: its metrics.csv). Columns come back named w.<domain> and loss.<name>.
    """
    path = Path(path)
    if metrics is not None or runs_source(path) == "pair":
        ratios = path / RATIOS_CSV if path.is_dir() else path
        return read_csv_pair(ratios, Path(metrics) if metrics is not None else ratios.parent / METRICS_CSV)
    if runs_source(path) == "csv":
        return read_csv(path)
    files = parquet_files(path)
    if path.is_dir():
        named = [f for f in files if f.name == RUNS]
        files = named or files
    fix = "pass the runs of `mixlab swarm train`"
    tables = [pl.from_arrow(read_table(f, fix=fix)) for f in files]
    try:
        return pl.concat(tables, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{path}: could not read the runs table ({exc})") from None


def read_csv(path: Path) -> pl.DataFrame:
    """A CSV file as a table, every failure one line naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a runs CSV (or ratios.csv with --metrics metrics.csv)")
    try:
        table = pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None
    if table.height == 0:
        raise InputError(f"{path}: the CSV has no rows; pass the runs of a swarm")
    return table


def id_column(table: pl.DataFrame, where: Path) -> str:
    found = [c for c in ID_COLUMNS if c in table.columns]
    if not found:
        raise InputError(
            f"{where}: no run id column (expected one of {', '.join(ID_COLUMNS)}; columns: "
            f"{', '.join(table.columns)}); add the id that joins {RATIOS_CSV} and {METRICS_CSV}"
        )
    return found[0]


def value_columns(table: pl.DataFrame, prefix: str, skip: Sequence[str]) -> list[str]:
    """The columns holding weights (or losses): those named with `prefix`, else every other numeric one."""
    named = [c for c in table.columns if c.startswith(prefix)]
    if named:
        return named
    return [c for c in table.columns if c not in skip and table.schema[c].is_numeric()]


def read_csv_pair(ratios: Path, metrics: Path) -> pl.DataFrame:
    """Olmix's ratios.csv + metrics.csv (or RegMix's mixture and loss CSVs), joined on the run id.

    Weight columns are those named w.<domain>, else every numeric column but the id and
    labels (name, seed...); loss columns likewise with loss.<name>. A run in only one of the
    files is dropped and counted in a log line; no run in both is an error.
    """
    left, right = read_csv(ratios), read_csv(metrics)
    key = id_column(left, ratios)
    if key not in right.columns:
        raise InputError(
            f"{metrics}: no {key!r} column to join with {ratios} (columns: {', '.join(right.columns)}); "
            f"both files need the same run id column ({', '.join(ID_COLUMNS)})"
        )
    skip = (*ID_COLUMNS, *LABEL_COLUMNS)
    weights = value_columns(left, WEIGHT_PREFIX, skip)
    losses = value_columns(right, LOSS_PREFIX, skip)
    for cols, table, where, fix in (
        (weights, left, ratios, "one numeric column per domain holding its share"),
        (losses, right, metrics, "one numeric column per validation loss or metric (lower is better)"),
    ):
        if not cols:
            raise InputError(
                f"{where}: no numeric columns besides the id (columns: {', '.join(table.columns)}); expected {fix}"
            )
    rename_w = {c: c if c.startswith(WEIGHT_PREFIX) else WEIGHT_PREFIX + c for c in weights}
    rename_l = {c: c if c.startswith(LOSS_PREFIX) else LOSS_PREFIX + c for c in losses}
    left = left.select(
        pl.col(key).cast(pl.String).alias("run_id"), *[pl.col(c).alias(n) for c, n in rename_w.items()]
    )
    right = right.select(
        pl.col(key).cast(pl.String).alias("run_id"), *[pl.col(c).alias(n) for c, n in rename_l.items()]
    )
    for table, where in ((left, ratios), (right, metrics)):
        dup = table["run_id"].is_duplicated()
        if dup.any():
            raise InputError(
                f"{where}: run id {table['run_id'].filter(dup)[0]!r} appears more than once; each run needs one row"
            )
    joined = left.join(right, on="run_id", how="inner", maintain_order="left")
    if joined.height == 0:
        raise InputError(
            f"{ratios} and {metrics}: no run id ({key}) appears in both files "
            f"(e.g. {left['run_id'][0]!r} and {right['run_id'][0]!r}); pass the two files of one swarm"
        )
    unmatched = left.height + right.height - 2 * joined.height
    if unmatched:
        log(
            f"mixtures fit: {unmatched} run(s) appear in only one of {ratios.name} and {metrics.name}; "
            f"fitting the {joined.height} in both"
        )
    return joined


def weight_domains(columns: list[str]) -> list[str]:
    return [c[len(WEIGHT_PREFIX) :] for c in columns if c.startswith(WEIGHT_PREFIX)]


def loss_names(columns: list[str]) -> list[str]:
    return [c[len(LOSS_PREFIX) :] for c in columns if c.startswith(LOSS_PREFIX)]


def runs_target(spec: str, domains: list[str], losses: list[str], where: str, say: bool = True) -> Target:
    """`--target` against the runs' loss columns; ``mean`` averages the mixture domains' losses.

    When only some domains have a loss column, ``mean`` averages those, and when none do (the
    losses are named otherwise, as in Olmix's or RegMix's files) every loss column present;
    either way a log line says which.
    """
    if spec.strip() != "mean" or all(d in losses for d in domains):
        return Target.parse(spec, domains, losses, source="the runs")
    present = [d for d in domains if d in losses]
    if not losses:
        return Target.parse(spec, domains, losses, source="the runs")  # the worded "no losses" error
    if present:
        missing = [d for d in domains if d not in losses]
        if say:
            log(
                f"mixtures fit: --target mean: averaging the {len(present)} domain losses present "
                f"({', '.join(present)}); no loss column for {', '.join(missing)}"
            )
    else:
        present = list(losses)
        if say:
            log(
                f"mixtures fit: --target mean: no loss column is named after a mixture domain in {where}; "
                f"averaging all {len(present)} loss columns: {', '.join(present)}"
            )
    return Target({name: 1.0 / len(present) for name in present}, "mean")


def load_runs(
    path: Path | str,
    target_spec: str,
    *,
    renormalize: bool = False,
    at_step: int | None = None,
    metrics: Path | str | None = None,
) -> Runs:
    """Read the runs, compute the target loss, drop (and count) runs whose numbers are missing.

    `at_step`: the losses at that step of the swarm's trajectories instead of the final ones.
    """
    table = read_runs(path, metrics)
    if metrics is None and runs_source(path) == "csv" and not weight_domains(table.columns):
        raise InputError(
            f"{path}: no w.<domain> weight columns (columns: {', '.join(table.columns)}); a runs CSV holds "
            "w.<domain> and loss.<name> columns, or pass the weights CSV with --metrics METRICS.csv "
            f"(Olmix's {RATIOS_CSV} + {METRICS_CSV}, joined on {', '.join(ID_COLUMNS)})"
        )
    if at_step is not None:
        table = losses_at_step(table, read_trajectories(path), at_step, path)
    return runs_from_table(table, target_spec, where=str(path), renormalize=renormalize)


def runs_from_table(
    table: pl.DataFrame | pa.Table,
    target_spec: str,
    *,
    where: str = "the runs",
    renormalize: bool = False,
    say: bool = True,
) -> Runs:
    """A runs table in memory (run_id, w.<domain>..., loss.<name>...) as `Runs`.

    Weights must sum to one within 1e-3 (then rescaled exactly); with `renormalize`, any
    positive sum is rescaled (weights rounded off their sum, as in RegMix's files). `say`: log
    what --target mean averaged and what --renormalize rescaled (once per fit).
    """
    if isinstance(table, pa.Table):
        table = pl.from_arrow(table)
    columns = table.columns
    domains = weight_domains(columns)
    if len(domains) < 2:
        raise InputError(
            f"{where}: expected weight columns w.<domain> for at least two domains, found "
            f"{domains or 'none'} (columns: {', '.join(columns)}); pass the runs of `mixlab swarm train`"
        )
    losses = loss_names(columns)
    if not losses:
        raise InputError(
            f"{where}: the runs have no loss columns loss.<name> at all (columns: {', '.join(columns)}), "
            "so there is no target loss to fit; pass the runs of `mixlab swarm train`"
        )
    target = runs_target(target_spec, domains, losses, where, say)
    check_numeric(
        table.to_arrow().schema,
        [WEIGHT_PREFIX + d for d in domains] + [LOSS_PREFIX + n for n in target.terms],
        where,
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
        raise InputError(f"{where}: negative mixture weights in {int((weights < 0).any(axis=1).sum())} runs")
    sums = weights.sum(axis=1)
    if (sums <= 0).any():
        raise InputError(f"{where}: {int((sums <= 0).sum())} runs have all-zero mixture weights")
    off = np.abs(sums - 1.0) > WEIGHT_TOLERANCE
    if off.any() and not renormalize:
        raise InputError(
            f"{where}: mixture weights of {int(off.sum())} runs do not sum to 1 "
            f"(e.g. {float(sums[off][0]):.4g}); pass --renormalize to rescale them (weights rounded off "
            "their sum), or fix the w.<domain> columns to hold shares"
        )
    if off.any() and say:
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        log(
            f"mixtures fit: --renormalize: rescaled the weights of {int(off.sum())} runs to sum to 1 "
            f"(furthest sum {worst:.4g})"
        )
    weights = weights / sums[:, None]
    if "run_id" in columns:
        run_ids = [str(r) for r, keep in zip(table["run_id"].to_list(), ok) if keep]
    else:
        run_ids = [str(i) for i in np.flatnonzero(ok)]
    steps = table["step"].to_numpy()[ok] if "step" in columns else None
    return Runs(domains, weights, target_loss, run_ids, target, dropped, steps)


# --- trajectories ------------------------------------------------------------------------------


def trajectories_path(path: Path | str) -> Path:
    """Where the swarm keeps the trajectories of the runs at `path` (its folder, or beside the file)."""
    path = Path(path)
    return (path if path.is_dir() else path.parent) / TRAJECTORIES


def read_trajectories(path: Path | str) -> pl.DataFrame:
    """The swarm's trajectories.parquet (run_id, step, tokens, loss.<name>...) for the runs at `path`."""
    where = trajectories_path(path)
    if runs_source(path) != "parquet" or not where.is_file():
        raise InputError(
            f"{path}: no {TRAJECTORIES} beside the runs (swarm outputs made before trajectories were "
            "kept, and CSV runs, have none); re-run `mixlab swarm train` (with --eval-every for steps "
            "along the way), or drop --at-step / --trajectory"
        )
    return pl.from_arrow(read_table(where, required=("run_id", "step"), fix="re-run `mixlab swarm train`"))


def recorded_steps(trajectories: pl.DataFrame) -> list[int]:
    return sorted(int(s) for s in trajectories["step"].unique().to_list())


def losses_at_step(
    runs: pl.DataFrame, trajectories: pl.DataFrame, step: int, where: Path | str
) -> pl.DataFrame:
    """The runs with their loss columns replaced by the trajectories' at `step` (a recorded step)."""
    steps = recorded_steps(trajectories)
    if step not in steps:
        raise InputError(
            f"{trajectories_path(where)}: --at-step {step} was not recorded; recorded steps: "
            f"{', '.join(map(str, steps))} (train the swarm with --eval-every to record more)"
        )
    at = trajectories.filter(pl.col("step") == step).select(
        "run_id", *[c for c in trajectories.columns if c.startswith(LOSS_PREFIX)]
    )
    kept = runs.select([c for c in runs.columns if not c.startswith(LOSS_PREFIX)])
    return kept.with_columns(pl.col("run_id").cast(pl.String)).join(
        at, on="run_id", how="left", maintain_order="left"
    )


def trajectory_table(runs: pl.DataFrame, trajectories: pl.DataFrame, until: int) -> pl.DataFrame:
    """One row per run per recorded step up to `until`: the run's weights with that step's losses."""
    kept = runs.select([c for c in runs.columns if not c.startswith(LOSS_PREFIX)])
    rows = trajectories.filter(pl.col("step") <= until).select(
        "run_id", "step", *[c for c in trajectories.columns if c.startswith(LOSS_PREFIX)]
    )
    return kept.with_columns(pl.col("run_id").cast(pl.String)).join(
        rows, on="run_id", how="inner", maintain_order="left"
    )


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
