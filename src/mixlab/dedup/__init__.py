"""Exact and MinHash-LSH near-duplicate removal on Dask: `run_dedup(inputs, cfg, out_dir)`."""

from __future__ import annotations

from mixlab.dedup.config import DedupConfig
from mixlab.dedup.stage import run_dedup

__all__ = ["DedupConfig", "run_dedup"]
