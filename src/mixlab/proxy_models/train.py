"""The one training core under swarm, pretrain, distill and verify.

Device and precision set-up, the learning-rate schedule, the two objectives (next-token
cross-entropy, and distillation from a teacher), the evaluator and the training loop. Every
caller trains a swarm of M models (a pack of proxies, a model beside its baselines, a student
beside its scratch twin) from a `Recipe` and a `GPTConfig` (config.py), on batches from
data.py, and gets metrics rows back. With a work dir the loop keeps a resume checkpoint
there (checkpoint.py) and continues from it when one is present. Device set-up, precision and
the next-token step live in step.py (torch only, so a benchmark runs on a bare GPU box) and
are used from here as `train.setup_device`, `train.lm_step`, ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mixlab.console import StepProgress, log
from mixlab.mixture import Target
from mixlab.proxy_models.checkpoint import (
    CHECKPOINT,  # noqa: F401 (the stages name the resume point as train.CHECKPOINT)
    check_same_model,
    load_training_state,
    save_training_state,
)
from mixlab.proxy_models.config import GPTConfig, Recipe
from mixlab.proxy_models.data import MixtureLoader, eval_windows
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.ranks import (
    Ranks,
    average,
    average_gradients,
    clip_sharded_grad_norm_per_model,
    full_training_tensors,
    is_sharded,
    shard_model,
    sliced_batches,
)
from mixlab.proxy_models.step import autocast, device_name, lm_step, pick_device, setup_device  # noqa: F401


def lr_at(step: int, recipe: Recipe) -> float:
    """Linear warmup, then cosine decay (or stable then linear decay for wsd) to min_lr_ratio x lr."""
    lr, steps, warmup = recipe.lr, recipe.steps, recipe.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if recipe.schedule == "cosine":
        progress = (step - warmup) / max(1, steps - warmup)
        floor = lr * recipe.min_lr_ratio
        return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = steps - max(1, round(recipe.decay_fraction * steps))
    if step < decay_start:
        return lr
    progress = (step - decay_start + 1) / max(1, steps - decay_start)
    return lr * (1 - (1 - recipe.min_lr_ratio) * min(1.0, progress))


# --- models, batches and objectives -------------------------------------------------------------


def new_swarm(
    model_cfg: GPTConfig, seeds: Sequence[int], recipe: Recipe, device: str, ranks: Ranks | None = None
) -> tuple[GPT, Any]:
    """M freshly initialised models (member m from seeds[m]) on `device`, and their AdamW.

    With `recipe.activation_checkpointing` each block is recomputed in the backward pass; with
    `recipe.compile` each block is torch.compile'd in place (its weights keep their names, so
    checkpoints and model files do not change); with `recipe.fsdp` and `ranks` of more than one
    process, the weights are sharded over the ranks (`ranks.shard_model`) before the AdamW is built.
    """
    model = GPT(model_cfg, seeds).to(device)
    model.activation_checkpointing = recipe.activation_checkpointing
    if recipe.compile:
        model.compile_blocks()
    if recipe.fsdp and ranks is not None and ranks.world > 1:
        shard_model(model)
        if ranks.main:
            log(f"fsdp: weights, gradients and AdamW state sharded over {ranks.world} ranks")
    return model, model.configure_optimizer(recipe.lr, recipe.weight_decay)


def stacked_batches(loaders: Sequence[MixtureLoader], device: str) -> Callable[[], torch.Tensor]:
    """Every member its own stream: the next batch (M, B, T+1)."""
    return lambda: torch.from_numpy(np.stack([loader.next_batch() for loader in loaders])).to(device)


def shared_batches(loader: MixtureLoader, M: int, device: str) -> Callable[[], torch.Tensor]:
    """One stream for every member (M, B, T+1): they all see exactly the same tokens."""
    return lambda: torch.from_numpy(loader.next_batch()).to(device).unsqueeze(0).expand(M, -1, -1)


def distill_step(
    student: GPT, teacher: GPT, alphas: Sequence[float], tau: float, chunk: int, device: str
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Distillation from `teacher` (member m weighs its KL term by alphas[m]); returns the plain CE (M,)."""
    alpha = torch.tensor(list(alphas), device=device)  # (M,)

    def step(batch: torch.Tensor, scale: float) -> torch.Tensor:
        x, y = batch[..., :-1], batch[..., 1:]
        with autocast(device):
            h = student.hidden_states(x)  # (M, B, T, C)
            with torch.no_grad():
                h_t = teacher.hidden_states(x[:1])  # (1, B, T, C)
        # Cut the graph at the hidden states: chunks back-propagate into h_cut.grad one by one.
        h_cut = h.detach().float().requires_grad_()
        _, ce = distill_loss(student, teacher, h_cut, h_t, y, alpha, tau, chunk, scale)
        h.backward(h_cut.grad.to(h.dtype))
        return ce  # logged as train loss: plain cross-entropy, comparable between the members

    return step


def distill_loss(
    student: GPT,
    teacher: GPT,
    h_student: torch.Tensor,
    h_teacher: torch.Tensor,
    targets: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    chunk: int,
    backward_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member distillation loss and cross-entropy (M,), in fp32 over chunks of positions.

    ``alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE`` per token.
    h_student (M, B, T, C), h_teacher (1, B, T, C), targets (M, B, T), alpha (M,). With
    `backward_scale`, each chunk's loss is back-propagated at once (into h_student.grad and the
    student's output projection), so only one chunk of logits is alive at a time; the caller
    then continues the backward pass from h_student into the rest of the student.
    """
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


# --- evaluation ---------------------------------------------------------------------------------


def evaluate(
    model: GPT, tokens_dir: Path | str, domains: Sequence[str], seq_len: int, recipe: Recipe, device: str
) -> dict[str, np.ndarray]:
    """Mean next-token loss of every member on each domain's fixed validation windows: domain -> (M,).

    The windows are the same for every member and every run; they go through the model in
    chunks of `recipe.batch_size`.
    """
    model.eval()
    out = {}
    M = model.M
    with torch.no_grad(), autocast(device):
        for d in domains:
            win = torch.from_numpy(eval_windows(tokens_dir, d, seq_len, recipe.eval_sequences)).to(device)
            total = torch.zeros(M, device=device)
            for chunk in win.split(recipe.batch_size):  # (b, T+1), the same windows for every member
                batch = chunk.unsqueeze(0).expand(M, -1, -1)  # (M, b, T+1)
                _, loss = model(batch[..., :-1], batch[..., 1:])
                total += loss.float() * chunk.shape[0]
            out[d] = (total / win.shape[0]).cpu().numpy()
    return out


# --- the loop -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainLoop:
    """A swarm, its optimizer and the hooks that make one step and one evaluation.

    `step_fn(batch (M, B, T+1), scale)` runs forward and backward (gradients scaled by `scale`
    for accumulation) and returns the members' losses (M,); `next_batch()` gives the next
    batch; `evaluate()` gives {domain: (M,) losses}; `loaders` are the data streams whose
    positions a checkpoint keeps; `target`, when set, adds each member's target loss to its rows.
    """

    model: GPT
    optimizer: Any
    names: list[str]
    loaders: dict[str, MixtureLoader]
    next_batch: Callable[[], torch.Tensor]
    step_fn: Callable[[torch.Tensor, float], torch.Tensor]
    evaluate: Callable[[], dict[str, np.ndarray]]
    target: Target | None = None
    ranks: Ranks = dataclasses.field(default_factory=Ranks)  # data-parallel ranks (torchrun)
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None  # each evaluation's rows (loggers)


def lm_loop(
    model_cfg: GPTConfig,
    seeds: Sequence[int],
    loaders: Mapping[str, MixtureLoader],
    recipe: Recipe,
    device: str,
    tokens_dir: Path | str,
    scored: Sequence[str],
    target: Target | None = None,
    ranks: Ranks | None = None,
) -> TrainLoop:
    """Language-model training of one member per loader (named by its key), scored on `scored`.

    With `ranks` of more than one process, this rank trains on its slice of every global batch.
    """
    ranks = ranks or Ranks()
    model, optimizer = new_swarm(model_cfg, seeds, recipe, device, ranks)
    streams = list(loaders.values())
    return TrainLoop(
        model,
        optimizer,
        list(loaders),
        dict(loaders),
        stacked_batches(streams, device) if ranks.world == 1 else sliced_batches(streams, device, ranks),
        lm_step(model, device),
        lambda: evaluate(model, tokens_dir, scored, model_cfg.seq_len, recipe, device),
        target,
        ranks,
    )


@dataclasses.dataclass
class _Window:
    """Train loss summed since the last evaluation, per member (kept in checkpoints so resumed rows match)."""

    loss: torch.Tensor  # (M,) float64
    steps: int = 0


def train(
    loop: TrainLoop,
    recipe: Recipe,
    seq_len: int,
    work: Path | None = None,
    *,
    desc: str | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the optimizer steps and return the metrics rows (one per member per evaluation).

    With `work`, a checkpoint is kept in ``work/checkpoint`` every `recipe.checkpoint_every`
    steps and the run continues from it when present. `desc` names the run in its progress
    (steps, tokens/s, ETA: a bar on a terminal, a line every few seconds otherwise) and log
    lines (None: silent, as inside a Dask task); `on_step(steps done)` is called after every
    step, for a caller that reports progress elsewhere (a swarm pack to its client).
    """
    device = next(loop.model.parameters()).device
    ckpt = work / CHECKPOINT if work is not None else None
    start, rows, window = _resume(loop, ckpt, desc, device)
    bar = _progress(desc, recipe, start)
    live = bar is not None and bar.bar is not None  # reading the loss waits for the GPU: only for a bar
    tokens_per_step = recipe.tokens_per_step * seq_len * len(loop.names)
    loop.model.train()
    try:
        for step in range(start, recipe.steps):
            lr = lr_at(step, recipe)
            step_loss = _step(loop, recipe, lr)
            window.loss += step_loss
            window.steps += 1
            done = step + 1
            if bar is not None:
                postfix = {"loss": f"{step_loss[0].item():.4f}", "lr": f"{lr:.2e}"} if live else {}
                bar.set(done, (done - start) * tokens_per_step, **postfix)
            if on_step is not None:
                on_step(done)
            if done % recipe.eval_every == 0 or done == recipe.steps:
                rows += _evaluation_rows(loop, done, done * recipe.tokens_per_step * seq_len, lr, window)
                if loop.on_rows is not None:
                    loop.on_rows(rows[-len(loop.names) :])
                loop.model.train()
                window = _Window(torch.zeros_like(window.loss))
                if desc:
                    log(f"{desc}: step {done}: " + ", ".join(_summary(r) for r in rows[-len(loop.names) :]))
            if ckpt is not None and done % recipe.checkpoint_every == 0 and done < recipe.steps:
                _checkpoint(loop, ckpt, done, rows, window)
    finally:
        if bar is not None:
            bar.close()
    return rows


def _progress(desc: str | None, recipe: Recipe, start: int) -> StepProgress | None:
    return StepProgress(desc, recipe.steps, initial=start) if desc else None


def _step(loop: TrainLoop, recipe: Recipe, lr: float) -> torch.Tensor:
    """One optimizer step (grad_accum micro-batches, each member clipped on its own); its loss (M,)."""
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    loop.optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros(len(loop.names), dtype=torch.float64, device=next(loop.model.parameters()).device)
    for _ in range(recipe.grad_accum):
        loss = loop.step_fn(loop.next_batch(), 1.0 / recipe.grad_accum)
        step_loss += loss.detach().double() / recipe.grad_accum
    sharded = is_sharded(loop.model)  # --fsdp: the backward pass averaged the gradient shards already
    if loop.ranks.world > 1:  # each rank's loss is the mean of its equal slice: their mean is the batch's
        if not sharded:
            average_gradients(loop.model, loop.ranks)
        step_loss = average(step_loss, loop.ranks)
    if sharded:
        clip_sharded_grad_norm_per_model(loop.model, recipe.grad_clip)
    else:
        loop.model.clip_grad_norm_per_model(recipe.grad_clip)
    loop.optimizer.step()
    return step_loss


def _evaluation_rows(
    loop: TrainLoop, step: int, tokens: int, lr: float, window: _Window
) -> list[dict[str, Any]]:
    losses = loop.evaluate()
    train_loss = (window.loss / window.steps).tolist()
    rows = []
    for m, name in enumerate(loop.names):
        row: dict[str, Any] = {"step": step, "model": name, "tokens": tokens, "lr": lr}
        row["train_loss"] = float(train_loss[m])
        row.update({f"loss.{d}": float(v[m]) for d, v in losses.items()})
        if loop.target is not None:
            row["target"] = loop.target.loss({d: float(v[m]) for d, v in losses.items()})
        rows.append(row)
    return rows


def _summary(row: Mapping[str, Any]) -> str:
    target = f" target {row['target']:.4f}" if "target" in row else ""
    return f"{row['model']} train {row['train_loss']:.4f}{target}"


def _checkpoint(loop: TrainLoop, ckpt: Path, step: int, rows: list[dict[str, Any]], window: _Window) -> None:
    """Rank 0 keeps the checkpoint (every rank's state is the same); a sharded model is first
    gathered whole, with every rank taking part."""
    tensors = full_training_tensors(loop.model, loop.optimizer) if is_sharded(loop.model) else None
    if not loop.ranks.main:
        return
    state = {
        "step": step,
        "model": loop.model.cfg.to_dict(),  # a resume with another size is refused, naming both
        "metrics": rows,
        "window": {"loss": window.loss.tolist(), "steps": window.steps},
        "loaders": {
            name: {"rng": loader.rng.bit_generator.state, "tokens": dict(loader.tokens)}
            for name, loader in loop.loaders.items()
        },
    }
    if tensors is None:
        save_training_state(ckpt, loop.model, loop.optimizer, state)
    else:
        save_training_state(ckpt, loop.model, loop.optimizer, state, tensors)


def _resume(
    loop: TrainLoop, ckpt: Path | None, desc: str | None, device: torch.device
) -> tuple[int, list[dict[str, Any]], _Window]:
    """(first step, rows so far, train-loss window): from the checkpoint when there is one."""
    M = len(loop.names)
    if ckpt is None or not ckpt.is_dir():
        return 0, [], _Window(torch.zeros(M, dtype=torch.float64, device=device))
    check_same_model(ckpt, loop.model.cfg)
    state = load_training_state(ckpt, loop.model, loop.optimizer)
    for name, saved in state["loaders"].items():
        loader = loop.loaders[name]
        loader.rng.bit_generator.state = saved["rng"]
        loader.tokens = dict(saved["tokens"])
    step = int(state["step"])
    log(f"{desc or 'train'}: resuming from the checkpoint at step {step}")
    window = _Window(torch.tensor(state["window"]["loss"], dtype=torch.float64, device=device))
    window.steps = int(state["window"]["steps"])
    return step, list(state["metrics"]), window
