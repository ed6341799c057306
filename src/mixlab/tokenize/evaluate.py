"""`mixlab tokenizer eval`: how well one or more tokenizers compress each domain, side by side.

Reads tokenizer directories and documents (by default only the held-out split that training
left out); writes ``eval.parquet`` with one row per tokenizer and domain plus an ``all`` row:
bytes, characters and whitespace words per token (fertility = tokens per word), the share of
unknown tokens, vocabulary utilisation and Rényi efficiency (Zouhar et al. 2023: the
order-alpha Rényi entropy of the unigram token distribution over log |V|, a better predictor
of downstream quality than raw compression).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixlab.console import log
from mixlab.errors import InputError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, absolute_inputs, run_stage
from mixlab.tables import read_table, write_table
from mixlab.tokenize.config import TokenizerEvalConfig
from mixlab.tokenize.documents import document_files, id_hash, split_table
from mixlab.tokenize.encode import encode_texts
from mixlab.tokenize.tokenizer import load_tokenizer, tokenizer_file

EVAL_FILE = "eval.parquet"
OVERALL = "all"
COLUMNS = (
    "tokenizer",
    "domain",
    "documents",
    "bytes",
    "chars",
    "words",
    "tokens",
    "bytes_per_token",
    "chars_per_token",
    "fertility",
    "unk_share",
    "vocab_used",
    "vocab_utilisation",
    "renyi_efficiency",
)


def renyi_efficiency(counts: np.ndarray, vocab_size: int, alpha: float) -> float:
    """H_alpha(p) / log |V| for the unigram distribution p of token `counts`."""
    total = counts.sum()
    if total == 0 or vocab_size < 2:
        return float("nan")
    p = counts[counts > 0] / total
    entropy = np.log(np.sum(p**alpha)) / (1.0 - alpha)
    return float(entropy / np.log(vocab_size))


def eval_texts(files: Sequence[Path], cfg: TokenizerEvalConfig) -> dict[str, pa.Array]:
    """The evaluation texts per domain: held-out (or all) documents, up to the per-domain byte cap,
    chosen in seeded-hash order so the choice does not depend on file layout."""
    table, _ = split_table(files, cfg.seed, cfg.valid_fraction)
    if cfg.split == "valid":
        table = table.filter(table["valid"])
    if table.num_rows == 0:
        where = ", ".join(map(str, files))
        raise InputError(
            f"tokenizer eval: no held-out documents in {where}; raise --valid-fraction or pass --split all"
        )
    texts = []
    for index, file in enumerate(files):
        rows = table.filter(pc.equal(table["file"], index))
        if rows.num_rows:
            text = read_table(file, ["text"], allow_empty=True)["text"].take(rows["row"])
            texts.append(pa.table({"id": rows["id"], "domain": rows["domain"], "text": text}))
    docs = pa.concat_tables(texts)
    docs = docs.filter(pc.is_valid(docs["text"]))
    order = np.argsort(id_hash(docs["id"].to_pylist(), cfg.seed, "eval\0"), kind="stable")
    docs = docs.take(order)
    out: dict[str, pa.Array] = {}
    for domain in sorted(set(docs["domain"].to_pylist())):
        text = docs.filter(pc.equal(docs["domain"], domain))["text"].combine_chunks()
        nbytes = np.cumsum(pc.binary_length(text).to_numpy(zero_copy_only=False))
        keep = max(1, int(np.searchsorted(nbytes, cfg.max_bytes_per_domain, side="right")))
        out[domain] = text.slice(0, keep)
    return out


def _row(
    name: str,
    domain: str,
    texts: Sequence[pa.Array],
    counts: np.ndarray,
    unk: int,
    vocab: int,
    cfg: TokenizerEvalConfig,
) -> dict[str, Any]:
    nbytes = sum(int(pc.sum(pc.binary_length(t)).as_py() or 0) for t in texts)
    chars = sum(int(pc.sum(pc.utf8_length(t)).as_py() or 0) for t in texts)
    words = sum(int(pc.sum(pc.list_value_length(pc.utf8_split_whitespace(t))).as_py() or 0) for t in texts)
    tokens = int(counts.sum())
    used = int((counts > 0).sum())
    return {
        "tokenizer": name,
        "domain": domain,
        "documents": sum(len(t) for t in texts),
        "bytes": nbytes,
        "chars": chars,
        "words": words,
        "tokens": tokens,
        "bytes_per_token": nbytes / tokens if tokens else float("nan"),
        "chars_per_token": chars / tokens if tokens else float("nan"),
        "fertility": tokens / words if words else float("nan"),
        "unk_share": unk / tokens if tokens else 0.0,
        "vocab_used": used,
        "vocab_utilisation": used / vocab,
        "renyi_efficiency": renyi_efficiency(counts, vocab, cfg.renyi_alpha),
    }


def evaluate(
    tokenizer: Path | str, texts: Mapping[str, pa.Array], cfg: TokenizerEvalConfig, name: str | None = None
) -> list[dict[str, Any]]:
    """One row per domain plus the overall row for one tokenizer."""
    tok, info = load_tokenizer(tokenizer)
    name = name or info.name
    total = np.zeros(info.vocab_size, dtype=np.int64)
    rows = []
    for domain, text in texts.items():
        flat, _ = encode_texts(tok, text, space_segmentable=info.space_segmentable, batch_size=cfg.batch_size)
        counts = np.bincount(flat.astype(np.int64), minlength=info.vocab_size)
        total += counts
        unk = int(counts[info.unk_id]) if info.unk_id is not None else 0
        rows.append(_row(name, domain, [text], counts, unk, info.vocab_size, cfg))
    unk = int(total[info.unk_id]) if info.unk_id is not None else 0
    rows.append(_row(name, OVERALL, list(texts.values()), total, unk, info.vocab_size, cfg))
    return rows


def format_table(table: pa.Table) -> str:
    """A fixed-width summary: one line per tokenizer and domain (whole names: the columns widen)."""
    rows = table.to_pylist()
    tw = max([len("tokenizer"), *(len(r["tokenizer"]) for r in rows)])
    dw = max([len("domain"), *(len(r["domain"]) for r in rows)])
    head = (
        f"{'tokenizer':<{tw}} {'domain':<{dw}} {'bytes/tok':>9} {'chars/tok':>9} {'fertility':>9} "
        f"{'unk':>7} {'vocab use':>9} {'renyi':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['tokenizer']:<{tw}} {r['domain']:<{dw}} {r['bytes_per_token']:>9.3f} {r['chars_per_token']:>9.3f} "
            f"{r['fertility']:>9.3f} {r['unk_share']:>7.2%} {r['vocab_utilisation']:>9.2%} {r['renyi_efficiency']:>7.3f}"
        )
    return "\n".join(lines)


def run_tokenizer_eval(
    inputs: Inputs, cfg: TokenizerEvalConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Evaluate `inputs["tokenizers"]` (one or more directories) on `inputs["documents"]`.

    Runs in this process (encoding is parallel inside `tokenizers`); `client` is accepted for
    the stage contract and unused.
    """
    inputs = absolute_inputs(inputs)
    if not inputs.get("documents") or not inputs.get("tokenizers"):
        raise InputError(
            "tokenizer eval: inputs need 'tokenizers' (directories) and 'documents' (path or paths)"
        )
    tokenizers = inputs["tokenizers"]
    tok_paths = [
        tokenizer_file(p).parent
        for p in ([tokenizers] if isinstance(tokenizers, (str, Path)) else tokenizers)
    ]
    if not tok_paths:
        raise InputError("tokenizer eval: pass at least one tokenizer directory")
    documents = inputs["documents"]
    paths = [Path(documents)] if isinstance(documents, (str, Path)) else [Path(p) for p in documents]
    files = document_files(paths)
    names = _unique_names(tok_paths)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        texts = eval_texts(files, cfg)
        rows = []
        for path, name in zip(tok_paths, names):
            log(f"tokenizer eval: {name}")
            rows.extend(evaluate(path, texts, cfg, name))
        table = pa.Table.from_pylist(rows).select(list(COLUMNS))
        write_table(table, stage.out / EVAL_FILE)
        overall = {
            r["tokenizer"]: {k: r[k] for k in ("bytes_per_token", "fertility", "renyi_efficiency")}
            for r in rows
            if r["domain"] == OVERALL
        }
        return (
            {
                "tokenizers": len(tok_paths),
                "domains": len(texts),
                "documents": sum(len(t) for t in texts.values()),
            },
            {"overall": overall, "tokenizer_paths": {n: str(p) for n, p in zip(names, tok_paths)}},
        )

    return run_stage(
        "tokenizer_eval", cfg, {"documents": paths, "tokenizers": tok_paths}, out_dir, body, force=force
    )


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, made unique with their parent's name when two tokenizers share one."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def read_eval(out_dir: Path | str) -> pa.Table:
    return read_table(Path(out_dir) / EVAL_FILE, allow_empty=True)
