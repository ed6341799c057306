"""The chosen mixture as a torch `IterableDataset` for any trainer: `MixtureStream`.

Reads a tokenize output directory and a ``mixture.json`` (or a ``{domain: weight}``) and yields
packed fixed-length token windows in the mixture's proportions. Its core is the loader
`mixlab pretrain` trains on (`proxy_models.data.MixtureLoader`): one global sequence order,
drawn from (seed, name) only, in global batches; rank r of W takes rows [r*B/W, (r+1)*B/W) of
every global batch and data-loader worker w of n every n-th global batch, so the stream is the
same whatever the number of ranks or workers, and `state_dict()` resumes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mixlab.errors import ConfigError
from mixlab.mixture import Mixture
from mixlab.proxy_models.data import MixtureLoader
from mixlab.tokenize.shards import TokenShards

STATE_KEYS = ("seed", "name", "seq_len", "batch_size", "weights")


class MixtureStream(IterableDataset):
    """Global batches (B, T+1) of a mixture, this rank's rows of each: (B / world_size, T+1) int64.

    `tokens` is a tokenize output; `mixture` a mixture.json path or {domain: weight}.
    `batch_size` is the global batch (sequences per optimizer step over all ranks; with
    ``name="pretrain/chosen"``, `seed` and `mixlab pretrain`'s --batch-size and --seq-len the
    stream is exactly the chosen model's training data). `rank` / `world_size` default to
    torch.distributed's when it is initialised. With `examples`, one dict per sequence
    ``{"input_ids", "labels"}`` (T+1 tokens each, as Hugging Face causal LMs shift labels
    themselves). `batches` stops after that many global batches (None: endless; a domain is
    repeated when exhausted, see `epochs()`).
    """

    def __init__(
        self,
        tokens: Path | str,
        mixture: Path | str | Mapping[str, float],
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        name: str = "pretrain/chosen",
        rank: int | None = None,
        world_size: int | None = None,
        examples: bool = False,
        batches: int | None = None,
    ):
        super().__init__()
        shards = TokenShards.open(tokens)
        if isinstance(mixture, Mapping):
            weights = Mixture.from_record(dict(mixture), "mixture", shards.domains).weights
        else:
            weights = Mixture.read(mixture, shards.domains).weights
        if rank is None or world_size is None:
            dist = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if dist else 0
            world_size = torch.distributed.get_world_size() if dist else 1
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"MixtureStream: rank {rank} is not one of world size {world_size}")
        if batch_size % world_size:
            raise ConfigError(
                f"--batch-size {batch_size}: not divisible by the world size {world_size}; every rank "
                "takes an equal slice of the global batch, so choose a multiple of the number of ranks"
            )
        self.path, self.weights = shards.path, {d: float(w) for d, w in weights.items()}
        self.seq_len, self.batch_size, self.seed, self.name = seq_len, batch_size, seed, name
        self.rank, self.world_size, self.examples, self.limit = rank, world_size, examples, batches
        self.loader = self._loader()  # checks every weighted domain holds one sequence
        self._state = self._snapshot(0, self.loader)

    def _loader(self) -> MixtureLoader:
        return MixtureLoader(self.path, self.weights, self.seq_len, self.batch_size, self.seed, self.name)

    @staticmethod
    def _snapshot(batches: int, loader: MixtureLoader) -> dict[str, Any]:
        return {"batches": batches, "rng": loader.rng.bit_generator.state, "tokens": dict(loader.tokens)}

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        loader = self._loader()
        loader.rng.bit_generator.state = self._state["rng"]
        loader.tokens = dict(self._state["tokens"])
        b = self.batch_size // self.world_size
        mine = slice(self.rank * b, (self.rank + 1) * b)
        k = int(self._state["batches"])
        first = k
        while self.limit is None or k < self.limit:
            choice, starts = loader.draw()  # every reader draws every plan: one global order
            k += 1
            if (k - 1 - first) % workers != worker:
                continue
            self._state = self._snapshot(k, loader)
            self.loader = loader
            batch = torch.from_numpy(loader.gather(choice[mine], starts[mine]))  # (B / world, T+1)
            if self.examples:
                for row in batch:
                    yield {"input_ids": row, "labels": row}
            else:
                yield batch

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's train split by the global stream so far (above 1: repeated)."""
        return self.loader.epochs()

    def state_dict(self, batches: int | None = None) -> dict[str, Any]:
        """Where the global stream stands: after the batches iterated in this process, or after
        `batches` global batches (pass it when DataLoader workers, which keep their own copies,
        did the iterating)."""
        if batches is None:
            state = self._state
        else:
            loader = self._loader()
            for _ in range(batches):  # draws only: no tokens are gathered
                loader.draw()
            state = self._snapshot(batches, loader)
        return {**state, **{key: getattr(self, key) for key in STATE_KEYS}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` (from any number of ranks or workers); the stream must be the same one."""
        differ = [key for key in STATE_KEYS if key in state and state[key] != getattr(self, key)]
        if differ:
            raise ConfigError(
                "MixtureStream.load_state_dict: the state is of another stream ("
                + ", ".join(f"{key} {state[key]!r} != {getattr(self, key)!r}" for key in differ)
                + ")"
            )
        loader = self._loader()
        loader.rng.bit_generator.state = state["rng"]
        loader.tokens = {d: int(n) for d, n in state["tokens"].items()}
        self.loader = loader
        self._state = self._snapshot(int(state["batches"]), loader)


def stream_sequences(stream: MixtureStream, sequences: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first `sequences` of a one-rank stream as (domain index (b,), windows (b, T+1)) blocks."""
    loader = stream._loader()
    left = sequences
    while left > 0:
        choice, starts = loader.draw()
        take = min(left, len(choice))
        yield choice[:take], loader.gather(choice[:take], starts[:take])
        left -= take
    stream.loader = loader
