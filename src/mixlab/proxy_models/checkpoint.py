"""Model directories and resumable training state, as safetensors plus JSON (never pickle).

A model directory (what `pretrain` and `distill` publish) holds ``model.safetensors`` (one
model's weights under Hugging Face Llama names, [out, in] layout), ``config.json``
(``{"format": "mixlab", "model": GPTConfig, ...training facts}``) and ``tokenizer/``. An
exported Hugging Face directory (``config.json`` with ``model_type: llama``) loads too.
A training state directory (the resume point, kept in a stage's work dir) holds the whole
swarm's stacked weights, the AdamW state and ``state.json`` (step, data-loader RNG states,
metrics so far); it is written to a temporary sibling and renamed, so a kill never tears it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mixlab.errors import InputError
from mixlab.proxy_models.model import GPT, GPTConfig
from mixlab.stage import write_json
from mixlab.tokenize.shards import TOKENIZER_DIR

FORMAT = "mixlab"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


# --- model directories ------------------------------------------------------------------------


def save_model(out: Path, model: GPT, member: int, meta: Mapping[str, Any], tokenizer: Path | None) -> None:
    """Write member `member` of `model` as a model directory (weights, config.json, tokenizer copy)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.float().cpu() for k, v in model.member_state_dict(member).items()}
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", "producer": FORMAT})
    write_json(out / CONFIG, {"format": FORMAT, "model": model.cfg.to_dict(), **meta})
    if tokenizer is not None and tokenizer.is_dir():
        shutil.copytree(tokenizer, out / TOKENIZER_DIR, dirs_exist_ok=True)


def _gpt_config_from_hf(data: Mapping[str, Any], where: Path) -> GPTConfig:
    """An exported Llama config.json -> the GPTConfig that reads the same weights."""
    try:
        rope = data.get("rope_theta")
        if rope is None:
            rope = (data.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        cfg = GPTConfig(
            vocab_size=int(data["vocab_size"]),
            seq_len=int(data.get("max_position_embeddings", 2048)),
            n_layer=int(data["num_hidden_layers"]),
            n_head=int(data["num_attention_heads"]),
            n_kv_head=int(data.get("num_key_value_heads") or data["num_attention_heads"]),
            n_embd=int(data["hidden_size"]),
            mlp_hidden=int(data["intermediate_size"]),
            rope_theta=float(rope),
            norm_eps=float(data.get("rms_norm_eps", 1e-5)),
            tie_embeddings=bool(data.get("tie_word_embeddings", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"{where}: Llama config.json lacks or mangles {exc}; not a loadable checkpoint"
        ) from None
    head_dim = data.get("head_dim")
    if head_dim is not None and int(head_dim) != cfg.head_dim:
        raise InputError(f"{where}: head_dim {head_dim} != hidden_size / num_attention_heads; not supported")
    if data.get("hidden_act", "silu") != "silu" or data.get("attention_bias") or data.get("mlp_bias"):
        raise InputError(f"{where}: only bias-free SiLU Llama models load into mixlab")
    return cfg


def read_model_config(path: Path | str) -> tuple[GPTConfig, dict[str, Any]]:
    """(GPTConfig, the rest of config.json) of a mixlab model dir or an exported Llama dir."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            f"{path}: no such checkpoint directory; pass the --out of `mixlab pretrain` or `distill`"
        )
    file = path / CONFIG
    if not file.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise InputError(
            f"{path}: no {CONFIG} (found: {found}); not a mixlab checkpoint or a Hugging Face Llama export"
        )
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: corrupt config ({exc}); the checkpoint is damaged, re-create it") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object")
    if data.get("format") == FORMAT:
        try:
            return GPTConfig.from_dict(data["model"]), data
        except (KeyError, TypeError) as exc:
            raise InputError(f"{file}: model config missing or malformed ({exc})") from None
    if data.get("model_type") == "llama":
        return _gpt_config_from_hf(data, file), data
    raise InputError(
        f"{file}: neither a mixlab checkpoint (format: mixlab) nor a Llama export (model_type: llama); "
        "pass the --out of `mixlab pretrain`, `mixlab distill` or `mixlab export hf`"
    )


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


def tokenizer_json(path: Path | str) -> Path | None:
    """The tokenizer.json kept with a model dir, tokens dir or export (either layout), if any."""
    path = Path(path)
    for candidate in (path / TOKENIZER_DIR / "tokenizer.json", path / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None


# --- resumable training state -------------------------------------------------------------


def save_training_state(
    out: Path, model: GPT, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]
) -> None:
    """The swarm's weights, AdamW moments and `state` (JSON) into `out`, replaced atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / WEIGHTS))
    names = {id(p): n for n, p in model.named_parameters()}
    moments: dict[str, torch.Tensor] = {}
    for p, s in optimizer.state.items():
        for key, value in s.items():
            moments[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(moments, str(tmp / OPTIMIZER))
    write_json(tmp / STATE, dict(state))
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and AdamW moments in place; returns state.json."""
    try:
        state = json.loads((path / STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path}: damaged training state ({exc}); rerun without --resume to start over"
        ) from None
    weights = read_weights(path / WEIGHTS)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise InputError(
            f"{path}: saved weights do not fit this model ({exc}); rerun without --resume"
        ) from None
    moments = read_weights(path / OPTIMIZER)
    params = dict(model.named_parameters())
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in moments.items():
        name, _, field = key.partition("::")
        if name not in params:
            raise InputError(f"{path / OPTIMIZER}: unknown parameter {name!r}; rerun without --resume")
        per_param.setdefault(index[id(params[name])], {})[field] = value
    sd = optimizer.state_dict()
    sd["state"] = per_param
    optimizer.load_state_dict(sd)
    return state
