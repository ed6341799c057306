"""Progress and messages for people: stderr, so stdout stays machine-readable.

Messages go through `tqdm.write`, which clears any live progress bar, prints the line and
redraws the bar below it, so log lines and bars never share a terminal line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def log(message: str) -> None:
    """Progress and summaries go to stderr so stdout stays machine-readable."""
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
