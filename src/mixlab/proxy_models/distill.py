"""`mixlab distill`: a smaller student trained on a pretrained teacher's soft targets.

Reads a teacher model directory (from `mixlab pretrain`, `distill` or `export hf`), a
tokenize output directory (same tokenizer, checked) and optionally ``mixture.json`` (default:
the mixture the teacher was trained on). Loss per token:
``alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE``, computed in fp32 over
chunks of positions so a large vocabulary's logits never exist for the whole batch at once
(`train.distill_loss`). Writes the student (``model.safetensors``, ``config.json``,
``tokenizer/``), ``metrics.parquet`` and ``comparison.json`` / ``.parquet``; with
``--compare-scratch`` the same student trained from scratch on the same batches goes to
``scratch/`` (one swarm: member 0 distilled, member 1 scratch, same initialisation). A rerun
with the same config and inputs continues a killed run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixlab import storage
from mixlab.console import log
from mixlab.errors import InputError
from mixlab.mixture import Mixture, Target
from mixlab.proxy_models.config import DistillConfig, GPTConfig, count_params, model_config
from mixlab.proxy_models.data import MixtureLoader, check_train_tokens, run_init_seed
from mixlab.proxy_models.loggers import open_logger
from mixlab.proxy_models.modeldir import read_model_config, tokenizer_json
from mixlab.proxy_models.results import (
    compare,
    final_rows,
    model_facts,
    tokenizer_source,
    training_target,
    write_results,
)
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs
from mixlab.tokenize.shards import TOKENIZER_DIR, TokenShards

SCRATCH_DIR = "scratch"
DISTILL_MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64}


def check_same_tokenizer(teacher_dir: Path, teacher_vocab: int, tokens: TokenShards) -> None:
    """Teacher and tokens must come from one tokenizer: same vocab size and same tokenizer.json."""
    if teacher_vocab != tokens.vocab_size:
        raise InputError(
            f"{teacher_dir}: teacher vocabulary has {teacher_vocab} tokens but {tokens.path} was tokenized "
            f"with {tokens.vocab_size}; distill on tokens made with the teacher's tokenizer"
        )
    t_file, s_file = tokenizer_json(teacher_dir), tokenizer_json(tokens.path)
    if t_file is None and s_file is None:
        log(
            f"distill: warning: neither {teacher_dir} nor {tokens.path} keeps a tokenizer.json; "
            "only the vocabulary sizes could be compared"
        )
        return
    if t_file is None or s_file is None:
        missing = teacher_dir if t_file is None else tokens.path
        raise InputError(
            f"{missing}: no tokenizer.json, so the teacher's and the tokens' tokenizers cannot be compared; "
            "use a teacher and tokens directory that both carry their tokenizer"
        )
    try:
        same = json.loads(t_file.read_text()) == json.loads(s_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{t_file} / {s_file}: unreadable tokenizer ({exc})") from None
    if not same:
        raise InputError(
            f"{t_file} differs from {s_file}: teacher and student must share the tokenizer; "
            "tokenize the corpus with the teacher's tokenizer (its tokenizer/ folder)"
        )


@dataclasses.dataclass(frozen=True)
class DistillPlan:
    """Everything checked before any output exists: teacher, student, data and target."""

    teacher_dir: Path
    teacher: GPTConfig
    tokens: TokenShards
    weights: dict[str, float]
    student: GPTConfig
    target: Target
    scored: list[str]  # the validation domains student and teacher are scored on
    warnings: list[str]

    @property
    def model(self) -> GPTConfig:
        """The model this stage trains (as PretrainPlan.model): the student."""
        return self.student


def training_mixture(
    mixture_path: Path | None, teacher_meta: Mapping[str, Any], teacher_dir: Path, tokens: TokenShards
) -> tuple[dict[str, float], Any, str]:
    """(weights, recorded target, where they come from): --mixture, else the teacher's own."""
    if mixture_path is not None:
        mixture = Mixture.read(mixture_path, tokens.domains)
        return mixture.weights, mixture.target, str(mixture_path)
    if not isinstance(teacher_meta.get("mixture"), dict):
        raise InputError(
            f"{teacher_dir}: records no training mixture (an export?); pass --mixture mixture.json"
        )
    where = f"{teacher_dir}: the teacher's mixture"
    try:
        weights = Mixture.check(teacher_meta["mixture"], where, tokens.domains)
    except InputError as exc:
        raise InputError(f"{exc}; or pass --mixture") from None
    return weights, teacher_meta.get("target"), str(teacher_dir)


def plan_distill(
    teacher_dir: Path, tokens_dir: Path, mixture_path: Path | None, cfg: DistillConfig
) -> DistillPlan:
    teacher, teacher_meta = read_model_config(teacher_dir)  # not a checkpoint: fails before any output
    tokens = TokenShards.open(tokens_dir)
    check_same_tokenizer(teacher_dir, teacher.vocab_size, tokens)
    weights, recorded, where = training_mixture(mixture_path, teacher_meta, teacher_dir, tokens)
    defaults = {**DISTILL_MODEL, "seq_len": teacher.seq_len}
    student = model_config(cfg, cfg.student, defaults, tokens.vocab_size, flag="--student")
    check_train_tokens(tokens, [weights], student.seq_len)
    scored = tokens.scored_domains(student.seq_len)
    target = training_target(cfg.target, recorded, list(weights), scored, where)
    warnings = []
    if count_params(student) > count_params(teacher):
        warnings.append(
            f"the student ({count_params(student):,} params) is larger than the teacher "
            f"({count_params(teacher):,}); distillation usually shrinks a model"
        )
        log(f"distill: warning: {warnings[-1]}")
    return DistillPlan(teacher_dir, teacher, tokens, weights, student, target, scored, warnings)


def run_distill(
    inputs: Inputs, cfg: DistillConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Distill; inputs: {"teacher": dir, "tokens": dir, "mixture": mixture.json or None (the teacher's)}.

    Under torchrun, data-parallel over the ranks (`ranks.run_data_parallel`, as pretrain). A
    rerun with the same config and inputs continues a killed run from its last checkpoint;
    `force` starts over.
    """
    from mixlab.proxy_models import ranks as dp

    inputs = absolute_inputs(inputs)
    teacher_dir, tokens_dir = Path(inputs["teacher"]), Path(inputs["tokens"])  # type: ignore[arg-type]
    mixture_path = Path(inputs["mixture"]) if inputs.get("mixture") else None
    return dp.run_data_parallel(
        "distill",
        cfg,
        {"teacher": teacher_dir, "tokens": tokens_dir, "mixture": mixture_path, "student": cfg.student},
        out_dir,
        force,
        plan=lambda: plan_distill(teacher_dir, tokens_dir, mixture_path, cfg),
        body=lambda plan, stage, ranks, ready: _distill(plan, cfg, stage, force, ranks, ready),
        train_only=lambda plan, work, ranks: _train(plan, cfg, work, ranks),
    )


def _members(cfg: DistillConfig) -> tuple[list[str], list[float]]:
    """The students trained side by side and their KL weights: distilled, then scratch (alpha 0)."""
    names = ["distilled"] + (["scratch"] if cfg.compare_scratch else [])
    return names, [cfg.alpha] + [0.0] * (len(names) - 1)


def _train(
    plan: DistillPlan, cfg: DistillConfig, work: Path, ranks: Any, ready: Any = None, metrics: Any = None
) -> Any:
    """Train the students on this rank's slice (all of it in one process); (rows, student, teacher, device)."""
    from mixlab.proxy_models import checkpoint, train
    from mixlab.proxy_models.ranks import sliced_batches, whole_model

    teacher, _ = checkpoint.load_model(plan.teacher_dir)  # damaged weights fail here; nothing is kept
    recipe, seq_len, path = cfg.recipe, plan.student.seq_len, plan.tokens.path
    device = train.setup_device(cfg.device, cfg.threads)
    teacher.to(device).eval().requires_grad_(False)
    names, alphas = _members(cfg)
    seeds = [run_init_seed(cfg.seed, "distill")] * len(names)
    student, optimizer = train.new_swarm(plan.student, seeds, recipe, device, ranks)  # the teacher: whole
    # One stream for every member: the scratch student sees exactly the distilled one's tokens.
    loader = MixtureLoader(path, plan.weights, seq_len, cfg.batch_size, cfg.seed, "distill")
    M = len(names)
    batches = (
        train.shared_batches(loader, M, device)
        if ranks.world == 1
        else sliced_batches([loader], device, ranks, M)
    )
    loop = train.TrainLoop(
        student,
        optimizer,
        names,
        {"distill": loader},
        batches,
        train.distill_step(student, teacher, alphas, cfg.tau, cfg.logit_chunk, device),
        lambda: train.evaluate(student, path, plan.scored, seq_len, recipe, device),
        plan.target,
        ranks,
        metrics.log if metrics is not None else None,
    )
    if ready is not None:
        ready(work)  # the other ranks start now (after --force removed the old checkpoint)
    desc = "distill" if ranks.main else None
    rows = train.train(loop, recipe, seq_len, work, desc=desc)
    return rows, whole_model(student), teacher, device  # --fsdp: the student gathered whole on rank 0


def _distill(
    plan: DistillPlan, cfg: DistillConfig, stage: StageDir, force: bool, ranks: Any, ready: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0's stage body: train (beside the other ranks), then write the students and results."""
    from mixlab.proxy_models import checkpoint, train
    from mixlab.proxy_models.ranks import runtime_stats

    recipe, seq_len, path = cfg.recipe, plan.student.seq_len, plan.tokens.path
    names, alphas = _members(cfg)
    tokens = cfg.steps * recipe.tokens_per_step * seq_len
    on = f" on {ranks.world} ranks" if ranks.world > 1 else ""
    log(
        f"distill: student {count_params(plan.student):,} params, teacher {count_params(plan.teacher):,}; "
        f"{tokens:,} tokens on {train.pick_device(cfg.device)}{on} [{', '.join(names)}]"
    )
    if force:
        shutil.rmtree(stage.work / train.CHECKPOINT, ignore_errors=True)  # --force starts over
    metrics = open_logger(cfg.logger, stage.out, "distill")
    try:
        rows, student, teacher, device = _train(plan, cfg, stage.work, ranks, ready, metrics)
    finally:
        if metrics is not None:
            metrics.close()

    teacher_losses = train.evaluate(teacher, path, plan.scored, seq_len, recipe, device)
    final = final_rows(rows, cfg.steps)
    final["teacher"] = {f"loss.{d}": float(v[0]) for d, v in teacher_losses.items()}
    final["teacher"]["target"] = plan.target.loss(final["teacher"])
    tokenizer = tokenizer_source(plan.tokens) or (plan.teacher_dir / TOKENIZER_DIR)
    for m, name in enumerate(names):
        facts = model_facts(
            "distill",
            final[name],
            plan.weights,
            plan.target,
            tokens,
            teacher=storage.origin(plan.teacher_dir),
            alpha=alphas[m],
            tau=cfg.tau,
            steps=cfg.steps,
            seed=cfg.seed,
            eos_id=plan.tokens.eos_id,
        )
        checkpoint.save_model(stage.out if m == 0 else stage.out / SCRATCH_DIR, student, m, facts, tokenizer)
    comparison = compare(final, dict.fromkeys(names, plan.weights), plan.target, tokens, None, "distilled")
    comparison["teacher"] = str(plan.teacher_dir)
    write_results(stage.out, "distill", rows, comparison)
    counts = {"models": len(names), "steps": cfg.steps, "tokens": tokens}
    stats = {
        "student": plan.student.to_dict(),
        "params": count_params(plan.student),
        "teacher_params": count_params(plan.teacher),
        "target": plan.target.to_record(),
        "target_loss": {n: float(final[n]["target"]) for n in final},
        "warnings": plan.warnings,
        "device": device,
        **runtime_stats(cfg, ranks),
    }
    return counts, stats
