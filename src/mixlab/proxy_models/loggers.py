"""Metric loggers beside metrics.parquet: `--logger csv|tensorboard|wandb` (none by default).

Each evaluation's rows (step, model, tokens, lr, train_loss, loss.<domain>..., target) go to
``logs/`` in the stage's output: ``metrics.csv``, a TensorBoard event dir, or an offline W&B
run (no network needed; `wandb sync` uploads it later). TensorBoard and W&B are optional
extras, imported only when chosen.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixlab.errors import ConfigError
from mixlab.proxy_models.config import LOGGERS, RUNTIME_FIELDS

LOGS = "logs"


class MetricLogger:
    """Writes metrics rows as they come; `close()` at the end."""

    def __init__(self, kind: str, out: Path, name: str):
        self.kind, self.dir = kind, out / LOGS
        self.dir.mkdir(parents=True, exist_ok=True)
        self._csv: Any = None
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "--logger tensorboard: the tensorboard package is not installed; pip install 'mixlab[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "--logger wandb: the wandb package is not installed; pip install 'mixlab[wandb]'"
                ) from None
            self._wandb = wandb.init(project="mixlab", name=name, dir=str(self.dir), mode="offline")

    def log(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            if self.kind == "csv":
                self._write_csv(row)
            elif self.kind == "tensorboard":
                for key, value in values.items():
                    self._tb.add_scalar(f"{row['model']}/{key}", value, int(row["step"]))
            elif self.kind == "wandb":
                self._wandb.log({f"{row['model']}/{k}": v for k, v in values.items()}, step=int(row["step"]))

    def _write_csv(self, row: Mapping[str, Any]) -> None:
        if self._csv is None:
            handle = open(self.dir / "metrics.csv", "a", newline="")  # noqa: SIM115 (closed in close())
            self._csv = (handle, csv.DictWriter(handle, fieldnames=list(row)))
            if handle.tell() == 0:
                self._csv[1].writeheader()
        self._csv[1].writerow(row)
        self._csv[0].flush()

    def close(self) -> None:
        if self._csv is not None:
            self._csv[0].close()
        if self.kind == "tensorboard":
            self._tb.close()
        elif self.kind == "wandb":
            self._wandb.finish()


def open_logger(kind: str, out: Path, name: str) -> MetricLogger | None:
    """The logger `--logger` names, writing under out/logs; None for "none"."""
    if kind not in LOGGERS:
        raise ConfigError(f"--logger: {kind!r} is not one of {', '.join(LOGGERS)}")
    return None if kind == "none" else MetricLogger(kind, out, name)


def stage_key(cfg: Any) -> dict[str, Any]:
    """The config as the stage's manifest records it: without the fields that say how the run
    executes (`RUNTIME_FIELDS`: logger, compile, activation checkpointing), so an output made
    without them is up to date with them, and a run killed for memory resumes with
    --activation-checkpointing. The manifest's stats say how it ran."""
    from mixlab.config import config_to_dict

    return {k: v for k, v in config_to_dict(cfg).items() if k not in RUNTIME_FIELDS}
