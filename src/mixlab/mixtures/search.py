"""`mixlab search`: the mixture found iteratively, a few proxies at a time, instead of all up front.

Round 1 samples candidates around the token prior (`mixtures sample`) and trains them with the
data experts and a few repeated seeds (the swarm, through the `train` hook the stage registry
binds, since mixtures/ trains nothing). Every round then fits the runs so far (`mixtures fit`),
scores simulated mixtures with the fit and its cross-validation fold models, and trains the
ones an upper-confidence rule picks: lowest ``predicted - bonus x spread of the fold models``,
each at least --min-distance (L1) from every mixture trained so far. It stops at --budget
proxies (experts and repeats included), or once the predicted best's spread is below the
swarm's noise floor. Writes ``round_NN/{candidates,swarm,runs,fit}/`` and ``round_NN/choice.parquet``
per round, ``rounds.parquet`` (how the choice converged) and ``mixture.json`` (`mixtures select`
on the last fit; its ``select/`` output beside it), which pretrain reads like select's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from mixlab.cluster import dask_client
from mixlab.config import check_choices, option
from mixlab.console import log
from mixlab.errors import ConfigError
from mixlab.mixture import MIXTURE_JSON
from mixlab.mixtures.config import FitConfig, SampleConfig, SelectConfig
from mixlab.mixtures.experts import EXPERTS_DIR, has_experts
from mixlab.mixtures.fit import load_fit, run_mixtures_fit, runs_needed
from mixlab.mixtures.sample import CANDIDATES, open_tokens, run_mixtures_sample, train_prior
from mixlab.mixtures.select import kl_from_prior, run_mixtures_select, simulate_mixtures
from mixlab.stage import (
    Inputs,
    Manifest,
    OutDir,
    StageDir,
    TaskMarkers,
    absolute_inputs,
    derive_rng,
    derive_seed,
    run_stage,
    write_json,
)
from mixlab.tables import write_table

ROUNDS = "rounds.parquet"
RUNS = "runs.parquet"
SEARCH_OWN = ("experts", "repeats", "repeat_mixtures")  # swarm keys the search sets itself

# The swarm's trainer: train(candidates, tokens, out_dir, settings, client) -> the swarm's
# Manifest, with `settings` the keys of `mixlab swarm train`. mixlab.stages binds it to
# mixlab.proxy_models.swarm.run_swarm_train.
TrainFn = Callable[..., Manifest]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """`mixlab search`: the total proxy budget, how it is spent per round, and the acquisition rule."""

    budget: int = option(64, "proxies to train in all (data experts and repeated seeds included)")
    first_round: int = option(0, "proxies in round 1 (0: half the budget, at least what a fit needs)")
    per_round: int = option(0, "proxies in each later round (0: an eighth of the budget, at least 2)")
    experts: bool = option(True, "train the data experts in round 1 and fit on [weights, expert feature]")
    repeats: int = option(2, "round 1: seeds per repeated mixture (the noise floor the search stops at)")
    repeat_mixtures: int = option(2, "round 1: how many candidates are trained --repeats times")
    target: str = option("mean", "what to minimise: mean, a loss name, or weights like code=0.5,prose=0.5")
    model: str = option(
        "auto",
        "the fitted model that scores mixtures: auto (best held-out Spearman), lightgbm, linear, loglinear",
        choices=("auto", "lightgbm", "linear", "loglinear"),
    )
    folds: int = option(5, "cross-validation folds of each round's fit (their spread is the uncertainty)")
    bonus: float = option(1.0, "acquisition: predicted loss minus this many fold-model standard deviations")
    min_distance: float = option(0.1, "diversity floor: L1 distance of a new mixture to every trained one")
    min_rounds: int = option(2, "rounds trained before the noise-floor stop may end the search early")
    pool: int = option(20_000, "mixtures simulated and scored per round to choose from")
    samples: int = option(100_000, "the final choice: mixtures `mixtures select` simulates from the last fit")
    top_k: int = option(128, "the final choice: best-scoring mixtures averaged")
    swarm: dict[str, Any] = option(
        {}, "the proxies: keys of `mixlab swarm train` (YAML mapping, or steps=40,n_embd=64)"
    )
    seed: int = option(0, "global seed of the candidates, folds and simulated mixtures")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.budget < 2 or self.first_round < 0 or self.per_round < 0:
            raise ConfigError("--budget must be at least 2; --first-round / --per-round must not be negative")
        if self.repeats < 1 or self.repeat_mixtures < 0 or self.folds < 2 or self.min_rounds < 1:
            raise ConfigError(
                "--repeats / --min-rounds must be at least 1, --repeat-mixtures not negative, --folds at least 2"
            )
        if self.bonus < 0 or self.min_distance < 0 or self.pool < 1 or self.samples < self.top_k:
            raise ConfigError(
                "--bonus / --min-distance must not be negative; --pool >= 1; --samples >= --top-k"
            )
        own = [k for k in SEARCH_OWN if k in self.swarm]
        if own:
            raise ConfigError(
                f"--swarm: {own} are set by the search itself (--experts, --repeats, --repeat-mixtures)"
            )

    def plan(self, n_domains: int) -> tuple[int, int, int]:
        """(round-1 candidates, round-1 proxies, proxies per later round), or why the budget is too small."""
        minimum, _ = runs_needed(n_domains, self.folds)
        extra = n_domains if self.experts else 0
        first = self.first_round or max(minimum, self.budget // 2)
        # candidates such that candidates + experts + repeats == first
        candidates = first - extra - (self.repeats - 1) * min(self.repeat_mixtures, first)
        if first > self.budget or first < minimum or candidates < 2:
            raise ConfigError(
                f"--budget {self.budget}: smaller than one round. Round 1 needs at least {minimum} runs for "
                f"{n_domains} domains to fit with --folds {self.folds}"
                + (f" ({extra} of them data experts)" if extra else "")
                + " and two sampled candidates; raise --budget or lower --first-round / --repeats"
            )
        proxies = candidates + extra + (self.repeats - 1) * min(self.repeat_mixtures, candidates)
        return candidates, proxies, self.per_round or max(2, self.budget // 8)


# --- choosing the next round's mixtures ------------------------------------------------------------


def acquire(
    fit_dir: Path, cfg: SearchConfig, trained: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[pa.Table, dict[str, Any]]:
    """The next `n` mixtures (lowest lower-confidence bound, diverse) and the predicted best now.

    Candidates are simulated from the fit's prior and sampler, plus perturbations around the
    currently best-predicted ones (the search narrows where it already looks good).
    """
    fitted = load_fit(fit_dir, None)
    prior, sampler = fitted.prior, fitted.fit["sampler"]
    pool = simulate_mixtures(prior, cfg.pool, sampler, rng)
    mean = fitted.predict(pool)
    best = pool[np.argsort(mean)[: max(8, cfg.pool // 100)]]
    d = len(prior)
    g = rng.gamma(best[rng.integers(len(best), size=cfg.pool // 2)] * 50.0 * d + 1e-3)
    local = g / g.sum(axis=1, keepdims=True)
    pool = np.vstack([pool, local])
    mean = np.concatenate([mean, fitted.predict(local)])
    # The fold models share all but one fold of the runs, so their spread understates the
    # uncertainty; the jackknife's sqrt(K - 1) scales it to one model's standard error.
    folds = fitted.predict_folds(pool)  # (K, n_pool)
    spread = folds.std(axis=0) * np.sqrt(max(1, len(folds) - 1))
    score = mean - cfg.bonus * spread
    chosen = diverse_lowest(pool, score, trained, n, cfg.min_distance)
    i_best = int(np.argmin(mean))
    rows = {
        "rank": np.arange(len(chosen)),
        "predicted": mean[chosen],
        "spread": spread[chosen],
        "acquisition": score[chosen],
        "min_distance": [float(np.abs(trained - pool[i]).sum(axis=1).min()) for i in chosen],
    }
    table = pa.table({**rows, **{f"w.{dom}": pool[chosen, j] for j, dom in enumerate(fitted.domains)}})
    best_now = {
        "predicted_best": float(mean[i_best]),
        "best_spread": float(spread[i_best]),
        "best_weights": {dom: float(x) for dom, x in zip(fitted.domains, pool[i_best])},
        "best_kl_from_prior": float(kl_from_prior(pool[i_best], prior)),
        "chosen_model": fitted.fit["chosen"] if cfg.model == "auto" else cfg.model,
        "held_out_spearman": float(fitted.fit["models"][fitted.fit["chosen"]]["spearman"]),
        "noise_floor": (fitted.fit["noise_floor"] or {}).get("rmse"),
    }
    return table, best_now


def diverse_lowest(
    pool: np.ndarray, score: np.ndarray, trained: np.ndarray, n: int, floor: float
) -> list[int]:
    """Indices of the `n` lowest scores whose L1 distance to every trained and picked mixture is >= floor.

    Greedy in score order; the loop is over picks (a handful per round), each a vectorised
    distance check against the whole pool.
    """
    taken = np.array(trained, dtype=np.float64)
    alive = np.abs(pool[:, None, :] - taken[None, :, :]).sum(axis=2).min(axis=1) >= floor
    chosen: list[int] = []
    order = np.argsort(score, kind="stable")
    for _ in range(n):
        candidates = order[alive[order]]
        if not len(candidates):
            break
        i = int(candidates[0])
        chosen.append(i)
        alive &= np.abs(pool - pool[i]).sum(axis=1) >= floor
    return chosen


# --- the stage ----------------------------------------------------------------------------------


def round_dir(out: Path, k: int) -> Path:
    return out / f"round_{k:02d}"


def candidates_from(table: pa.Table, round_no: int, seed: int) -> pa.Table:
    """A choice table as swarm candidates: run ids unique across rounds, seeds derived from them."""
    run_ids = [f"s{round_no:02d}x{i:03d}" for i in range(table.num_rows)]
    weights = [c for c in table.column_names if c.startswith("w.")]
    w = np.column_stack([table.column(c).to_numpy() for c in weights])
    w = np.clip(w, 0.0, None)
    w = w / w.sum(axis=1, keepdims=True)
    columns: dict[str, Any] = {
        "run_id": pa.array(run_ids, pa.string()),
        "seed": pa.array([derive_seed(seed, r, bits=31) for r in run_ids], pa.int64()),
        "kind": pa.array(["acquired"] * len(run_ids), pa.string()),
    }
    columns.update({c: pa.array(w[:, j], pa.float64()) for j, c in enumerate(weights)})
    return pa.table(columns)


def cumulative_runs(out: Path, rounds: int, dest: Path) -> pa.Table:
    """Every round's swarm runs so far as one runs.parquet in `dest`, with round 1's experts beside it."""
    tables = [pl.read_parquet(round_dir(out, k) / "swarm" / RUNS) for k in range(1, rounds + 1)]
    table = pl.concat(tables, how="diagonal_relaxed").to_arrow()
    write_table(table, dest / RUNS)
    first = round_dir(out, 1) / "swarm"
    if has_experts(first) and not (dest / EXPERTS_DIR).is_dir():
        shutil.copytree(first / EXPERTS_DIR, dest / EXPERTS_DIR)
    return table


def run_search(
    inputs: Inputs,
    cfg: SearchConfig,
    out_dir: OutDir,
    client: Any = None,
    *,
    force: bool = False,
    train: TrainFn | None = None,
) -> Manifest:
    """Search the mixture in rounds; `inputs`: {"tokens": a tokenize output}.

    `train` trains a round's candidates (`mixlab.stages` binds the swarm). Each finished round
    is marked, so a killed search resumes at the round it was in (and the swarm within it at
    its unfinished packs).
    """
    if train is None:
        raise ConfigError("search: this call has no train function; run `mixlab search`, or pass train=")
    inputs = absolute_inputs(inputs)
    tokens = inputs["tokens"]
    domains = list(train_prior(open_tokens(tokens), SampleConfig()))
    n_first, first_proxies, per_round = cfg.plan(len(domains))  # a too-small budget fails before any work

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        with dask_client(client) as dask:  # one cluster for every round's swarm
            return rounds(stage, dask)

    def rounds(stage: StageDir, client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        out = stage.out
        markers = TaskMarkers.in_work(stage.work, "rounds")
        fit_cfg = FitConfig(target=cfg.target, model=cfg.model, folds=cfg.folds, seed=cfg.seed)
        history: list[dict[str, Any]] = []
        used, k, stop = 0, 0, "budget spent"
        while True:
            k += 1
            here = round_dir(out, k)
            done = markers.get(here.name)
            if done is not None:
                history.append(done)
                used, stop = done["proxies"], done["stop"]
                if done["stop"]:
                    break
                continue
            settings = {**cfg.swarm, "experts": cfg.experts and k == 1}
            if k == 1:
                sample = SampleConfig(candidates=n_first, seed=cfg.seed)
                run_mixtures_sample({"tokens": tokens}, sample, here / "candidates")
                settings.update(repeats=cfg.repeats, repeat_mixtures=cfg.repeat_mixtures)
            swarm = train(here / "candidates" / CANDIDATES, tokens, here / "swarm", settings, client)
            used += int(swarm.counts["runs"])
            runs = cumulative_runs(out, k, here / "runs")
            run_mixtures_fit(
                {"runs": here / "runs", "candidates": round_dir(out, 1) / "candidates"}, fit_cfg, here / "fit"
            )
            trained = np.column_stack([runs.column(f"w.{d}").to_numpy() for d in domains])
            n_next = min(per_round, cfg.budget - used)
            rng = derive_rng(cfg.seed, "search", k)
            choice, best = acquire(here / "fit", cfg, trained, max(n_next, 1), rng)
            floor = best["noise_floor"]
            if n_next < 1:
                stop = "budget spent"
            elif floor is not None and k >= cfg.min_rounds and best["best_spread"] < floor:
                stop = f"the predicted best's spread {best['best_spread']:.4g} is below the noise floor {floor:.4g}"
            else:
                stop = ""
            if stop:
                choice = choice.slice(0, 0)
            if choice.num_rows:
                write_table(choice, here / "choice.parquet")
                write_table(
                    candidates_from(choice, k + 1, cfg.seed),
                    round_dir(out, k + 1) / "candidates" / CANDIDATES,
                )
            record = {
                "round": k,
                "proxies": used,
                "runs": runs.num_rows,
                "next": choice.num_rows,
                **best,
                "stop": stop,
            }
            write_json(here / "round.json", record)
            markers.mark(here.name, record)
            history.append(record)
            log(
                f"search: round {k}: {used}/{cfg.budget} proxies, predicted best {best['predicted_best']:.4g} "
                f"(spread {best['best_spread']:.2g}, {best['chosen_model']} held-out spearman "
                f"{best['held_out_spearman']:.3f})"
                + (f"; stop: {stop}" if stop else f"; next {choice.num_rows}")
            )
            if stop:
                break
        write_table(rounds_table(history, domains), out / ROUNDS)
        last = round_dir(out, len(history)) / "fit"
        select = SelectConfig(samples=cfg.samples, top_k=cfg.top_k, seed=cfg.seed)
        run_mixtures_select({"fit": last, "tokens": None}, select, out / "select")
        mixture = json.loads((out / "select" / MIXTURE_JSON).read_text())
        mixture["method"]["search"] = {
            "rounds": len(history),
            "proxies": used,
            "budget": cfg.budget,
            "stop": stop,
            "fit": str(last.relative_to(out)),
        }
        write_json(out / MIXTURE_JSON, mixture)
        counts = {"rounds": len(history), "proxies": used}
        stats = {
            "domains": domains,
            "weights": mixture["weights"],
            "predicted_target_loss": mixture["predicted_target_loss"],
            "stop": stop,
            "rounds": [
                {k: r[k] for k in ("round", "proxies", "predicted_best", "best_spread", "held_out_spearman")}
                for r in history
            ],
            "warnings": mixture.get("warnings", []),
        }
        return counts, stats

    return run_stage("search", cfg, {"tokens": tokens}, out_dir, body, force=force)


def rounds_table(history: list[Mapping[str, Any]], domains: list[str]) -> pa.Table:
    """rounds.parquet: per round the proxies so far, the predicted best, its spread and weights."""
    return pa.table(
        {
            "round": [r["round"] for r in history],
            "proxies": [r["proxies"] for r in history],
            "runs": [r["runs"] for r in history],
            "predicted_best": [r["predicted_best"] for r in history],
            "best_spread": [r["best_spread"] for r in history],
            "noise_floor": pa.array([r["noise_floor"] for r in history], pa.float64()),
            "model": [r["chosen_model"] for r in history],
            "held_out_spearman": [r["held_out_spearman"] for r in history],
            "next": [r["next"] for r in history],
            "stop": [r["stop"] for r in history],
            **{f"w.{d}": [r["best_weights"][d] for r in history] for d in domains},
        }
    )
