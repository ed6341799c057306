"""`mixlab tokenize`: documents -> token shards per domain and split, on Dask.

Reads one or more documents tables and a tokenizer directory; writes the layout described in
`mixlab.tokenize.shards` (shards sorted by document id, ``_stream.npy`` per split,
``token_counts.parquet``, a copy of the tokenizer, manifest stats). Each Dask task encodes a
row range (`mixlab.tables.plan_partitions`) and leaves per-domain/split part files and a
completion marker in the stage's scratch directory, so a killed run resumes; one task per
domain/split then merges the parts in id order, so the output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixlab.cluster import dask_client
from mixlab.console import log, progress
from mixlab.errors import InputError
from mixlab.stage import Manifest, StageDir, run_stage, write_json
from mixlab.tables import (
    TOKEN_COUNTS_SCHEMA,
    Partition,
    plan_partitions,
    read_partition,
    shard_name,
    write_table,
)
from mixlab.tokenize.config import TokenizeConfig
from mixlab.tokenize.documents import document_files, split_table, valid_mask
from mixlab.tokenize.encode import encode_texts, token_lists, worker_memory, worker_tokenizer
from mixlab.tokenize.shards import SPLITS, STREAM, TOKEN_COUNTS, TOKENIZER_DIR, token_dtype
from mixlab.tokenize.tokenizer import HF_FILES, load_tokenizer, tokenizer_file


def shard_schema(dtype: np.dtype) -> pa.Schema:
    return pa.schema(
        [("id", pa.string()), ("domain", pa.string()), ("tokens", pa.list_(pa.from_numpy_dtype(dtype)))]
    )


def encode_part(
    part: Partition,
    tokenizer_dir: str,
    eos_token: str,
    cfg: TokenizeConfig,
    forced: frozenset[str],
    work: str,
) -> dict[str, Any]:
    """Dask task: encode one slice, write its part files per domain/split, then its marker."""
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
    if cfg.valid_domains:
        valid |= pc.is_in(table["domain"], pa.array(cfg.valid_domains, pa.string())).to_numpy(
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
                    Path(work) / "parts" / domain / split / f"part_{index:06d}.parquet",
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
    write_json(Path(work) / "markers" / f"part_{index:06d}.json", result)
    return result


def assemble_split(
    domain: str, split: str, work: str, out: str, cfg: TokenizeConfig, dtype_name: str
) -> dict[str, Any]:
    """Dask task: merge a domain/split's parts in id order into shards (and _stream.npy)."""
    cpu = time.process_time()
    dtype = np.dtype(dtype_name)
    parts = sorted((Path(work) / "parts" / domain / split).glob("part_*.parquet"))
    table = (
        pa.concat_tables([pq.read_table(p) for p in parts]) if parts else shard_schema(dtype).empty_table()
    )
    table = table.sort_by("id")
    lengths = pc.list_value_length(table["tokens"]).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    # A document goes to the shard its first token falls in; renumber so shards are contiguous.
    _, shard_of = np.unique(starts // cfg.shard_tokens, return_inverse=True)
    directory = Path(out) / domain / split
    bounds = np.flatnonzero(np.diff(shard_of)) + 1
    pieces = np.split(np.arange(table.num_rows), bounds) if table.num_rows else [np.arange(0)]
    for i, rows in enumerate(pieces):
        write_table(table.slice(int(rows[0]), len(rows)) if len(rows) else table, directory / shard_name(i))
    if cfg.write_stream:
        flat = pc.list_flatten(table["tokens"]).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        tmp = directory / f".{STREAM}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, flat)
        os.replace(tmp, directory / STREAM)
    return {
        "domain": domain,
        "split": split,
        "documents": int(table.num_rows),
        "tokens": int(lengths.sum()),
        "shards": len(pieces),
        "cpu_seconds": time.process_time() - cpu,
    }


def _check_domain_names(names: Sequence[str]) -> None:
    bad = [
        d for d in names if not d or "/" in d or "\\" in d or d.startswith((".", "_")) or d == TOKENIZER_DIR
    ]
    if bad:
        raise InputError(
            f"domain name(s) {bad} cannot be folder names of the token shards (no '/', no leading '.' or '_', "
            f"not {TOKENIZER_DIR!r}); rename them with `mixlab ingest --domain-column`"
        )


def run_tokenize(
    inputs: Mapping[str, Any],
    cfg: TokenizeConfig,
    out_dir: Path | str,
    client: Any = None,
    *,
    force: bool = False,
    scheduler_address: str | None = None,
) -> Manifest:
    """Tokenize `inputs["documents"]` (one or more documents inputs) with `inputs["tokenizer"]`.

    Runs on `client`, else on the scheduler at `scheduler_address`, else on a LocalCluster
    started only when there is work to do.
    """
    if "documents" not in inputs or "tokenizer" not in inputs:
        raise InputError("tokenize: inputs need 'documents' (path or paths) and 'tokenizer' (a directory)")
    documents = inputs["documents"]
    paths = [Path(documents)] if isinstance(documents, (str, Path)) else [Path(p) for p in documents]
    files = document_files(paths)
    tok_path = tokenizer_file(inputs["tokenizer"]).parent
    _tok, info = load_tokenizer(tok_path, cfg.eos_token)  # metadata only: this process never encodes
    dtype = token_dtype(info.vocab_size)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        clock = time.perf_counter()
        table, forced = split_table(files, cfg.seed, cfg.valid_fraction)
        seconds = {"split": time.perf_counter() - clock}
        names = sorted(set(table["domain"].to_pylist()))
        _check_domain_names(names)
        missing = sorted(set(cfg.valid_domains) - set(names))
        if missing:
            raise InputError(f"--valid-domains: {missing} not in the documents (found: {', '.join(names)})")
        parts = plan_partitions(files, cfg.rows_per_task)
        markers = stage.work / "markers"
        markers.mkdir(parents=True, exist_ok=True)
        results: dict[int, dict[str, Any]] = {}
        for i in range(len(parts)):
            marker = markers / f"part_{i:06d}.json"
            if marker.is_file():
                results[i] = json.loads(marker.read_text())
        todo = [i for i in range(len(parts)) if i not in results]
        if results:
            log(f"tokenize: resuming, {len(results)} of {len(parts)} parts already done")
        with dask_client(client, scheduler_address) as dask:
            from distributed import as_completed

            futures = {
                dask.submit(
                    encode_part,
                    parts[i],
                    str(tok_path),
                    info.eos_token,
                    cfg,
                    forced,
                    str(stage.work),
                    pure=False,
                ): i
                for i in todo
            }
            for done, future in enumerate(
                progress(as_completed(futures), len(futures), "tokenize", "part"), 1
            ):
                results[futures[future]] = future.result()
                if done % max(1, (len(todo) + 9) // 10) == 0 or done == len(todo):
                    log(f"tokenize: encoded {done}/{len(todo)} parts")
            seconds["encode"] = time.perf_counter() - clock - seconds["split"]
            merged = dask.gather(
                [
                    dask.submit(
                        assemble_split, d, s, str(stage.work), str(stage.out), cfg, dtype.name, pure=False
                    )
                    for d in names
                    for s in SPLITS
                ]
            )
        seconds["merge"] = time.perf_counter() - clock - seconds["split"] - seconds["encode"]
        counts = pa.Table.from_pylist(
            [{k: m[k] for k in ("domain", "split", "documents", "tokens")} for m in merged],
            schema=TOKEN_COUNTS_SCHEMA,
        )
        write_table(counts, stage.out / TOKEN_COUNTS)
        (stage.out / TOKENIZER_DIR).mkdir(exist_ok=True)
        for name in HF_FILES:
            if (tok_path / name).is_file():
                shutil.copy2(tok_path / name, stage.out / TOKENIZER_DIR / name)
        nulls: Counter = Counter()
        nbytes: Counter = Counter()
        for r in results.values():
            nulls.update(r["nulls"])
            nbytes.update(r.get("bytes", {}))
        per_domain = {d: {} for d in names}
        for m in merged:
            b = nbytes[f"{m['domain']}/{m['split']}"]
            per_domain[m["domain"]][m["split"]] = {
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
            "token_dtype": dtype.name,
            "domains": names,
            "per_domain": per_domain,
            "skipped_null_text": dict(nulls),
            "valid_fraction": cfg.valid_fraction,
            "seed": cfg.seed,
            "tokenizer": str(tok_path),
            "space_segmented": info.space_segmentable,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            # CPU time of the workers' tasks (encode + merge): throughput per core that contention cannot skew
            "worker_cpu_seconds": round(
                sum(r.get("cpu_seconds", 0.0) for r in [*results.values(), *merged]), 3
            ),
        }
        total = {
            "documents": sum(m["documents"] for m in merged),
            "tokens": sum(m["tokens"] for m in merged),
            "shards": sum(m["shards"] for m in merged),
            "skipped": sum(nulls.values()),
        }
        return total, stats

    return run_stage("tokenize", cfg, {"documents": paths, "tokenizer": tok_path}, out_dir, body, force=force)
