"""Exact and MinHash-LSH near-duplicate removal on Dask (see issue: dedup)."""
