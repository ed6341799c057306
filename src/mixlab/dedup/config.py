"""`mixlab dedup` settings: normalisation, shingles, MinHash/LSH banding, verification, keep policy."""

from __future__ import annotations

import dataclasses

from mixlab.config import check_choices, option
from mixlab.errors import ConfigError

KEEP_POLICIES = ("smallest-id", "longest", "domain-priority")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """`mixlab dedup`: exact then MinHash-LSH near-duplicate removal, verified by exact Jaccard."""

    threshold: float = option(0.8, "Jaccard similarity at or above which two documents are near duplicates")
    num_perm: int = option(128, "MinHash permutations per signature")
    bands: int | None = option(None, "LSH bands (default: chosen from --threshold and --band-recall)")
    rows: int | None = option(None, "rows (signature values) per LSH band; give with --bands")
    band_recall: float = option(
        0.99, "when choosing bands: chance that a pair exactly at --threshold becomes a candidate"
    )
    shingle: str = option(
        "words", "shingle unit: word n-grams or character n-grams", choices=("words", "chars")
    )
    ngram: int = option(5, "shingle length in words or characters")
    lowercase: bool = option(False, "lowercase text before shingling and exact hashing")
    strip_punctuation: bool = option(False, "delete unicode punctuation and symbols")
    normalize_digits: bool = option(False, "replace every digit with 0")
    collapse_whitespace: bool = option(True, "collapse whitespace runs to one space and trim the ends")
    nfkc: bool = option(False, "apply unicode NFKC normalisation")
    verify: bool = option(
        True, "check every candidate pair with exact Jaccard on its shingles (else MinHash estimate)"
    )
    keep: str = option("smallest-id", "which document of a duplicate cluster survives", choices=KEEP_POLICIES)
    domain_priority: tuple[str, ...] = option(
        (), "with --keep domain-priority: domains in order of preference, e.g. legal,prose"
    )
    perm_seed: int = option(
        1,
        "MinHash permutation seed: datasketch's `seed` (MinHash(num_perm, seed=...)); "
        "not the pipeline's global seed",
    )
    partition_docs: int = option(20_000, "documents per signature partition (bounds worker memory)")
    max_bucket: int = option(
        50_000, "LSH bucket members linked at most (the rest of a giant bucket is logged and skipped)"
    )
    keep_signatures: bool = option(
        False,
        "also write OUT/signatures/ (id, domain, text_hash, signature of every kept document), "
        "so a later corpus can be deduplicated --against this output without signing it again",
    )
    huge_doc_bytes: int = option(
        1_000_000, "documents this large or larger are counted as huge (still deduplicated)"
    )

    def __post_init__(self) -> None:
        check_choices(self)
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"--threshold: must lie in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ConfigError(f"--num-perm: must be at least 2, got {self.num_perm}")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("--bands / --rows: give both or neither (neither: chosen from --threshold)")
        if self.bands is not None and self.rows is not None:
            if self.bands < 1 or self.rows < 1:
                raise ConfigError("--bands / --rows: must be at least 1")
            if self.bands * self.rows > self.num_perm:
                raise ConfigError(
                    f"--bands {self.bands} x --rows {self.rows} = {self.bands * self.rows} exceeds "
                    f"--num-perm {self.num_perm}"
                )
        if not 0.0 < self.band_recall < 1.0:
            raise ConfigError(f"--band-recall: must lie strictly between 0 and 1, got {self.band_recall}")
        if self.ngram < 1:
            raise ConfigError(f"--ngram: must be at least 1, got {self.ngram}")
        if self.keep == "domain-priority" and not self.domain_priority:
            raise ConfigError("--keep domain-priority: pass --domain-priority a,b,... (most preferred first)")
        if self.partition_docs < 1:
            raise ConfigError("--partition-docs: must be at least 1")
        if self.max_bucket < 2:
            raise ConfigError("--max-bucket: must be at least 2")
        if self.huge_doc_bytes < 1:
            raise ConfigError("--huge-doc-bytes: must be at least 1")
