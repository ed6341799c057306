"""Progress and messages for people: stderr, so stdout stays machine-readable.

Messages go through `tqdm.write`, which clears any live progress bar, prints the line and
redraws the bar below it, so log lines and bars never share a terminal line. `StepProgress`
is the one progress report of a training run: a bar on a terminal, a plain line every few
seconds (``MIXLAB_PROGRESS_EVERY``, default 5) in a log file or CI.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm

PROGRESS_EVERY_ENV = "MIXLAB_PROGRESS_EVERY"  # seconds between plain progress lines off a terminal


def log(message: str) -> None:
    """Progress and summaries go to stderr so stdout stays machine-readable.

    Under torchrun only rank 0 speaks: the other ranks would repeat its every line.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def progress(items: Iterable[Any] | None, total: int, desc: str, unit: str, initial: int = 0) -> Any:
    """A progress bar on stderr for a long phase (hidden when stderr is not a terminal).

    Wraps `items`, or with ``items=None`` is a bar the caller moves with ``update``.
    """
    return tqdm(
        items,
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def progress_every() -> float:
    """Seconds between plain progress lines when stderr is not a terminal."""
    try:
        return max(0.0, float(os.environ.get(PROGRESS_EVERY_ENV, "5")))
    except ValueError:
        return 5.0


def clock(seconds: float) -> str:
    """12s, 3m05s, 1h02m: a duration for people."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """Steps done, tokens/s and ETA of a training run (or of a swarm's packs together).

    On a terminal a tqdm bar; otherwise `emit` (default `log`) gets a line such as
    ``swarm: step 120/300 (40%), 3,200 tokens/s, ETA 1m05s`` at most every `every` seconds
    and once at the end. `tty` forces either form (None: whether stderr is a terminal).
    """

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        initial: int = 0,
        every: float | None = None,
        emit: Callable[[str], None] = log,
        tty: bool | None = None,
    ):
        self.desc, self.total, self.done, self.tokens = desc, total, initial, 0
        self.every = progress_every() if every is None else every
        self.emit = emit
        self.started = self.last = time.perf_counter()
        self.first = initial  # steps already done before this process started (resumed)
        tty = sys.stderr.isatty() if tty is None else tty
        self.bar = progress(None, total, desc, "step", initial=initial) if tty else None

    def set(self, done: int, tokens: int, **postfix: Any) -> None:
        """Move to `done` steps and `tokens` tokens trained so far (in this process)."""
        if self.bar is not None:
            self.bar.update(done - self.done)
            elapsed = max(1e-9, time.perf_counter() - self.started)
            self.bar.set_postfix(tok_s=f"{tokens / elapsed:,.0f}", **postfix, refresh=False)
        self.done, self.tokens = done, tokens
        now = time.perf_counter()
        if self.bar is None and (now - self.last >= self.every) and done < self.total:
            self.last = now
            self.emit(self.line())

    def line(self) -> str:
        elapsed = max(1e-9, time.perf_counter() - self.started)
        rate = (self.done - self.first) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100 * self.done / max(1, self.total)
        text = f"{self.desc}: step {self.done:,}/{self.total:,} ({pct:.0f}%), {self.tokens / elapsed:,.0f} tokens/s"
        return text + (f", ETA {clock(eta)}" if eta == eta else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done > self.first:
            elapsed = time.perf_counter() - self.started
            self.emit(
                f"{self.desc}: {self.done - self.first:,} steps in {clock(elapsed)}, "
                f"{self.tokens / max(1e-9, elapsed):,.0f} tokens/s"
            )
