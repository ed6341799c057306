"""Data-parallel pretraining and distillation over torch.distributed (`torchrun -m mixlab ...`).

Every rank draws the same global batch plan from the same loaders (so a checkpoint's loader
state is every rank's, and resumes on any number of ranks) and gathers only its own rows
[r*B/W, (r+1)*B/W); gradients and the logged loss are averaged over the ranks once per step.
Rank 0 alone runs the stage (run_stage: lock, checkpoints, outputs); the others train beside
it in the work dir it names and wait for its result; an error there makes every rank exit.
`run_data_parallel` is that whole sequence, shared by `pretrain` and `distill`.
With --fsdp (`shard_model`) each rank keeps only its shard of the weights, gradients and AdamW
state (FSDP2, `fully_shard` per block and at the root); checkpoints and outputs are gathered
whole to rank 0, in the files an unsharded run writes, so either resumes the other.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import torch

from mixlab.errors import ConfigError, MixlabError
from mixlab.proxy_models.step import check_compile, pick_device

if TYPE_CHECKING:  # torch (and numpy) alone at import: benchmarks/swarm.py uses the ranks on a bare box
    from mixlab.proxy_models.config import GPTConfig
    from mixlab.proxy_models.data import MixtureLoader
    from mixlab.proxy_models.model import GPT
    from mixlab.stage import Manifest, OutDir, StageDir


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes: rank `rank` of `world`."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_ranks(device: str) -> Ranks:
    """The process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR, ...); one process: Ranks()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        atexit.register(_close_group)
    return Ranks(dist.get_rank(), dist.get_world_size())


def _close_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, ranks: Ranks) -> None:
    if batch_size % ranks.world:
        raise ConfigError(
            f"--batch-size {batch_size}: not divisible by the world size {ranks.world} (torchrun "
            "--nproc-per-node x nodes); every rank takes an equal slice of the global batch"
        )


@contextlib.contextmanager
def quiet_on_other_ranks(ranks: Ranks) -> Iterator[None]:
    """A MixlabError is said once, by rank 0; every other rank exits non-zero without a word."""
    try:
        yield
    except MixlabError:
        if ranks.main:
            raise
        raise SystemExit(1) from None


def sliced_batches(
    loaders: Sequence[MixtureLoader], device: str, ranks: Ranks, M: int | None = None
) -> Callable[[], torch.Tensor]:
    """This rank's rows of every member's global batch: (M, B/W, T+1).

    With `M` and one loader, every member shares that loader's stream (as `shared_batches`).
    """
    b = loaders[0].batch_size // ranks.world
    mine = slice(ranks.rank * b, (ranks.rank + 1) * b)

    def next_batch() -> torch.Tensor:
        rows = []
        for loader in loaders:
            choice, starts = loader.draw()  # every rank draws every plan: one global order
            rows.append(loader.gather(choice[mine], starts[mine]))
        batch = torch.from_numpy(np.stack(rows)).to(device)
        return batch.expand(M, -1, -1) if M is not None else batch

    return next_batch


def average_gradients(model: torch.nn.Module, ranks: Ranks) -> None:
    """Average every gradient over the ranks with one all-reduce of one flat buffer."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= ranks.world
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


# --- FSDP: every rank keeps its shard of the weights, gradients and AdamW state ----------------


def shard_model(model: GPT) -> None:
    """Shard `model` over every rank in place (FSDP2): each block, then the root (embeddings, norm).

    Each weight (M, ...) is split on its first dimension past M that divides by the world size
    (FSDP2 splits other dimensions only evenly), so a swarm of one model still spreads over the
    ranks and each rank's shard of a gradient holds a piece of every member; a weight with no
    such dimension is split on M itself. Build the optimizer after this, over the sharded weights.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import Shard

    world = dist.get_world_size()

    def placement(param: torch.nn.Parameter) -> Shard:
        even = [d for d in range(1, param.dim()) if param.shape[d] % world == 0]
        return Shard(even[0] if even else 0)

    for block in model.blocks:
        fully_shard(block, shard_placement_fn=placement)
    fully_shard(model, shard_placement_fn=placement)
    # Distillation runs the student through hidden_states, not forward: gather its weights there too.
    register_fsdp_forward_method(model, "hidden_states")
    # Both return views (logits, hidden states) that no caller changes in place (distillation
    # detaches them), so FSDP2's warning about in-place ops on them would only be noise.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPGPT\) returned a view tensor")


def is_sharded(model: torch.nn.Module) -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False  # one process (the swarm's packs too): no FSDP import on every step
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@torch.no_grad()
def clip_sharded_grad_norm_per_model(model: GPT, max_norm: float) -> torch.Tensor:
    """`GPT.clip_grad_norm_per_model` for a sharded model: per-member squared norms of this rank's
    shards, summed over the ranks in one all-reduce; returns the norms before clipping (M,)."""
    import torch.distributed as dist

    M, rank, world = model.M, dist.get_rank(), dist.get_world_size()
    held = []  # (this rank's shard of a gradient, the members it holds)
    for p in model.parameters():
        if p.grad is not None:
            g = p.grad.to_local()
            first = min(M, rank * -(-M // world)) if p.grad.placements[0].dim == 0 else 0  # split on M
            held.append((g, slice(first, first + g.shape[0])))
    sq = torch.zeros(M, device=next(model.parameters()).device)
    for g, members in held:
        sq[members] += g.float().pow(2).flatten(1).sum(dim=1)
    dist.all_reduce(sq)
    norms = sq.sqrt()
    if max_norm > 0:
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # (M,)
        for g, members in held:
            g.mul_(scale[members].view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def _whole() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_training_tensors(
    model: GPT, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A sharded model's whole weights and AdamW moments ("name::field"), on rank 0's CPU, as
    `checkpoint.training_tensors` gives an unsharded one's; a collective: every rank calls it
    (the others get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_whole())
    optim = get_optimizer_state_dict(model, optimizer, options=_whole())
    moments = {
        f"{name}::{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for name, fields in optim.get("state", {}).items()
        for key, value in fields.items()
    }
    return {k: v.contiguous() for k, v in weights.items()}, moments


def load_full_training_tensors(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    weights: Mapping[str, torch.Tensor],
    moments: Mapping[str, Mapping[str, torch.Tensor]],
) -> None:
    """Every rank read the whole training state (weights by name, moments {name: {field: value}}):
    each keeps its shard of it; a collective."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, dict(weights), options=_whole())
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
        for g in optimizer.param_groups
    ]
    state = {"state": {n: dict(f) for n, f in moments.items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, state, options=_whole())


def whole_model(model: GPT) -> GPT | None:
    """A sharded model gathered whole: an unsharded copy on rank 0's CPU, None on the other ranks
    (a collective); an unsharded model as it is."""
    if not is_sharded(model):
        return model
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from mixlab.proxy_models.model import GPT

    weights = get_model_state_dict(model, options=_whole())
    if dist.get_rank() != 0:
        return None
    whole = GPT(model.cfg, model.seeds)
    whole.load_state_dict(weights)
    return whole


def average(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    import torch.distributed as dist

    values = values.clone()
    dist.all_reduce(values)
    return values / ranks.world


def _send(message: dict[str, Any]) -> None:
    import torch.distributed as dist

    dist.broadcast_object_list([message], src=0)


def _receive() -> dict[str, Any]:
    import torch.distributed as dist

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stage_on_rank0(
    ranks: Ranks, run_main: Callable[[Callable[[Path], None]], Any], run_other: Callable[[Path], None]
) -> Any:
    """Rank 0: `run_main(ready)` (the stage; its body calls ready(work) right before training).
    Other ranks: wait for that work dir, `run_other(work)` (train only, write nothing), then wait
    for rank 0's result: its manifest, or exit non-zero when rank 0 failed."""
    if ranks.world == 1:
        return run_main(lambda work: None)
    if ranks.main:
        sent = False

        def ready(work: Path) -> None:
            nonlocal sent
            _send({"work": str(work)})
            sent = True

        try:
            manifest = run_main(ready)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the others may be gone already
                _send({"error": str(exc)})
            raise
        _send({"manifest": manifest})
        return manifest
    message = _receive()
    if "work" in message:
        run_other(Path(message["work"]))
        message = _receive()
    if "error" in message:
        raise SystemExit(1)  # rank 0 said what went wrong
    return message["manifest"]


class TrainingPlan(Protocol):
    """What a stage checked before any output exists; `model` is the network it trains."""

    @property
    def model(self) -> GPTConfig: ...


Plan = TypeVar("Plan", bound=TrainingPlan)
Ready = Callable[[Path], None]


def run_data_parallel(
    stage: str,
    cfg: Any,
    inputs: Mapping[str, Any],
    out_dir: OutDir,
    force: bool,
    plan: Callable[[], Plan],
    body: Callable[[Plan, StageDir, Ranks, Ready], tuple[dict[str, Any], dict[str, Any]]],
    train_only: Callable[[Plan, Path, Ranks], Any],
) -> Manifest:
    """A training stage (`pretrain`, `distill`) in one process or on every torchrun rank.

    Every rank checks the flags and inputs alike (`cfg`, a TrainConfig: its batch against the
    world size, --compile's toolchain, `plan()`, a killed run's checkpoint against the model's
    size), so bad input is one line from rank 0 and every rank exits non-zero before any output
    exists. Then rank 0 runs `body(plan, stage dir, ranks, ready)` under `run_stage` (with the
    stage key without its runtime fields) and the others `train_only(plan, work, ranks)`.
    """
    from mixlab.proxy_models.checkpoint import check_resume_model
    from mixlab.proxy_models.loggers import stage_key
    from mixlab.stage import run_stage

    device = pick_device(cfg.device)
    ranks = init_ranks(device)  # under torchrun: this process's rank
    with quiet_on_other_ranks(ranks):
        check_batch(cfg.batch_size, ranks)
        if cfg.compile:
            check_compile(device)
        if cfg.fsdp and ranks.world == 1:  # the same command resumes a torchrun --fsdp run here
            from mixlab.console import log

            log(f"{stage}: --fsdp: one process, nothing to shard over; training unsharded")
        planned = plan()
        if not force:
            check_resume_model(out_dir, planned.model)

        def run_main(ready: Ready) -> Manifest:
            def run_body(stage_dir: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
                return body(planned, stage_dir, ranks, ready)

            return run_stage(stage, stage_key(cfg), inputs, out_dir, run_body, force=force)

        return stage_on_rank0(ranks, run_main, lambda work: train_only(planned, work, ranks))


def runtime_stats(cfg: Any, ranks: Ranks) -> dict[str, Any]:
    """How a training stage ran, for its manifest's stats (these fields are not in its key)."""
    return {
        "ranks": ranks.world,
        "compile": cfg.compile,
        "activation_checkpointing": cfg.activation_checkpointing,
        "fsdp": cfg.fsdp and ranks.world > 1,
    }
