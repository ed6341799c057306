"""Building, saving and loading tokenizers (Hugging Face `tokenizers`) the way mixlab uses them.

A tokenizer directory holds ``tokenizer.json`` plus ``tokenizer_config.json`` and
``special_tokens_map.json``, so both ``tokenizers.Tokenizer.from_file`` and
``transformers.PreTrainedTokenizerFast.from_pretrained(DIR)`` load it with EOS and pad set.

Determinism: byte-level BPE and Unigram train to the same vocabulary on the same sample;
WordPiece (tokenizers 0.23) is not deterministic from run to run and overshoots
``vocab_size`` unless ``limit_alphabet`` bounds its alphabet.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mixlab.errors import InputError
from mixlab.stage import write_json

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
HF_FILES = (TOKENIZER_FILE, CONFIG_FILE, SPECIAL_MAP_FILE)

# The special tokens each model type needs besides the end-of-document token, by role.
ROLE_TOKENS: dict[str, dict[str, str]] = {
    "bpe": {"pad": "<|pad|>"},
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "unigram": {"pad": "<pad>", "unk": "<unk>"},
}

# GPT-4 (cl100k) style pre-tokenisation: contractions, letter runs with one leading
# non-letter, numbers of up to three digits, punctuation runs, newlines, other whitespace.
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
_REST = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def gpt4_pattern(split_digits: bool) -> str:
    digits = r"\p{N}" if split_digits else r"\p{N}{1,3}"
    return f"{_WORDS}|{digits}|{_REST}"


def special_tokens(cfg: Any) -> dict[str, str]:
    """Role -> token for a train config: eos first (id 0), the model's own roles, then extras."""
    roles = {"eos": cfg.eos_token, **ROLE_TOKENS[cfg.model]}
    for i, tok in enumerate(cfg.special_tokens):
        roles[f"extra_{i}"] = tok
    return roles


def _pre_tokenizer(first: Any, split_digits: bool) -> pre_tokenizers.Sequence:
    """`first`, then (with --split-digits) every digit its own pre-token."""
    steps = [first, pre_tokenizers.Digits(individual_digits=True)] if split_digits else [first]
    return pre_tokenizers.Sequence(steps)


def _bpe(cfg: Any, specials: list[str]) -> tuple[Tokenizer, Any]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(gpt4_pattern(cfg.split_digits)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tok, trainer


def _wordpiece(cfg: Any, specials: list[str], unk: str) -> tuple[Tokenizer, Any]:
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.pre_tokenizer = _pre_tokenizer(pre_tokenizers.BertPreTokenizer(), cfg.split_digits)
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=specials,
        limit_alphabet=cfg.limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return tok, trainer


def _unigram(cfg: Any, specials: list[str], unk: str) -> tuple[Tokenizer, Any]:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = _pre_tokenizer(pre_tokenizers.Metaspace(prepend_scheme="first"), cfg.split_digits)
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size, special_tokens=specials, unk_token=unk, show_progress=False
    )
    return tok, trainer


def build_tokenizer(cfg: Any) -> tuple[Tokenizer, Any]:
    """An untrained tokenizer and its trainer for a `TokenizerTrainConfig`."""
    roles = special_tokens(cfg)
    specials = list(dict.fromkeys(roles.values()))
    normalize = (
        cfg.normalization if cfg.normalization != "auto" else ("none" if cfg.model == "bpe" else "nfkc")
    )
    steps = [normalizers.NFKC()] if normalize == "nfkc" else []
    if cfg.model == "bpe":
        tok, trainer = _bpe(cfg, specials)
    elif cfg.model == "wordpiece":
        tok, trainer = _wordpiece(cfg, specials, roles["unk"])
        steps.append(
            normalizers.BertNormalizer(
                clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=cfg.lowercase
            )
        )
    else:
        tok, trainer = _unigram(cfg, specials, roles["unk"])
    if steps:
        tok.normalizer = normalizers.Sequence(steps) if len(steps) > 1 else steps[0]
    return tok, trainer


def save_tokenizer(tok: Tokenizer, out: Path, roles: dict[str, str]) -> None:
    """Write tokenizer.json and the two files `transformers` reads for special tokens.

    Written by hand (not via transformers' save_pretrained) so transformers stays optional
    and the files do not change with its version.
    """
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / TOKENIZER_FILE))
    named = {f"{role}_token": token for role, token in roles.items() if not role.startswith("extra_")}
    extras = [token for role, token in roles.items() if role.startswith("extra_")]
    added = {
        str(tok.token_to_id(token)): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in dict.fromkeys(roles.values())
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": added,
        **named,
    }
    if extras:
        config["additional_special_tokens"] = extras
    write_json(out / CONFIG_FILE, config)
    write_json(out / SPECIAL_MAP_FILE, {**named, **({"additional_special_tokens": extras} if extras else {})})


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
    """What encoding needs to know about a loaded tokenizer."""

    path: Path
    name: str
    vocab_size: int
    eos_token: str
    eos_id: int
    unk_id: int | None
    space_segmentable: bool = False  # see `space_segmentable`


def tokenizer_file(path: Path | str) -> Path:
    """The tokenizer.json of a tokenizer directory (or the file itself), with a clear error otherwise."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".json"):
            return path
        raise InputError(f"{path}: not a tokenizer.json; pass a directory made by `mixlab tokenizer train`")
    if not path.is_dir():
        raise InputError(f"{path}: no such tokenizer directory")
    file = path / TOKENIZER_FILE
    if not file.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise InputError(
            f"{path}: no {TOKENIZER_FILE} (found: {found}); only Hugging Face fast tokenizers are supported: "
            "train one with `mixlab tokenizer train` or save it with transformers' save_pretrained"
        )
    return file


def load_tokenizer(path: Path | str, eos_token: str | None = None) -> tuple[Tokenizer, TokenizerInfo]:
    """Load a tokenizer and find its end-of-document token (argument, else its tokenizer_config.json).

    Special tokens are encoded as plain text, so a literal EOS string inside a document never
    becomes the EOS id: only the id mixlab appends is one.
    """
    file = tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise InputError(f"{file}: not a Hugging Face tokenizer file ({str(exc).splitlines()[0]})") from None
    if eos_token is None:
        config_path = file.parent / CONFIG_FILE
        if config_path.is_file():
            try:
                value = json.loads(config_path.read_text()).get("eos_token")
            except json.JSONDecodeError as exc:
                raise InputError(f"{config_path}: not valid JSON ({exc})") from None
            eos_token = value.get("content") if isinstance(value, dict) else value
    if not eos_token:
        raise InputError(f"{file.parent}: no eos_token in {CONFIG_FILE}; pass --eos-token")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise InputError(
            f"{file.parent}: end-of-document token {eos_token!r} is not in the vocabulary; pass --eos-token"
        )
    unk = getattr(tok.model, "unk_token", None)
    unk_id = tok.token_to_id(unk) if unk else None
    data = json.loads(tok.to_str())
    if unk_id is None and data["model"].get("unk_id") is not None:  # Unigram keeps an id, not a token
        unk_id = int(data["model"]["unk_id"])
    tok.encode_special_tokens = True
    info = TokenizerInfo(
        path=file.parent,
        name=file.parent.name if file.name == TOKENIZER_FILE else file.stem,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eos_token=eos_token,
        eos_id=eos_id,
        unk_id=unk_id,
        space_segmentable=space_segmentable(data),
    )
    return tok, info


def space_segmentable(data: dict[str, Any]) -> bool:
    """True when encoding text piecewise, cut before every space that follows a non-space, gives
    exactly the ids of encoding it whole: mixlab's byte-level BPE without a normaliser.

    Why: in the GPT-4 pattern only alternatives that *start* with whitespace continue through
    a space, so a space after a non-space character always starts a new pre-token, and the
    pattern has no look-behind, so what follows a cut does not depend on what precedes it.
    """
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if data.get("normalizer") is not None or len(steps) != 2:
        return False
    split, byte_level = steps
    pattern = (split.get("pattern") or {}).get("Regex")
    return (
        split.get("type") == "Split"
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and pattern in (gpt4_pattern(False), gpt4_pattern(True))
        and byte_level.get("type") == "ByteLevel"
        and byte_level.get("use_regex") is False
        and data["model"].get("type") == "BPE"
        and data["model"].get("dropout") is None
        and all(t.get("special") for t in data.get("added_tokens", []))
    )
