"""`python -m mixlab` (and `torchrun -m mixlab ...` on every rank): the `mixlab` command line."""

from __future__ import annotations

from mixlab.cli import main

if __name__ == "__main__":
    main(prog_name="mixlab")
