"""`mixlab export hf`: a mixlab model directory as a Hugging Face Llama checkpoint.

Reads a model directory written by `mixlab pretrain` or `mixlab distill` (or an earlier
export). Writes ``config.json`` (``LlamaForCausalLM``), ``model.safetensors`` and the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``)
side by side, so ``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` and
``AutoTokenizer.from_pretrained(DIR)`` load it and give mixlab's logits.

`mixlab export stream`: a tokenize output and a mixture.json as the mixed token stream
(`mixlab.data.MixtureStream`, one rank) in files: ``stream.bin`` (flat, headerless,
uint16/uint32; sequences of seq_len + 1 tokens back to back), ``stream.json`` (dtype, shape,
weights, per-domain epochs) and ``sequences/shard_NNNNN.parquet`` (domain, tokens per sequence).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.console import log
from mixlab.errors import ConfigError
from mixlab.mixture import Mixture
from mixlab.proxy_models.config import ExportConfig, ExportStreamConfig, GPTConfig
from mixlab.proxy_models.modeldir import CONFIG, WEIGHTS, hf_llama_config, read_model_config, tokenizer_json
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage, write_json
from mixlab.tables import shard_name, write_table
from mixlab.tokenize.shards import TokenShards, token_dtype
from mixlab.tokenize.tokenizer import HF_FILES

STREAM_BIN, STREAM_JSON, SEQUENCES = "stream.bin", "stream.json", "sequences"


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


def run_export_stream(
    inputs: Inputs, cfg: ExportStreamConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """The mixed stream as files; inputs: {"tokens": dir, "mixture": mixture.json}."""
    inputs = absolute_inputs(inputs)
    if cfg.tokens_total < 1:  # checked here, not in the config: a pipeline file need not name it
        raise ConfigError("--tokens-total: required, the number of tokens to write (at least 1)")
    tokens_dir, mixture_path = Path(inputs["tokens"]), Path(inputs["mixture"])
    shards = TokenShards.open(tokens_dir)
    Mixture.read(mixture_path, shards.domains)  # a domain the tokens lack fails before any output

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        return _export_stream(shards, mixture_path, cfg, stage.out)

    return run_stage(
        "export_stream", cfg, {"tokens": tokens_dir, "mixture": mixture_path}, out_dir, body, force=force
    )


def _export_stream(
    shards: TokenShards, mixture_path: Path, cfg: ExportStreamConfig, out: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    from mixlab.data import MixtureStream, stream_sequences

    stream = MixtureStream(
        shards.path,
        mixture_path,
        cfg.seq_len,
        cfg.batch_size,
        seed=cfg.seed,
        name=cfg.name,
        rank=0,
        world_size=1,
    )
    dtype = token_dtype(shards.vocab_size)
    width = cfg.seq_len + 1
    sequences = -(-cfg.tokens_total // width)
    arrow_tokens = pa.list_(pa.from_numpy_dtype(dtype))
    names = np.array(stream.loader.domains)
    pending: list[pa.Table] = []
    held, written = 0, 0

    def flush() -> None:
        nonlocal held, written
        write_table(pa.concat_tables(pending), out / SEQUENCES / shard_name(written))
        pending.clear()
        held, written = 0, written + 1

    with open(out / STREAM_BIN, "wb") as bin_file:
        for choice, windows in stream_sequences(stream, sequences):
            block = windows.astype(dtype)  # (b, T+1)
            bin_file.write(block.tobytes())
            a = 0
            while a < len(block):  # a loop over shard edges, not sequences
                b = min(len(block), a + cfg.rows_per_shard - held)
                pending.append(_sequence_table(names[choice[a:b]], block[a:b], arrow_tokens))
                held, a = held + b - a, b
                if held == cfg.rows_per_shard:
                    flush()
    if held:
        flush()
    epochs = stream.epochs()
    manifest = {
        "format": "flat headerless token ids, sequences of seq_len + 1 tokens back to back",
        "dtype": np.dtype(dtype).name,
        "shape": [sequences, width],
        "seq_len": cfg.seq_len,
        "sequences": sequences,
        "tokens": sequences * width,
        "eos_id": shards.eos_id,
        "vocab_size": shards.vocab_size,
        "weights": stream.weights,
        "epochs": epochs,
        "seed": cfg.seed,
        "name": cfg.name,
        "batch_size": cfg.batch_size,
        "read": f"np.memmap('{STREAM_BIN}', dtype='{np.dtype(dtype).name}', mode='r').reshape(-1, {width})",
    }
    write_json(out / STREAM_JSON, manifest)
    counts = {"sequences": sequences, "tokens": sequences * width, "shards": written}
    return counts, {
        "dtype": manifest["dtype"],
        "seq_len": cfg.seq_len,
        "epochs": epochs,
        "weights": stream.weights,
    }


def _sequence_table(domains: np.ndarray, block: np.ndarray, arrow_tokens: pa.DataType) -> pa.Table:
    """Rows (domain, tokens) of a block of sequences (b, T+1), without a Python loop over them."""
    n, width = block.shape
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    tokens = pa.ListArray.from_arrays(offsets, pa.array(block.reshape(-1))).cast(arrow_tokens)
    return pa.table({"domain": pa.array(domains, pa.string()), "tokens": tokens})
