"""`mixlab pretrain`: the full model on the chosen mixture, optionally beside baseline mixtures.

Reads a tokenize output directory and ``mixture.json`` (from `mixlab mixtures select`, or a
plain ``{domain: weight}``). Writes the chosen model (``model.safetensors``, ``config.json``,
``tokenizer/``), ``baselines/<name>/`` for each baseline, ``metrics.parquet`` (step, model,
tokens, lr, train_loss, loss.<domain>..., target) and, with baselines,
``comparison.parquet`` / ``comparison.json``. The chosen model and its baselines train side by
side as members of one swarm (same init, same token budget, each its own mixture stream). The
resume point (weights, AdamW state, data-loader RNG state) is kept in the stage's work dir, so
a rerun with the same config and inputs continues a killed run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mixlab.console import log
from mixlab.mixture import Mixture, Target
from mixlab.proxy_models.config import (
    GPTConfig,
    PretrainConfig,
    count_params,
    flops_per_token,
    model_config,
)
from mixlab.proxy_models.data import MixtureLoader, check_train_tokens, run_init_seed
from mixlab.proxy_models.loggers import open_logger
from mixlab.proxy_models.results import (
    compare,
    final_rows,
    model_facts,
    tokenizer_source,
    training_target,
    val_losses,
    write_results,
)
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs
from mixlab.tokenize.shards import TokenShards

BASELINES_DIR = "baselines"
# CPU-demo sizes: a few minutes on a laptop, still clearly bigger than the swarm's proxies.
PRETRAIN_MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "seq_len": 128}


@dataclasses.dataclass(frozen=True)
class PretrainPlan:
    """Everything checked before any output exists: the models to train and how they are scored."""

    tokens: TokenShards
    mixture: Mixture
    mixtures: dict[str, dict[str, float]]  # model name -> weights: "chosen", then the baselines
    model: GPTConfig
    target: Target
    scored: list[str]  # the validation domains every model is scored on


def plan_pretrain(tokens_dir: Path, mixture_path: Path, cfg: PretrainConfig) -> PretrainPlan:
    tokens = TokenShards.open(tokens_dir)
    mixture = Mixture.read(mixture_path, tokens.domains)
    model = model_config(cfg, cfg.model, PRETRAIN_MODEL, tokens.vocab_size)
    domains = mixture.domains
    mixtures = {"chosen": mixture.weights}
    for name in cfg.baselines:
        mixtures[name] = (
            tokens.natural(domains) if name == "natural" else dict.fromkeys(domains, 1 / len(domains))
        )
    check_train_tokens(tokens, mixtures.values(), model.seq_len)
    scored = tokens.scored_domains(model.seq_len)
    target = training_target(cfg.target, mixture.target, domains, scored, str(mixture_path))
    return PretrainPlan(tokens, mixture, mixtures, model, target, scored)


def run_pretrain(
    inputs: Inputs, cfg: PretrainConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Pretrain on the chosen mixture; inputs: {"tokens": dir, "mixture": mixture.json}.

    `client` is accepted for the stage contract; training runs in this process on its device
    (under torchrun: data-parallel over the ranks, see `ranks.run_data_parallel`). A rerun with
    the same config and inputs continues a killed run from its last checkpoint; `force` starts over.
    """
    from mixlab.proxy_models import ranks as dp

    inputs = absolute_inputs(inputs)
    tokens_dir, mixture_path = Path(inputs["tokens"]), Path(inputs["mixture"])
    return dp.run_data_parallel(
        "pretrain",
        cfg,
        {"tokens": tokens_dir, "mixture": mixture_path, "model": cfg.model},
        out_dir,
        force,
        plan=lambda: plan_pretrain(tokens_dir, mixture_path, cfg),
        body=lambda plan, stage, ranks, ready: _pretrain(plan, cfg, stage, force, ranks, ready),
        train_only=lambda plan, work, ranks: _train(plan, cfg, work, ranks),
    )


def _train(
    plan: PretrainPlan, cfg: PretrainConfig, work: Path, ranks: Any, ready: Any = None, metrics: Any = None
) -> Any:
    """Train every member on this rank's slice (all of it in one process); (model, rows, loaders, device)."""
    from mixlab.proxy_models import train
    from mixlab.proxy_models.ranks import whole_model

    recipe, model_cfg, names = cfg.recipe, plan.model, list(plan.mixtures)
    device = train.setup_device(cfg.device, cfg.threads)
    seq_len = model_cfg.seq_len
    members = seed_members(names, cfg.seeds)
    loaders = {
        m: MixtureLoader(
            plan.tokens.path, plan.mixtures[n], seq_len, cfg.batch_size, cfg.seed, f"pretrain/{m}"
        )
        for m, (n, _) in members.items()
    }
    # Every member of one seed starts from the same weights: only the data differs between them.
    seeds = [run_init_seed(cfg.seed, "pretrain" if k == 0 else f"pretrain~s{k}") for _, k in members.values()]
    loop = train.lm_loop(
        model_cfg, seeds, loaders, recipe, device, plan.tokens.path, plan.scored, plan.target, ranks
    )
    loop.on_rows = metrics.log if metrics is not None else None
    if ready is not None:
        ready(work)  # the other ranks start now (after --force removed the old checkpoint)
    desc = "pretrain" if ranks.main else None
    rows = train.train(loop, recipe, seq_len, work, desc=desc)
    return whole_model(loop.model), rows, loaders, device  # --fsdp: gathered whole on rank 0


def _pretrain(
    plan: PretrainPlan, cfg: PretrainConfig, stage: StageDir, force: bool, ranks: Any, ready: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0's stage body: train (beside the other ranks), then write the models and results."""
    from mixlab.proxy_models import checkpoint, train
    from mixlab.proxy_models.ranks import runtime_stats

    recipe, model_cfg, names = cfg.recipe, plan.model, list(plan.mixtures)
    seq_len = model_cfg.seq_len
    tokens = cfg.steps * recipe.tokens_per_step * seq_len
    on = f" on {ranks.world} ranks" if ranks.world > 1 else ""
    log(
        f"pretrain: {count_params(model_cfg):,} params ({count_params(model_cfg, True):,} non-embedding), "
        f"{len(names)} model(s) [{', '.join(names)}] x {cfg.seeds} seed(s) x {tokens:,} tokens "
        f"on {train.pick_device(cfg.device)}{on}"
    )
    if force:
        shutil.rmtree(stage.work / train.CHECKPOINT, ignore_errors=True)  # --force starts over
    metrics = open_logger(cfg.logger, stage.out, "pretrain")
    try:
        model, rows, loaders, device = _train(plan, cfg, stage.work, ranks, ready, metrics)
    finally:
        if metrics is not None:
            metrics.close()

    members = seed_members(names, cfg.seeds)
    per_member = final_rows(rows, cfg.steps)
    final = {n: per_member[n] for n in names}  # seed 0: the saved models
    tokenizer = tokenizer_source(plan.tokens)
    for m, name in enumerate(names):
        facts = model_facts(
            "pretrain",
            final[name],
            plan.mixtures[name],
            plan.target,
            tokens,
            steps=cfg.steps,
            seed=cfg.seed,
            eos_id=plan.tokens.eos_id,
        )
        where = stage.out if name == "chosen" else stage.out / BASELINES_DIR / name
        checkpoint.save_model(where, model, m, facts, tokenizer)
    comparison = None
    if cfg.baselines:
        means = seed_means(per_member, members) if cfg.seeds > 1 else final
        comparison = compare(means, plan.mixtures, plan.target, tokens, plan.mixture.noise_floor, "chosen")
        if cfg.seeds > 1:
            comparison.update(seed_gaps(per_member, members, "chosen"))
    write_results(stage.out, "pretrain", rows, comparison)
    counts, stats = _counts_and_stats(
        plan, cfg, final, loaders["chosen"].epochs(), device, tokens, comparison
    )
    return counts, {**stats, **runtime_stats(cfg, ranks)}


def seed_members(names: list[str], seeds: int) -> dict[str, tuple[str, int]]:
    """Member name -> (model, seed index): `chosen`, `natural`, ..., then `chosen~s1`, `natural~s1`, ..."""
    return {(n if k == 0 else f"{n}~s{k}"): (n, k) for k in range(seeds) for n in names}


def seed_means(
    final: Mapping[str, Mapping[str, Any]], members: Mapping[str, tuple[str, int]]
) -> dict[str, dict[str, Any]]:
    """Each model's final losses averaged over its seeds (the rows `compare` reads)."""
    out: dict[str, dict[str, Any]] = {}
    for model in dict.fromkeys(n for n, _ in members.values()):
        rows = [final[m] for m, (n, _) in members.items() if n == model]
        keys = [k for k in rows[0] if k == "target" or k.startswith("loss.")]
        out[model] = {**rows[0], **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
    return out


def seed_gaps(
    final: Mapping[str, Mapping[str, Any]], members: Mapping[str, tuple[str, int]], reference: str
) -> dict[str, Any]:
    """Each model's target loss per seed, and its gap to `reference` judged against the seed spread.

    Members of one seed share their initial weights, so the gap is paired by seed: its standard
    error is the spread of the per-seed gaps; "better" means more than two standard errors.
    """
    targets: dict[str, list[float]] = {}
    for m, (n, _) in members.items():
        targets.setdefault(n, []).append(float(final[m]["target"]))
    ref = np.array(targets[reference])
    gaps = {}
    for name, values in targets.items():
        if name == reference:
            continue
        d = np.array(values) - ref  # > 0: the reference is lower
        gap, stderr = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        verdict = "better" if gap > 2 * stderr else "worse" if gap < -2 * stderr else "within seed noise"
        gaps[name] = {"gap": gap, "stderr": stderr, "verdict": verdict}
    return {
        "seeds": len(ref),
        "target_by_seed": targets,
        "seed_gaps": gaps,
        "beats_all_beyond_seed_spread": all(g["verdict"] == "better" for g in gaps.values()),
    }


def _counts_and_stats(
    plan: PretrainPlan,
    cfg: PretrainConfig,
    final: Mapping[str, Mapping[str, Any]],
    epochs: dict[str, float],
    device: str,
    tokens: int,
    comparison: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    counts = {"models": len(plan.mixtures), "steps": cfg.steps, "tokens": tokens}
    stats = {
        "model": plan.model.to_dict(),
        "params": count_params(plan.model),
        "params_nonembedding": count_params(plan.model, non_embedding=True),
        "flops_per_token": flops_per_token(plan.model),
        "weights": plan.mixture.weights,
        "target": plan.target.to_record(),
        "target_loss": final["chosen"]["target"],
        "val_losses": val_losses(final["chosen"]),
        "epochs": epochs,
        "device": device,
    }
    if comparison:
        stats["comparison"] = {n: m["target"] for n, m in comparison["models"].items()}
    return counts, stats
