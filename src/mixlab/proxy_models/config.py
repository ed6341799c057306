"""The model stages' configs: `swarm train`, `pretrain`, `distill`, `export hf`.

Torch-free, so the CLI can build its flags without importing torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mixlab.config import check_choices, option
from mixlab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SwarmConfig:
    """`mixlab swarm train`: the proxy model, its training recipe and how runs are packed."""

    SECTION = "swarm"

    n_layer: int = option(2, "transformer layers of each proxy")
    n_head: int = option(4, "attention heads (must divide --n-embd)")
    n_kv_head: int | None = option(None, "key/value heads for grouped-query attention (default: --n-head)")
    n_embd: int = option(64, "model width")
    mlp_hidden: int | None = option(None, "SwiGLU hidden size (default: 8/3 x --n-embd, rounded up to 16)")
    tie_embeddings: bool = option(True, "share the input embedding and the output projection")
    seq_len: int = option(64, "tokens per training sequence")
    batch_size: int = option(8, "sequences per proxy per step")
    steps: int = option(150, "optimizer steps per proxy")
    lr: float = option(3e-3, "peak learning rate (AdamW)")
    warmup_steps: int = option(15, "linear warmup steps before cosine decay")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    weight_decay: float = option(0.1, "AdamW weight decay on weight matrices (not norms)")
    grad_clip: float = option(1.0, "clip each proxy's gradient norm to this (0 = off); never a global norm")
    eval_sequences: int = option(32, "validation windows per domain (the same windows for every run)")
    pack_size: int = option(32, "proxies trained together in one swarm (one Dask task)")
    repeats: int = option(1, "seeds per repeated mixture; above 1 measures the noise floor")
    repeat_mixtures: int = option(4, "how many candidates (the first ones) are trained --repeats times")
    device: str = option(
        "auto", "where to train: auto (CUDA when present), cpu or cuda", choices=("auto", "cpu", "cuda")
    )
    threads: int = option(0, "torch threads per task on CPU (0 = the worker's share of the machine's cores)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("seq_len", "batch_size", "steps", "eval_sequences", "pack_size", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr: must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("--min-lr-ratio: must lie in [0, 1]")
        if self.warmup_steps < 0 or self.repeat_mixtures < 0 or self.threads < 0:
            raise ConfigError("--warmup-steps / --repeat-mixtures / --threads: must not be negative")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("--weight-decay / --grad-clip: must not be negative")
        self.model_config(vocab_size=2)  # sizes that do not divide fail here, before any data is read

    def model_config(self, vocab_size: int) -> Any:
        """The GPTConfig of one proxy (errors worded with this stage's flags)."""
        from mixlab.proxy_models.model import GPTConfig

        try:
            return GPTConfig(
                vocab_size=vocab_size,
                seq_len=self.seq_len,
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_kv_head=self.n_kv_head,
                n_embd=self.n_embd,
                mlp_hidden=self.mlp_hidden,
                tie_embeddings=self.tie_embeddings,
            )
        except ConfigError as exc:
            message = str(exc).removeprefix("model config: ")
            for name in ("n_embd", "n_head", "n_kv_head", "n_layer", "mlp_hidden", "seq_len"):
                message = message.replace(name, "--" + name.replace("_", "-"))
            raise ConfigError(message) from None

    @property
    def train_tokens(self) -> int:
        """Tokens each proxy trains on."""
        return self.steps * self.batch_size * self.seq_len


MODEL_FIELDS = (
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "mlp_hidden",
    "seq_len",
    "rope_theta",
    "tie_embeddings",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model size flags and the training recipe shared by `pretrain` and `distill`."""

    n_layer: int | None = option(
        None, "transformer layers (default: from the model file, else the stage's size)"
    )
    n_head: int | None = option(None, "attention heads (must divide --n-embd)")
    n_kv_head: int | None = option(None, "key/value heads for grouped-query attention (default: --n-head)")
    n_embd: int | None = option(None, "model width")
    mlp_hidden: int | None = option(None, "SwiGLU hidden size (default: 8/3 x --n-embd, rounded up to 16)")
    seq_len: int | None = option(None, "tokens per training sequence")
    rope_theta: float | None = option(None, "rotary base frequency (default 10000)")
    tie_embeddings: bool | None = option(
        None, "share the input embedding and the output projection (default: yes)"
    )
    steps: int = option(300, "optimizer steps")
    batch_size: int = option(16, "sequences per micro-batch")
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step")
    lr: float = option(2e-3, "peak learning rate (AdamW)")
    schedule: str = option(
        "cosine",
        "learning-rate schedule after warmup: cosine, or wsd (warmup-stable-decay)",
        choices=("cosine", "wsd"),
    )
    warmup_steps: int = option(30, "linear warmup steps")
    decay_fraction: float = option(0.2, "wsd: share of the steps spent decaying at the end")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    weight_decay: float = option(0.1, "AdamW weight decay on weight matrices (not norms)")
    grad_clip: float = option(1.0, "clip each model's gradient norm to this (0 = off)")
    eval_every: int = option(50, "steps between validation passes (and at the end)")
    eval_sequences: int = option(32, "validation windows per domain")
    checkpoint_every: int = option(50, "steps between resume checkpoints")
    target: str | None = option(
        None,
        "target loss: mean, a validation domain, or code=0.5,prose=0.5 "
        "(default: the mixture file's target, else mean)",
    )
    seed: int = option(0, "seed of initialisation and data order")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: int = option(0, "torch CPU threads (0 = torch's default)")

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_sequences", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr: must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("--min-lr-ratio: must lie in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError("--decay-fraction: must lie in (0, 1]")
        if self.warmup_steps < 0 or self.threads < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(
                "--warmup-steps / --threads / --weight-decay / --grad-clip: must not be negative"
            )

    @property
    def tokens_per_step(self) -> int:
        """Sequences per optimizer step (times seq_len gives tokens)."""
        return self.batch_size * self.grad_accum


@dataclasses.dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """`mixlab pretrain`: the full model on the chosen mixture, and baselines for comparison."""

    SECTION = "pretrain"

    model: Path | None = option(None, "model size file (.yaml/.json with GPTConfig keys); flags override it")
    baselines: tuple[str, ...] = option(
        (), "also train on these mixtures for the same tokens: natural, uniform"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [b for b in self.baselines if b not in ("natural", "uniform")]
        if bad:
            raise ConfigError(f"--baselines: unknown {bad}; choose from natural, uniform")
        if len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(f"--baselines: listed twice: {list(self.baselines)}")


@dataclasses.dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """`mixlab distill`: a student model trained on a teacher's temperature-softened outputs."""

    SECTION = "distill"

    student: Path | None = option(
        None, "student size file (.yaml/.json with GPTConfig keys); size flags override it"
    )
    # Defaults measured on the quickstart (400-step teacher, 200-step student, same tokens): target
    # loss 4.13 at alpha 0.9 / tau 1, 4.22 at 0.5 / 1, 4.42 at 0.5 / 2, against 4.41 from scratch.
    # A language model's next-token distribution is already soft; tau > 1 flattens it towards noise.
    alpha: float = option(0.9, "weight of the distillation (KL) term; 1 - alpha weighs plain cross-entropy")
    tau: float = option(1.0, "softmax temperature of teacher and student in the KL term")
    logit_chunk: int = option(64, "positions per chunk when computing vocabulary logits (bounds memory)")
    compare_scratch: bool = option(False, "also train the same student from scratch on the same tokens")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("--alpha: must lie in [0, 1]")
        if self.tau <= 0:
            raise ConfigError("--tau: must be positive")
        if self.logit_chunk < 1:
            raise ConfigError("--logit-chunk: must be at least 1")


DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """`mixlab export hf`: the weights' dtype in the exported checkpoint."""

    SECTION = "export"

    dtype: str = option(
        "float32", "dtype of the exported weights: float32, bfloat16 or float16", choices=DTYPES
    )

    def __post_init__(self) -> None:
        check_choices(self)
