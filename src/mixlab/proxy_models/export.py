"""`mixlab export hf`: a mixlab model directory as a Hugging Face Llama checkpoint.

Reads a model directory written by `mixlab pretrain` or `mixlab distill` (or an earlier
export). Writes ``config.json`` (``LlamaForCausalLM``), ``model.safetensors`` and the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``)
side by side, so ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it and give mixlab's logits.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixlab.console import log
from mixlab.proxy_models.config import ExportConfig, GPTConfig
from mixlab.proxy_models.modeldir import CONFIG, WEIGHTS, hf_llama_config, read_model_config, tokenizer_json
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage, write_json
from mixlab.tokenize.tokenizer import HF_FILES


def hf_config(model_cfg: GPTConfig, meta: Mapping[str, Any], dtype: str) -> dict[str, Any]:
    """config.json for transformers: the Llama architecture plus dtype and special token ids."""
    config = {**hf_llama_config(model_cfg), "torch_dtype": dtype, "dtype": dtype}
    eos = meta.get("eos_id", meta.get("eos_token_id"))
    if eos is not None:
        config.update(bos_token_id=int(eos), eos_token_id=int(eos))
    return config


def run_export_hf(
    inputs: Inputs, cfg: ExportConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Export a model directory (inputs: {"model": dir}) as a Hugging Face Llama checkpoint."""
    inputs = absolute_inputs(inputs)
    model_dir = Path(inputs["model"])
    model_cfg, meta = read_model_config(model_dir)  # fails early on a directory that is not a checkpoint

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        from mixlab.proxy_models import checkpoint

        model, _ = checkpoint.load_model(model_dir)
        sizes = checkpoint.save_weights(stage.out / WEIGHTS, model, 0, dtype=cfg.dtype)
        write_json(stage.out / CONFIG, hf_config(model_cfg, meta, cfg.dtype))
        tok = tokenizer_json(model_dir)
        files = []
        if tok is None:
            log(f"export: warning: {model_dir} has no tokenizer; the export holds the model only")
        else:
            for name in HF_FILES:
                if (tok.parent / name).is_file():
                    shutil.copy2(tok.parent / name, stage.out / name)
                    files.append(name)
        counts = {"tensors": len(sizes), "params": sum(sizes.values())}
        stats = {
            "architecture": "LlamaForCausalLM",
            "dtype": cfg.dtype,
            "tokenizer_files": sorted(files),
            "source_format": meta.get("format", meta.get("model_type")),
        }
        return counts, stats

    return run_stage("export_hf", cfg, {"model": model_dir}, out_dir, body, force=force)
