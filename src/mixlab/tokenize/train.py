"""`mixlab tokenizer train`: a tokenizer trained on a mixture-weighted sample of the documents.

Reads documents (one or more tables); writes ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json`` and a manifest with the sample's bytes per domain. The sample
excludes the held-out split, takes each domain's share of a byte budget (natural, uniform or
a mixture.json), filling it in seeded-hash order and repeating a small domain's documents
when its share exceeds what it has. It is streamed from parquet in batches through ONE
``train_from_iterator`` call (a second call would retrain from scratch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from tokenizers import Tokenizer

from mixlab.config import check_weights
from mixlab.console import log
from mixlab.errors import ConfigError, InputError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage
from mixlab.tables import open_parquet
from mixlab.tokenize.config import TokenizerTrainConfig
from mixlab.tokenize.documents import document_files, id_hash, split_table, text_batches, text_bytes
from mixlab.tokenize.tokenizer import build_tokenizer, save_tokenizer, special_tokens

_SAMPLE_SALT = "tokenizer-sample\0"


def read_mixture(path: Path | str, domains: Sequence[str]) -> dict[str, float]:
    """{domain: weight} from a mixture.json (weights at the top level or under "weights")."""
    path = Path(path)
    if path.is_dir():
        path = path / "mixture.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(
            f"--mixture: {path} not found (expected natural, uniform or a mixture.json)"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--mixture: {path} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("weights"), dict):
        data = data["weights"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f'--mixture: {path} must map domain names to weights, e.g. {{"prose": 0.6, "code": 0.4}}'
        )
    weights: dict[str, float] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"--mixture: {path}: weight of {name!r} is {value!r}, not a number")
        weights[str(name)] = float(value)
    check_weights(weights, "mixture")
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ConfigError(
            f"--mixture: {path} names domain(s) {unknown} not in the documents (found: {', '.join(domains)})"
        )
    return weights


def mixture_weights(mixture: str, available: dict[str, int]) -> dict[str, float]:
    """Each domain's share of the sample under natural, uniform or mixture.json weighting."""
    domains = sorted(available)
    if mixture == "natural":
        total = sum(available.values())
        return {d: available[d] / total for d in domains}
    if mixture == "uniform":
        return {d: 1.0 / len(domains) for d in domains}
    given = read_mixture(mixture, domains)
    return {d: given.get(d, 0.0) for d in domains}


def sample_plan(
    files: Sequence[Path], cfg: TokenizerTrainConfig, where: str = "documents", mixture: str | None = None
) -> tuple[list[np.ndarray], dict[str, Any], int]:
    """How many times each document enters the sample, per file, plus per-domain statistics and nulls.

    `mixture` (default: ``--mixture``) is natural, uniform or a mixture.json path. Refuses
    (naming `where`) when no document outside the held-out split has any text.
    """
    table, _forced = split_table(files, cfg.seed, cfg.valid_fraction)
    nbytes, content = (np.concatenate(parts) for parts in zip(*(text_bytes(f) for f in files)))
    valid = table["valid"].to_numpy()
    eligible = (~valid) & (nbytes >= 0)
    if not (eligible & content).any():
        raise InputError(
            f"{where}: no training text: "
            "every document that is not held out is null, empty or whitespace only; "
            "pass documents with text (or lower --valid-fraction)"
        )
    codes = pc.dictionary_encode(table["domain"].combine_chunks())
    dom = codes.indices.to_numpy(zero_copy_only=False)
    names = codes.dictionary.to_pylist()
    available = {names[k]: int(nbytes[eligible & (dom == k)].sum()) for k in range(len(names))}
    available = {d: b for d, b in available.items() if b > 0}
    weights = mixture_weights(mixture or cfg.mixture, available)
    budget = min(cfg.sample_bytes, sum(available.values()))
    order_key = id_hash(table["id"].to_pylist(), cfg.seed, _SAMPLE_SALT)
    multiplicity = np.zeros(table.num_rows, dtype=np.int64)
    per_domain: dict[str, Any] = {}
    for k, name in enumerate(names):
        if name not in available:
            continue
        rows = np.flatnonzero(eligible & (dom == k))
        rows = rows[np.argsort(order_key[rows], kind="stable")]
        quota = budget * weights[name]
        avail = available[name]
        passes, remainder = divmod(quota, avail)
        take = np.cumsum(nbytes[rows]) <= remainder
        if quota > 0 and passes == 0 and not take.any():
            take[0] = True  # a share smaller than one document still gets one
        multiplicity[rows] = int(passes) + take
        per_domain[name] = {
            "weight": weights[name],
            "available_bytes": avail,
            "sample_bytes": int((multiplicity[rows] * nbytes[rows]).sum()),
            "sample_documents": int(multiplicity[rows].sum()),
            "repeats": round(quota / avail, 3),
        }
    bounds = np.cumsum([open_parquet(f).metadata.num_rows for f in files])[:-1]
    nulls = int((nbytes < 0).sum())
    return np.split(multiplicity, bounds), per_domain, nulls


def sample_batches(
    files: Sequence[Path], multiplicity: Sequence[np.ndarray], batch_size: int
) -> Iterator[list[str]]:
    """The sample's texts in batches of at most `batch_size`, read from parquet as they are needed."""
    for file, mult in zip(files, multiplicity):
        if not mult.any():
            continue
        offset = 0
        for text in text_batches(file, batch_size):
            m = mult[offset : offset + len(text)]
            offset += len(text)
            rows = np.flatnonzero(m)
            if rows.size == 0:
                continue
            picked = np.repeat(rows, m[rows])
            for start in range(0, picked.size, batch_size):
                yield text.take(picked[start : start + batch_size]).to_pylist()


def _demote_unigram_specials(tok: Tokenizer, specials: Sequence[str]) -> Tokenizer:
    """Unigram keeps special tokens as pieces of score 0 (the best), so a literal "<|endoftext|>"
    in text would be cut as the special piece; give them the worst score instead."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    worst = min(score for _piece, score in vocab) - 100.0
    for entry in vocab:
        if entry[0] in specials:
            entry[1] = worst
    return Tokenizer.from_str(json.dumps(data))


def mixture_input(inputs: Mapping[str, Any], cfg: TokenizerTrainConfig) -> tuple[str, Path | None]:
    """(the sample's weighting: natural, uniform or a mixture.json path; that file, if any).

    The file comes from `inputs["mixture"]`, or from ``--mixture PATH``; both at once must agree.
    """
    given = inputs.get("mixture")
    from_flag = None if cfg.mixture in ("natural", "uniform") else Path(cfg.mixture).absolute()
    if given is not None and cfg.mixture != "natural" and Path(given) != from_flag:
        raise ConfigError(
            f"--mixture {cfg.mixture}: a mixture file ({given}) is given as well; pass only one of them"
        )
    path = Path(given) if given is not None else from_flag
    return (str(path) if path is not None else cfg.mixture), path


def train_on_sample(
    tok: Tokenizer, trainer: Any, batches: Iterator[list[str]], documents: int, cfg: Any
) -> int:
    """Train in ONE `train_from_iterator` call (a second would start over); the vocabulary size.

    A vocabulary smaller than ``--vocab-size`` (a small corpus has fewer merges to learn) is a
    warning; one larger (an alphabet that does not fit) is an error.
    """
    try:
        tok.train_from_iterator(batches, trainer, length=documents)
    except Exception as exc:  # tokenizers raises bare Exceptions, e.g. for a too small unigram vocabulary
        if "not large enough" in str(exc):
            raise InputError(
                f"--vocab-size: {cfg.vocab_size} is smaller than the sample's alphabet ({exc}); raise --vocab-size"
            ) from None
        raise
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab_size:
        raise InputError(
            f"--vocab-size: the trained vocabulary has {size} tokens, more than {cfg.vocab_size}, because the "
            "alphabet alone is larger; raise --vocab-size or lower --limit-alphabet"
        )
    if size < cfg.vocab_size:
        log(
            f"tokenizer train: warning: the vocabulary has {size} tokens, fewer than --vocab-size "
            f"{cfg.vocab_size}: the sample has no more to learn (give more text, raise --sample-bytes, "
            "or lower --vocab-size)"
        )
    return size


def run_tokenizer_train(
    inputs: Inputs, cfg: TokenizerTrainConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Train a tokenizer on `inputs["documents"]` into `out_dir`, the sample weighted by
    `inputs["mixture"]` (a mixture.json) or ``--mixture``; see the module docstring.

    Training runs in this process (`tokenizers` parallelises it over the cores itself);
    `client` is accepted for the stage contract and unused.
    """
    inputs = absolute_inputs(inputs)
    documents = inputs.get("documents")
    paths = [documents] if isinstance(documents, (str, Path)) else list(documents or [])
    files = document_files(paths)
    weighting, mixture_file = mixture_input(inputs, cfg)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        multiplicity, per_domain, nulls = sample_plan(files, cfg, ", ".join(map(str, paths)), weighting)
        for name, d in per_domain.items():
            log(
                f"tokenizer train: {name}: weight {d['weight']:.3f}, {d['sample_bytes'] / 1e6:.2f} MB "
                f"from {d['available_bytes'] / 1e6:.2f} MB available"
            )
        roles = special_tokens(cfg)
        tok, trainer = build_tokenizer(cfg)
        sampled = int(sum(d["sample_documents"] for d in per_domain.values()))
        size = train_on_sample(
            tok, trainer, sample_batches(files, multiplicity, cfg.batch_size), sampled, cfg
        )
        if cfg.model == "unigram":
            tok = _demote_unigram_specials(tok, list(roles.values()))
        save_tokenizer(tok, stage.out, roles)
        sample_bytes = int(sum(d["sample_bytes"] for d in per_domain.values()))
        stats = {
            "model": cfg.model,
            "vocab_size": size,
            "vocab_size_requested": cfg.vocab_size,
            "eos_token": cfg.eos_token,
            "eos_id": tok.token_to_id(cfg.eos_token),
            "special_tokens": roles,
            "deterministic": cfg.model != "wordpiece",
            "sample": per_domain,
            "skipped_null_text": nulls,
        }
        if size < cfg.vocab_size:
            stats["warnings"] = [f"vocabulary of {size} tokens, fewer than the {cfg.vocab_size} requested"]
        if nulls:
            log(f"tokenizer train: skipped {nulls} documents with null text")
        return {"documents": sampled, "bytes": sample_bytes, "vocab_size": size}, stats

    return run_stage(
        "tokenizer_train", cfg, {"documents": paths, "mixture": mixture_file}, out_dir, body, force=force
    )
