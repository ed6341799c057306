"""`mixlab mixtures fit`: learn target loss from mixture weights, and say honestly how well.

Reads a runs table (``runs.parquet`` of a swarm, a CSV, or Olmix's ratios.csv + metrics.csv;
see `mixlab.mixtures.targets`), with ``--at-step`` the losses at a recorded step of the swarm's
``trajectories.parquet``, and with ``--trajectory`` every earlier step too (the step as a
feature). Writes into the FIT directory: ``fit.json`` (target, domains, prior, every model's
held-out scores, the noise floor, the chosen model; optional ``features`` when models take
more than the weights, ``at_step`` and ``trajectory_rows``), ``models/`` (LightGBM text
files, final and per fold; the baselines' coefficients as JSON), ``predictions.parquet``
(out-of-fold predictions per run) and a predicted-vs-actual PNG per model. `mixtures select`
needs nothing but this directory. `fit_models` is the same fit in memory (no files).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab import storage
from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.mixtures.config import SAMPLER_KEYS, FitConfig, SampleConfig
from mixlab.mixtures.experts import copy_logprobs, fit_features, load_features
from mixlab.mixtures.regression import (
    MODELS,
    BoosterModel,
    CrossValidation,
    Features,
    LinearModel,
    Regressor,
    cross_validate,
    fit_model,
    group_folds,
)
from mixlab.mixtures.targets import (
    Runs,
    load_runs,
    losses_at_step,
    mixture_groups,
    noise_floor,
    read_runs,
    read_trajectories,
    recorded_steps,
    runs_from_table,
    trajectory_table,
)
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
        source = f"candidates {storage.origin(candidates)}"
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

    `inputs`: {"runs": the runs table (file or swarm output, parquet or CSV), "candidates": the
    `mixtures sample` output that supplies the prior and sampler settings, or None, "metrics":
    the metrics CSV when "runs" is a ratios CSV, or None}. The fit is small and runs in-process
    (no Dask client used).
    """
    inputs = absolute_inputs(inputs)
    runs_path, candidates, metrics = inputs["runs"], inputs.get("candidates"), inputs.get("metrics")
    # Read and checked before the output is locked: bad runs leave nothing behind.
    runs, history, step = read_fit_runs(runs_path, cfg, metrics)
    needed, warnings = check_runs(runs, cfg.folds, runs_path)
    prior, prior_source, sampler = resolve_prior(cfg, runs, candidates)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        for w in warnings:  # said here, once: an up-to-date rerun's summary says them instead
            log(f"mixtures fit: warning: {w}")
        # --- experts (issue 16.2): with a swarm's experts/, the models see [w, expert feature] ---
        experts = fit_features(runs_path, runs.domains, runs.target)
        features = None
        if experts is not None:
            featurize = experts[0]
            features = Features(
                ("experts.target",), lambda w: featurize.target_loss(w)[:, None], featurize.record()
            )
        # --- end experts ---
        result = fit_models(runs, cfg, features, history, step)
        fit = fit_record(result, prior, prior_source, sampler, needed, warnings)
        fit["swarm_config"] = swarm_record(runs_path)
        (stage.out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
        files = {
            kind: save_models(kind, result.final[kind], result.cv[kind].fold_models, stage.out / MODELS_DIR)
            for kind in MODELS
        }
        for kind in MODELS:
            fit["models"][kind].update(files[kind])
        write_predictions(stage.out / "predictions.parquet", runs, result.folds, result.cv)
        fit["plots"] = plot_models(runs, result.cv, result.summaries, result.noise_floor, stage.out)
        if experts is not None:  # select rebuilds the feature from this directory alone
            copy_logprobs(experts[1], stage.out, list(runs.target.terms))
        write_json(stage.out / FIT_JSON, fit)
        return fit_counts_and_stats(fit)

    fingerprint = {"runs": runs_path, "candidates": candidates}
    if metrics is not None:
        fingerprint["metrics"] = metrics
    return run_stage("mixtures_fit", cfg, fingerprint, out_dir, body, force=force)


def read_fit_runs(
    runs_path: Path, cfg: FitConfig, metrics: Path | None = None
) -> tuple[Runs, Runs | None, int | None]:
    """(runs at the fit's step, the earlier trajectory rows for --trajectory or None, the step or None)."""
    if not cfg.at_step and not cfg.trajectory:
        return load_runs(runs_path, cfg.target, renormalize=cfg.renormalize, metrics=metrics), None, None
    table = read_runs(runs_path, metrics)
    trajectories = read_trajectories(runs_path)
    step = cfg.at_step or recorded_steps(trajectories)[-1]
    at = losses_at_step(table, trajectories, step, runs_path)
    runs = runs_from_table(at, cfg.target, where=str(runs_path), renormalize=cfg.renormalize)
    if not cfg.trajectory:
        return runs, None, step
    rows = trajectory_table(table, trajectories, until=step - 1)
    if rows.height == 0:
        raise InputError(
            f"{runs_path}: --trajectory: no step before {step} was recorded (recorded: "
            f"{', '.join(map(str, recorded_steps(trajectories)))}); train the swarm with --eval-every"
        )
    history = runs_from_table(rows, cfg.target, where=str(runs_path), renormalize=cfg.renormalize, say=False)
    return runs, history, step


@dataclasses.dataclass
class FitResult:
    """A fit in memory: every model's cross-validation, its final model, and what select needs.

    `runs` are the scored rows (one per run, at the fit's step); `cv[kind].predicted` is
    aligned with them. `features` build a model input from weights alone (for select).
    """

    runs: Runs
    groups: np.ndarray
    folds: np.ndarray
    cv: dict[str, CrossValidation]
    summaries: dict[str, dict[str, Any]]
    final: dict[str, Regressor]
    chosen: str
    noise_floor: dict[str, float] | None
    features: Features
    step: int | None = None  # the trajectory step fitted (None: the runs' final losses)
    trajectory_rows: int = 0  # earlier-step rows trained on besides the runs (--trajectory)

    def fitted(
        self,
        kind: str | None = None,
        prior: Mapping[str, float] | None = None,
        sampler: Mapping[str, Any] | None = None,
    ) -> FittedModels:
        """The `kind` model (default: the chosen one) ready to predict and select, without files.

        `prior` and `sampler` default to the mean run weights and the sampler of that (as
        `mixtures fit` without --candidates)."""
        kind = kind or self.chosen
        if prior is None:
            prior = {d: float(w) for d, w in zip(self.runs.domains, self.runs.weights.mean(axis=0))}
            sampler = sampler or {**SampleConfig().sampler(), "prior_power": 1.0}
        record = fit_record(self, dict(prior), "given", dict(sampler or SampleConfig().sampler()), {}, [])
        record["chosen"] = kind
        return FittedModels(record, self.final[kind], list(self.cv[kind].fold_models), self.features)


def fit_models(
    runs: Runs,
    cfg: FitConfig,
    features: Features | None = None,
    history: Runs | None = None,
    step: int | None = None,
) -> FitResult:
    """Cross-validate and fit every model on `runs` (in memory: nothing is written or logged).

    `features`: the model inputs beyond the weights (default: the weights alone). `history`:
    earlier trajectory rows of the same runs (`Runs.steps` set), trained on beside the runs with
    log(step) as the last feature; the runs' rows count as `step` and only they are scored.
    """
    features = features or Features()
    groups = mixture_groups(runs.weights)
    folds = group_folds(groups, cfg.folds, cfg.seed)
    settings = cfg.boost_settings()
    n = len(runs.target_loss)
    x, y, row_groups, row_folds, scored = features.design(runs.weights), runs.target_loss, groups, folds, None
    n_weights = len(runs.domains) if features.extra is not None else None
    predict_with = features
    extra_rows = 0
    if history is not None:
        if step is None or history.steps is None:
            raise ValueError(
                "fit_models: a trajectory fit needs the step of the runs and of every history row"
            )
        # Each history row joins its run's mixture group and fold: no leak between folds through steps.
        row_of = {r: i for i, r in enumerate(runs.run_ids)}
        keep = np.array([r in row_of for r in history.run_ids], dtype=bool) & (history.steps < step)
        idx = np.array([row_of[r] for r, k in zip(history.run_ids, keep) if k], dtype=np.int64)
        predict_with = features.with_step(step)
        hx = np.hstack(
            [features.design(history.weights[keep]), np.log(history.steps[keep])[:, None].astype(np.float64)]
        )
        x = np.vstack([predict_with.design(runs.weights), hx])
        y = np.concatenate([runs.target_loss, history.target_loss[keep]])
        row_groups = np.concatenate([groups, groups[idx]])
        row_folds = np.concatenate([folds, folds[idx]])
        scored = np.arange(len(y)) < n
        n_weights = len(runs.domains)
        extra_rows = int(keep.sum())
    cv = {}
    for kind in MODELS:
        result = cross_validate(kind, x, y, row_folds, row_groups, settings, n_weights, scored)
        cv[kind] = dataclasses.replace(result, predicted=result.predicted[:n])
    summaries = {kind: cv[kind].summary(runs.target_loss) for kind in MODELS}
    chosen = cfg.model if cfg.model != "auto" else max(MODELS, key=lambda k: summaries[k]["spearman"])
    final = {}
    for kind in MODELS:
        final[kind] = fit_model(kind, x, y, row_groups, settings, cfg.seed + 10_007, n_weights)
        if isinstance(final[kind], BoosterModel):
            summaries[kind]["final_rounds"] = final[kind].rounds
    floor = noise_floor(runs.weights, runs.target_loss)
    return FitResult(runs, groups, folds, cv, summaries, final, chosen, floor, predict_with, step, extra_rows)


def fit_record(
    result: FitResult,
    prior: dict[str, float],
    prior_source: str,
    sampler: dict[str, Any],
    needed: dict[str, int],
    warnings: list[str],
) -> dict[str, Any]:
    """fit.json's content from a fit (models without their files, no plots yet), keys in their order."""
    runs = result.runs
    record: dict[str, Any] = {
        "target": runs.target.to_record(),
        "domains": runs.domains,
        "prior": prior,
        "prior_source": prior_source,
        "sampler": sampler,
        "swarm_config": None,
        "chosen": result.chosen,
        "models": {kind: dict(result.summaries[kind]) for kind in MODELS},
        "noise_floor": result.noise_floor,
        "runs": len(runs.target_loss),
        "dropped_nan": runs.dropped_nan,
        "folds": int(result.folds.max()) + 1,
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
        "plots": {},
    }
    if result.features.record:
        record["features"] = dict(result.features.record)
    if result.step is not None:
        record["at_step"] = result.step
    if result.trajectory_rows:
        record["trajectory_rows"] = result.trajectory_rows
    return record


def check_runs(runs: Runs, folds: int, where: Path) -> tuple[dict[str, int], list[str]]:
    """Refuse too few runs or a constant target; the runs needed and the warnings to record (not logged)."""
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
    return {"minimum": minimum, "recommended": recommended}, warnings


def plot_models(
    runs: Runs,
    cv: Mapping[str, CrossValidation],
    summaries: Mapping[str, dict[str, Any]],
    floor: dict[str, float] | None,
    out: Path,
) -> dict[str, str]:
    """A predicted-vs-actual PNG per model; the file names. (The held-out scores are said once,
    by the stage's summary.)"""
    plots = {kind: f"predicted_vs_actual_{kind}.png" for kind in MODELS}
    for kind in MODELS:
        plot_predicted_vs_actual(
            runs.target_loss, cv[kind].predicted, summaries[kind], floor, kind, out / plots[kind]
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
    """What select needs from a FIT directory: the chosen model, its fold models, and fit.json.

    Models take `features.design(weights)`; `predict` and `predict_folds` take plain weights.
    """

    fit: dict[str, Any]
    final: Any
    folds: list[Any]
    features: Features = dataclasses.field(default_factory=Features)

    @property
    def domains(self) -> list[str]:
        return list(self.fit["domains"])

    @property
    def prior(self) -> np.ndarray:
        return np.array([self.fit["prior"][d] for d in self.domains])

    def design(self, weights: np.ndarray) -> np.ndarray:
        """(n, D) weights -> the models' (n, D + k) input rows."""
        return self.features.design(np.atleast_2d(weights))

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """(n,) the final model's predicted target loss of each mixture."""
        return self.final.predict(self.design(weights))

    def predict_folds(self, weights: np.ndarray) -> np.ndarray:
        """(n_folds, n): each cross-validation model's prediction (their spread: the fit's uncertainty)."""
        x = self.design(weights)
        return np.array([m.predict(x) for m in self.folds])


def features_from_record(fit: Mapping[str, Any], fit_dir: Path) -> Features:
    """The model inputs fit.json's ``features`` describe (none: the weights alone)."""
    record = fit.get("features")
    if not record:
        return Features()
    features = Features()
    if "experts" in record:  # data-expert features (issue 16.2), rebuilt by their module
        featurize = load_features(fit_dir, fit)  # (n, D) -> (n, D + 1): [w, experts' target loss]
        own = {k: v for k, v in record.items() if k != "trajectory"}
        features = Features(("experts.target",), lambda w: featurize(w)[:, w.shape[1] :], own)
    if "trajectory" in record:
        features = features.with_step(int(record["trajectory"]["step"]))
    return features


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
    return FittedModels(fit, final, folds, features_from_record(fit, fit_dir))


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
