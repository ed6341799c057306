"""The data-expert feature: a mixture's loss predicted from per-domain experts' token probabilities.

A swarm trained with ``--experts`` keeps, for every validation domain v, each expert's
log-probability of every predicted token of v's fixed validation windows
(``OUT/experts/<v>.parquet``, written by `mixlab.proxy_models.experts`). For a mixture w the
feature is ``-mean_x log sum_d w_d p_d(x)``: the loss of the experts' probability mixture
(Mixture-of-Data-Experts, Belenki et al. 2025), in closed form and vectorised over millions of
mixtures. numpy only; `mixtures fit` fits on ``[w, feature]`` when a swarm output has experts.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.errors import InputError
from mixlab.mixture import Target
from mixlab.tables import read_table, write_table

EXPERTS_DIR = "experts"  # in a swarm output (and copied into a FIT directory)
LOGP_PREFIX = "logp."  # logp.<expert domain>: that expert's log-probability of the token
EXPERT_PREFIX = "expert."  # run id of an expert's row in runs.parquet: expert.<domain>
BLOCK = 2**22  # mixtures x tokens scored at a time (32 MB of float64 per block)
TINY = 1e-280  # below this the shifted mixture probability is recomputed exactly (log-sum-exp)


# --- the closed form ---------------------------------------------------------------------------


def mixture_loss(weights: np.ndarray, logp: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``-mean_x log sum_d w_d p_d(x)`` for every row of `weights` (n, E); `logp` is (E, N).

    A log-sum-exp over ``log w_d + log p_d(x)`` computed as one matrix product per block:
    with ``s(x) = max_d log p_d(x)``, ``sum_d w_d p_d(x) = exp(s(x)) * (w @ exp(log p - s))``,
    so the exponentials are taken once for the tokens, not once per mixture. Entries whose
    shifted sum underflows (every expert the mixture uses is far worse than the best one on that
    token) are redone exactly. Memory stays at `block` mixtures x tokens whatever n is.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    logp = np.asarray(logp, dtype=np.float64)
    if weights.shape[1] != logp.shape[0]:
        raise ValueError(f"weights have {weights.shape[1]} domains, the experts {logp.shape[0]}")
    shift = logp.max(axis=0)  # (N,)
    p = np.exp(logp - shift)  # (E, N), in (0, 1]
    rows = max(1, block // max(1, logp.shape[1]))
    out = np.empty(len(weights))
    for a in range(0, len(weights), rows):
        w = weights[a : a + rows]  # (b, E)
        mix = w @ p  # (b, N)
        tiny = mix < TINY
        log_mix = np.log(np.where(tiny, 1.0, mix))
        if tiny.any():
            r, c = np.nonzero(tiny)
            log_mix[r, c] = _exact_log_mix(w[r], logp[:, c].T) - shift[c]
        out[a : a + rows] = -(log_mix.mean(axis=1) + shift.mean())
    return out


def _exact_log_mix(w: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """log sum_d w_d p_d for matching rows of w (k, E) and logp (k, E), by log-sum-exp."""
    with np.errstate(divide="ignore"):
        t = np.log(w) + logp  # zero weights give -inf: they contribute nothing
    m = t.max(axis=1)
    return m + np.log(np.exp(t - m[:, None]).sum(axis=1))


# --- the experts' log-probabilities --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExpertLogprobs:
    """Each expert's log-probability of each validation token: domain -> (E, N), experts in order."""

    experts: list[str]
    logp: dict[str, np.ndarray]

    def loss(self, weights: np.ndarray, domain: str) -> np.ndarray:
        """The feature on one validation domain, for every row of `weights` (n, E)."""
        return mixture_loss(weights, self.logp[domain])

    def aligned(self, domains: Sequence[str], where: Path | str) -> ExpertLogprobs:
        """The experts reordered to `domains` (the runs' weight columns); every domain needs one."""
        missing = [d for d in domains if d not in self.experts]
        if missing:
            raise InputError(
                f"{where}: no expert for domain(s) {missing} (experts: {', '.join(self.experts)}); "
                "every mixed domain needs one: train the swarm again with `swarm train --experts`"
            )
        order = [self.experts.index(d) for d in domains]
        return ExpertLogprobs(list(domains), {v: a[order] for v, a in self.logp.items()})


def logprobs_table(domain: str, experts: Sequence[str], logp: np.ndarray, window_len: int) -> pa.Table:
    """One validation domain's table: domain, window, position, logp.<expert> (one row per token)."""
    n = logp.shape[1]
    columns: dict[str, Any] = {
        "domain": pa.array([domain] * n, pa.string()),
        "window": pa.array(np.arange(n) // window_len, pa.int32()),
        "position": pa.array(np.arange(n) % window_len, pa.int32()),
    }
    for e, name in enumerate(experts):
        columns[LOGP_PREFIX + name] = pa.array(logp[e].astype(np.float32), pa.float32())
    return pa.table(columns)


def write_logprobs(
    folder: Path, experts: Sequence[str], logp: Mapping[str, np.ndarray], window_len: int
) -> None:
    for domain, values in logp.items():
        write_table(logprobs_table(domain, experts, values, window_len), folder / f"{domain}.parquet")


def has_experts(folder: Path | str) -> bool:
    return (Path(folder) / EXPERTS_DIR).is_dir()


def read_logprobs(folder: Path | str) -> ExpertLogprobs:
    """The experts of a swarm output (or FIT directory) `folder`, from its experts/ tables."""
    root = Path(folder) / EXPERTS_DIR
    files = sorted(root.glob("*.parquet"))
    if not files:
        raise InputError(f"{root}: no expert log-probabilities; train the swarm with `swarm train --experts`")
    experts: list[str] | None = None
    logp: dict[str, np.ndarray] = {}
    for f in files:
        table = read_table(f, required=("domain",), fix="train the swarm again with `swarm train --experts`")
        names = [c.removeprefix(LOGP_PREFIX) for c in table.column_names if c.startswith(LOGP_PREFIX)]
        if experts is None:
            experts = names
        if names != experts or not names:
            raise InputError(
                f"{f}: experts {names} differ from the other validation domains' {experts}; "
                "train the swarm again with `swarm train --experts`"
            )
        values = np.stack([table.column(LOGP_PREFIX + e).to_numpy().astype(np.float64) for e in names])
        if not np.isfinite(values).all() or (values > 1e-6).any():
            raise InputError(f"{f}: log-probabilities must be finite and at most 0")
        logp[f.stem] = values
    assert experts is not None
    return ExpertLogprobs(experts, logp)


def copy_logprobs(src: Path | str, dst: Path | str, domains: Sequence[str]) -> None:
    """Copy the experts' tables of validation `domains` from one output into another's experts/."""
    (Path(dst) / EXPERTS_DIR).mkdir(parents=True, exist_ok=True)
    for d in domains:
        shutil.copyfile(Path(src) / EXPERTS_DIR / f"{d}.parquet", Path(dst) / EXPERTS_DIR / f"{d}.parquet")


# --- the regression's features ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExpertFeatures:
    """[w, feature]: the weights and the experts' predicted target loss of each mixture."""

    logprobs: ExpertLogprobs
    target: Target

    def target_loss(self, weights: np.ndarray) -> np.ndarray:
        """The experts' mixture loss on the target: its terms' features, weighted like the losses."""
        w = np.atleast_2d(weights)
        return np.sum([c * self.logprobs.loss(w, name) for name, c in self.target.terms.items()], axis=0)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        return np.column_stack([w, self.target_loss(w)])

    def record(self) -> dict[str, Any]:
        """fit.json's `features` entry."""
        return {
            "experts": list(self.logprobs.experts),
            "columns": [*(f"w.{d}" for d in self.logprobs.experts), "experts.target"],
            "files": [f"{EXPERTS_DIR}/{d}.parquet" for d in self.target.terms],
            "description": "the weights and -mean log sum_d w_d p_d(x) of the per-domain experts on the target",
        }


def expert_features(folder: Path | str, domains: Sequence[str], target: Target) -> ExpertFeatures:
    """The features of an output with experts/ for mixtures over `domains`, aimed at `target`."""
    logprobs = read_logprobs(folder).aligned(domains, Path(folder) / EXPERTS_DIR)
    missing = [t for t in target.terms if t not in logprobs.logp]
    if missing:
        raise InputError(
            f"{Path(folder) / EXPERTS_DIR}: no expert log-probabilities on the target's validation domain(s) "
            f"{missing} (have: {', '.join(sorted(logprobs.logp))}); train the swarm again with `swarm train --experts`"
        )
    return ExpertFeatures(logprobs, target)


def swarm_output(runs_path: Path | str) -> Path | None:
    """The swarm output a runs input belongs to when it has experts/ (the dir itself, or a file's folder)."""
    path = Path(runs_path)
    for folder in (path, path.parent) if path.is_file() else (path,):
        if has_experts(folder):
            return folder
    return None


def fit_features(
    runs_path: Path | str, domains: Sequence[str], target: Target
) -> tuple[ExpertFeatures, Path] | None:
    """`mixtures fit`'s features when the runs come from a swarm output with experts/, and that output."""
    folder = swarm_output(runs_path)
    if folder is None:
        return None
    return expert_features(folder, domains, target), folder


def load_features(fit_dir: Path | str, fit: Mapping[str, Any]) -> ExpertFeatures | None:
    """The features a FIT directory's models were fitted on (None: the weights alone)."""
    record = fit.get("features")
    if not record:
        return None
    target = Target.from_record(fit["target"], None, where=str(Path(fit_dir) / "fit.json"))
    return expert_features(fit_dir, fit["domains"], target)
