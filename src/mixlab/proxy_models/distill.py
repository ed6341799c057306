"""`mixlab distill`: a smaller student trained on a pretrained teacher's soft targets.

Reads a teacher model directory (from `mixlab pretrain`, `distill` or `export hf`), a
tokenize output directory (same tokenizer, checked) and optionally ``mixture.json`` (default:
the mixture the teacher was trained on). Loss per token:
``alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE``, computed in fp32 over
chunks of positions so a large vocabulary's logits never exist for the whole batch at once.
Writes the student (``model.safetensors``, ``config.json``, ``tokenizer/``), ``metrics.parquet``
and ``comparison.json`` / ``.parquet``; with ``--compare-scratch`` the same student trained
from scratch on the same batches goes to ``scratch/`` (one swarm: member 0 distilled,
member 1 scratch, same initialisation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.console import log
from mixlab.errors import InputError
from mixlab.proxy_models.config import DistillConfig
from mixlab.proxy_models.pretrain import (
    COMPARISON,
    COMPARISON_JSON,
    METRICS,
    TrainLoop,
    compare,
    evaluator,
    metrics_table,
    model_config,
    prepare_device,
    read_mixture,
    resolve_target,
    tokenizer_source,
    train,
)
from mixlab.stage import Manifest, StageDir, run_stage, write_json
from mixlab.tables import write_table
from mixlab.tokenize.shards import domains, tokens_info

SCRATCH_DIR = "scratch"
DISTILL_MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 64}


def check_same_tokenizer(teacher_dir: Path, teacher_vocab: int, tokens_dir: Path, vocab_size: int) -> None:
    """Teacher and tokens must come from one tokenizer: same vocab size and same tokenizer.json."""
    from mixlab.proxy_models.checkpoint import tokenizer_json

    if teacher_vocab != vocab_size:
        raise InputError(
            f"{teacher_dir}: teacher vocabulary has {teacher_vocab} tokens but {tokens_dir} was tokenized with "
            f"{vocab_size}; distill on tokens made with the teacher's tokenizer"
        )
    t_file, s_file = tokenizer_json(teacher_dir), tokenizer_json(tokens_dir)
    if t_file is None and s_file is None:
        log(
            f"distill: warning: neither {teacher_dir} nor {tokens_dir} keeps a tokenizer.json; "
            "only the vocabulary sizes could be compared"
        )
        return
    if t_file is None or s_file is None:
        missing = teacher_dir if t_file is None else tokens_dir
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


def distill_loss(
    student: Any,
    teacher: Any,
    h_student: Any,
    h_teacher: Any,
    targets: Any,
    alpha: Any,
    tau: float,
    chunk: int,
    backward_scale: float | None = None,
) -> tuple[Any, Any]:
    """Per-member distillation loss and cross-entropy (M,), in fp32 over chunks of positions.

    h_student (M, B, T, C), h_teacher (1, B, T, C), targets (M, B, T), alpha (M,). With
    `backward_scale`, each chunk's loss is back-propagated at once (into h_student.grad and the
    student's output projection), so only one chunk of logits is alive at a time; the caller
    then continues the backward pass from h_student into the rest of the student.
    """
    import torch
    import torch.nn.functional as F

    M, B, T, _ = h_student.shape
    n = B * T
    total = torch.zeros(M, device=h_student.device)
    ce_total = torch.zeros(M, device=h_student.device)
    device_type = h_student.device.type
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        # Logits in fp32 even under bf16 autocast: the softmax over a large vocabulary needs it.
        with torch.autocast(device_type, enabled=False):
            s_logits = student.logits_from_hidden(h_student[:, :, t0:t1].float()).float()  # (M, B, t, V)
            with torch.no_grad():
                t_logits = teacher.logits_from_hidden(h_teacher[:, :, t0:t1].float()).float()  # (1, B, t, V)
            V = s_logits.shape[-1]
            ce = F.cross_entropy(s_logits.reshape(-1, V), targets[:, :, t0:t1].reshape(-1), reduction="none")
            ce = ce.view(M, -1).sum(dim=1) / n  # (M,)
            log_ps = F.log_softmax(s_logits / tau, dim=-1)
            log_pt = F.log_softmax(t_logits / tau, dim=-1).expand_as(log_ps)
            kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="none").sum(-1)  # (M, B, t)
            kl = kl.view(M, -1).sum(dim=1) / n  # (M,)
            loss = alpha * (tau * tau) * kl + (1 - alpha) * ce  # (M,)
        if backward_scale is not None:
            (loss.sum() * backward_scale).backward()
            loss, ce = loss.detach(), ce.detach()
        total = total + loss
        ce_total = ce_total + ce
    return total, ce_total


def run_distill(
    inputs: Mapping[str, Path | str | None],
    cfg: DistillConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
    resume: bool = False,
    on_checkpoint: Callable[[int], None] | None = None,
) -> Manifest:
    """Distill; inputs: {"teacher": dir, "tokens": dir, "mixture": mixture.json or None (the teacher's)}."""
    from mixlab.proxy_models.checkpoint import load_model
    from mixlab.proxy_models.model import count_params
    from mixlab.proxy_models.swarm import RunSpec, check_train_tokens, eval_domains

    teacher_dir, tokens_dir = Path(inputs["teacher"]), Path(inputs["tokens"])  # type: ignore[arg-type]
    mixture_path = Path(inputs["mixture"]) if inputs.get("mixture") else None
    teacher, teacher_meta = load_model(teacher_dir)  # a broken teacher fails here, before any output exists
    teacher_cfg = teacher.cfg
    info = tokens_info(tokens_dir)
    vocab = int(info["vocab_size"])
    check_same_tokenizer(teacher_dir, teacher_cfg.vocab_size, tokens_dir, vocab)
    if mixture_path is not None:
        mixture = read_mixture(mixture_path, tokens_dir)
        weights, file_target = mixture.weights, mixture.target
    elif isinstance(teacher_meta.get("mixture"), dict):
        weights, file_target = dict(teacher_meta["mixture"]), teacher_meta.get("target")
        absent = [d for d in weights if d not in domains(tokens_dir)]
        if absent:
            raise InputError(
                f"{teacher_dir}: the teacher's mixture names {absent}, absent from {tokens_dir}; "
                "pass --mixture"
            )
    else:
        raise InputError(
            f"{teacher_dir}: records no training mixture (an export?); pass --mixture mixture.json"
        )
    defaults = {**DISTILL_MODEL, "seq_len": teacher_cfg.seq_len}
    student_cfg = model_config(cfg, cfg.student, defaults, vocab, flag="--student")
    seq_len = student_cfg.seq_len
    check_train_tokens(tokens_dir, [RunSpec("distill", cfg.seed, weights, "distill")], seq_len)
    scored = eval_domains(tokens_dir, seq_len)
    terms = resolve_target(cfg.target, file_target, list(weights), scored)
    warnings = []
    if count_params(student_cfg) > count_params(teacher_cfg):
        warnings.append(
            f"the student ({count_params(student_cfg):,} params) is larger than the teacher "
            f"({count_params(teacher_cfg):,}); distillation usually shrinks a model"
        )
        log(f"distill: warning: {warnings[-1]}")

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        from mixlab.proxy_models.checkpoint import save_model
        from mixlab.proxy_models.data import MixtureLoader, run_init_seed
        from mixlab.proxy_models.model import GPT

        device = prepare_device(cfg)
        teacher.to(device).eval().requires_grad_(False)
        names = ["distilled"] + (["scratch"] if cfg.compare_scratch else [])
        init_seed = run_init_seed(cfg.seed, "distill")
        student = GPT(student_cfg, [init_seed] * len(names)).to(device)
        optimizer = student.configure_optimizer(cfg.lr, cfg.weight_decay)
        # One stream for every member: the scratch student sees exactly the distilled one's tokens.
        loader = MixtureLoader(tokens_dir, weights, seq_len, cfg.batch_size, cfg.seed, "distill")
        alpha = torch.tensor([cfg.alpha] + [0.0] * (len(names) - 1), device=device)  # (M,)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
        log(
            f"distill: student {count_params(student_cfg):,} params, teacher {count_params(teacher_cfg):,}; "
            f"{cfg.steps * cfg.tokens_per_step * seq_len:,} tokens on {device} [{', '.join(names)}]"
        )

        def next_batch() -> torch.Tensor:
            batch = torch.from_numpy(loader.next_batch()).to(device)  # (B, T+1)
            return batch.unsqueeze(0).expand(len(names), -1, -1)  # (M, B, T+1)

        def step_fn(batch: torch.Tensor, scale: float) -> torch.Tensor:
            x, y = batch[..., :-1], batch[..., 1:]
            with autocast:
                h = student.hidden_states(x)  # (M, B, T, C)
                with torch.no_grad():
                    h_t = teacher.hidden_states(x[:1])  # (1, B, T, C)
            # Cut the graph at the hidden states: chunks back-propagate into h_cut.grad one by one.
            h_cut = h.detach().float().requires_grad_()
            _, ce = distill_loss(student, teacher, h_cut, h_t, y, alpha, cfg.tau, cfg.logit_chunk, scale)
            h.backward(h_cut.grad.to(h.dtype))
            return ce  # logged as train loss: plain cross-entropy, comparable between the members

        evaluate = evaluator(student, tokens_dir, scored, seq_len, cfg, device)
        loop = TrainLoop(student, optimizer, names, {"distill": loader}, next_batch, step_fn, evaluate, terms)
        rows = train(
            loop, cfg, seq_len, stage.work, resume=resume, on_checkpoint=on_checkpoint, desc="distill"
        )

        teacher_losses = {
            d: float(v[0]) for d, v in evaluator(teacher, tokens_dir, scored, seq_len, cfg, device)().items()
        }
        final = {r["model"]: r for r in rows if r["step"] == cfg.steps}
        final["teacher"] = {
            **{f"loss.{d}": v for d, v in teacher_losses.items()},
            "target": sum(c * teacher_losses[n] for n, c in terms.items()),
        }
        trained_tokens = cfg.steps * cfg.tokens_per_step * seq_len
        tokenizer = tokenizer_source(tokens_dir) or (teacher_dir / "tokenizer")
        for m, name in enumerate(names):
            meta = {
                "stage": "distill",
                "teacher": str(teacher_dir),
                "alpha": cfg.alpha if name == "distilled" else 0.0,
                "tau": cfg.tau,
                "mixture": weights,
                "target": terms,
                "tokens": trained_tokens,
                "steps": cfg.steps,
                "seed": cfg.seed,
                "eos_id": int(info["eos_id"]),
                "target_loss": final[name]["target"],
                "val_losses": {
                    k.removeprefix("loss."): v for k, v in final[name].items() if k.startswith("loss.")
                },
            }
            save_model(stage.out if m == 0 else stage.out / SCRATCH_DIR, student, m, meta, tokenizer)
        write_table(metrics_table(rows), stage.out / METRICS)
        comparison = compare(final, {n: weights for n in names}, terms, trained_tokens, None, "distilled")
        comparison["teacher"] = str(teacher_dir)
        write_table(pa.Table.from_pylist(comparison.pop("rows")), stage.out / COMPARISON)
        write_json(stage.out / COMPARISON_JSON, comparison)
        for line in comparison["summary"]:
            log(f"distill: {line}")
        counts = {"models": len(names), "steps": cfg.steps, "tokens": trained_tokens}
        stats = {
            "student": student_cfg.to_dict(),
            "params": count_params(student_cfg),
            "teacher_params": count_params(teacher_cfg),
            "target": terms,
            "target_loss": {n: float(np.float64(final[n]["target"])) for n in final},
            "warnings": warnings,
            "device": device,
        }
        return counts, stats

    inputs_fp = {
        "teacher": teacher_dir,
        "tokens": tokens_dir,
        "mixture": mixture_path,
        "student": cfg.student,
    }
    return run_stage("distill", cfg, inputs_fp, out_dir, body, force=force)
