"""The mixture-search stages' configs: `mixtures sample`, `mixtures fit`, `mixtures select`.

Torch-free and light, so the CLI can build its flags without importing the stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mixlab.config import check_choices, check_weights, option
from mixlab.errors import ConfigError
from mixlab.mixtures.regression import BoostSettings

# The settings of the candidates' distribution, which select simulates mixtures from again.
SAMPLER_KEYS = ("prior_power", "spread_min", "spread_max", "spread_levels", "min_weight")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """`mixlab mixtures sample`: how many candidate mixtures, and how far from the prior they roam."""

    candidates: int = option(32, "candidate mixtures to write (the natural and uniform ones included)")
    prior_power: float = option(
        0.5, "the token prior is raised to this power before use (<1 favours small domains)"
    )
    spread_min: float = option(
        0.1, "smallest Dirichlet concentration scale (small: sparse, extreme mixtures)"
    )
    spread_max: float = option(5.0, "largest Dirichlet concentration scale (large: close to the prior)")
    spread_levels: int = option(15, "log-spaced scale values between --spread-min and --spread-max")
    min_weight: float = option(0.01, "weights below this are set to zero and the rest renormalised")
    max_epochs: float = option(
        4.0, "a domain may be repeated at most this many times within one proxy's tokens"
    )
    proxy_tokens: int = option(
        0,
        "tokens one proxy trains on (the swarm's steps x batch x seq_len), for the repetition cap; 0: no cap",
    )
    min_distance: float = option(0.05, "drop a candidate within this L1 distance of an earlier one")
    domains: tuple[str, ...] = option((), "domains to mix (default: every domain with train tokens)")
    holdout_domains: tuple[str, ...] = option(
        ("target",), "domains never mixed (validation-only sets such as a target corpus)"
    )
    seed: int = option(0, "global seed; each candidate's seed derives from it and its run_id")

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ConfigError("--candidates: must be at least 2 (the natural and uniform mixtures)")
        if not 0 < self.spread_min <= self.spread_max:
            raise ConfigError("--spread-min / --spread-max: need 0 < --spread-min <= --spread-max")
        if self.spread_levels < 1:
            raise ConfigError("--spread-levels: must be at least 1")
        if self.prior_power < 0:
            raise ConfigError("--prior-power: must not be negative")
        if not 0 <= self.min_weight < 1:
            raise ConfigError("--min-weight: must lie in [0, 1)")
        if self.max_epochs <= 0:
            raise ConfigError("--max-epochs: must be positive")
        if self.proxy_tokens < 0 or self.min_distance < 0:
            raise ConfigError("--proxy-tokens / --min-distance: must not be negative")

    def sampler(self) -> dict[str, Any]:
        """The candidates' distribution (recorded by fit for select): SAMPLER_KEYS and their values."""
        return {k: getattr(self, k) for k in SAMPLER_KEYS}


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """`mixlab mixtures fit`: a regressor from mixture weights to target loss, cross-validated."""

    target: str = option(
        "mean",
        "what to minimise: mean (of the domains' losses), a loss name, or weights like code=0.5,prose=0.5",
    )
    model: str = option(
        "lightgbm",
        "the model select uses: lightgbm, a baseline, or auto (best held-out Spearman)",
        choices=("lightgbm", "linear", "loglinear", "auto"),
    )
    folds: int = option(5, "cross-validation folds (repeated seeds of a mixture stay in one fold)")
    learning_rate: float = option(0.01, "LightGBM learning rate")
    max_rounds: int = option(1000, "LightGBM boosting rounds at most (early stopping picks fewer)")
    early_stopping_rounds: int = option(
        50, "stop when the inner validation loss has not improved for this many rounds"
    )
    valid_fraction: float = option(0.2, "share of a training fold's mixtures held out for early stopping")
    num_leaves: int = option(31, "LightGBM leaves per tree at most")
    min_data_in_leaf: int = option(
        0, "LightGBM minimum runs per leaf; 0 picks one that still splits small swarms"
    )
    prior: dict[str, float] = option(
        {},
        "natural mixture the candidates were drawn around (default: recorded with the runs, else their mean weights)",
    )
    num_threads: int = option(
        1, "LightGBM training threads (swarms are small: more threads only add overhead; 0: all cores)"
    )
    seed: int = option(0, "seed for folds, early-stopping splits and LightGBM")
    renormalize: bool = option(
        False,
        "rescale run weights that do not sum to 1 (e.g. rounded to 3 decimals) instead of refusing them",
    )
    at_step: int = option(
        0, "fit the losses at this recorded step of the swarm's trajectories.parquet (0: the final losses)"
    )
    trajectory: bool = option(
        False,
        "also train on every earlier recorded step, the step as a feature (predictions at --at-step or the end)",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.at_step < 0:
            raise ConfigError("--at-step: must not be negative (0: the runs' final losses)")
        if self.folds < 2:
            raise ConfigError("--folds: must be at least 2")
        if not 0 < self.learning_rate <= 1:
            raise ConfigError("--learning-rate: must be in (0, 1]")
        if self.max_rounds < 1 or self.early_stopping_rounds < 1:
            raise ConfigError("--max-rounds / --early-stopping-rounds: must be at least 1")
        if not 0 <= self.valid_fraction < 0.5:
            raise ConfigError("--valid-fraction: must be in [0, 0.5)")
        if self.num_leaves < 2:
            raise ConfigError("--num-leaves: must be at least 2")
        if self.min_data_in_leaf < 0 or self.num_threads < 0:
            raise ConfigError("--min-data-in-leaf / --num-threads: must not be negative")
        if self.prior:
            check_weights(self.prior, "prior", tol=1e-3)

    def boost_settings(self) -> BoostSettings:
        """LightGBM's settings: the fields of this config that BoostSettings names the same."""
        return BoostSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BoostSettings)})


@dataclasses.dataclass(frozen=True)
class SelectConfig:
    """`mixlab mixtures select`: how many mixtures to simulate, how to choose, and the full run's limits."""

    samples: int = option(100_000, "mixtures simulated from the candidates' prior and scored")
    top_k: int = option(128, "the best-scoring mixtures averaged into the chosen one")
    method: str = option(
        "topk",
        "topk: average the best simulated mixtures (RegMix); near-prior: also search locally, within --max-kl of the prior",
        choices=("topk", "near-prior"),
    )
    max_kl: float = option(0.5, "near-prior: largest KL divergence (nats) of a mixture from the prior")
    search_rounds: int = option(4, "near-prior: rounds of local search around the best mixtures")
    token_budget: int = option(
        0, "tokens of the full run (with --tokens: caps each domain at --max-epochs passes)"
    )
    max_epochs: float = option(4.0, "most passes over any domain's train tokens within --token-budget")
    min_weight: dict[str, float] = option({}, "per-domain lower bounds, e.g. code=0.1")
    max_weight: dict[str, float] = option({}, "per-domain upper bounds, e.g. legal=0.3")
    model: str = option(
        "chosen",
        "which fitted model scores mixtures (chosen: the one fit chose)",
        choices=("chosen", "lightgbm", "linear", "loglinear"),
    )
    verify: bool = option(
        False,
        "re-train the chosen, natural and uniform mixtures at a larger proxy size (needs --tokens) and check the order",
    )
    verify_scale: float = option(
        2.0, "--verify: the larger proxy's width and training steps, as multiples of the swarm's"
    )
    verify_seeds: int = option(2, "--verify: seeds per mixture")
    num_threads: int = option(0, "threads for LightGBM prediction (0: all cores)")
    seed: int = option(0, "seed of the simulated mixtures (and, plus 1000, of --verify's proxies)")
    prior_power: float | None = option(
        None,
        "simulate around the fit's prior raised to this power (<1 flattens it; default: the candidates' "
        "setting, 1 when the fit had no candidates)",
    )
    spread: tuple[float, ...] = option(
        (),
        "Dirichlet concentration scale of the simulated mixtures: one value, or MIN,MAX (log-spaced "
        "levels between; small: sparse mixtures); default: the candidates'",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if self.samples < 1 or self.top_k < 1:
            raise ConfigError("--samples / --top-k: must be at least 1")
        if self.top_k > self.samples:
            raise ConfigError(f"--top-k {self.top_k}: cannot exceed --samples {self.samples}")
        if self.max_kl <= 0:
            raise ConfigError("--max-kl: must be positive")
        if self.search_rounds < 0 or self.token_budget < 0 or self.num_threads < 0:
            raise ConfigError("--search-rounds / --token-budget / --num-threads: must not be negative")
        if self.max_epochs <= 0:
            raise ConfigError("--max-epochs: must be positive")
        if self.verify_scale <= 0 or self.verify_seeds < 1:
            raise ConfigError("--verify-scale / --verify-seeds: must be positive")
        if self.prior_power is not None and self.prior_power < 0:
            raise ConfigError("--prior-power: must not be negative")
        if len(self.spread) > 2 or any(not x > 0 for x in self.spread):
            raise ConfigError(
                f"--spread: one positive value or MIN,MAX, got {','.join(map(str, self.spread))}"
            )
        if len(self.spread) == 2 and self.spread[0] > self.spread[1]:
            raise ConfigError("--spread MIN,MAX: MIN must not exceed MAX")
        for key in ("min_weight", "max_weight"):
            bad = {k: v for k, v in getattr(self, key).items() if not 0 <= v <= 1}
            if bad:
                raise ConfigError(f"--{key.replace('_', '-')}: bounds must lie in [0, 1], got {bad}")
