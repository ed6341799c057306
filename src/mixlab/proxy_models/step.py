"""Where a training step runs and what it computes, with torch alone.

Device set-up, mixed precision and the next-token objective of the training core (train.py
re-exports them: the stages call them as `train.setup_device`, `train.lm_step`, ...). Nothing
here imports pyarrow, safetensors or the stage machinery, so `benchmarks/swarm.py` times the
stages' own step on a GPU box that has only torch and numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mixlab.errors import ConfigError

if TYPE_CHECKING:
    from mixlab.proxy_models.model import GPT


def pick_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device visible to this worker; use --device auto or cpu")
    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def setup_device(device: str, threads: int) -> str:
    """The device to train on, set up alike for every stage: CPU threads, TF32 matmuls on CUDA."""
    device = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device: str) -> torch.autocast:
    """bf16 autocast on CUDA, full precision on CPU: the one place mixed precision is chosen."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def lm_step(model: GPT, device: str) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Next-token cross-entropy: forward, backward (scaled for accumulation), the losses (M,)."""

    def step(batch: torch.Tensor, scale: float) -> torch.Tensor:
        with autocast(device):
            _, loss = model(batch[..., :-1], batch[..., 1:])  # (M,)
        (loss.sum() * scale).backward()  # members share no weights: each gets its own gradient
        return loss

    return step


def check_compile(device: str) -> None:
    """--compile needs what TorchInductor compiles with: a C++ compiler on CPU, Triton on CUDA.

    Checked before any output exists, so the refusal is one line rather than a traceback from
    the first training step.
    """
    import importlib.util
    import os
    import shutil

    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            f"--compile: torch.compile is not supported by this Python / torch {torch.__version__}; drop --compile"
        )
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        raise ConfigError(
            "--compile: torch.compile on CUDA needs the triton package; pip install triton or drop --compile"
        )
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if device == "cpu" and not any(c and shutil.which(c) for c in compilers):
        raise ConfigError(
            "--compile: torch.compile on CPU needs a C++ compiler (g++ or clang++, or $CXX) on PATH; "
            "install one or drop --compile"
        )
