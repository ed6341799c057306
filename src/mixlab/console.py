"""Progress and messages for people: stderr, so stdout stays machine-readable."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def log(message: str) -> None:
    """Progress and summaries go to stderr so stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


def progress(items: Iterable[Any], total: int, desc: str, unit: str) -> Iterable[Any]:
    """A progress bar on stderr for a long phase (hidden when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(
        items,
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
    )
