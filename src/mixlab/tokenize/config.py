"""Configs of the tokenizer stages: `tokenizer train`, `tokenizer eval` and `tokenize`.

Each is one frozen dataclass; its fields become the command's flags and its YAML keys.
"""

from __future__ import annotations

import dataclasses

from mixlab.config import check_choices, option
from mixlab.errors import ConfigError

MODELS = ("bpe", "wordpiece", "unigram")
BYTE_ALPHABET = 256  # byte-level BPE starts from every byte value


def _check_split(valid_fraction: float, seed: int) -> None:
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"--valid-fraction: must lie in [0, 1), got {valid_fraction}")
    if seed < 0:
        raise ConfigError("--seed: must not be negative")


def _at_least_one(cfg: object, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1")


@dataclasses.dataclass(frozen=True)
class TokenizerTrainConfig:
    """`mixlab tokenizer train`: a tokenizer trained on a mixture-weighted sample of the documents."""

    model: str = option(
        "bpe",
        "bpe (byte-level, GPT-4 style, no unknowns), wordpiece (BERT style) or unigram",
        choices=MODELS,
    )
    vocab_size: int = option(32000, "vocabulary size including special tokens and the alphabet")
    min_frequency: int = option(2, "minimum count of a pair to be merged (bpe, wordpiece)")
    mixture: str = option(
        "natural",
        "domain weights of the sample: natural (by bytes), uniform, or a mixture.json (or its directory)",
    )
    sample_bytes: int = option(100_000_000, "byte budget of the training sample (UTF-8 bytes of text)")
    eos_token: str = option("<|endoftext|>", "end-of-document token (always a special token)")
    special_tokens: tuple[str, ...] = option((), "extra special tokens to reserve, comma separated")
    split_digits: bool = option(False, "split numbers into single digits before training")
    normalization: str = option(
        "auto",
        "text normalisation: auto (none for bpe so text round-trips, NFKC otherwise), nfkc, none",
        choices=("auto", "nfkc", "none"),
    )
    lowercase: bool = option(False, "lowercase text (wordpiece only, like uncased BERT)")
    limit_alphabet: int = option(1000, "most distinct characters kept in the initial alphabet (wordpiece)")
    batch_size: int = option(1000, "documents per batch streamed into the trainer")
    valid_fraction: float = option(0.05, "share of documents held out (same split as `mixlab tokenize`)")
    seed: int = option(0, "seed of the held-out split and of which documents fill the budget")

    def __post_init__(self) -> None:
        check_choices(self)
        _check_split(self.valid_fraction, self.seed)
        _at_least_one(self, "min_frequency", "sample_bytes", "batch_size", "limit_alphabet")
        if not self.eos_token:
            raise ConfigError("--eos-token: must not be empty")
        from mixlab.tokenize.tokenizer import special_tokens

        specials = len(special_tokens(self))
        floor = {
            "bpe": BYTE_ALPHABET + specials,
            "wordpiece": self.limit_alphabet + specials,
            "unigram": specials + 2,
        }[self.model]
        if self.vocab_size < floor:
            why = {
                "bpe": f"the 256-byte alphabet plus {specials} special tokens",
                "wordpiece": f"--limit-alphabet {self.limit_alphabet} plus {specials} special tokens",
                "unigram": f"{specials} special tokens plus a few pieces",
            }[self.model]
            raise ConfigError(
                f"--vocab-size: {self.vocab_size} is smaller than {why} ({floor}); raise --vocab-size"
            )


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """`mixlab tokenize`: documents into token shards per domain and split, on Dask."""

    valid_fraction: float = option(
        0.05, "share of each domain's documents in the valid split (by seeded id hash)"
    )
    seed: int = option(0, "seed of the train/valid split")
    valid_domains: tuple[str, ...] = option(
        (),
        "domains of the documents put wholly in the valid split, e.g. target (a held-out target set "
        "given as documents; a target table given as a target input is validation-only already)",
    )
    rows_per_task: int = option(20_000, "documents encoded per Dask task")
    batch_size: int = option(1000, "documents per encode_batch call")
    max_chunk_chars: int = option(
        100_000, "documents longer than this are encoded in line-aligned chunks (ids joined back)"
    )
    shard_tokens: int = option(50_000_000, "tokens per output shard at most (whole documents)")
    write_stream: bool = option(
        True, "also write _mixlab/streams/<domain>/<split>.npy (a .npy per split) for memory-mapped training"
    )
    eos_token: str | None = option(
        None, "end-of-document token, when the tokenizer directory does not say (default: from it)"
    )

    def __post_init__(self) -> None:
        _check_split(self.valid_fraction, self.seed)
        _at_least_one(self, "rows_per_task", "batch_size", "max_chunk_chars", "shard_tokens")


@dataclasses.dataclass(frozen=True)
class TokenizerEvalConfig:
    """`mixlab tokenizer eval`: compression and vocabulary statistics per domain, side by side."""

    split: str = option(
        "valid",
        "documents to evaluate on: valid (held out by the seeded split) or all (a separate corpus)",
        choices=("valid", "all"),
    )
    valid_fraction: float = option(0.05, "held-out share used by training and tokenize")
    seed: int = option(0, "seed of the held-out split")
    max_bytes_per_domain: int = option(20_000_000, "evaluate at most this many bytes of text per domain")
    renyi_alpha: float = option(2.5, "order of the Rényi efficiency (Zouhar et al. 2023 use 2.5)")
    batch_size: int = option(1000, "documents per encode_batch call")

    def __post_init__(self) -> None:
        check_choices(self)
        _check_split(self.valid_fraction, self.seed)
        if self.split == "valid" and self.valid_fraction == 0:
            raise ConfigError("--valid-fraction: 0 leaves no held-out documents; pass --split all")
        _at_least_one(self, "max_bytes_per_domain", "batch_size")
        if self.renyi_alpha <= 0 or self.renyi_alpha == 1:
            raise ConfigError("--renyi-alpha: must be positive and not 1")
