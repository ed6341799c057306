"""`mixlab mixtures select`: simulate many mixtures, score them with the fit, choose one.

Reads a FIT directory (``fit.json`` + models) and, for the full run's repetition limit, a
tokenize output or its ``token_counts.parquet``. Writes ``mixture.json`` through
`mixlab.mixture.Mixture` (weights, predicted target loss with its spread across the
cross-validation models, the natural and uniform mixtures' predictions, how it was chosen,
the constraints; the shape is documented there) and ``weights_vs_prior.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.mixture import MIXTURE_JSON, Mixture, Target
from mixlab.mixtures.config import SelectConfig
from mixlab.mixtures.fit import FIT_JSON, FittedModels, load_fit
from mixlab.mixtures.regression import BoosterModel
from mixlab.mixtures.sample import open_tokens
from mixlab.mixtures.targets import read_csv, weight_domains
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage
from mixlab.tables import read_table, write_table

CHUNK = 250_000  # mixtures simulated and scored at a time (bounds memory at a few tens of MB)

# --verify's trainer: verify(tokens, mixtures {name: {domain: weight}}, predicted {name: loss},
# target=Target, swarm_config=..., scale=..., seeds=[...]) -> the "verification" record (its
# shape: mixlab.mixture). mixlab.stages binds mixlab.proxy_models.verify.verify_mixtures.
VerifyFn = Callable[..., dict]


# --- simulation ----------------------------------------------------------------------------


def simulate_mixtures(
    prior: np.ndarray, n: int, sampler: Mapping[str, Any], rng: np.random.Generator
) -> np.ndarray:
    """`n` mixtures from the candidates' distribution, vectorised: (n, D), rows summing to 1.

    The same law as `mixtures sample` (Dirichlet around prior**power, concentration scale from
    log-spaced levels, weights below min_weight zeroed) without its one-by-one distinctness
    check, which matters for a few hundred proxies but not for scoring.
    """
    alpha = prior ** float(sampler["prior_power"])
    alpha = alpha / alpha.sum()
    levels = np.logspace(
        np.log10(sampler["spread_min"]), np.log10(sampler["spread_max"]), int(sampler["spread_levels"])
    )
    out = np.empty((0, len(prior)))
    while len(out) < n:
        m = n - len(out)
        spreads = rng.choice(levels, size=m)  # (m,)
        g = rng.gamma(alpha[None, :] * spreads[:, None])  # (m, D)
        total = g.sum(axis=1, keepdims=True)
        ok = (total[:, 0] > 0) & np.isfinite(total[:, 0])  # tiny concentrations can underflow to all zeros
        w = g[ok] / total[ok]
        w[w < float(sampler["min_weight"])] = 0.0
        w = w[w.sum(axis=1) > 0]
        out = np.vstack([out, w / w.sum(axis=1, keepdims=True)])
    return out


# --- constraints -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Per-domain lower and upper weight bounds (a box inside the simplex)."""

    lower: np.ndarray
    upper: np.ndarray
    available_tokens: np.ndarray | None  # train tokens per domain, when a token budget applies

    @property
    def trivial(self) -> bool:
        return bool((self.lower <= 0).all() and (self.upper >= 1).all())

    def feasible(self, w: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        return ((w >= self.lower - tol) & (w <= self.upper + tol)).all(axis=-1)

    def project(self, w: np.ndarray, iterations: int = 60) -> np.ndarray:
        """Euclidean projection of each row onto {sum w = 1, lower <= w <= upper}, by bisection on the shift."""
        if self.trivial:
            return w
        out = w.copy()
        bad = ~self.feasible(w)
        if not bad.any():
            return out
        v = w[bad]
        lo = (v - self.upper).min(axis=1)  # shift so large every weight sits at its lower bound...
        hi = (v - self.lower).max(axis=1)  # ...and so small every weight sits at its upper bound
        for _ in range(iterations):
            mid = (lo + hi) / 2
            s = np.clip(v - mid[:, None], self.lower, self.upper).sum(axis=1)
            lo = np.where(s > 1, mid, lo)
            hi = np.where(s > 1, hi, mid)
        p = np.clip(v - ((lo + hi) / 2)[:, None], self.lower, self.upper)
        out[bad] = p / p.sum(axis=1, keepdims=True)
        return out


def read_available_tokens(tokens: Path, domains: list[str]) -> np.ndarray:
    """Train tokens per domain from a tokenize output directory or a token_counts.parquet file."""
    if tokens.is_dir():
        found = open_tokens(tokens).tokens("train")
    else:
        table = read_table(tokens, required=("domain", "split", "tokens"), allow_empty=True)
        train = (
            table.filter(pc.equal(table["split"], "train")).group_by("domain").aggregate([("tokens", "sum")])
        )
        found = dict(zip(train["domain"].to_pylist(), train["tokens_sum"].to_pylist()))
    missing = [d for d in domains if d not in found]
    if missing:
        raise InputError(f"{tokens}: no train token counts for domain(s) {missing} (found: {sorted(found)})")
    return np.array([found[d] for d in domains], dtype=np.float64)


def make_bounds(cfg: SelectConfig, domains: list[str], tokens: Path | None) -> Bounds:
    unknown = [d for key in ("min_weight", "max_weight") for d in getattr(cfg, key) if d not in domains]
    if unknown:
        raise ConfigError(
            f"--min-weight / --max-weight: unknown domain(s) {unknown} (domains: {', '.join(domains)})"
        )
    lower = np.array([cfg.min_weight.get(d, 0.0) for d in domains])
    upper = np.array([cfg.max_weight.get(d, 1.0) for d in domains])
    available = None
    if cfg.token_budget and tokens is None:
        raise ConfigError(
            "--token-budget: pass --tokens (a tokenize output or token_counts.parquet) to know each domain's tokens"
        )
    if cfg.verify and (tokens is None or not tokens.is_dir()):
        raise ConfigError("--verify: pass --tokens DIR, the tokenize output the swarm trained on")
    if tokens is not None and not cfg.token_budget and not cfg.verify:
        raise ConfigError(
            "--tokens: pass --token-budget too (the full run's tokens) so the epoch limit can apply"
        )
    if tokens is not None and cfg.token_budget:
        available = read_available_tokens(tokens, domains)
        upper = np.minimum(upper, cfg.max_epochs * available / cfg.token_budget)
    problems = [d for d, lo, hi in zip(domains, lower, upper) if lo > hi + 1e-12]
    if problems:
        raise ConfigError(
            f"--min-weight: domain(s) {problems} cannot reach their minimum within --max-weight / "
            f"--max-epochs {cfg.max_epochs} x available tokens over --token-budget {cfg.token_budget:,}"
        )
    if lower.sum() > 1 + 1e-9:
        raise ConfigError(f"--min-weight: the minimums sum to {lower.sum():.3g} > 1")
    if upper.sum() < 1 - 1e-9:
        detail = (
            f"; the corpus has {int(available.sum()):,} train tokens, at most {cfg.max_epochs} epochs cover "
            f"{int(cfg.max_epochs * available.sum()):,} of the --token-budget {cfg.token_budget:,}"
            if available is not None
            else ""
        )
        raise ConfigError(
            f"--max-weight / --max-epochs: the upper bounds sum to {upper.sum():.3g} < 1, no mixture fits{detail}; "
            "raise --max-epochs or the bounds, lower --token-budget, or add data"
        )
    return Bounds(lower, upper, available)


# --- scoring and choosing --------------------------------------------------------------------


def kl_from_prior(w: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """KL(w || prior) in nats; zero weights contribute nothing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, w * np.log(w / np.maximum(prior, 1e-300)), 0.0)
    return terms.sum(axis=-1)


def best_k(
    candidates: np.ndarray, scores: np.ndarray, best: tuple[np.ndarray, np.ndarray] | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge a chunk into the running best `k` (weights, scores), lowest score first."""
    if best is not None:
        candidates, scores = np.vstack([best[0], candidates]), np.concatenate([best[1], scores])
    if len(scores) > k:
        keep = np.argpartition(scores, k - 1)[:k]
        candidates, scores = candidates[keep], scores[keep]
    order = np.argsort(scores, kind="stable")
    return candidates[order], scores[order]


def score_lowest(
    fitted: FittedModels,
    w: np.ndarray,
    k: int,
    best: tuple[np.ndarray, np.ndarray] | None,
    ranges: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the rows of `w` that can enter the running best `k` (LightGBM: pruned while scoring)."""
    if isinstance(fitted.final, BoosterModel):
        threshold = float(best[1][-1]) if best is not None and len(best[1]) >= k else np.inf
        rows, scores = fitted.final.predict_lowest(fitted.design(w), k, threshold, ranges)
        return best_k(w[rows], scores, best, k)
    return best_k(w, fitted.predict(w), best, k)


def search_top_k(
    fitted: FittedModels,
    cfg: SelectConfig,
    bounds: Bounds,
    sampler: Mapping[str, Any],
    prior: np.ndarray,
    max_kl: float | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Simulate, constrain, score in chunks; the best `top_k` (lowest predicted loss). Also: how many were kept."""
    rng = np.random.default_rng([cfg.seed, 0x5E1EC7])
    ranges = fitted.final.tree_ranges() if isinstance(fitted.final, BoosterModel) else None
    best = None
    kept = 0
    for start in range(0, cfg.samples, CHUNK):
        w = bounds.project(simulate_mixtures(prior, min(CHUNK, cfg.samples - start), sampler, rng))
        if max_kl is not None:
            w = w[kl_from_prior(w, prior) <= max_kl]
        kept += len(w)
        if len(w):
            best = score_lowest(fitted, w, cfg.top_k, best, ranges)
    if best is None:
        raise ConfigError(
            f"--max-kl {max_kl}: none of the {cfg.samples:,} simulated mixtures lies that close to the prior "
            "within the constraints; raise --max-kl or --samples"
        )
    return best[0], best[1], kept


def local_search(
    fitted: FittedModels,
    cfg: SelectConfig,
    bounds: Bounds,
    prior: np.ndarray,
    start: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Refine the best mixtures by Dirichlet perturbations around them, staying in the box and within --max-kl.

    Derivative-free on purpose: a tree ensemble is piecewise constant, so gradients say nothing.
    """
    rng = np.random.default_rng([cfg.seed, 0x10CA1])
    ranges = fitted.final.tree_ranges() if isinstance(fitted.final, BoosterModel) else None
    best = start
    per_round = max(cfg.samples // max(cfg.search_rounds, 1) // 4, cfg.top_k)
    d = len(prior)
    for r in range(cfg.search_rounds):
        concentration = 50.0 * d * 2**r  # each round looks more closely around the current best
        parents = best[0][rng.integers(len(best[0]), size=per_round)]
        g = rng.gamma(parents * concentration + 1e-3)
        w = bounds.project(g / g.sum(axis=1, keepdims=True))
        w = w[kl_from_prior(w, prior) <= cfg.max_kl]
        if len(w):
            best = score_lowest(fitted, w, cfg.top_k, best, ranges)
    return best


def predict_with_spread(fitted: FittedModels, w: np.ndarray) -> dict[str, Any]:
    """The final model's prediction and the cross-validation models' spread around it."""
    w = np.atleast_2d(w)
    folds = fitted.predict_folds(w)[:, 0]
    return {
        "predicted_target_loss": float(fitted.predict(w)[0]),
        "spread": {
            "mean": float(folds.mean()),
            "std": float(folds.std()),
            "min": float(folds.min()),
            "max": float(folds.max()),
            "folds": folds.tolist(),
        },
    }


def run_mixtures_select(
    inputs: Inputs,
    cfg: SelectConfig,
    out_dir: OutDir,
    client: Any = None,
    *,
    force: bool = False,
    verify: VerifyFn | None = None,
) -> Manifest:
    """Choose the mixture from a FIT directory; `inputs`: {"fit": dir, "tokens": path or None}.

    `verify` trains the chosen, natural and uniform mixtures at a larger proxy size for
    --verify (`mixlab.proxy_models.verify.verify_mixtures`, bound by the stage registry: the
    mixture search itself trains nothing). Scoring is vectorised and runs in-process (no
    Dask client used).
    """
    inputs = absolute_inputs(inputs)
    fit_dir, tokens = inputs["fit"], inputs.get("tokens")
    if cfg.verify and verify is None:
        raise ConfigError(
            "--verify: this call has no verify function to train the larger proxies with; run "
            "`mixlab mixtures select --verify`, or pass verify=mixlab.proxy_models.verify.verify_mixtures"
        )

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        fitted = load_fit(fit_dir, None if cfg.model == "chosen" else cfg.model, cfg.num_threads)
        mixture, bounds = choose(fitted, cfg, tokens, where=str(fit_dir / FIT_JSON))
        chosen = np.array([mixture["weights"][d] for d in fitted.domains])
        if cfg.verify:
            assert verify is not None and tokens is not None  # checked above and by make_bounds
            target = Target.from_record(fitted.fit["target"], None, where=str(fit_dir / FIT_JSON))
            mixture["verification"] = verify_chosen(verify, tokens, fitted, chosen, mixture, target, cfg)
            mixture["warnings"].extend(verification_warnings(mixture["verification"]))
        path = stage.out / MIXTURE_JSON
        Mixture.from_record(mixture, str(path)).write(path)
        plot_weights(fitted.domains, chosen, fitted.prior, stage.out / "weights_vs_prior.png")
        log(
            f"mixtures select: predicted target loss {mixture['predicted_target_loss']:.4g} "
            f"(+- {mixture['spread']['std']:.2g}); natural {mixture['natural']['predicted_target_loss']:.4g}, "
            f"uniform {mixture['uniform']['predicted_target_loss']:.4g}"
        )
        return {"samples": cfg.samples, "domains": len(fitted.domains)}, select_stats(mixture)

    return run_stage("mixtures_select", cfg, {"fit": fit_dir, "tokens": tokens}, out_dir, body, force=force)


def choose_mixture(fitted: FittedModels, cfg: SelectConfig, tokens: Path | None = None) -> dict[str, Any]:
    """The mixture.json record (without --verify) for a fit in memory or loaded: nothing is written.

    For `mixlab search` and notebooks: `fitted` from `load_fit` or `FitResult.fitted()`.
    """
    return choose(fitted, cfg, tokens)[0]


def choose(
    fitted: FittedModels, cfg: SelectConfig, tokens: Path | None, where: str = "fit"
) -> tuple[dict[str, Any], Bounds]:
    target = Target.from_record(fitted.fit["target"], None, where=where)
    bounds = make_bounds(cfg, fitted.domains, tokens)
    results, kept = search(fitted, cfg, bounds)
    chosen = results[cfg.method]["weights"]
    chosen = chosen / chosen.sum()
    return mixture_record(fitted, cfg, bounds, results, chosen, kept, target), bounds


def sampling_law(recorded: Mapping[str, Any], cfg: SelectConfig) -> dict[str, Any]:
    """The sampler the fit recorded (the candidates'), with --prior-power and --spread applied."""
    sampler = dict(recorded)
    if cfg.prior_power is not None:
        sampler["prior_power"] = cfg.prior_power
    if cfg.spread:
        low, high = cfg.spread[0], cfg.spread[-1]
        sampler.update(
            spread_min=low, spread_max=high, spread_levels=1 if low == high else sampler["spread_levels"]
        )
    return sampler


def search(fitted: FittedModels, cfg: SelectConfig, bounds: Bounds) -> tuple[dict[str, dict[str, Any]], int]:
    """The mean of the best `top_k` by method (topk, and near-prior when asked); how many topk kept."""
    sampler, prior = sampling_law(fitted.fit["sampler"], cfg), fitted.prior
    top_w, top_s, kept = search_top_k(fitted, cfg, bounds, sampler, prior, None)
    results = {
        "topk": {"weights": top_w.mean(axis=0), "top_k_predicted": [float(top_s.min()), float(top_s.max())]}
    }
    if cfg.method == "near-prior":
        near = search_top_k(fitted, cfg, bounds, sampler, prior, cfg.max_kl)
        near_w, near_s = local_search(fitted, cfg, bounds, prior, near[:2])
        results["near-prior"] = {
            "weights": near_w.mean(axis=0),
            "top_k_predicted": [float(near_s.min()), float(near_s.max())],
        }
    return results, kept


def prediction(fitted: FittedModels, bounds: Bounds, w: np.ndarray) -> dict[str, Any]:
    """A mixture's entry in mixture.json: weights, predicted loss and spread, KL from the prior, feasibility."""
    return {
        "weights": {d: float(x) for d, x in zip(fitted.domains, w)},
        **predict_with_spread(fitted, w),
        "kl_from_prior": float(kl_from_prior(w, fitted.prior)),
        "feasible": bool(bounds.feasible(w)),
    }


def mixture_record(
    fitted: FittedModels,
    cfg: SelectConfig,
    bounds: Bounds,
    results: Mapping[str, Mapping[str, Any]],
    chosen: np.ndarray,
    kept: int,
    target: Target,
) -> dict[str, Any]:
    """mixture.json without the verification: the chosen mixture, the baselines and how it was chosen."""
    fit, domains = fitted.fit, fitted.domains
    kind = cfg.model if cfg.model != "chosen" else fit["chosen"]
    uniform = np.full(len(domains), 1.0 / len(domains))
    chosen_info = prediction(fitted, bounds, chosen)
    natural_info, uniform_info = prediction(fitted, bounds, fitted.prior), prediction(fitted, bounds, uniform)
    alternatives = {
        name: {
            "weights": {d: float(x) for d, x in zip(domains, r["weights"])},
            "predicted_target_loss": float(fitted.predict(r["weights"][None, :])[0]),
        }
        for name, r in results.items()
        if name != cfg.method
    }
    return {
        **chosen_info,
        "natural": natural_info,
        "uniform": uniform_info,
        "method": method_record(cfg, kind, kept, sampling_law(fit["sampler"], cfg)),
        "alternatives": alternatives,
        "target": target.to_record(),
        "constraints": constraints_record(cfg, bounds, domains, chosen),
        "prior": fit["prior"],
        "held_out": {m: fit["models"][kind][m] for m in ("spearman", "pearson", "rmse")},
        # seed-to-seed spread of the target loss (from --repeats), so pretrain can judge its gaps
        "noise_floor": fit["noise_floor"],
        "warnings": choice_warnings(fit, domains, chosen, chosen_info, natural_info, uniform_info),
    }


def choice_warnings(
    fit: Mapping[str, Any],
    domains: list[str],
    chosen: np.ndarray,
    chosen_info: Mapping[str, Any],
    natural_info: Mapping[str, Any],
    uniform_info: Mapping[str, Any],
) -> list[str]:
    """Extrapolation beyond the runs' weights, and a choice not predicted to beat the baselines."""
    warnings = []
    lo, hi = np.array(fit["weights_range"]["min"]), np.array(fit["weights_range"]["max"])
    outside = [d for d, x, a, b in zip(domains, chosen, lo, hi) if x < a - 1e-9 or x > b + 1e-9]
    if outside:
        warnings.append(
            f"the chosen weights of {outside} lie outside the range the runs covered (extrapolation)"
        )
    lowest_run = fit["target_loss"]["min"]
    if chosen_info["predicted_target_loss"] < lowest_run:
        warnings.append(
            f"the chosen mixture's predicted target loss {chosen_info['predicted_target_loss']:.4g} lies below "
            f"every training run's (lowest {lowest_run:.4g}): the model extrapolates there, so take the number as "
            "optimistic (--verify measures it; proxies near it sharpen the fit)"
        )
    if chosen_info["predicted_target_loss"] > min(
        natural_info["predicted_target_loss"], uniform_info["predicted_target_loss"]
    ):
        warnings.append("the chosen mixture is not predicted to beat the natural and uniform mixtures")
    for w in warnings:
        log(f"mixtures select: warning: {w}")
    return warnings


def constraints_record(
    cfg: SelectConfig, bounds: Bounds, domains: list[str], chosen: np.ndarray
) -> dict[str, Any]:
    """The box the mixture was chosen in and, under a token budget, each domain's epochs."""
    constraints: dict[str, Any] = {
        "lower": {d: float(x) for d, x in zip(domains, bounds.lower)},
        "upper": {d: float(x) for d, x in zip(domains, bounds.upper)},
        "token_budget": cfg.token_budget or None,
        "max_epochs": cfg.max_epochs if bounds.available_tokens is not None else None,
    }
    if bounds.available_tokens is not None:
        constraints["epochs"] = {
            d: float(x * cfg.token_budget / a) for d, x, a in zip(domains, chosen, bounds.available_tokens)
        }
    return constraints


def method_record(cfg: SelectConfig, kind: str, kept: int, sampler: Mapping[str, Any]) -> dict[str, Any]:
    method = {
        "name": cfg.method,
        "model": kind,
        "samples": cfg.samples,
        "samples_kept": kept,
        "top_k": cfg.top_k,
        "sampler": dict(sampler),
        "description": (
            f"mean of the {cfg.top_k} lowest predicted losses among {cfg.samples:,} mixtures simulated "
            "from the candidates' prior"
            if cfg.method == "topk"
            else f"mean of the {cfg.top_k} lowest predicted losses among simulated mixtures within KL "
            f"{cfg.max_kl} of the prior, refined by {cfg.search_rounds} rounds of local search"
        ),
    }
    if cfg.method == "near-prior":
        method["max_kl"] = cfg.max_kl
    return method


# --- the second-scale check (--verify), through the hook ------------------------------------


def verify_chosen(
    verify: VerifyFn,
    tokens: Path,
    fitted: FittedModels,
    chosen: np.ndarray,
    mixture: Mapping[str, Any],
    target: Target,
    cfg: SelectConfig,
) -> dict[str, Any]:
    """The verification record: chosen, natural and uniform re-trained at the larger proxy size."""
    uniform = np.full(len(fitted.domains), 1.0 / len(fitted.domains))
    named = {"chosen": chosen, "natural": fitted.prior, "uniform": uniform}
    predicted = {"chosen": mixture, "natural": mixture["natural"], "uniform": mixture["uniform"]}
    return verify(
        tokens,
        {n: as_weights(fitted.domains, w) for n, w in named.items()},
        {n: p["predicted_target_loss"] for n, p in predicted.items()},
        target=target,
        swarm_config=fitted.fit["swarm_config"],
        scale=cfg.verify_scale,
        seeds=[cfg.seed + 1000 + s for s in range(cfg.verify_seeds)],
    )


def verification_warnings(check: Mapping[str, Any]) -> list[str]:
    """Only the chosen mixture's standing is worth a warning: natural and uniform swapping places
    when their predictions differ by less than the noise is not news."""
    worse = [n for n, c in check["comparisons"].items() if c["verdict"].startswith("worse")]
    if worse:
        warning = f"at the larger proxy size the chosen mixture measured worse than {', '.join(worse)}"
    elif not check["chosen_beats_baselines"]:
        warning = "at the larger proxy size the chosen mixture's lead is within seed noise"
    else:
        return []
    log(f"mixtures select: warning: {warning}")
    return [warning]


def select_stats(mixture: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's statistics, from mixture.json."""
    stats = {
        "weights": mixture["weights"],
        "predicted_target_loss": mixture["predicted_target_loss"],
        "natural_predicted": mixture["natural"]["predicted_target_loss"],
        "uniform_predicted": mixture["uniform"]["predicted_target_loss"],
        "warnings": mixture["warnings"],
    }
    if "verification" in mixture:
        v = mixture["verification"]
        stats["verification"] = {
            "ordering_holds": v["ordering_holds"],
            "chosen_beats_baselines": v["chosen_beats_baselines"],
            "measured": {n: m["measured"] for n, m in v["mixtures"].items()},
        }
    return stats


def as_weights(domains: list[str], w: np.ndarray) -> dict[str, float]:
    """Weights as a {domain: weight} summing to one exactly enough for the swarm's check."""
    w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
    w = w / w.sum()
    return {d: float(x) for d, x in zip(domains, w)}


def plot_weights(domains: list[str], chosen: np.ndarray, prior: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(domains) + 2), 3.5), dpi=100)
    ax.bar(x - 0.2, prior, width=0.4, label="prior (natural)", color="#9aa5b1")
    ax.bar(x + 0.2, chosen, width=0.4, label="chosen", color="#2b6cb0")
    ax.axhline(1.0 / len(domains), color="grey", lw=1, ls=":", label="uniform")
    ax.set_xticks(x, domains, rotation=30, ha="right")
    ax.set_ylabel("weight")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- predicting given mixtures (`mixlab mixtures predict`) -----------------------------------


def read_mixtures(path: Path, domains: list[str], renormalize: bool = False) -> tuple[list[str], np.ndarray]:
    """(names, (n, D) weights in `domains` order) of the mixtures in a file.

    A table (parquet or CSV: w.<domain> columns, or columns named as the fit's domains; rows
    named by run_id / name / run / index when present, e.g. candidates.parquet or runs.parquet)
    or a mixture JSON (mixture.json, or {domain: weight}).
    Domains the file leaves out weigh 0; a domain the fit never saw is an error.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        weights = Mixture.read(path).weights
        names, found = [path.stem], dict(weights)
        table = {f"w.{d}": np.array([w]) for d, w in found.items()}
    else:
        if path.suffix.lower() == ".csv":
            arrow = read_csv(path).to_arrow()
        else:
            arrow = read_table(path, fix="pass w.<domain> columns")
        if not any(c.startswith("w.") for c in arrow.column_names):
            # A table in the fit's own domain names (RegMix's or Olmix's mixtures CSV).
            arrow = arrow.rename_columns([f"w.{c}" if c in domains else c for c in arrow.column_names])
        cols = [c for c in arrow.column_names if c.startswith("w.")]
        if not cols:
            raise InputError(
                f"{path}: no w.<domain> weight columns (columns: {', '.join(arrow.column_names)}); "
                "pass candidates.parquet, runs.parquet, a CSV with w.<domain> columns or a mixture.json"
            )
        label = next((c for c in ("run_id", "name", "run", "index") if c in arrow.column_names), None)
        names = (
            [str(x) for x in arrow.column(label).to_pylist()]
            if label
            else [str(i) for i in range(arrow.num_rows)]
        )
        table = {c: arrow.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in cols}
        found = dict.fromkeys(weight_domains(cols))
    unknown = [d for d in found if d not in domains]
    if unknown:
        raise InputError(
            f"{path}: weights for domain(s) {unknown} the fit never saw (its domains: {', '.join(domains)}); "
            "predict only mixtures of the fit's domains"
        )
    n = len(names)
    w = np.column_stack([table.get(f"w.{d}", np.zeros(n)) for d in domains])
    sums = w.sum(axis=1)
    bad = ~np.isfinite(w).all(axis=1) | (w < 0).any(axis=1) | (sums <= 0)
    if bad.any():
        raise InputError(
            f"{path}: mixture {names[int(np.flatnonzero(bad)[0])]!r} has negative, missing or all-zero weights"
        )
    off = np.abs(sums - 1) > 1e-3
    if off.any() and not renormalize:
        raise InputError(
            f"{path}: the weights of {int(off.sum())} mixture(s) do not sum to 1 (e.g. {names[int(np.flatnonzero(off)[0])]!r}: "
            f"{float(sums[off][0]):.4g}); pass --renormalize to rescale them"
        )
    return names, w / sums[:, None]


def predict_mixtures(fitted: FittedModels, names: list[str], weights: np.ndarray) -> pa.Table:
    """name, w.<domain>..., predicted_target_loss and the cross-validation models' spread (mean, std, min, max)."""
    folds = fitted.predict_folds(weights)  # (n_folds, n)
    columns: dict[str, Any] = {"name": pa.array(names, pa.string())}
    for j, d in enumerate(fitted.domains):
        columns[f"w.{d}"] = pa.array(weights[:, j], pa.float64())
    columns["predicted_target_loss"] = pa.array(fitted.predict(weights), pa.float64())
    for stat in ("mean", "std", "min", "max"):
        columns[f"spread_{stat}"] = pa.array(getattr(folds, stat)(axis=0), pa.float64())
    return pa.table(columns)


def predict_file(
    fit_dir: Path,
    mixtures: Path,
    out: Path | None = None,
    *,
    model: str = "chosen",
    renormalize: bool = False,
) -> pa.Table:
    """`mixlab mixtures predict`: the predictions of the mixtures in a file, written to `out` (parquet) when given.

    Everything is read and checked before `out` is written (atomically), so a refusal leaves nothing.
    """
    fitted = load_fit(fit_dir, None if model == "chosen" else model)
    names, weights = read_mixtures(mixtures, fitted.domains, renormalize)
    table = predict_mixtures(fitted, names, weights)
    lowest = fitted.fit["target_loss"]["min"]
    below = [n for n, p in zip(names, table.column("predicted_target_loss").to_pylist()) if p < lowest]
    if below:
        log(
            f"mixtures predict: warning: {len(below)} mixture(s) (e.g. {below[0]!r}) are predicted below every "
            f"training run's target loss (lowest {lowest:.4g}): the model extrapolates there"
        )
    if out is not None:
        if out.suffix != ".parquet":
            raise ConfigError(f"--out {out}: give a .parquet file name")
        write_table(table, out)
    return table


def format_predictions(table: pa.Table, limit: int = 50) -> str:
    """The predictions as a plain text table, best first (at most `limit` rows)."""
    rows = sorted(table.to_pylist(), key=lambda r: r["predicted_target_loss"])
    weight_cols = [c for c in table.column_names if c.startswith("w.")]
    head = ["name", *weight_cols, "predicted", "+-std"]
    body = [
        [
            str(r["name"]),
            *(f"{r[c]:.3f}" for c in weight_cols),
            f"{r['predicted_target_loss']:.4f}",
            f"{r['spread_std']:.2g}",
        ]
        for r in rows[:limit]
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head, *body]]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (pass --out FILE.parquet for all)")
    return "\n".join(lines)
