"""A model directory's layout and its ``config.json``, read without torch.

A model directory (what `pretrain` and `distill` publish) holds ``model.safetensors``,
``config.json`` (``{"format": "mixlab", "model": GPTConfig, ...training facts}``) and
``tokenizer/``; an exported Hugging Face Llama directory (``config.json`` with
``model_type: llama``, tokenizer files beside it) reads too; `hf_llama_config` and
`_gpt_config_from_hf` map the config both ways. Stages check a model directory with these
before any output exists; checkpoint.py loads its weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixlab.errors import InputError
from mixlab.proxy_models.config import GPTConfig
from mixlab.tokenize.shards import TOKENIZER_DIR

FORMAT = "mixlab"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def hf_llama_config(cfg: GPTConfig) -> dict:
    """The `transformers.LlamaConfig` keyword arguments describing the same architecture."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
    }


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


def tokenizer_json(path: Path | str) -> Path | None:
    """The tokenizer.json kept with a model dir, tokens dir or export (either layout), if any."""
    path = Path(path)
    for candidate in (path / TOKENIZER_DIR / "tokenizer.json", path / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    return None
