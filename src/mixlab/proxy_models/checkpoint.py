"""Model directories and resumable training state, as safetensors plus JSON (never pickle).

A model directory (what `pretrain` and `distill` publish) holds ``model.safetensors`` (one
model's weights under Hugging Face Llama names, [out, in] layout), ``config.json``
(``{"format": "mixlab", "model": GPTConfig, ...training facts}``) and ``tokenizer/``. An
exported Hugging Face directory (``config.json`` with ``model_type: llama``) loads too.
A training state directory (the resume point, kept in a stage's work dir) holds the whole
swarm's stacked weights, the AdamW state and ``state.json`` (step, data-loader RNG states,
metrics so far); it is written to a temporary sibling and published, so a kill never tears it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mixlab.errors import InputError
from mixlab.proxy_models.config import GPTConfig, count_params
from mixlab.proxy_models.model import GPT
from mixlab.proxy_models.modeldir import CONFIG, FORMAT, WEIGHTS, read_model_config
from mixlab.stage import WORK, partial_dir, publish, write_json
from mixlab.tokenize.shards import TOKENIZER_DIR

CHECKPOINT = "checkpoint"  # the resume point, in a stage's work dir
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
Tensors = dict[str, torch.Tensor]


# --- model directories ------------------------------------------------------------------------


def save_weights(path: Path, model: GPT, member: int, dtype: str = "float32") -> dict[str, int]:
    """Member `member`'s weights (HF Llama names) as one safetensors file; returns {name: numel}.

    The metadata is the single key transformers requires: safetensors writes its metadata map
    in hash order, so with two keys the same weights would give other bytes from run to run.
    """
    to = getattr(torch, dtype)
    weights = {k: v.to("cpu", to).contiguous() for k, v in model.member_state_dict(member).items()}
    save_file(weights, str(path), metadata={"format": "pt"})
    return {k: v.numel() for k, v in weights.items()}


def save_model(out: Path, model: GPT, member: int, meta: Mapping[str, Any], tokenizer: Path | None) -> None:
    """Write member `member` of `model` as a model directory (weights, config.json, tokenizer copy)."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / WEIGHTS, model, member)
    write_json(out / CONFIG, {"format": FORMAT, "model": model.cfg.to_dict(), **meta})
    if tokenizer is not None and tokenizer.is_dir():
        shutil.copytree(tokenizer, out / TOKENIZER_DIR, dirs_exist_ok=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file with a clear error when it is missing or damaged."""
    if not path.is_file():
        raise InputError(f"{path}: missing; the checkpoint directory is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: corrupt weights file ({exc}); re-create the checkpoint") from None


def load_model(path: Path | str, device: str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A single model (M = 1) from a model directory, and its config.json contents."""
    path = Path(path)
    cfg, meta = read_model_config(path)
    weights = read_weights(path / WEIGHTS)
    model = GPT(cfg, seeds=(0,))
    try:
        model.load_member_state_dict(0, weights)
    except ValueError as exc:
        raise InputError(f"{path / WEIGHTS}: does not match {CONFIG} ({exc})") from None
    return model.to(device), meta


# --- resumable training state -------------------------------------------------------------


def training_tensors(model: GPT, optimizer: torch.optim.Optimizer) -> tuple[Tensors, Tensors]:
    """(weights by parameter name, AdamW moments as "name::field") on the CPU: what a state keeps."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    moments: Tensors = {}
    for p, s in optimizer.state.items():
        for key, value in s.items():
            moments[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return weights, moments


def save_training_state(
    out: Path,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    tensors: tuple[Tensors, Tensors] | None = None,
) -> None:
    """The swarm's weights, AdamW moments and `state` (JSON) into `out`, replaced atomically.

    `tensors`: (weights, moments) gathered already (a sharded model's, `ranks.full_training_tensors`),
    else `training_tensors(model, optimizer)`; the files are the same either way.
    """
    weights, moments = tensors if tensors is not None else training_tensors(model, optimizer)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / WEIGHTS))
    save_file(moments, str(tmp / OPTIMIZER))
    write_json(tmp / STATE, dict(state))
    publish(tmp, out)


def load_training_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and AdamW moments in place (sharded over the ranks under --fsdp); returns state.json."""
    from mixlab.proxy_models.ranks import is_sharded, load_full_training_tensors

    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: damaged training state ({exc}); it is discarded: rerun to start over"
        ) from None
    weights = read_weights(path / WEIGHTS)
    sharded = is_sharded(model)
    if not sharded:
        _fit(path, lambda: model.load_state_dict(weights))
    moments = read_weights(path / OPTIMIZER)
    params = dict(model.named_parameters())
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        name, _, field = key.partition("::")
        if name not in params:
            raise InputError(
                f"{path / OPTIMIZER}: unknown parameter {name!r}; it is discarded: rerun to start over"
            )
        per_param.setdefault(name, {})[field] = value
    if sharded:  # every rank read the whole state; each keeps its own shard of it
        _fit(path, lambda: load_full_training_tensors(model, optimizer, weights, per_param))
        return state
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    sd = optimizer.state_dict()
    sd["state"] = {index[id(params[name])]: fields for name, fields in per_param.items()}
    optimizer.load_state_dict(sd)
    return state


def _fit(path: Path, load: Any) -> None:
    try:
        load()
    except RuntimeError as exc:
        raise InputError(
            f"{path}: saved weights do not fit this model ({exc}); it is discarded: rerun to start over"
        ) from None


# --- a resume must be of the same model ----------------------------------------------------------


def _size(cfg: GPTConfig, fields: list[str]) -> str:
    return ", ".join(f"{f} {getattr(cfg, f)}" for f in fields) + f" ({count_params(cfg):,} params)"


def check_same_model(ckpt: Path, model: GPTConfig, where: Path | None = None) -> None:
    """Refuse to resume the training state in `ckpt` into a model of another size, naming both.

    States written before they recorded their model are not checked here (their weights'
    shapes still are, when loaded).
    """
    try:
        state = json.loads((ckpt / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return  # no readable state: load_training_state words that
    saved = state.get("model") if isinstance(state, dict) else None
    if not isinstance(saved, dict):
        return
    differ = [f for f, v in model.to_dict().items() if saved.get(f, v) != v]
    if differ:
        theirs = GPTConfig.from_dict(saved)
        raise InputError(
            f"{where or ckpt}: the resume checkpoint (step {state.get('step', '?')}) is of a model with "
            f"{_size(theirs, differ)}, "
            f"this run asks for {_size(model, differ)}; rerun with the checkpoint's sizes to resume it, "
            "or pass --force to start over"
        )


def check_resume_model(out_dir: Path | str, model: GPTConfig) -> None:
    """Before a stage starts: a killed run's checkpoint for `out_dir` must be of `model`'s size.

    A rerun with other sizes would otherwise discard that run's partial output and start over;
    it is refused instead (checkpoint kept), naming both sizes.
    """
    out_dir = Path(out_dir).absolute()
    ckpt = partial_dir(out_dir) / WORK / CHECKPOINT
    if (ckpt / STATE).is_file():
        check_same_model(ckpt, model, out_dir)
