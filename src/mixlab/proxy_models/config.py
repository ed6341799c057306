"""The model stages' configs (`swarm train`, `pretrain`, `distill`, `export hf`) and what they share.

`ModelSize` is a model's shape, `GPTConfig` that shape with its vocabulary, and `Recipe` how a
model is trained: the training core (`train.py`) reads these two and nothing else, whichever
stage calls it. Each stage config keeps its own flags and defaults and builds its `size` and
`recipe` from them, so every check lives in one place and is worded with the flags.
Torch-free, so the CLI can build its flags and a stage can size a model without importing torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mixlab.config import check_choices, flag_name, load_yaml, option
from mixlab.errors import ConfigError

# A stage's `inputs`: input name -> a path, a list of paths, or None (see mixlab.stage).

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "wsd")
LOGGERS = ("none", "csv", "tensorboard", "wandb")  # --logger: metrics beside metrics.parquet
# How pretrain / distill run, not what they train: left out of the stage key, so an output is
# still up to date, and a killed run still resumes, with any of them changed.
RUNTIME_FIELDS = ("logger", "compile", "activation_checkpointing", "fsdp")


# --- model shape ------------------------------------------------------------------------------


def _check_shape(size: ModelSize, spell: Callable[[str], str], prefix: str) -> None:
    """The rules every model shape obeys; `spell` names a field (a flag, or the field itself)."""
    # Resolve the defaults so that every reader sees plain ints.
    if size.n_kv_head is None:
        object.__setattr__(size, "n_kv_head", size.n_head)
    if size.mlp_hidden is None:
        object.__setattr__(size, "mlp_hidden", 16 * math.ceil(8 * size.n_embd / 3 / 16))
    for name in ("seq_len", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden"):
        if getattr(size, name) < 1:
            raise ConfigError(f"{prefix}{spell(name)} must be at least 1, got {getattr(size, name)}")
    if size.n_embd % size.n_head:
        raise ConfigError(
            f"{prefix}{spell('n_embd')} ({size.n_embd}) must be divisible by {spell('n_head')} ({size.n_head})"
        )
    if size.head_dim % 2:
        raise ConfigError(
            f"{prefix}head size {spell('n_embd')}/{spell('n_head')} = {size.head_dim} "
            "must be even for rotary positions"
        )
    if size.n_head % size.n_kv_head:
        raise ConfigError(
            f"{prefix}{spell('n_head')} ({size.n_head}) must be divisible by "
            f"{spell('n_kv_head')} ({size.n_kv_head})"
        )
    if size.rope_theta <= 0 or size.norm_eps <= 0:
        raise ConfigError(f"{prefix}{spell('rope_theta')} and {spell('norm_eps')} must be positive")


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """A model's shape without its vocabulary (that comes from the tokens directory).

    What the size flags and model files set; errors name the flags.
    """

    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None means n_head (plain multi-head)
    n_embd: int = 64
    mlp_hidden: int | None = None  # SwiGLU hidden size; None means 8/3 * n_embd rounded up to 16
    seq_len: int = 128  # longest sequence the model is trained on (rotary needs no table limit)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        _check_shape(self, flag_name, "")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """This shape with the tokens' vocabulary: the one way a stage builds its GPTConfig."""
        return GPTConfig(vocab_size=vocab_size, **_shape_values(self))


def _shape_values(size: ModelSize) -> dict[str, Any]:
    return {f.name: getattr(size, f.name) for f in dataclasses.fields(ModelSize)}


@dataclasses.dataclass(frozen=True)
class GPTConfig(ModelSize):
    """Everything the network's tensors depend on: a shape and a vocabulary (see model.py).

    Built from code and model files, so its errors name the fields, not flags.
    """

    vocab_size: int = 1024

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ConfigError(f"model config: vocab_size must be at least 1, got {self.vocab_size}")
        _check_shape(self, str, "model config: ")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> GPTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def count_params(cfg: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of one model; non_embedding excludes the token embedding and output projection."""
    C, H, hd = cfg.n_embd, cfg.mlp_hidden, cfg.head_dim
    attn = C * cfg.n_head * hd * 2 + C * cfg.n_kv_head * hd * 2
    layer = attn + 3 * C * H + 2 * C
    body = cfg.n_layer * layer + C
    if non_embedding:
        return body
    embeddings = cfg.vocab_size * C * (1 if cfg.tie_embeddings else 2)
    return body + embeddings


def flops_per_token(cfg: GPTConfig, T: int | None = None) -> float:
    """Training FLOPs per token of one model (forward + backward): 6 N + 12 L T C (PaLM appendix B)."""
    T = T or cfg.seq_len
    n_matmul = count_params(cfg, non_embedding=True) + cfg.vocab_size * cfg.n_embd  # + output projection
    return 6.0 * n_matmul + 12.0 * cfg.n_layer * T * cfg.n_embd


# --- training recipe --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a model is trained: schedule, optimizer, clipping, evaluation and where it runs.

    The training core reads only this; each stage config builds it from its flags.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float
    grad_clip: float  # per model, never a global norm across a swarm
    eval_sequences: int
    eval_every: int  # an evaluation every this many steps, and always at the end
    checkpoint_every: int  # a resume checkpoint every this many steps (none at the end)
    grad_accum: int = 1
    schedule: str = "cosine"
    decay_fraction: float = 0.2  # wsd only
    device: str = "auto"
    threads: int = 0
    compile: bool = False  # torch.compile each transformer block
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    fsdp: bool = False  # under torchrun: shard weights, gradients and AdamW state over the ranks

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_sequences", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)}: must be at least 1")
        for name in ("warmup_steps", "threads", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_name(name)}: must not be negative")
        if self.lr <= 0:
            raise ConfigError("--lr: must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("--min-lr-ratio: must lie in [0, 1]")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError("--decay-fraction: must lie in (0, 1]")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule: {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device: {self.device!r} is not one of {', '.join(DEVICES)}")

    @classmethod
    def of(cls, cfg: Any, **fixed: Any) -> Recipe:
        """The recipe of a stage config: its fields of these names, `fixed` for the ones it has no flag for."""
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**values, **fixed})

    @property
    def tokens_per_step(self) -> int:
        """Sequences per optimizer step (times seq_len gives tokens)."""
        return self.batch_size * self.grad_accum


# --- stage configs ----------------------------------------------------------------------------

SWARM_SIZE_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden", "tie_embeddings", "seq_len")


@dataclasses.dataclass(frozen=True)
class SwarmConfig:
    """`mixlab swarm train`: the proxy model, its training recipe and how runs are packed."""

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
    device: str = option("auto", "where to train: auto (CUDA when present), cpu or cuda", choices=DEVICES)
    threads: int = option(0, "torch threads per task on CPU (0 = the worker's share of the machine's cores)")
    pack_size: int = option(32, "proxies trained together in one swarm (one Dask task)")
    repeats: int = option(1, "seeds per repeated mixture; above 1 measures the noise floor")
    repeat_mixtures: int = option(4, "how many candidates (the first ones) are trained --repeats times")
    # --- search (issue 16.1, issue 15 --logger) ---
    eval_every: int = option(
        0,
        "steps between validation passes kept in trajectories.parquet (and always at the end); 0: only at the end",
    )
    logger: str = option(
        "none",
        "also log each proxy's validation losses to: csv, tensorboard or wandb (offline), under logs/",
        choices=LOGGERS,
    )
    # --- end search ---
    # --- experts (issue 16.2) ---
    experts: bool = option(
        False,
        "also train one proxy per domain (the one-hot mixtures) and keep its token log-probabilities "
        "on the validation windows, for fit's data-expert feature",
    )
    # --- end experts ---

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("pack_size", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)}: must be at least 1")
        if self.repeat_mixtures < 0:
            raise ConfigError("--repeat-mixtures: must not be negative")
        if self.eval_every < 0:
            raise ConfigError("--eval-every: must not be negative (0: evaluate only at the end)")
        # Built once here so that a bad recipe flag, or sizes that do not divide, fail before
        # any data is read.
        _ = self.recipe, self.size

    @property
    def size(self) -> ModelSize:
        return ModelSize(**{name: getattr(self, name) for name in SWARM_SIZE_FIELDS})

    @property
    def recipe(self) -> Recipe:
        """One proxy's recipe: cosine schedule, evaluated every --eval-every steps (0: once at the
        end), never checkpointed. Evaluating draws nothing at random, so it changes no loss."""
        return Recipe.of(self, eval_every=self.eval_every or self.steps, checkpoint_every=self.steps)

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig of one proxy."""
        return self.size.gpt_config(vocab_size)

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
    warmup_steps: int = option(30, "linear warmup steps")
    schedule: str = option(
        "cosine",
        "learning-rate schedule after warmup: cosine, or wsd (warmup-stable-decay)",
        choices=SCHEDULES,
    )
    decay_fraction: float = option(0.2, "wsd: share of the steps spent decaying at the end")
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    weight_decay: float = option(0.1, "AdamW weight decay on weight matrices (not norms)")
    grad_clip: float = option(1.0, "clip each model's gradient norm to this (0 = off)")
    target: str | None = option(
        None,
        "target loss: mean, a validation domain, or code=0.5,prose=0.5 "
        "(default: the mixture file's target, else mean)",
    )
    eval_every: int = option(50, "steps between validation passes (and at the end)")
    eval_sequences: int = option(32, "validation windows per domain")
    checkpoint_every: int = option(50, "steps between resume checkpoints")
    seed: int = option(0, "seed of initialisation and data order")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda", choices=DEVICES)
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    logger: str = option(
        "none", "also log metrics to: csv, tensorboard or wandb (offline), under logs/", choices=LOGGERS
    )
    compile: bool = option(
        False,
        "torch.compile each transformer block (faster on GPU after a warm-up; CPU needs a C++ compiler)",
    )
    activation_checkpointing: bool = option(
        False, "recompute each transformer block in the backward pass: less memory, ~1/3 more compute"
    )
    fsdp: bool = option(
        False,
        "under torchrun: shard weights, gradients and AdamW state over the ranks (FSDP2), for large models",
    )

    def __post_init__(self) -> None:
        check_choices(self)
        _ = self.recipe  # checks the recipe flags

    @property
    def recipe(self) -> Recipe:
        return Recipe.of(self)

    @property
    def tokens_per_step(self) -> int:
        """Sequences per optimizer step (times seq_len gives tokens)."""
        return self.recipe.tokens_per_step


@dataclasses.dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """`mixlab pretrain`: the full model on the chosen mixture, and baselines for comparison."""

    model: Path | None = option(None, "model size file (.yaml/.json with GPTConfig keys); flags override it")
    baselines: tuple[str, ...] = option(
        (), "also train on these mixtures for the same tokens: natural, uniform"
    )
    seeds: int = option(
        1,
        "train the chosen model and each baseline with this many seeds; gaps are judged against their spread",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seeds < 1:
            raise ConfigError("--seeds: must be at least 1")
        bad = [b for b in self.baselines if b not in ("natural", "uniform")]
        if bad:
            raise ConfigError(f"--baselines: unknown {bad}; choose from natural, uniform")
        if len(set(self.baselines)) != len(self.baselines):
            raise ConfigError(f"--baselines: listed twice: {list(self.baselines)}")


@dataclasses.dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """`mixlab distill`: a student model trained on a teacher's temperature-softened outputs."""

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

    dtype: str = option(
        "float32", "dtype of the exported weights: float32, bfloat16 or float16", choices=DTYPES
    )

    def __post_init__(self) -> None:
        check_choices(self)


@dataclasses.dataclass(frozen=True)
class ExportStreamConfig:
    """`mixlab export stream`: the mixed token stream materialised as files any trainer reads."""

    tokens_total: int = option(
        0, "tokens to write, required (rounded up to whole sequences of --seq-len + 1)"
    )
    seq_len: int = option(1024, "tokens per training sequence; each written sequence holds seq_len + 1")
    batch_size: int = option(
        16, "sequences drawn per global batch (pretrain's --batch-size gives its exact stream)"
    )
    seed: int = option(0, "seed of the stream (pretrain's --seed gives its exact stream)")
    name: str = option(
        "pretrain/chosen", "the stream's name in the seed derivation (pretrain/chosen: pretrain's)"
    )
    rows_per_shard: int = option(8192, "sequences per parquet shard")

    def __post_init__(self) -> None:
        if self.tokens_total < 0:
            raise ConfigError("--tokens-total: must not be negative")
        for name in ("seq_len", "batch_size", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_name(name)}: must be at least 1")


# --- model sizes of pretrain and distill: stage defaults < model file < flags --------------------


def read_model_file(path: Path) -> dict[str, Any]:
    """A model size file: YAML or JSON mapping of GPTConfig keys (a mixlab config.json works too)."""
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
    cfg: TrainConfig,
    file: Path | None,
    defaults: Mapping[str, Any],
    vocab_size: int,
    flag: str = "--model",
) -> GPTConfig:
    """GPTConfig from stage defaults < the model file < size flags; the vocabulary from the tokens."""
    values: dict[str, Any] = dict(defaults)
    if file is not None:
        values.update(read_model_file(file))
    file_vocab = values.pop("vocab_size", None)
    if file_vocab is not None and int(file_vocab) != vocab_size:
        raise ConfigError(
            f"{flag} {file}: vocab_size {file_vocab} differs from the tokenizer's {vocab_size}; "
            "drop vocab_size from the model file (it comes from the tokens directory)"
        )
    values.update({k: getattr(cfg, k) for k in MODEL_FIELDS if getattr(cfg, k) is not None})
    try:
        size = ModelSize(**values)
    except TypeError as exc:
        raise ConfigError(f"{flag}: bad model size value ({exc})") from None
    return size.gpt_config(vocab_size)
