"""`mixlab pretrain`: the full model on the chosen mixture, optionally beside baseline mixtures.

Reads a tokenize output directory and ``mixture.json`` (from `mixlab mixtures select`, or a
plain ``{domain: weight}``). Writes the chosen model (``model.safetensors``, ``config.json``,
``tokenizer/``), ``baselines/<name>/`` for each baseline, ``metrics.parquet`` (step, model,
tokens, lr, train_loss, loss.<domain>..., target) and, with baselines,
``comparison.parquet`` / ``comparison.json``. The chosen model and its baselines train side by
side as members of one swarm (same init, same token budget, each its own mixture stream). The
resume point (weights, AdamW state, data-loader RNG state) is kept in the stage's work dir.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mixlab.config import check_weights, load_yaml
from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.proxy_models.config import MODEL_FIELDS, PretrainConfig, TrainConfig
from mixlab.stage import Manifest, StageDir, run_stage, write_json
from mixlab.tables import write_table
from mixlab.tokenize.shards import TOKENIZER_DIR, domains, read_token_counts, tokens_info

METRICS = "metrics.parquet"
COMPARISON = "comparison.parquet"
COMPARISON_JSON = "comparison.json"
BASELINES_DIR = "baselines"
CHECKPOINT = "checkpoint"
# CPU-demo sizes: a few minutes on a laptop, still clearly bigger than the swarm's proxies.
PRETRAIN_MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "seq_len": 128}


# --- model sizes ----------------------------------------------------------------------------


def read_model_file(path: Path) -> dict[str, Any]:
    """A model size file: YAML or JSON mapping of GPTConfig keys (a mixlab config.json works too)."""
    from mixlab.proxy_models.model import GPTConfig

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: model file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    else:
        data = load_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]  # a mixlab checkpoint's config.json, or a YAML with a `model:` section
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of model sizes")
    valid = {f.name for f in dataclasses.fields(GPTConfig)}
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"{path}: unknown model key(s) {unknown} (valid: {', '.join(sorted(valid))})")
    return dict(data)


def model_config(
    cfg: TrainConfig, file: Path | None, defaults: Mapping[str, Any], vocab_size: int, flag: str = "--model"
) -> Any:
    """GPTConfig from stage defaults < the model file < size flags; vocab from the tokens dir."""
    from mixlab.proxy_models.model import GPTConfig

    values: dict[str, Any] = dict(defaults)
    if file is not None:
        values.update(read_model_file(file))
    if "vocab_size" in values and int(values["vocab_size"]) != vocab_size:
        raise ConfigError(
            f"{flag} {file}: vocab_size {values['vocab_size']} differs from the tokenizer's {vocab_size}; "
            "drop vocab_size from the model file (it comes from the tokens directory)"
        )
    values.update({k: getattr(cfg, k) for k in MODEL_FIELDS if getattr(cfg, k) is not None})
    values["vocab_size"] = vocab_size
    try:
        return GPTConfig(**values)
    except ConfigError as exc:
        message = str(exc).removeprefix("model config: ")
        for name in MODEL_FIELDS:
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise ConfigError(message) from None
    except TypeError as exc:
        raise ConfigError(f"{flag}: bad model size value ({exc})") from None


# --- mixture and target ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mixture:
    """The weights to train on and what the mixture file says about the target."""

    weights: dict[str, float]
    target: Any  # mixture.json's "target": {"spec", "terms"}, a mapping, a name, or None
    noise_floor: float | None
    raw: dict[str, Any]


def read_mixture(path: Path | str, tokens_dir: Path | str) -> Mixture:
    """mixture.json (or a plain {domain: weight}) checked against the tokens directory."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path}: mixture file not found; pass the mixture.json of `mixlab mixtures select`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object of weights")
    weights = data.get("weights", data)
    if not isinstance(weights, dict) or not weights:
        raise InputError(
            f'{path}: no weights; expected {{"weights": {{domain: weight}}}} or {{domain: weight}}'
        )
    try:
        weights = {str(d): float(w) for d, w in weights.items()}
    except (TypeError, ValueError):
        raise InputError(f"{path}: weights must be numbers (got {weights})") from None
    if not all(math.isfinite(w) for w in weights.values()):
        raise InputError(f"{path}: weights must be finite numbers")
    try:
        check_weights(weights, "mixture")
    except ConfigError as exc:
        raise InputError(f"{path}: {exc}") from None
    available = domains(tokens_dir)
    unknown = [d for d in weights if d not in available]
    if unknown:
        raise InputError(
            f"{path}: domain(s) {unknown} are not in {tokens_dir} (it has: {', '.join(available)}); "
            "choose the mixture on the same tokens directory"
        )
    floor = data.get("noise_floor")
    if isinstance(floor, dict):
        floor = floor.get("rmse")
    return Mixture(
        weights,
        data.get("target") if "weights" in data else None,
        float(floor) if isinstance(floor, (int, float)) else None,
        data,
    )


def resolve_target(
    override: str | None, file_target: Any, mix_domains: Sequence[str], scored: Sequence[str]
) -> dict[str, float]:
    """{loss name: coefficient}: --target, else the mixture file's target, else the mean."""
    from mixlab.mixtures.targets import parse_target

    if override:
        return parse_target(override, list(mix_domains), list(scored))
    if isinstance(file_target, dict) and isinstance(file_target.get("terms"), dict):
        terms = file_target["terms"]
    elif isinstance(file_target, dict) and file_target:
        terms = file_target
    elif isinstance(file_target, str):
        return parse_target(file_target, list(mix_domains), list(scored))
    else:
        return parse_target("mean", list(mix_domains), list(scored))
    terms = {str(k): float(v) for k, v in terms.items()}
    missing = [k for k in terms if k not in scored]
    if missing:
        raise InputError(
            f"mixture target names {missing}, which have no validation split in the tokens directory "
            f"(scored: {', '.join(scored)}); pass --target"
        )
    return terms


def target_loss(losses: Mapping[str, float], terms: Mapping[str, float]) -> float:
    return float(sum(c * losses[name] for name, c in terms.items()))


def natural_weights(tokens_dir: Path | str, mix_domains: Sequence[str]) -> dict[str, float]:
    """Train-token shares of the mixture's domains (the corpus as it comes)."""
    rows = read_token_counts(tokens_dir).to_pylist()
    train = {d: 0 for d in mix_domains}
    for r in rows:
        if r["split"] == "train" and r["domain"] in train:
            train[r["domain"]] += int(r["tokens"])
    total = sum(train.values())
    return {d: n / total for d, n in train.items()}


# --- the training loop, shared with distillation ------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay (or stable then linear decay for wsd) to min_lr_ratio x lr."""
    from mixlab.proxy_models import swarm

    if cfg.schedule == "cosine":
        return swarm.lr_at(step, cfg)  # type: ignore[arg-type]  # same fields: lr, steps, warmup_steps, min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.steps - max(1, round(cfg.decay_fraction * cfg.steps))
    if step < decay_start:
        return cfg.lr
    progress = (step - decay_start + 1) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * min(1.0, progress))


@dataclasses.dataclass
class TrainLoop:
    """A swarm, its optimizer and the hooks that make one step and one evaluation.

    `step_fn(batch (M, B, T+1), scale)` runs forward and backward (gradients scaled by
    `scale` for accumulation) and returns the members' losses (M,); `next_batch()` gives the
    next (M, B, T+1) batch; `evaluate()` gives {domain: (M,) losses}.
    """

    model: Any
    optimizer: Any
    names: list[str]
    loaders: dict[str, Any]
    next_batch: Callable[[], Any]
    step_fn: Callable[[Any, float], Any]
    evaluate: Callable[[], dict[str, np.ndarray]]
    target: dict[str, float]


def _loader_state(loader: Any) -> dict[str, Any]:
    return {"rng": loader.rng.bit_generator.state, "tokens": dict(loader.tokens)}


def _set_loader_state(loader: Any, state: Mapping[str, Any]) -> None:
    loader.rng.bit_generator.state = state["rng"]
    loader.tokens = dict(state["tokens"])


def train(
    loop: TrainLoop,
    cfg: TrainConfig,
    seq_len: int,
    work: Path,
    *,
    resume: bool,
    on_checkpoint: Callable[[int], None] | None = None,
    desc: str = "train",
) -> list[dict[str, Any]]:
    """Run the optimizer steps (from the last checkpoint when resuming); returns the metrics rows."""
    import torch
    from tqdm.auto import tqdm

    from mixlab.proxy_models.checkpoint import load_training_state, save_training_state

    ckpt = work / CHECKPOINT
    start, rows = 0, []
    window: dict[str, Any] = {"loss": [0.0] * len(loop.names), "steps": 0}
    if ckpt.is_dir() and resume:
        state = load_training_state(ckpt, loop.model, loop.optimizer)
        for name, s in state["loaders"].items():
            _set_loader_state(loop.loaders[name], s)
        start, rows = int(state["step"]), list(state["metrics"])
        window = state["window"]
        log(f"{desc}: resuming from the checkpoint at step {start}")
    elif ckpt.is_dir():
        log(f"{desc}: discarding the checkpoint of an interrupted run (pass --resume to continue from it)")
        shutil.rmtree(ckpt)

    M = len(loop.names)
    # Train loss averaged since the last evaluation (kept in checkpoints so resumed rows match).
    window_loss = torch.tensor(window["loss"], dtype=torch.float64)
    window_steps = int(window["steps"])
    # disable=None: a live bar on a terminal, silence in logs (the per-eval lines still print).
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
        disable=None,
        mininterval=0.5,
    )
    loop.model.train()
    try:
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for group in loop.optimizer.param_groups:
                group["lr"] = lr
            loop.optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros(M, dtype=torch.float64)
            for _ in range(cfg.grad_accum):
                loss = loop.step_fn(loop.next_batch(), 1.0 / cfg.grad_accum)
                step_loss += loss.detach().double().cpu() / cfg.grad_accum
            loop.model.clip_grad_norm_per_model(cfg.grad_clip)
            loop.optimizer.step()
            window_loss += step_loss
            window_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss[0].item():.4f}", lr=f"{lr:.2e}")
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.steps:
                losses = loop.evaluate()
                loop.model.train()
                for m, name in enumerate(loop.names):
                    row: dict[str, Any] = {
                        "step": done,
                        "model": name,
                        "tokens": done * cfg.tokens_per_step * seq_len,
                        "lr": lr,
                        "train_loss": float(window_loss[m] / window_steps),
                    }
                    row.update({f"loss.{d}": float(v[m]) for d, v in losses.items()})
                    row["target"] = target_loss({d: float(v[m]) for d, v in losses.items()}, loop.target)
                    rows.append(row)
                bar.write(
                    f"{desc}: step {done}: "
                    + ", ".join(
                        f"{r['model']} train {r['train_loss']:.4f} target {r['target']:.4f}"
                        for r in rows[-M:]
                    ),
                    file=sys.stderr,
                )
                window_loss.zero_()
                window_steps = 0
            if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                state = {
                    "step": done,
                    "metrics": rows,
                    "window": {"loss": window_loss.tolist(), "steps": window_steps},
                    "loaders": {n: _loader_state(ld) for n, ld in loop.loaders.items()},
                }
                save_training_state(ckpt, loop.model, loop.optimizer, state)
                if on_checkpoint is not None:
                    on_checkpoint(done)
    finally:
        bar.close()
    return rows


def evaluator(
    model: Any, tokens_dir: Path | str, scored: Sequence[str], seq_len: int, cfg: TrainConfig, device: str
) -> Callable[[], dict[str, np.ndarray]]:
    """Every member's mean loss on each domain's fixed validation windows (the swarm's scorer)."""
    from mixlab.proxy_models.swarm import evaluate

    shim = types.SimpleNamespace(
        seq_len=seq_len, eval_sequences=cfg.eval_sequences, batch_size=cfg.batch_size
    )
    return lambda: evaluate(model, str(tokens_dir), scored, shim, device)


def prepare_device(cfg: TrainConfig) -> str:
    import torch

    from mixlab.proxy_models.swarm import pick_device

    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def metrics_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def tokenizer_source(tokens_dir: Path | str) -> Path | None:
    path = Path(tokens_dir) / TOKENIZER_DIR
    return path if path.is_dir() else None


# --- the stage ------------------------------------------------------------------------------


def run_pretrain(
    inputs: Mapping[str, Path | str],
    cfg: PretrainConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
    resume: bool = False,
    on_checkpoint: Callable[[int], None] | None = None,
) -> Manifest:
    """Pretrain on the chosen mixture; inputs: {"tokens": dir, "mixture": mixture.json}.

    `client` is accepted for the stage contract; training runs in this process on its device.
    `resume` continues an interrupted run with the same config from its last checkpoint.
    `on_checkpoint(step)` is called after each checkpoint is written.
    """
    from mixlab.proxy_models.data import run_init_seed
    from mixlab.proxy_models.swarm import RunSpec, check_train_tokens, eval_domains

    tokens_dir, mixture_path = Path(inputs["tokens"]), Path(inputs["mixture"])
    info = tokens_info(tokens_dir)
    mixture = read_mixture(mixture_path, tokens_dir)
    model_cfg = model_config(cfg, cfg.model, PRETRAIN_MODEL, int(info["vocab_size"]))
    seq_len = model_cfg.seq_len
    mixtures = {"chosen": mixture.weights}
    for name in cfg.baselines:
        n = len(mixture.weights)
        mixtures[name] = (
            natural_weights(tokens_dir, list(mixture.weights))
            if name == "natural"
            else dict.fromkeys(mixture.weights, 1.0 / n)
        )
    specs = [RunSpec(name, cfg.seed, w, name) for name, w in mixtures.items()]
    check_train_tokens(tokens_dir, specs, seq_len)
    scored = eval_domains(tokens_dir, seq_len)
    terms = resolve_target(cfg.target, mixture.target, list(mixture.weights), scored)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        from mixlab.proxy_models.checkpoint import save_model
        from mixlab.proxy_models.data import MixtureLoader
        from mixlab.proxy_models.model import GPT, count_params, flops_per_token

        device = prepare_device(cfg)
        names = list(mixtures)
        init_seed = run_init_seed(cfg.seed, "pretrain")
        # Every member starts from the same weights: only the data differs between them.
        model = GPT(model_cfg, [init_seed] * len(names)).to(device)
        optimizer = model.configure_optimizer(cfg.lr, cfg.weight_decay)
        loaders = {
            n: MixtureLoader(tokens_dir, mixtures[n], seq_len, cfg.batch_size, cfg.seed, f"pretrain/{n}")
            for n in names
        }
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
        log(
            f"pretrain: {count_params(model_cfg):,} params ({count_params(model_cfg, True):,} non-embedding), "
            f"{len(names)} model(s) [{', '.join(names)}] x {cfg.steps * cfg.tokens_per_step * seq_len:,} tokens "
            f"on {device}"
        )

        def next_batch() -> torch.Tensor:
            return torch.from_numpy(np.stack([loaders[n].next_batch() for n in names])).to(device)

        def step_fn(batch: torch.Tensor, scale: float) -> torch.Tensor:
            with autocast:
                _, loss = model(batch[..., :-1], batch[..., 1:])  # (M,)
            (loss.sum() * scale).backward()
            return loss

        loop = TrainLoop(
            model,
            optimizer,
            names,
            loaders,
            next_batch,
            step_fn,
            evaluator(model, tokens_dir, scored, seq_len, cfg, device),
            terms,
        )
        rows = train(
            loop, cfg, seq_len, stage.work, resume=resume, on_checkpoint=on_checkpoint, desc="pretrain"
        )

        tokenizer = tokenizer_source(tokens_dir)
        final = {r["model"]: r for r in rows if r["step"] == cfg.steps}
        trained_tokens = cfg.steps * cfg.tokens_per_step * seq_len
        for m, name in enumerate(names):
            meta = {
                "stage": "pretrain",
                "mixture": mixtures[name],
                "target": terms,
                "tokens": trained_tokens,
                "steps": cfg.steps,
                "seed": cfg.seed,
                "eos_id": int(info["eos_id"]),
                "val_losses": {
                    k.removeprefix("loss."): v for k, v in final[name].items() if k.startswith("loss.")
                },
                "target_loss": final[name]["target"],
            }
            where = stage.out if name == "chosen" else stage.out / BASELINES_DIR / name
            save_model(where, model, m, meta, tokenizer)
        write_table(metrics_table(rows), stage.out / METRICS)
        comparison = None
        if cfg.baselines:
            comparison = compare(final, mixtures, terms, trained_tokens, mixture.noise_floor, "chosen")
            write_table(pa.Table.from_pylist(comparison.pop("rows")), stage.out / COMPARISON)
            write_json(stage.out / COMPARISON_JSON, comparison)
            for line in comparison["summary"]:
                log(f"pretrain: {line}")
        counts = {"models": len(names), "steps": cfg.steps, "tokens": trained_tokens}
        stats = {
            "model": model_cfg.to_dict(),
            "params": count_params(model_cfg),
            "params_nonembedding": count_params(model_cfg, non_embedding=True),
            "flops_per_token": flops_per_token(model_cfg),
            "weights": mixture.weights,
            "target": terms,
            "target_loss": final["chosen"]["target"],
            "val_losses": {
                k.removeprefix("loss."): v for k, v in final["chosen"].items() if k.startswith("loss.")
            },
            "epochs": loaders["chosen"].epochs(),
            "device": device,
        }
        if comparison:
            stats["comparison"] = {n: m["target"] for n, m in comparison["models"].items()}
        return counts, stats

    inputs_fp = {"tokens": tokens_dir, "mixture": mixture_path, "model": cfg.model}
    return run_stage("pretrain", cfg, inputs_fp, out_dir, body, force=force)


def compare(
    final: Mapping[str, Mapping[str, Any]],
    mixtures: Mapping[str, Mapping[str, float]],
    terms: Mapping[str, float],
    tokens: int,
    noise: float | None,
    reference: str,
) -> dict[str, Any]:
    """Target and per-domain losses of every model at equal tokens, and each baseline's gap."""
    rows, models = [], {}
    for name, row in final.items():
        losses = {k.removeprefix("loss."): v for k, v in row.items() if k.startswith("loss.")}
        weights = mixtures.get(name, {})
        rows.append(
            {
                "model": name,
                **{f"w.{d}": w for d, w in weights.items()},
                "tokens": tokens,
                "target": row["target"],
                **{f"loss.{d}": v for d, v in losses.items()},
            }
        )
        models[name] = {"weights": dict(weights), "target": row["target"], "losses": losses}
    ref = models[reference]["target"]
    gaps = {n: m["target"] - ref for n, m in models.items() if n != reference}
    summary = [f"{reference} target loss {ref:.4f}"] + [
        f"{n}: {models[n]['target']:.4f} ({'+' if g >= 0 else ''}{g:.4f} vs {reference})"
        for n, g in gaps.items()
    ]
    out = {
        "target": dict(terms),
        "tokens": tokens,
        "reference": reference,
        "models": models,
        "gap_vs_reference": gaps,
        "best": min(models, key=lambda n: models[n]["target"]),
        "noise_floor": noise,
        "summary": summary,
        "rows": rows,
    }
    if noise is not None:
        out["beats_all_by_more_than_noise"] = all(g > noise for g in gaps.values())
    return out
