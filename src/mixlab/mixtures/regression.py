"""Regressors from mixture weights to target loss, and their honest cross-validation.

Three models: LightGBM (RegMix's choice), and two baselines fitted beside it: ``linear``
(loss linear in the weights) and ``loglinear`` (loss linear in log(weight + eps), the shape
of a per-domain loss that falls with the log of its share). LightGBM models are saved in
LightGBM's own text format, the baselines as coefficients in JSON; nothing is pickled.

A model's input row is the mixture's weights, then any extra columns its `Features` compute
from them (data-expert losses, or the step of a trajectory fit); without extras it is exactly
the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mixlab.errors import MixlabError

MODELS = ("lightgbm", "linear", "loglinear")
LOG_EPS = 1e-3  # keeps log(weight) finite for domains a mixture leaves out


class Regressor(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Features:
    """How a model's input rows are made from mixture weights: the weights, then `extra(weights)`.

    `extra` maps (n, D) weights to (n, k) more columns named `names`; `record` is how fit.json
    stores them (``fit.json["features"]``) so `mixtures select` can rebuild them
    (`mixlab.mixtures.fit.features_from_record`). The default is the weights alone.
    """

    names: tuple[str, ...] = ()
    extra: Callable[[np.ndarray], np.ndarray] | None = None
    record: Mapping[str, Any] | None = None

    def design(self, weights: np.ndarray) -> np.ndarray:
        """(n, D + k): the model input of each mixture."""
        w = np.asarray(weights, dtype=np.float64)
        if self.extra is None:
            return w
        return np.hstack([w, np.asarray(self.extra(w), dtype=np.float64).reshape(len(w), -1)])

    def with_step(self, step: int) -> Features:
        """These features and log(step) last, fixed at `step` when predicting (a trajectory fit's
        training rows carry their own steps instead)."""
        base, log_step = self, float(np.log(step))

        def extra(w: np.ndarray) -> np.ndarray:
            cols = base.design(w)[:, w.shape[1] :]
            return np.hstack([cols, np.full((len(w), 1), log_step)])

        record = {**(self.record or {}), "trajectory": {"step": int(step)}}
        return Features((*self.names, "log_step"), extra, record)


@dataclasses.dataclass(frozen=True)
class LinearModel:
    """loss = intercept + coef . features(x); the weights enter as they are, or as log(weight + eps).

    `n_weights`: how many leading columns of x are weights (the rest, extra features, always
    enter as they are); None: all of them.
    """

    kind: str  # "linear" or "loglinear"
    intercept: float
    coef: np.ndarray
    n_weights: int | None = None

    def features(self, x: np.ndarray) -> np.ndarray:
        return linear_features(x, self.kind, self.n_weights)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + self.features(np.asarray(x, dtype=np.float64)) @ self.coef

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "intercept": self.intercept,
            "coef": self.coef.tolist(),
            "log_eps": LOG_EPS,
        }
        if self.n_weights is not None:
            out["n_weights"] = self.n_weights
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearModel:
        n = data.get("n_weights")
        return cls(
            str(data["kind"]),
            float(data["intercept"]),
            np.asarray(data["coef"], dtype=np.float64),
            None if n is None else int(n),
        )


def linear_features(x: np.ndarray, kind: str, n_weights: int | None) -> np.ndarray:
    if kind != "loglinear":
        return x
    if n_weights is None or n_weights >= x.shape[1]:
        return np.log(x + LOG_EPS)
    return np.hstack([np.log(x[:, :n_weights] + LOG_EPS), x[:, n_weights:]])


def fit_linear(
    x: np.ndarray, loss: np.ndarray, kind: str, ridge: float = 1e-6, n_weights: int | None = None
) -> LinearModel:
    """Least squares with a tiny ridge: the weights sum to one, so they are collinear with the intercept."""
    x = linear_features(x, kind, n_weights)
    x_mean, y_mean = x.mean(axis=0), loss.mean()
    xc = x - x_mean
    scale = max(float((xc**2).sum()) / max(x.shape[1], 1), 1e-12)
    coef = np.linalg.solve(xc.T @ xc + ridge * scale * np.eye(x.shape[1]), xc.T @ (loss - y_mean))
    return LinearModel(kind, float(y_mean - x_mean @ coef), coef, n_weights)


@dataclasses.dataclass(frozen=True)
class BoosterModel:
    """A LightGBM booster with the thread count to predict with."""

    booster: Any  # lightgbm.Booster
    num_threads: int = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.booster.predict(np.ascontiguousarray(x, dtype=np.float64), num_threads=self.num_threads)

    @property
    def rounds(self) -> int:
        return int(self.booster.current_iteration())

    def tree_ranges(self) -> np.ndarray:
        """(n_trees, 2): each tree's smallest and largest leaf value."""

        def leaves(node: dict[str, Any]) -> list[float]:
            if "leaf_value" in node:
                return [node["leaf_value"]]
            return leaves(node["left_child"]) + leaves(node["right_child"])

        trees = self.booster.dump_model()["tree_info"]
        return np.array([(min(v), max(v)) for v in (leaves(t["tree_structure"]) for t in trees)]).reshape(
            -1, 2
        )

    def predict_lowest(
        self, weights: np.ndarray, k: int, threshold: float = np.inf, ranges: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows that can be among the `k` lowest predictions (and at most `threshold`), with exact predictions.

        Scores the trees in stages and drops a row once even the smallest leaves of the
        remaining trees cannot bring it below the k-th best upper bound: the same answer as
        predicting every row with every tree, at a fraction of the work when most rows are
        clearly bad (which is the point of simulating a million mixtures).
        """
        weights = np.ascontiguousarray(weights, dtype=np.float64)
        ranges = self.tree_ranges() if ranges is None else ranges
        n_trees = len(ranges)
        rest_lo = np.r_[
            np.cumsum(ranges[::-1, 0])[::-1], 0.0
        ]  # rest_lo[m]: sum of min leaves of trees m..end
        rest_hi = np.r_[np.cumsum(ranges[::-1, 1])[::-1], 0.0]
        stops = sorted({max(1, int(round(n_trees * f))) for f in (0.1, 0.25, 0.45, 0.7, 1.0)})
        alive = np.arange(len(weights))
        partial = np.zeros(len(weights))
        start = 0
        for stop in stops:
            partial += self.booster.predict(
                weights[alive],
                start_iteration=start,
                num_iteration=stop - start,
                num_threads=self.num_threads,
            )
            start = stop
            upper = partial + rest_hi[stop]
            cut = threshold
            if len(upper) > k:
                cut = min(cut, float(np.partition(upper, k - 1)[k - 1]))
            keep = partial + rest_lo[stop] <= cut + 1e-12
            alive, partial = alive[keep], partial[keep]
        return alive, partial

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: Path, num_threads: int = 0) -> BoosterModel:
        lgb = import_lightgbm()
        return cls(lgb.Booster(model_file=str(path)), num_threads)


def import_lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError:  # pragma: no cover - lightgbm is a core dependency
        raise MixlabError(
            "lightgbm is not installed; `pip install lightgbm` (mixlab's mixture search needs it)"
        ) from None
    return lightgbm


@dataclasses.dataclass(frozen=True)
class BoostSettings:
    learning_rate: float = 0.01
    max_rounds: int = 1000
    early_stopping_rounds: int = 50
    num_leaves: int = 31
    min_data_in_leaf: int = 0  # 0: chosen from the number of training runs
    valid_fraction: float = 0.2
    seed: int = 0
    num_threads: int = 1  # swarms are small: more threads only add overhead


def leaf_size(n_train: int, requested: int) -> int:
    """Small swarms still need splits: LightGBM's default of 20 would leave a 60-run swarm one leaf."""
    return requested if requested > 0 else int(np.clip(n_train // 20, 2, 20))


def lgb_params(settings: BoostSettings, n_train: int) -> dict[str, Any]:
    return {
        "objective": "regression",
        "boosting": "gbdt",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": leaf_size(n_train, settings.min_data_in_leaf),
        "min_sum_hessian_in_leaf": 1e-6,
        "min_data_in_bin": 1,
        "feature_pre_filter": False,
        "seed": settings.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": settings.num_threads,
        "verbosity": -1,
    }


def fit_lightgbm(
    weights: np.ndarray, loss: np.ndarray, groups: np.ndarray, settings: BoostSettings, split_seed: int
) -> BoosterModel:
    """Early stopping on a split of *these* runs (whole mixtures held out), then a refit on all of them.

    The caller passes only training runs, so the stopping round never sees the runs it is
    scored on.
    """
    lgb = import_lightgbm()
    inner_valid = group_holdout(groups, settings.valid_fraction, split_seed)
    rounds = settings.max_rounds
    if inner_valid.any() and (~inner_valid).sum() >= 4:
        params = lgb_params(settings, int((~inner_valid).sum()))
        train = lgb.Dataset(weights[~inner_valid], loss[~inner_valid], params={"verbosity": -1})
        valid = lgb.Dataset(weights[inner_valid], loss[inner_valid], reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=settings.max_rounds,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(settings.early_stopping_rounds, verbose=False)],
        )
        rounds = max(int(booster.best_iteration or settings.max_rounds), 1)
    params = lgb_params(settings, len(loss))
    booster = lgb.train(params, lgb.Dataset(weights, loss, params={"verbosity": -1}), num_boost_round=rounds)
    return BoosterModel(booster, settings.num_threads)


def group_holdout(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask holding out about `fraction` of the mixtures (all seeds of a mixture together)."""
    unique = np.unique(groups)
    n_out = int(round(fraction * len(unique)))
    if n_out == 0 or n_out >= len(unique):
        return np.zeros(len(groups), dtype=bool)
    held = np.random.default_rng(seed).permutation(unique)[:n_out]
    return np.isin(groups, held)


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold index per run; repeated seeds of one mixture always share a fold (no leak through them)."""
    unique = np.unique(groups)
    k = min(k, len(unique))
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(unique))] = np.arange(len(unique)) % k
    return fold_of_group[np.searchsorted(unique, groups)]


def fit_model(
    kind: str,
    x: np.ndarray,
    loss: np.ndarray,
    groups: np.ndarray,
    settings: BoostSettings,
    split_seed: int,
    n_weights: int | None = None,
) -> Regressor:
    """One model on input rows `x` (the weights, then any extra features: `n_weights` says where they end)."""
    if kind == "lightgbm":
        return fit_lightgbm(x, loss, groups, settings, split_seed)
    return fit_linear(x, loss, kind, n_weights=n_weights)


# --- metrics -------------------------------------------------------------------------------


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's correlation needs)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    new = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends - 1) / 2.0
    out = np.empty(len(x), dtype=np.float64)
    out[order] = np.repeat(avg, ends - starts)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(ranks(a), ranks(b))


def scores(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "spearman": spearman(actual, predicted),
        "pearson": pearson(actual, predicted),
        "rmse": float(np.sqrt(np.mean((actual - predicted) ** 2))),
    }


# --- cross-validation ----------------------------------------------------------------------


@dataclasses.dataclass
class CrossValidation:
    """Out-of-fold predictions and the fold models of one model kind."""

    kind: str
    predicted: np.ndarray  # (n_runs,): each run predicted by the fold model that never saw it
    fold_models: list[Regressor]
    fold_scores: list[dict[str, float]]

    def summary(self, actual: np.ndarray) -> dict[str, Any]:
        pooled = scores(actual, self.predicted)
        per_fold = {
            key: {
                "mean": float(np.nanmean([s[key] for s in self.fold_scores])),
                "std": float(np.nanstd([s[key] for s in self.fold_scores])),
            }
            for key in ("spearman", "pearson", "rmse")
        }
        out: dict[str, Any] = {**pooled, "per_fold": per_fold}
        rounds = [m.rounds for m in self.fold_models if isinstance(m, BoosterModel)]
        if rounds:
            out["rounds"] = rounds
        return out


def cross_validate(
    kind: str,
    x: np.ndarray,
    loss: np.ndarray,
    folds: np.ndarray,
    groups: np.ndarray,
    settings: BoostSettings,
    n_weights: int | None = None,
    scored: np.ndarray | None = None,
) -> CrossValidation:
    """Out-of-fold predictions of every row of `x`; the folds' scores count only the `scored` rows
    (a trajectory fit trains on every step but is judged at one), all rows by default."""
    predicted = np.empty_like(loss)
    scored = np.ones(len(loss), dtype=bool) if scored is None else scored
    models: list[Regressor] = []
    fold_scores: list[dict[str, float]] = []
    for fold in range(int(folds.max()) + 1):
        held = folds == fold
        model = fit_model(
            kind, x[~held], loss[~held], groups[~held], settings, settings.seed + fold, n_weights
        )
        predicted[held] = model.predict(x[held])
        models.append(model)
        judged = held & scored
        fold_scores.append(
            scores(loss[judged], predicted[judged])
            if judged.sum() >= 3
            else {
                "spearman": float("nan"),
                "pearson": float("nan"),
                "rmse": float(np.sqrt(np.mean((loss[judged] - predicted[judged]) ** 2))),
            }
        )
    return CrossValidation(kind, predicted, models, fold_scores)
