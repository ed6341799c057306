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
from mixlab.mixtures.config import SAMPLER_KEYS, FitConfig, SampleConfig
from mixlab.mixtures.experts import copy_logprobs, fit_features, load_features, with_features
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
from mixlab.stage import (
    Inputs,
    Manifest,
    OutDir,
    StageDir,
    absolute_inputs,
    has_manifest,
    run_stage,
    write_json,
)
from mixlab.tables import write_table

FIT_JSON = "fit.json"
MODELS_DIR = "models"


def runs_needed(n_domains: int, folds: int) -> tuple[int, int]:
    """(minimum, recommended) runs: below the minimum a fold cannot even fit the baselines."""
    minimum = max(10, n_domains + 2, 2 * folds)
    recommended = max(64, 16 * n_domains)
    return minimum, recommended


# Manifest stage names of the outputs fit reads, today's first (outputs written before the
# stage registry carry the old ones and stay readable).
SAMPLE_STAGES = ("mixtures_sample", "mixtures-sample")
SWARM_STAGES = ("swarm_train", "swarm")


def candidates_record(candidates: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """The prior and sampler settings a `mixtures sample` output recorded in its manifest."""
    try:
        manifest = Manifest.load(candidates)
    except InputError:
        raise InputError(
            f"{candidates}: not a `mixtures sample` output (no readable manifest.json); "
            "pass --candidates the --out directory of `mixlab mixtures sample`"
        ) from None
    prior = manifest.stats.get("prior")
    if manifest.stage not in SAMPLE_STAGES or not isinstance(prior, dict):
        raise InputError(
            f"{candidates}: not a `mixtures sample` output (no prior in its manifest); pass --candidates DIR"
        )
    return {str(k): float(v) for k, v in prior.items()}, {
        k: manifest.config[k] for k in SAMPLER_KEYS if k in manifest.config
    }


def swarm_record(runs_path: Path) -> dict[str, Any] | None:
    """The settings of the swarm that made the runs (for select's second-scale check), when recorded."""
    for folder in (runs_path, runs_path.parent):
        if not has_manifest(folder):
            continue
        manifest = Manifest.load(folder)
        if manifest.stage in SWARM_STAGES:
            return dict(manifest.config)
    return None


def resolve_prior(
    cfg: FitConfig, runs: Runs, candidates: Path | None
) -> tuple[dict[str, float], str, dict[str, Any]]:
    """(prior, where it came from, sampler settings): what select simulates mixtures from.

    Without the candidates, the mean of the run weights stands in for the prior and the
    sampler uses it as is (prior_power 1), so simulated mixtures centre where the runs do.
    """
    sampler = SampleConfig().sampler()
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


def run_mixtures_fit(
    inputs: Inputs, cfg: FitConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Fit and cross-validate every model; save them, the prior and the chosen one's name.

    `inputs`: {"runs": the runs table (file or swarm output), "candidates": the `mixtures
    sample` output that supplies the prior and sampler settings, or None}. The fit is small
    and runs in-process (no Dask client used).
    """
    inputs = absolute_inputs(inputs)
    runs_path, candidates = inputs["runs"], inputs.get("candidates")

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        runs = load_runs(runs_path, cfg.target)
        needed, warnings = check_runs(runs, cfg.folds, runs_path)
        prior, prior_source, sampler = resolve_prior(cfg, runs, candidates)
        groups = mixture_groups(runs.weights)
        folds = group_folds(groups, cfg.folds, cfg.seed)
        settings = cfg.boost_settings()
        # --- experts (issue 16.2): with a swarm's experts/, the models see [w, expert feature] ---
        experts = fit_features(runs_path, runs.domains, runs.target)
        x = runs.weights if experts is None else experts[0](runs.weights)
        # --- end experts ---
        cv = {kind: cross_validate(kind, x, runs.target_loss, folds, groups, settings) for kind in MODELS}
        summaries = {kind: cv[kind].summary(runs.target_loss) for kind in MODELS}
        chosen = cfg.model if cfg.model != "auto" else max(MODELS, key=lambda k: summaries[k]["spearman"])
        floor = noise_floor(runs.weights, runs.target_loss)
        files = save_final_models(runs, groups, cfg, cv, summaries, stage.out / MODELS_DIR, x=x)
        write_predictions(stage.out / "predictions.parquet", runs, folds, cv)
        plots = plot_models(runs, cv, summaries, floor, stage.out)
        fit = {
            "target": runs.target.to_record(),
            "domains": runs.domains,
            "prior": prior,
            "prior_source": prior_source,
            "sampler": sampler,
            "swarm_config": swarm_record(runs_path),
            "chosen": chosen,
            "models": {kind: {**summaries[kind], **files[kind]} for kind in MODELS},
            "noise_floor": floor,
            "runs": len(runs.target_loss),
            "dropped_nan": runs.dropped_nan,
            "folds": int(folds.max()) + 1,
            "runs_needed": needed,
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
        # --- experts (issue 16.2): select scores with the same features, from this directory alone ---
        if experts is not None:
            fit["features"] = experts[0].record()
            copy_logprobs(experts[1], stage.out, list(runs.target.terms))
        # --- end experts ---
        write_json(stage.out / FIT_JSON, fit)
        return fit_counts_and_stats(fit)

    return run_stage(
        "mixtures_fit", cfg, {"runs": runs_path, "candidates": candidates}, out_dir, body, force=force
    )


def check_runs(runs: Runs, folds: int, where: Path) -> tuple[dict[str, int], list[str]]:
    """Refuse too few runs or a constant target; the runs needed and the warnings to record."""
    n, d = runs.weights.shape
    warnings: list[str] = []
    if runs.dropped_nan:
        warnings.append(f"dropped {runs.dropped_nan} runs with NaN or missing losses/weights")
    minimum, recommended = runs_needed(d, folds)
    if n < minimum:
        raise InputError(
            f"{where}: only {n} usable runs for {d} domains"
            + (f" ({runs.dropped_nan} dropped for NaN losses)" if runs.dropped_nan else "")
            + f"; at least {minimum} are needed to fit and cross-validate, about {recommended} for a "
            f"trustworthy fit; train more proxies (mixtures sample --candidates {recommended}, then swarm train)"
        )
    if n < recommended:
        warnings.append(
            f"only {n} runs for {d} domains: held-out correlations are noisy below about {recommended}; "
            "train more proxies for a trustworthy fit"
        )
    if np.ptp(runs.target_loss) <= 0:
        raise InputError(f"{where}: the target loss is the same for every run; nothing to fit")
    for w in warnings:
        log(f"mixtures fit: warning: {w}")
    return {"minimum": minimum, "recommended": recommended}, warnings


def save_final_models(
    runs: Runs,
    groups: np.ndarray,
    cfg: FitConfig,
    cv: Mapping[str, CrossValidation],
    summaries: dict[str, dict[str, Any]],
    models_dir: Path,
    x: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every model on all runs and save it with its fold models; the files, by model.

    `x`: the models' inputs when not the weights alone (the experts' feature beside them).
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for kind in MODELS:
        final = fit_model(
            kind,
            runs.weights if x is None else x,
            runs.target_loss,
            groups,
            cfg.boost_settings(),
            split_seed=cfg.seed + 10_007,
        )
        files[kind] = save_models(kind, final, cv[kind].fold_models, models_dir)
        if isinstance(final, BoosterModel):
            summaries[kind]["final_rounds"] = final.rounds
    return files


def plot_models(
    runs: Runs,
    cv: Mapping[str, CrossValidation],
    summaries: Mapping[str, dict[str, Any]],
    floor: dict[str, float] | None,
    out: Path,
) -> dict[str, str]:
    """A predicted-vs-actual PNG per model (and its held-out scores logged); the file names."""
    plots = {kind: f"predicted_vs_actual_{kind}.png" for kind in MODELS}
    for kind in MODELS:
        plot_predicted_vs_actual(
            runs.target_loss, cv[kind].predicted, summaries[kind], floor, kind, out / plots[kind]
        )
    for kind in MODELS:
        s = summaries[kind]
        log(
            f"mixtures fit: {kind:9s} held-out spearman {s['spearman']:.3f} pearson {s['pearson']:.3f} "
            f"rmse {s['rmse']:.4g}" + (f" (noise floor {floor['rmse']:.4g})" if floor else "")
        )
    return plots


def fit_counts_and_stats(fit: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's counts and statistics, from fit.json."""
    counts = {"runs": fit["runs"], "dropped_nan": fit["dropped_nan"], "domains": len(fit["domains"])}
    stats = {
        "chosen": fit["chosen"],
        "held_out": {
            k: {m: fit["models"][k][m] for m in ("spearman", "pearson", "rmse")} for k in fit["models"]
        },
        "noise_floor_rmse": fit["noise_floor"]["rmse"] if fit["noise_floor"] else None,
        "warnings": fit["warnings"],
    }
    return counts, stats


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
    try:
        fit = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); run `mixlab mixtures fit` again") from None
    kind = model or fit["chosen"]
    entry = fit["models"][kind]
    if kind == "lightgbm":
        final = BoosterModel.load(fit_dir / entry["file"], num_threads)
        folds = [BoosterModel.load(fit_dir / f, num_threads) for f in entry["fold_files"]]
    else:
        data = json.loads((fit_dir / entry["file"]).read_text())
        final = LinearModel.from_dict(data["final"])
        folds = [LinearModel.from_dict(m) for m in data["folds"]]
    # --- experts (issue 16.2): models fitted on [w, feature] take plain weights once loaded ---
    features = load_features(fit_dir, fit)
    if features is not None:
        final, folds = with_features(final, features), [with_features(m, features) for m in folds]
    # --- end experts ---
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
