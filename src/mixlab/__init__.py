"""mixlab: choose what a language model is pretrained on.

Dedup, tokenizer training, RegMix-style mixture search with swarms of small proxies,
pretraining and distillation, every stage reading and writing parquet on Dask.
"""

from __future__ import annotations

__version__ = "0.1.0"
