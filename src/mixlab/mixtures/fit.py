"""`mixlab mixtures fit`: learn target loss from mixture weights, and say honestly how well.

Reads a runs table (``runs.parquet`` of a swarm). Writes into the FIT directory:
``fit.json`` (target, domains, prior, every model's held-out scores, the noise floor, the
chosen model), ``models/`` (LightGBM text files, final and per fold; the baselines'
coefficients as JSON), ``predictions.parquet`` (out-of-fold predictions per run) and a
predicted-vs-actual PNG per model. `mixtures select` needs nothing but this directory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.mixtures.config import FitConfig
from mixlab.mixtures.regression import (
    MODELS,
    BoosterModel,
    CrossValidation,
    LinearModel,
    cross_validate,
    fit_model,
    group_folds,
)
from mixlab.mixtures.targets import Runs, load_runs, mixture_groups, noise_floor
from mixlab.stage import MANIFEST, Manifest, StageDir, run_stage, write_json
from mixlab.tables import write_table

FIT_JSON = "fit.json"
MODELS_DIR = "models"


def runs_needed(n_domains: int, folds: int) -> tuple[int, int]:
    """(minimum, recommended) runs: below the minimum a fold cannot even fit the baselines."""
    minimum = max(10, n_domains + 2, 2 * folds)
    recommended = max(64, 16 * n_domains)
    return minimum, recommended


SAMPLER_KEYS = ("prior_power", "spread_min", "spread_max", "spread_levels", "min_weight")


def candidates_record(candidates: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The prior and sampler settings a `mixtures sample` output recorded in its manifest."""
    manifest = Manifest.load(candidates)
    prior = manifest.stats.get("prior")
    if manifest.stage != "mixtures-sample" or not isinstance(prior, dict):
        raise InputError(
            f"{candidates}: not a `mixtures sample` output (no prior in its manifest); pass --candidates DIR"
        )
    return {str(k): float(v) for k, v in prior.items()}, {
        k: manifest.config[k] for k in SAMPLER_KEYS if k in manifest.config
    }


def swarm_record(runs_path: Path) -> dict[str, Any] | None:
    """The settings of the swarm that made the runs (for select's second-scale check), when recorded."""
    for folder in (runs_path, runs_path.parent):
        if not (folder / MANIFEST).is_file():
            continue
        manifest = Manifest.load(folder)
        if manifest.stage == "swarm":
            return dict(manifest.config)
    return None


def resolve_prior(
    cfg: FitConfig, runs: Runs, candidates: Path | None
) -> tuple[dict[str, float], str, dict[str, Any]]:
    """(prior, where it came from, sampler settings): what select simulates mixtures from.

    Without the candidates, the mean of the run weights stands in for the prior and the
    sampler uses it as is (prior_power 1), so simulated mixtures centre where the runs do.
    """
    from mixlab.mixtures.config import SampleConfig

    defaults = SampleConfig()
    sampler = {k: getattr(defaults, k) for k in SAMPLER_KEYS}
    prior: dict[str, float] | None = None
    if candidates is not None:
        prior, recorded = candidates_record(candidates)
        sampler.update(recorded)
        source = f"candidates {candidates}"
    if cfg.prior:
        prior, source = dict(cfg.prior), "--prior"
    if prior is None:
        sampler["prior_power"] = 1.0
        mean = runs.weights.mean(axis=0)
        return {d: float(w) for d, w in zip(runs.domains, mean)}, "mean of the run weights", sampler
    missing = [d for d in runs.domains if d not in prior]
    extra = [d for d in prior if d not in runs.domains]
    if missing or extra:
        raise ConfigError(
            f"--prior ({source}): domains {sorted(prior)} do not match the runs' weight domains {runs.domains}"
        )
    total = sum(prior.values())
    return {d: prior[d] / total for d in runs.domains}, source, sampler


def run_fit(
    inputs: Mapping[str, Path | str | None] | Path | str,
    cfg: FitConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
) -> Manifest:
    """Fit and cross-validate every model; save them, the prior and the chosen one's name.

    `inputs`: the runs table (file or swarm output), or {"runs": ..., "candidates": ...}
    where candidates (a `mixtures sample` output) supplies the prior and sampler settings.
    `client` is accepted for the stage contract; the fit is small and runs in-process.
    """
    if isinstance(inputs, Mapping):
        runs_path = Path(inputs["runs"])  # type: ignore[arg-type]
        candidates = Path(inputs["candidates"]) if inputs.get("candidates") else None
    else:
        runs_path, candidates = Path(inputs), None

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        runs = load_runs(runs_path, cfg.target)
        n, d = runs.weights.shape
        warnings: list[str] = []
        if runs.dropped_nan:
            warnings.append(f"dropped {runs.dropped_nan} runs with NaN or missing losses/weights")
        minimum, recommended = runs_needed(d, cfg.folds)
        if n < minimum:
            raise InputError(
                f"{runs_path}: only {n} usable runs for {d} domains"
                + (f" ({runs.dropped_nan} dropped for NaN losses)" if runs.dropped_nan else "")
                + f"; at least {minimum} are needed to fit and cross-validate, about {recommended} for a "
                "trustworthy fit; train more proxies (mixtures sample --runs N, then swarm)"
            )
        if n < recommended:
            warnings.append(
                f"only {n} runs for {d} domains: held-out correlations are noisy below about {recommended}; "
                "train more proxies for a trustworthy fit"
            )
        if np.ptp(runs.target_loss) <= 0:
            raise InputError(f"{runs_path}: the target loss is the same for every run; nothing to fit")
        for w in warnings:
            log(f"mixtures fit: warning: {w}")

        prior, prior_source, sampler = resolve_prior(cfg, runs, candidates)
        groups = mixture_groups(runs.weights)
        folds = group_folds(groups, cfg.folds, cfg.seed)
        settings = cfg.boost_settings()
        cv: dict[str, CrossValidation] = {}
        for kind in MODELS:
            cv[kind] = cross_validate(kind, runs.weights, runs.target_loss, folds, groups, settings)
        summaries = {kind: cv[kind].summary(runs.target_loss) for kind in MODELS}
        chosen = cfg.model if cfg.model != "auto" else max(MODELS, key=lambda k: summaries[k]["spearman"])
        floor = noise_floor(runs.weights, runs.target_loss)

        models_dir = stage.out / MODELS_DIR
        models_dir.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        for kind in MODELS:
            final = fit_model(
                kind, runs.weights, runs.target_loss, groups, settings, split_seed=cfg.seed + 10_007
            )
            files[kind] = save_models(kind, final, cv[kind].fold_models, models_dir)
            if isinstance(final, BoosterModel):
                summaries[kind]["final_rounds"] = final.rounds

        write_predictions(stage.out / "predictions.parquet", runs, folds, cv)
        plots = {kind: f"predicted_vs_actual_{kind}.png" for kind in MODELS}
        for kind in MODELS:
            plot_predicted_vs_actual(
                runs.target_loss, cv[kind].predicted, summaries[kind], floor, kind, stage.out / plots[kind]
            )
        for kind in MODELS:
            s = summaries[kind]
            log(
                f"mixtures fit: {kind:9s} held-out spearman {s['spearman']:.3f} pearson {s['pearson']:.3f} "
                f"rmse {s['rmse']:.4g}" + (f" (noise floor {floor['rmse']:.4g})" if floor else "")
            )
        fit = {
            "target": {"spec": cfg.target, "terms": runs.target},
            "domains": runs.domains,
            "prior": prior,
            "prior_source": prior_source,
            "sampler": sampler,
            "swarm_config": swarm_record(runs_path),
            "chosen": chosen,
            "models": {kind: {**summaries[kind], **files[kind]} for kind in MODELS},
            "noise_floor": floor,
            "runs": n,
            "dropped_nan": runs.dropped_nan,
            "folds": int(folds.max()) + 1,
            "runs_needed": {"minimum": minimum, "recommended": recommended},
            "warnings": warnings,
            "target_loss": {
                "min": float(runs.target_loss.min()),
                "max": float(runs.target_loss.max()),
                "mean": float(runs.target_loss.mean()),
            },
            "weights_range": {
                "min": runs.weights.min(axis=0).tolist(),
                "max": runs.weights.max(axis=0).tolist(),
            },
            "plots": plots,
        }
        write_json(stage.out / FIT_JSON, fit)
        counts = {"runs": n, "dropped_nan": runs.dropped_nan, "domains": d}
        stats = {
            "chosen": chosen,
            "held_out": {k: {m: summaries[k][m] for m in ("spearman", "pearson", "rmse")} for k in MODELS},
            "noise_floor_rmse": floor["rmse"] if floor else None,
            "warnings": warnings,
        }
        return counts, stats

    return run_stage(
        "mixtures-fit", cfg, {"runs": runs_path, "candidates": candidates}, out_dir, body, force=force
    )


def save_models(kind: str, final: Any, folds: list[Any], models_dir: Path) -> dict[str, Any]:
    """LightGBM boosters as text files; baselines as one JSON of coefficients. Returns the paths."""
    if kind == "lightgbm":
        final.save(models_dir / "lightgbm.txt")
        fold_files = []
        for i, model in enumerate(folds):
            name = f"lightgbm_fold_{i:02d}.txt"
            model.save(models_dir / name)
            fold_files.append(f"{MODELS_DIR}/{name}")
        return {"file": f"{MODELS_DIR}/lightgbm.txt", "fold_files": fold_files}
    name = f"{kind}.json"
    write_json(models_dir / name, {"final": final.to_dict(), "folds": [m.to_dict() for m in folds]})
    return {"file": f"{MODELS_DIR}/{name}"}


@dataclasses.dataclass
class FittedModels:
    """What select needs from a FIT directory: the chosen model, its fold models, and fit.json."""

    fit: dict[str, Any]
    final: Any
    folds: list[Any]

    @property
    def domains(self) -> list[str]:
        return list(self.fit["domains"])

    @property
    def prior(self) -> np.ndarray:
        return np.array([self.fit["prior"][d] for d in self.domains])


def load_fit(fit_dir: Path | str, model: str | None = None, num_threads: int = 0) -> FittedModels:
    """Load a FIT directory's chosen model (or `model`) with its cross-validation fold models."""
    fit_dir = Path(fit_dir)
    path = fit_dir / FIT_JSON
    if not path.is_file():
        raise InputError(f"{fit_dir}: no {FIT_JSON}; pass the --out directory of `mixlab mixtures fit`")
    fit = json.loads(path.read_text())
    kind = model or fit["chosen"]
    entry = fit["models"][kind]
    if kind == "lightgbm":
        final = BoosterModel.load(fit_dir / entry["file"], num_threads)
        folds = [BoosterModel.load(fit_dir / f, num_threads) for f in entry["fold_files"]]
    else:
        data = json.loads((fit_dir / entry["file"]).read_text())
        final = LinearModel.from_dict(data["final"])
        folds = [LinearModel.from_dict(m) for m in data["folds"]]
    return FittedModels(fit, final, folds)


def write_predictions(path: Path, runs: Runs, folds: np.ndarray, cv: dict[str, CrossValidation]) -> None:
    columns: dict[str, Any] = {
        "run_id": pa.array(runs.run_ids, pa.string()),
        "fold": pa.array(folds, pa.int32()),
        "target_loss": pa.array(runs.target_loss, pa.float64()),
    }
    for kind, result in cv.items():
        columns[f"predicted.{kind}"] = pa.array(result.predicted, pa.float64())
    for j, domain in enumerate(runs.domains):
        columns[f"w.{domain}"] = pa.array(runs.weights[:, j], pa.float64())
    write_table(pa.table(columns), path)


def plot_predicted_vs_actual(
    actual: np.ndarray,
    predicted: np.ndarray,
    summary: dict[str, Any],
    floor: dict[str, float] | None,
    kind: str,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(actual, predicted, s=10, alpha=0.7)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("actual target loss")
    ax.set_ylabel("predicted (held-out fold)")
    floor_text = f", noise floor {floor['rmse']:.3g}" if floor else ""
    ax.set_title(
        f"{kind}: Spearman {summary['spearman']:.3f}, RMSE {summary['rmse']:.3g}{floor_text}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
