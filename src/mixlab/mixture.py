"""Mixture and Target: the one reader and writer of ``mixture.json``, the one target evaluator.

A *target* is what the search minimises: a weighted sum of validation losses
(``code=0.5,prose=0.5``), ``mean`` (every mixture domain equally), or one loss name
(``target`` for a separate validation corpus). It is parsed once (`Target.parse`), stored as
``{"spec": ..., "terms": {name: coefficient}}`` in fit.json, mixture.json, model configs and
comparison.json, and evaluated by `Target.loss` / `Target.loss_columns` everywhere.

A *mixture* is ``{domain: weight}`` summing to one. ``mixture.json`` (written by
``mixtures select``) holds it under ``weights`` with what the choice rests on; a plain
``{domain: weight}`` file is read too.

The three JSON files the report reads, key by key (every key is always written unless
marked optional; ``Prediction`` is ``{weights, predicted_target_loss, spread: {mean, std,
min, max, folds}, kl_from_prior, feasible}``):

``fit.json`` (``mixtures fit``)
    target: Target record; domains: [domain], the models' feature order; prior: {domain:
    share}; prior_source: str; sampler: {prior_power, spread_min, spread_max, spread_levels,
    min_weight}; swarm_config: the swarm's config or null; chosen: the model select uses
    (lightgbm, linear or loglinear); models: {kind: {spearman, pearson, rmse, per_fold:
    {metric: {mean, std}}, file, and for lightgbm fold_files, rounds, final_rounds}};
    noise_floor: {rmse, mixtures, runs} or null (no repeated mixtures); runs, dropped_nan,
    folds: int; runs_needed: {minimum, recommended}; warnings: [str]; target_loss: {min,
    max, mean}; weights_range: {min: [..], max: [..]} in `domains` order; plots: {kind: png}.

``mixture.json`` (``mixtures select``)
    the chosen mixture's Prediction at the top level (weights, predicted_target_loss,
    spread, kl_from_prior, feasible); natural, uniform: Prediction; method: {name, model,
    samples, samples_kept, top_k, sampler, description, and max_kl for near-prior};
    alternatives: {method name: {weights, predicted_target_loss}}; target: Target record;
    constraints: {lower, upper, token_budget (or null), max_epochs (or null), and epochs
    when a token budget applied}; prior: {domain: share}; held_out: {spearman, pearson,
    rmse} of the model used; noise_floor: as in fit.json; warnings: [str]; optional
    verification (with --verify): {proxy, scale, seeds, mixtures: {name: {predicted,
    measured, measured_std}}, predicted_order, measured_order, ordering_holds,
    comparisons: {baseline: {gap, stderr, verdict}}, chosen_beats_baselines}.

``comparison.json`` (``pretrain``, ``distill``)
    target: Target record (files written before it existed hold the bare terms); tokens:
    int, trained per model; reference: the model the others are compared with (chosen, or
    distilled); models: {name: {weights, target, losses: {loss name: value}}};
    gap_vs_reference: {name: target loss minus the reference's}; best: the name with the
    lowest target loss; noise_floor: float or null (the swarm's seed noise); summary: [str];
    teacher: the teacher's directory (distill only). Whether the reference beats every
    alternative by more than the noise is read off gap_vs_reference and noise_floor.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.config import check_weights, parse_mapping
from mixlab.errors import ConfigError, InputError
from mixlab.stage import write_json

MIXTURE_JSON = "mixture.json"
LOSS_PREFIX = "loss."
WEIGHT_PREFIX = "w."


@dataclasses.dataclass(frozen=True)
class Target:
    """A weighted sum of validation losses: ``terms`` maps a loss name to its coefficient."""

    terms: dict[str, float]
    spec: str = ""

    @classmethod
    def parse(
        cls, spec: str, domains: Sequence[str], losses: Sequence[str], *, source: str | None = None
    ) -> Target:
        """`--target` text -> Target, checked against the loss names available (`losses`).

        `domains` are the mixture's domains (what ``mean`` averages over); `source` names
        where the losses come from in errors (``the runs``).
        """
        spec = spec.strip()
        domains, losses = list(domains), list(losses)
        if not spec:
            raise ConfigError("--target: empty; pass mean, a loss name, or weights like code=0.5,prose=0.5")
        if spec == "mean":
            if not domains:
                raise ConfigError("--target mean: there are no mixture domains to average over")
            missing = [d for d in domains if d not in losses]
            if not losses:
                raise ConfigError(
                    f"--target mean: there are no validation losses{' in ' + source if source else ''} "
                    "at all, so nothing to average"
                )
            if missing:
                example = ",".join(f"{d}=1" for d in losses[:2])
                raise ConfigError(
                    f"--target mean: no loss column for domain(s) {missing} "
                    f"(loss columns: {', '.join(losses)}); name the losses explicitly, e.g. --target {example}"
                )
            return cls({d: 1.0 / len(domains) for d in domains}, spec)
        terms = parse_mapping(spec, "target") if "=" in spec else {spec: 1.0}
        unknown = [name for name in terms if name not in losses]
        if unknown:
            raise ConfigError(
                f"--target: {', '.join(map(repr, unknown))} not {'in ' + source if source else 'among the losses'} "
                f"({', '.join(losses) or 'none'}; mixture domains: {', '.join(domains) or 'none'}); "
                "name one of those, or use --target mean"
            )
        bad = {k: v for k, v in terms.items() if not math.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(f"--target: coefficients must be finite and non-negative, got {bad}")
        if sum(terms.values()) <= 0:
            raise ConfigError("--target: the coefficients sum to zero; give at least one positive weight")
        return cls({k: float(v) for k, v in terms.items()}, spec)

    @classmethod
    def from_record(cls, record: Any, losses: Sequence[str] | None, where: str = "target") -> Target:
        """A stored target: ``{"spec", "terms"}``, a bare ``{name: coefficient}``, or a spec string.

        `losses`: the loss names available, which every term must be among; None when the
        record is trusted as written (select reading the fit that parsed it).
        """
        if isinstance(record, str):
            if losses is None:
                raise InputError(f"{where}: a target spec {record!r} needs the losses to resolve it")
            return cls.parse(record, [], losses) if record != "mean" else cls.parse(record, losses, losses)
        if isinstance(record, Mapping):
            terms = record.get("terms", record)
            spec = str(record.get("spec", "")) if "terms" in record else ""
            try:
                terms = {str(k): float(v) for k, v in terms.items()}
            except (TypeError, ValueError, AttributeError):
                raise InputError(
                    f"{where}: target terms must map loss names to numbers (got {terms!r})"
                ) from None
            missing = [k for k in terms if losses is not None and k not in losses]
            if missing:
                raise InputError(
                    f"{where}: the target names {missing}, which have no validation loss here "
                    f"(losses: {', '.join(losses) or 'none'}); pass --target"
                )
            if not terms:
                raise InputError(f"{where}: the target has no terms; pass --target")
            return cls(terms, spec or ",".join(f"{k}={v:g}" for k, v in terms.items()))
        raise InputError(f"{where}: no target recorded; pass --target")

    def loss(self, losses: Mapping[str, float]) -> float:
        """The target loss from per-name losses (keys ``code`` or ``loss.code``)."""
        total = 0.0
        for name, coefficient in self.terms.items():
            value = losses[name] if name in losses else losses[LOSS_PREFIX + name]
            total += coefficient * float(value)
        return float(total)

    def loss_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """The target loss of many rows at once: `columns` maps ``loss.<name>`` to arrays."""
        parts = [
            c * np.asarray(columns[LOSS_PREFIX + name], dtype=np.float64) for name, c in self.terms.items()
        ]
        return np.sum(parts, axis=0)

    def to_record(self) -> dict[str, Any]:
        return {"spec": self.spec, "terms": dict(self.terms)}

    def describe(self) -> str:
        """For people: ``70% prose + 30% code`` (shares of the coefficients), or the one loss name."""
        if len(self.terms) == 1:
            return f"the {next(iter(self.terms))} validation loss"
        total = sum(self.terms.values())
        parts = sorted(self.terms.items(), key=lambda kv: -kv[1])
        return " + ".join(f"{100 * c / total:.0f}% {name}" for name, c in parts)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Weights to train on, and what the mixture file says about how they were chosen."""

    weights: dict[str, float]
    target: dict[str, Any] | None = None  # the stored target record, if the file has one
    noise_floor: float | None = None  # seed-to-seed spread of the target loss at swarm scale
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # the whole file

    @property
    def domains(self) -> list[str]:
        return list(self.weights)

    @classmethod
    def read(cls, path: Path | str, available: Sequence[str] | None = None) -> Mixture:
        """mixture.json (or a plain {domain: weight}); `available`: the domains the tokens have."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(
                f"{path}: mixture file not found; pass the mixture.json of `mixlab mixtures select`"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_record(data, str(path), available)

    @classmethod
    def from_record(
        cls, data: Any, where: str = "mixture", available: Sequence[str] | None = None
    ) -> Mixture:
        """A mixture.json's content (or a plain {domain: weight}), checked like `read` checks a file."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object of weights")
        weights = data.get("weights", data)
        if not isinstance(weights, dict) or not weights:
            raise InputError(
                f'{where}: no weights; expected {{"weights": {{domain: weight}}}} or {{domain: weight}}'
            )
        weights = cls.check(weights, where, available)
        floor = data.get("noise_floor")
        if isinstance(floor, dict):
            floor = floor.get("rmse")
        target = data.get("target") if "weights" in data else None
        return cls(
            weights,
            target if isinstance(target, (dict, str)) else None,
            float(floor) if isinstance(floor, (int, float)) else None,
            data,
        )

    @staticmethod
    def check(
        weights: Mapping[str, Any], where: str, available: Sequence[str] | None = None
    ) -> dict[str, float]:
        """Weights as floats, finite, non-negative, summing to one, naming only `available` domains."""
        try:
            out = {str(d): float(w) for d, w in weights.items()}
        except (TypeError, ValueError):
            raise InputError(f"{where}: weights must be numbers (got {dict(weights)})") from None
        if not all(math.isfinite(w) for w in out.values()):
            raise InputError(f"{where}: weights must be finite numbers")
        try:
            check_weights(out, "mixture")
        except ConfigError as exc:
            raise InputError(f"{where}: {str(exc).removeprefix('--mixture: ')}") from None
        if available is not None:
            unknown = [d for d in out if d not in available]
            if unknown:
                raise InputError(
                    f"{where}: domain(s) {unknown} are not in the tokens (they have: {', '.join(available)}); "
                    "choose the mixture on the same tokens directory"
                )
        return out

    def write(self, path: Path) -> None:
        write_json(path, {**self.record, "weights": dict(self.weights)})
