"""`mixlab tokenize`: documents -> token shards per domain and split, on Dask.

Reads one or more documents tables, optional target tables (validation-only domains: every
document goes to the valid split, none is ever trained on or mixed) and a tokenizer directory;
writes the layout described in `mixlab.tokenize.shards` (shards sorted by document id under
``tokens/``, a ``.npy`` stream per split under ``_mixlab/streams/``, ``token_counts.parquet``, a
copy of the tokenizer, manifest stats).
Phases: `plan_domains` (the seeded split, which domains are validation-only) -> `encode_parts`
(one Dask task per row range, `mixlab.tables.plan_partitions`, leaving per-domain/split part
files and a completion marker, so a killed run resumes) -> `merge_splits` (one task per
non-empty domain/split merging the parts in id order, so the output does not depend on the
number of workers; an empty split writes no shard) -> `write_counts` and `tokenize_stats`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixlab import storage
from mixlab.cluster import dask_client
from mixlab.console import log, progress
from mixlab.errors import InputError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, TaskMarkers, absolute_inputs, run_stage
from mixlab.tables import (
    TOKEN_COUNTS_SCHEMA,
    Partition,
    check_documents,
    parquet_files,
    plan_partitions,
    read_partition,
    shard_name,
    write_shard,
    write_table,
)
from mixlab.tokenize.config import TokenizeConfig
from mixlab.tokenize.documents import split_table, valid_mask
from mixlab.tokenize.encode import encode_texts, token_lists, worker_memory, worker_tokenizer
from mixlab.tokenize.shards import SHARDS_DIR, SPLITS, STREAMS_DIR, TOKEN_COUNTS, TOKENIZER_DIR, token_dtype
from mixlab.tokenize.tokenizer import HF_FILES, TokenizerInfo, load_tokenizer, tokenizer_file

ENCODE = "encode"  # the kind of the encode tasks' completion markers


def _part_name(index: int) -> str:
    return f"part_{index:06d}"


def encode_part(
    part: Partition,
    tokenizer_dir: str,
    eos_token: str,
    cfg: TokenizeConfig,
    forced: frozenset[str],
    valid_only: frozenset[str],
    work: str,
) -> dict[str, Any]:
    """Dask task: encode one slice, write its part files per domain/split, then its marker.

    Documents of the `valid_only` domains all go to the valid split; the others by the seeded
    split (`valid_mask`, with the `forced` ids).
    """
    started, cpu = time.perf_counter(), time.process_time()
    index = part.index
    tok, info = worker_tokenizer(tokenizer_dir, eos_token)
    dtype = token_dtype(info.vocab_size)
    table = read_partition(part, ["id", "domain", "text"])
    null = pc.is_null(table["text"])
    nulls = Counter(table.filter(null)["domain"].to_pylist())
    table = table.filter(pc.invert(null))
    flat, lengths = encode_texts(
        tok,
        table["text"],
        eos_id=info.eos_id,
        space_segmentable=info.space_segmentable,
        max_chunk_chars=cfg.max_chunk_chars,
        batch_size=cfg.batch_size,
        dtype=dtype,
        memory=worker_memory(tok),
    )
    valid = valid_mask(table["id"], cfg.seed, cfg.valid_fraction, forced)
    if valid_only:
        valid |= pc.is_in(table["domain"], pa.array(sorted(valid_only), pa.string())).to_numpy(
            zero_copy_only=False
        )
    out = pa.table(
        {
            "id": table["id"].cast(pa.string()),
            "domain": table["domain"].cast(pa.string()),
            "tokens": token_lists(flat, lengths),
        }
    )
    domains = table["domain"].to_numpy(zero_copy_only=False)
    text_bytes = pc.binary_length(table["text"]).to_numpy(zero_copy_only=False)
    nbytes: dict[str, int] = {}  # "domain/split" -> UTF-8 bytes, for bytes per token in the report
    for domain in sorted(set(domains)):
        for split, in_split in (("train", ~valid), ("valid", valid)):
            rows = np.flatnonzero((domains == domain) & in_split)
            if rows.size:
                # scratch read back once by assemble_split: speed over size
                write_table(
                    out.take(rows),
                    Path(work) / "parts" / domain / split / f"{_part_name(index)}.parquet",
                    compression="lz4",
                )
                nbytes[f"{domain}/{split}"] = int(text_bytes[rows].sum())
    result = {
        "documents": int(table.num_rows),
        "tokens": int(lengths.sum()),
        "nulls": dict(nulls),
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
    }
    TaskMarkers.in_work(work, ENCODE).mark(_part_name(index), result)
    return result


def assemble_split(
    domain: str, split: str, work: str, out: str, cfg: TokenizeConfig, dtype_name: str
) -> dict[str, Any]:
    """Dask task: merge a domain/split's parts in id order into shards (and its ``.npy`` stream).

    Only a split with documents is merged (`merge_splits`), so it has parts and no shard is empty.
    """
    cpu = time.process_time()
    dtype = np.dtype(dtype_name)
    parts = sorted((Path(work) / "parts" / domain / split).glob("part_*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]).sort_by("id")
    lengths = pc.list_value_length(table["tokens"]).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    # A document goes to the shard its first token falls in; renumber so shards are contiguous.
    _, shard_of = np.unique(starts // cfg.shard_tokens, return_inverse=True)
    directory = Path(out) / SHARDS_DIR / domain / split
    bounds = np.flatnonzero(np.diff(shard_of)) + 1
    pieces = np.split(np.arange(table.num_rows), bounds)
    for i, rows in enumerate(pieces):
        write_shard(table.slice(int(rows[0]), len(rows)), directory / shard_name(i))
    if cfg.write_stream:
        flat = pc.list_flatten(table["tokens"]).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        stream = Path(out) / STREAMS_DIR / domain / f"{split}.npy"
        stream.parent.mkdir(parents=True, exist_ok=True)
        tmp = stream.with_name(f".{stream.name}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, flat)
        os.replace(tmp, stream)
    return {
        "domain": domain,
        "split": split,
        "documents": int(table.num_rows),
        "tokens": int(lengths.sum()),
        "shards": len(pieces),
        "cpu_seconds": time.process_time() - cpu,
    }


def _check_domain_names(names: Sequence[str]) -> None:
    # parquet dataset readers skip folders named ".x" or "_x": such a domain's shards would vanish
    bad = [d for d in names if not d or "/" in d or "\\" in d or d.startswith((".", "_"))]
    if bad:
        raise InputError(
            f"domain name(s) {bad} cannot be folder names of the token shards (no '/', no leading '.' or '_'); "
            "rename them with `mixlab ingest --domain-column`"
        )


@dataclasses.dataclass(frozen=True)
class Input:
    """One input path of tokenize, its parquet files, and whether it is a target (validation only)."""

    path: Path
    files: tuple[Path, ...]
    target: bool


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The tables tokenize reads: the documents inputs, then the targets."""

    inputs: tuple[Input, ...]

    @classmethod
    def of(cls, documents: Sequence[Path], targets: Sequence[Path]) -> Corpus:
        check_documents([*documents, *targets])  # the contract, and ids unique across all of them
        given = [(p, False) for p in documents] + [(p, True) for p in targets]
        return cls(tuple(Input(p, tuple(parquet_files(p)), target) for p, target in given))

    @property
    def files(self) -> list[Path]:
        return [f for i in self.inputs for f in i.files]

    def input_of_file(self) -> np.ndarray:
        """(files,) index into `inputs` of every file."""
        return np.array([k for k, i in enumerate(self.inputs) for _ in i.files], dtype=np.int64)

    def documents_where(self) -> str:
        return ", ".join(str(i.path) for i in self.inputs if not i.target)


def plan_domains(corpus: Corpus, table: pa.Table, cfg: TokenizeConfig) -> tuple[list[str], frozenset[str]]:
    """(every domain, sorted; the validation-only ones: --valid-domains and every target's).

    A target's domain must not also be a corpus domain: it would be mixed, and its documents
    trained on.
    """
    names = sorted(set(table["domain"].to_pylist()))
    _check_domain_names(names)
    missing = sorted(set(cfg.valid_domains) - set(names))
    if missing:
        raise InputError(f"--valid-domains: {missing} not in the documents (found: {', '.join(names)})")
    source = corpus.input_of_file()[table["file"].to_numpy()]  # (rows,) input of every document
    in_target = np.array([i.target for i in corpus.inputs], dtype=bool)[source]
    domains = table["domain"].to_numpy(zero_copy_only=False)
    target_domains = set(domains[in_target].tolist())
    clash = sorted(target_domains & set(domains[~in_target].tolist()))
    if clash:
        d = clash[0]
        target = corpus.inputs[source[np.flatnonzero(in_target & (domains == d))[0]]].path
        documents = corpus.inputs[source[np.flatnonzero(~in_target & (domains == d))[0]]].path
        raise InputError(
            f"target {target} and documents {documents} both have domain {d!r}: a target is validation "
            "only and never mixed, so give it a domain of its own (`mixlab ingest --domain NAME`)"
        )
    return names, frozenset(cfg.valid_domains) | frozenset(target_domains)


def refuse_empty(corpus: Corpus, documents_per_file: np.ndarray, what: str) -> None:
    """Refuse a documents input with nothing in it, and a target without: named, in one line.

    `documents_per_file`: rows (before encoding) or encoded documents (after: nulls skipped).
    """
    per_input = np.bincount(corpus.input_of_file(), weights=documents_per_file, minlength=len(corpus.inputs))
    if sum(n for n, i in zip(per_input, corpus.inputs) if not i.target) == 0:
        raise InputError(f"{corpus.documents_where()}: {what}; tokenize needs documents with text")
    for n, i in zip(per_input, corpus.inputs):
        if i.target and n == 0:
            raise InputError(f"target {i.path}: {what}; a target needs documents with text")


def encode_parts(
    parts: Sequence[Partition], markers: TaskMarkers, submit: Callable[[Partition], Any]
) -> dict[int, dict[str, Any]]:
    """Every part's encode result: from its marker when a killed run finished it, else from a task."""
    done = markers.finished()
    results = {i: done[_part_name(i)] for i in range(len(parts)) if _part_name(i) in done}
    todo = [i for i in range(len(parts)) if i not in results]
    if results:
        log(f"tokenize: resuming, {len(results)} of {len(parts)} parts already done")
    from distributed import as_completed

    futures = {submit(parts[i]): i for i in todo}
    for count, future in enumerate(progress(as_completed(futures), len(futures), "tokenize", "part"), 1):
        results[futures[future]] = future.result()
        if count % max(1, (len(todo) + 9) // 10) == 0 or count == len(todo):
            log(f"tokenize: encoded {count}/{len(todo)} parts")
    return results


def merge_splits(
    dask: Any,
    names: Sequence[str],
    results: Mapping[int, Mapping[str, Any]],
    stage: StageDir,
    cfg: TokenizeConfig,
    dtype: np.dtype,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Each non-empty domain/split merged into its shards, by (domain, split); an empty one
    (a validation-only domain's train split) gets no folder: HF datasets refuses 0-row shards."""
    present = {key for r in results.values() for key in r["bytes"]}
    splits = [(d, s) for d in names for s in SPLITS if f"{d}/{s}" in present]
    merged = dask.gather(
        [
            dask.submit(assemble_split, d, s, str(stage.work), str(stage.out), cfg, dtype.name, pure=False)
            for d, s in splits
        ]
    )
    return dict(zip(splits, merged))


def write_counts(
    names: Sequence[str], merged: Mapping[tuple[str, str], Mapping[str, Any]], out: Path, tok_path: Path
) -> None:
    """token_counts.parquet (a row for every domain and split, empty ones with zeros) and the tokenizer copy."""
    rows = []
    for d in names:
        for s in SPLITS:
            m = merged.get((d, s), {})
            rows.append(
                {"domain": d, "split": s, "documents": m.get("documents", 0), "tokens": m.get("tokens", 0)}
            )
    write_table(pa.Table.from_pylist(rows, schema=TOKEN_COUNTS_SCHEMA), out / TOKEN_COUNTS)
    (out / TOKENIZER_DIR).mkdir(exist_ok=True)
    for name in HF_FILES:
        if (tok_path / name).is_file():
            shutil.copy2(tok_path / name, out / TOKENIZER_DIR / name)


def tokenize_stats(
    names: Sequence[str],
    valid_only: frozenset[str],
    results: Mapping[int, Mapping[str, Any]],
    merged: Mapping[tuple[str, str], Mapping[str, Any]],
    info: TokenizerInfo,
    cfg: TokenizeConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's counts and statistics (the caller adds the phases' seconds)."""
    nulls: Counter = Counter()
    nbytes: Counter = Counter()
    for r in results.values():
        nulls.update(r["nulls"])
        nbytes.update(r.get("bytes", {}))
    per_domain: dict[str, dict[str, Any]] = {d: {} for d in names}
    for d in names:
        for s in SPLITS:
            m = merged.get((d, s), {"documents": 0, "tokens": 0, "shards": 0})
            b = nbytes[f"{d}/{s}"]
            per_domain[d][s] = {
                "documents": m["documents"],
                "tokens": m["tokens"],
                "shards": m["shards"],
                "bytes": b,
                # EOS tokens are included, so this is what training sees per byte of text
                "bytes_per_token": round(b / m["tokens"], 4) if m["tokens"] else None,
            }
    if nulls:
        log(f"tokenize: skipped documents with null text: {dict(nulls)}")
    stats = {
        "vocab_size": info.vocab_size,
        "eos_id": info.eos_id,
        "eos_token": info.eos_token,
        "token_dtype": token_dtype(info.vocab_size).name,
        "shards_dir": SHARDS_DIR,  # where the shards are (older outputs: at the top level)
        "domains": list(names),
        "valid_only_domains": sorted(valid_only),
        "per_domain": per_domain,
        "skipped_null_text": dict(nulls),
        "valid_fraction": cfg.valid_fraction,
        "seed": cfg.seed,
        "tokenizer": storage.origin(info.path),
        "space_segmented": info.space_segmentable,
        # CPU time of the workers' tasks (encode + merge): throughput per core that contention cannot skew
        "worker_cpu_seconds": round(
            sum(r.get("cpu_seconds", 0.0) for r in [*results.values(), *merged.values()]), 3
        ),
    }
    total = {
        "documents": sum(m["documents"] for m in merged.values()),
        "tokens": sum(m["tokens"] for m in merged.values()),
        "shards": sum(m["shards"] for m in merged.values()),
        "skipped": sum(nulls.values()),
    }
    return total, stats


def _paths(value: Any) -> list[Path]:
    return [value] if isinstance(value, (str, Path)) else list(value or [])


def run_tokenize(
    inputs: Inputs, cfg: TokenizeConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Tokenize `inputs["documents"]` (one or more documents inputs) and `inputs["targets"]`
    (documents tables whose every domain is validation-only, or None) with `inputs["tokenizer"]`.

    Runs on `client`, else on the cluster `mixlab.cluster.dask_client` finds or starts (only
    when there is work to do).
    """
    inputs = absolute_inputs(inputs)
    documents, targets = _paths(inputs.get("documents")), _paths(inputs.get("targets"))
    if not documents or inputs.get("tokenizer") is None:
        raise InputError("tokenize: inputs need 'documents' (path or paths) and 'tokenizer' (a directory)")
    corpus = Corpus.of(documents, targets)
    tok_path = tokenizer_file(inputs["tokenizer"]).parent
    _tok, info = load_tokenizer(tok_path, cfg.eos_token)  # metadata only: this process never encodes

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        clock = time.perf_counter()
        files = corpus.files
        table, forced = split_table(files, cfg.seed, cfg.valid_fraction)
        refuse_empty(corpus, np.bincount(table["file"].to_numpy(), minlength=len(files)), "has no rows")
        names, valid_only = plan_domains(corpus, table, cfg)
        seconds = {"split": time.perf_counter() - clock}
        parts = plan_partitions(files, cfg.rows_per_task)
        markers = TaskMarkers.in_work(stage.work, ENCODE)
        with dask_client(client) as dask:

            def submit(part: Partition) -> Any:
                args = (str(tok_path), info.eos_token, cfg, forced, valid_only, str(stage.work))
                return dask.submit(encode_part, part, *args, pure=False)

            results = encode_parts(parts, markers, submit)
            encoded = np.zeros(len(files))  # documents with text, per file
            file_index = {str(f): k for k, f in enumerate(files)}
            for i, r in results.items():
                encoded[file_index[parts[i].file]] += r["documents"]
            refuse_empty(corpus, encoded, "every document has null text")
            seconds["encode"] = time.perf_counter() - clock - seconds["split"]
            merged = merge_splits(dask, names, results, stage, cfg, token_dtype(info.vocab_size))
        seconds["merge"] = time.perf_counter() - clock - seconds["split"] - seconds["encode"]
        write_counts(names, merged, stage.out, tok_path)
        total, stats = tokenize_stats(names, valid_only, results, merged, info, cfg)
        stats["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
        return total, stats

    stage_inputs = {"documents": documents, "tokenizer": tok_path, "targets": targets or None}
    return run_stage("tokenize", cfg, stage_inputs, out_dir, body, force=force)
