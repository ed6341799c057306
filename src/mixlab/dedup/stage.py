"""`run_dedup`: exact then MinHash-LSH near-duplicate removal of a documents table, on Dask.

Reads a documents table (id, domain, text, other columns kept), and with ``--against OLD`` a
dedup output run with ``--keep-signatures``. Writes ``documents/shard_*.parquet`` (the kept
documents, same columns), ``duplicates.parquet`` (one row per removed document: id, domain,
cluster_id, kept_id, kind, jaccard to the kept document), with ``--keep-signatures``
``signatures/shard_*.parquet`` (id, domain, text_hash, signature of every kept document that
took part), and the manifest's statistics.

Nothing that grows with the corpus's pairs or band keys reaches the client: each signature
task writes its partition's band keys split by hash range into the work dir (a shuffle on
disk); one task per hash range groups its keys into buckets and sends each pair to the
partition of its left document, with a request for the right document's shingles to the
partition holding it; one serve task per partition reads its shingles once and answers the
requests; one verify task per partition checks its pairs (exact Jaccard) and returns only
the accepted ones. The client holds per-document arrays (partition, row, status, keep rank,
ids) and the accepted pairs, and runs connected components on them (`scipy.sparse.csgraph`).

Phases, one function each: `compute_signatures` per partition (resumable, one completion
marker each) -> `load_nodes` and `exact_representatives` -> (`against_matches`) ->
`bucket_pairs` (hash ranges) -> `verified_candidates` (serve, verify) -> `choose_kept`
(connected components, keep policy) -> `write_outputs` -> `dedup_stats`.

Bad input policy (each counted in ``stats.bad_input``, none dropped silently):
null text, and text empty or whitespace-only after normalisation, are kept and take no part
in deduplication (at any size, including a table with no rows or with no usable text); a
document shorter than one shingle is one shingle of all its tokens; a huge document is
processed whole, in bounded chunks; a giant bucket (a cluster of thousands of copies) is
linked up to ``--max-bucket`` members per band and reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixlab.cluster import dask_client
from mixlab.console import log, progress
from mixlab.dedup.clusters import bucket_edges, connected_components, keep_per_group, preference
from mixlab.dedup.config import DedupConfig
from mixlab.dedup.minhash import (
    band_keys,
    bands_summary,
    choose_bands,
    jaccard_estimate,
    jaccard_sets,
    permutations,
    signatures,
)
from mixlab.dedup.shingles import EMPTY, NULL, OK, SHORT, STATUS_NAMES, shingle_batch
from mixlab.errors import InputError
from mixlab.stage import Inputs, Manifest, OutDir, StageDir, TaskMarkers, absolute_inputs, run_stage
from mixlab.tables import (
    DOCUMENT_ROW_GROUP,
    DUPLICATES_SCHEMA,
    Partition,
    check_documents,
    plan_partitions,
    read_partition,
    shard_name,
    write_table,
)

BATCH_DOCS = 4096  # documents shingled at once inside a partition (bounds temporary arrays)
SIGNATURES = "signatures"  # work/signatures/part_*.parquet: per-document shingles and signatures
BAND_KEYS = "band_keys"  # work/band_keys/range_RRR/part_*.parquet: the shuffle by hash range
CANDIDATES = "candidates"  # work/candidates/{pairs,requests,served}/: the bucket pairs, checked
ROUNDS = "rounds"  # work/rounds/{pairs,requests,served}/: pairs the keep rounds check
NODES = "nodes"  # work/nodes/*.npy: per-document arrays the range and verify tasks look up
OLD_KEYS = "against_band_keys"  # work/against_band_keys/range_RRR/old_*.parquet
AGAINST = "against"  # work/against/{pairs,requests,served}/: (new node, old document) pairs, checked
MAX_RANGES = 64
# What makes two signatures comparable: an --against output must have been signed with these.
SIGNATURE_SETTINGS = (
    "num_perm",
    "perm_seed",
    "shingle",
    "ngram",
    "lowercase",
    "strip_punctuation",
    "normalize_digits",
    "collapse_whitespace",
    "nfkc",
)


def resolve_bands(cfg: DedupConfig) -> tuple[int, int]:
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return choose_bands(cfg.threshold, cfg.num_perm, cfg.band_recall)


def band_ranges(n_parts: int) -> int:
    """Hash ranges the band keys are shuffled into: one per partition, at most MAX_RANGES. It
    depends on the input plan only, so a resumed run's band key files stay valid."""
    return max(1, min(MAX_RANGES, n_parts))


def key_range(keys: np.ndarray, n_ranges: int) -> np.ndarray:
    """Hash range of each band key: its top 32 bits scaled to [0, n_ranges) (keys are mixed, so uniform)."""
    return ((keys >> np.uint64(32)) * np.uint64(n_ranges) >> np.uint64(32)).astype(np.int64)


def _part_name(index: int) -> str:
    return f"part_{index:05d}"


def _old_name(index: int) -> str:
    return f"old_{index:05d}"


def _part_file(work: Path, index: int) -> Path:
    return work / SIGNATURES / f"{_part_name(index)}.parquet"


def _range_file(work: Path, kind: str, r: int, name: str) -> Path:
    return work / kind / f"range_{r:03d}" / f"{name}.parquet"


def write_band_keys(
    keys: np.ndarray, rows: np.ndarray, work: Path, kind: str, name: str, n_ranges: int
) -> None:
    """One table's (n_docs, bands) band keys as (key, band, row) rows, one file per hash range
    (ranges with no key get no file)."""
    n_docs, bands = keys.shape
    key = keys.ravel()
    band = np.tile(np.arange(bands, dtype=np.uint16), n_docs)
    row = np.repeat(rows.astype(np.int32), bands)
    where = key_range(key, n_ranges)
    order = np.argsort(where, kind="stable")
    bounds = np.searchsorted(where[order], np.arange(n_ranges + 1))
    for r in range(n_ranges):
        sel = order[bounds[r] : bounds[r + 1]]
        if len(sel):
            table = pa.table(
                {"key": pa.array(key[sel]), "band": pa.array(band[sel]), "row": pa.array(row[sel])}
            )
            write_table(table, _range_file(work, kind, r, name), compression="none")


def signature_partition(part: Partition, cfg: DedupConfig, work: str, n_ranges: int = 1) -> dict[str, Any]:
    """Shingle, sign and band one partition; write its table and its band keys by hash range,
    then its completion marker."""
    start = time.perf_counter()
    bands, rows = resolve_bands(cfg)
    perms = permutations(cfg.num_perm, cfg.perm_seed)
    table = read_partition(part, ["id", "domain", "text"])
    pieces, keys_all, status_all = [], [], []
    for lo in range(0, table.num_rows, BATCH_DOCS) if table.num_rows else [0]:
        batch = table.slice(lo, BATCH_DOCS)
        text = batch.column("text")
        sh = shingle_batch(text, cfg)
        sig = signatures(sh.hashes, sh.offsets, perms)
        keys_all.append(band_keys(sig, bands, rows))
        status_all.append(sh.status)
        nbytes = pc.fill_null(pc.binary_length(text.cast(pa.large_string())), 0)
        columns: dict[str, Any] = {
            "id": batch.column("id"),
            "domain": batch.column("domain"),
            "bytes": nbytes.cast(pa.int64()),
            "status": pa.array(sh.status, pa.int8()),
            "text_hash": pa.array(sh.text_hash, pa.uint64()),
            "shingles": pa.LargeListArray.from_arrays(pa.array(sh.offsets), pa.array(sh.hashes, pa.uint32())),
            "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), cfg.num_perm),
        }
        pieces.append(pa.table(columns))
    out = pa.concat_tables(pieces) if pieces else pa.table({})
    status = np.concatenate(status_all) if status_all else np.zeros(0, np.int8)
    taking_part = np.flatnonzero((status == OK) | (status == SHORT))  # null / empty texts have no keys
    if len(taking_part):
        keys = np.concatenate(keys_all)[taking_part]
        write_band_keys(keys, taking_part, Path(work), BAND_KEYS, _part_name(part.index), n_ranges)
    write_table(out, _part_file(Path(work), part.index))
    info = {"docs": table.num_rows, "seconds": round(time.perf_counter() - start, 4)}
    TaskMarkers.in_work(work, SIGNATURES).mark(_part_name(part.index), info)
    return info


def _load_node_arrays(work: Path, *names: str, mmap: bool = True) -> list[np.ndarray]:
    return [np.load(work / NODES / f"{name}.npy", mmap_mode="r" if mmap else None) for name in names]


def _save_pairs(
    folder: Path,
    r: int,
    left: np.ndarray,
    right: np.ndarray,
    target: np.ndarray,
    names: Sequence[str],
    kind: str = "",
) -> None:
    """Pairs split by `target` (the task that reads them): folder/kind/<name>/range_RRR.npy."""
    folder = folder / kind if kind else folder
    order = np.argsort(target, kind="stable")
    bounds = np.searchsorted(target[order], np.arange(len(names) + 1))
    for t, name in enumerate(names):
        sel = order[bounds[t] : bounds[t + 1]]
        if len(sel):
            path = folder / name / f"range_{r:03d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.stack([left[sel], right[sel]]))


def _range_keys(
    wd: Path, r: int, n_parts: int, node_of_gidx: np.ndarray, part_start: np.ndarray, keep: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Hash range `r`'s band keys of every partition, as (keys, bands, nodes) chunks, one per
    partition with keys, for the documents `keep` marks (indexed by node)."""
    keys, bands, nodes = [], [], []
    for p in range(n_parts):
        f = _range_file(wd, BAND_KEYS, r, _part_name(p))
        if f.is_file():
            t = pq.read_table(f)
            node = node_of_gidx[part_start[p] + t.column("row").to_numpy()]
            take = keep[node]
            keys.append(t.column("key").to_numpy()[take])
            bands.append(t.column("band").to_numpy()[take])
            nodes.append(node[take])
    return keys, bands, nodes


def band_range_task(work: str, r: int, n_parts: int, max_bucket: int) -> dict[str, int]:
    """Buckets of one hash range of band keys, over every partition: each bucket's pairs
    (smallest node, member) go to the verify task of the left document's partition.

    Every bucket lies wholly in one range, so the bucket statistics of all ranges add up to
    those of the whole corpus.
    """
    wd = Path(work)
    node_of_gidx, in_lsh, part_of, part_start = _load_node_arrays(
        wd, "node_of_gidx", "in_lsh", "part_of", "part_start"
    )
    n = len(part_of)
    keys, bands, nodes = _range_keys(wd, r, n_parts, node_of_gidx, part_start, in_lsh)
    stats = {"buckets": 0, "giant_buckets": 0, "capped_members": 0, "largest_bucket": 0, "pairs": 0}
    if not keys or not sum(map(len, keys)):
        return stats
    key, band, node = np.concatenate(keys), np.concatenate(bands), np.concatenate(nodes)
    stats["largest_bucket"] = 1
    order = np.argsort(band, kind="stable")
    key, band, node = key[order], band[order], node[order]
    bounds = np.flatnonzero(np.r_[True, band[1:] != band[:-1], True])
    eu, ev = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        u, v, s = bucket_edges(key[lo:hi], node[lo:hi], max_bucket)
        eu.append(u)
        ev.append(v)
        for k in ("buckets", "giant_buckets", "capped_members"):
            stats[k] += s[k]
        stats["largest_bucket"] = max(stats["largest_bucket"], s["largest_bucket"])
    packed = np.unique(np.concatenate(eu) * n + np.concatenate(ev))
    u, v = packed // n, packed % n
    send_pairs(wd / CANDIDATES, r, u, v, part_of, n_parts)
    stats["pairs"] = int(len(packed))
    return stats


def _read_pairs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pairs every range task sent to one verify task, each pair once."""
    files = sorted(folder.glob("range_*.npy")) if folder.is_dir() else []
    if not files:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.concatenate([np.load(f) for f in files], axis=1)
    packed, first = np.unique(pairs[0] * (int(pairs[1].max()) + 1) + pairs[1], return_index=True)
    return pairs[0][first], pairs[1][first]


def send_pairs(root: Path, r: int, u: np.ndarray, v: np.ndarray, part_of: np.ndarray, n_parts: int) -> None:
    """Pairs to the verify task of the left document's partition, and requests for the right
    documents' sets to the serve task of theirs (so every partition's sets are read once)."""
    names = [_part_name(p) for p in range(n_parts)]
    pu, pv = np.asarray(part_of[u], dtype=np.int64), np.asarray(part_of[v], dtype=np.int64)
    _save_pairs(root / "pairs", r, u, v, pu, names)
    _save_pairs(root / "requests", r, v, pu, pv, names)


def _set_column(exact: bool) -> str:
    return "shingles" if exact else "signature"


def serve_task(work: str, root: str, pv: int, sig_file: str, exact: bool) -> int:
    """Read partition `pv`'s sets once and write those other partitions' verify tasks asked for:
    root/served/part_<p>/from_<pv>.parquet (node, set)."""
    nodes, asking = _read_pairs(Path(root) / "requests" / _part_name(pv))
    if len(nodes) == 0:
        return 0
    (row_of,) = _load_node_arrays(Path(work), "row_of")
    column = pq.read_table(sig_file, columns=[_set_column(exact)]).column(0)
    for p in np.unique(asking):
        sel = nodes[asking == p]
        served = pa.table(
            {"node": pa.array(sel), "set": column.take(pa.array(np.asarray(row_of[sel]), pa.int64()))}
        )
        write_table(
            served, Path(root) / "served" / _part_name(int(p)) / f"from_{pv:05d}.parquet", compression="none"
        )
    return int(len(nodes))


def verify_task(
    work: str, root: str, p: int, sig_file: str, exact: bool, threshold: float | None
) -> dict[str, Any]:
    """Similarity of the pairs whose left document lives in partition `p` (its sets read from its
    signature file, the right ones from what the serve tasks wrote); with `threshold` only the
    accepted pairs are returned."""
    u, v = _read_pairs(Path(root) / "pairs" / _part_name(p))
    if len(u) == 0:
        return {"u": u, "v": v, "similarity": np.zeros(0), "checked": 0}
    (row_of,) = _load_node_arrays(Path(work), "row_of")
    left = pq.read_table(sig_file, columns=[_set_column(exact)]).column(0)
    served = pa.concat_tables(
        [pq.read_table(f) for f in sorted((Path(root) / "served" / _part_name(p)).glob("*.parquet"))]
    )
    have = served.column("node").to_numpy()
    order = np.argsort(have)
    at = order[np.searchsorted(have[order], v)]
    sim = _similarity(_sets(left, np.asarray(row_of[u])), _sets(served.column("set"), at), exact)
    ok = sim >= threshold if threshold is not None else np.ones(len(u), dtype=bool)
    extra = {  # what the serve tasks sent beside the sets (an old document's id and text hash)
        name: served.column(name).take(pa.array(at[ok], pa.int64())).to_numpy()
        for name in served.column_names
        if name not in ("node", "set")
    }
    return {"u": u[ok], "v": v[ok], "similarity": sim[ok], "checked": int(len(u)), **extra}


def check_pairs(
    client: Any, work: Path, root: Path, sig_files: Sequence[str], exact: bool, threshold: float | None
) -> list[dict[str, Any]]:
    """Serve then verify the pairs `send_pairs` left under `root`: one task per partition each."""
    n_parts = len(sig_files)
    client.gather(
        [
            client.submit(serve_task, str(work), str(root), pv, sig_files[pv], exact, pure=False)
            for pv in range(n_parts)
        ]
    )
    return client.gather(
        [
            client.submit(verify_task, str(work), str(root), p, sig_files[p], exact, threshold, pure=False)
            for p in range(n_parts)
        ]
    )


def _sets(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    picked = column.take(pa.array(rows, pa.int64()))
    if isinstance(picked, pa.ChunkedArray):
        picked = picked.combine_chunks()
    if isinstance(picked, pa.FixedSizeListArray):
        return picked.flatten().to_numpy(), np.arange(len(picked) + 1) * picked.type.list_size
    offs = picked.offsets.to_numpy().astype(np.int64)
    values = picked.values.to_numpy()[offs[0] : offs[-1]] if len(picked) else np.zeros(0, np.uint32)
    return values, offs - offs[0]


def _similarity(
    left: tuple[np.ndarray, np.ndarray], right: tuple[np.ndarray, np.ndarray], exact: bool
) -> np.ndarray:
    if exact:
        return jaccard_sets(left, right)
    n = len(left[1]) - 1
    return jaccard_estimate(left[0].reshape(n, -1), right[0].reshape(n, -1))


def write_kept(
    part: Partition, removed_rows: np.ndarray, out: str, sig_file: str | None = None
) -> dict[str, int]:
    """Copy a partition's surviving documents (all their columns) to its output shard, and with
    `sig_file` their signatures to signatures/ (shards with no rows are not written)."""
    table = read_partition(part)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[removed_rows] = False
    kept = table.filter(pa.array(keep))
    if kept.num_rows:
        write_table(kept, Path(out) / "documents" / shard_name(part.index), row_group_size=DOCUMENT_ROW_GROUP)
    if sig_file is not None:
        sig = pq.read_table(sig_file, columns=["id", "domain", "status", "text_hash", "signature"])
        status = sig.column("status").to_numpy()
        sig = sig.filter(pa.array(keep & ((status == OK) | (status == SHORT)))).drop_columns(["status"])
        if sig.num_rows:
            write_table(sig, Path(out) / SIGNATURES / shard_name(part.index))
    return {"docs": kept.num_rows}


# --- against an older dedup output -----------------------------------------------------------


def old_band_keys_task(file: str, index: int, bands: int, rows: int, work: str, n_ranges: int) -> int:
    """Band keys of one signature shard of the --against output, from its stored signatures."""
    col = pq.read_table(file, columns=["signature"]).column(0).combine_chunks()
    if len(col) == 0:
        return 0
    sig = col.flatten().to_numpy().reshape(len(col), -1)
    keys = band_keys(sig, bands, rows)
    write_band_keys(keys, np.arange(len(col)), Path(work), OLD_KEYS, _old_name(index), n_ranges)
    return len(col)


def against_range_task(work: str, r: int, n_parts: int, old_start: Sequence[int], max_bucket: int) -> int:
    """Pairs (new document, old document) sharing a bucket in one hash range, sent to the verify
    task of the old document's shard; each bucket links at most `max_bucket` old documents."""
    wd = Path(work)
    node_of_gidx, eligible, part_start = _load_node_arrays(wd, "node_of_gidx", "eligible", "part_start")
    n_old = int(old_start[-1])
    new_key, new_band, new_node = _range_keys(wd, r, n_parts, node_of_gidx, part_start, eligible)
    old_key, old_band, old_row = [], [], []
    for i in range(len(old_start) - 1):
        f = _range_file(wd, OLD_KEYS, r, _old_name(i))
        if f.is_file():
            t = pq.read_table(f)
            old_key.append(t.column("key").to_numpy())
            old_band.append(t.column("band").to_numpy())
            old_row.append(old_start[i] + t.column("row").to_numpy().astype(np.int64))
    if not new_key or not old_key:
        return 0
    nk, nb, nn = np.concatenate(new_key), np.concatenate(new_band), np.concatenate(new_node)
    ok, ob, orow = np.concatenate(old_key), np.concatenate(old_band), np.concatenate(old_row)
    order = np.lexsort((orow, ok, ob))
    ok, ob, orow = ok[order], ob[order], orow[order]
    lefts, rights = [], []
    for b in np.unique(nb):
        o_lo, o_hi = np.searchsorted(ob, b, "left"), np.searchsorted(ob, b, "right")
        keys_b, rows_b = ok[o_lo:o_hi], orow[o_lo:o_hi]
        sel = nb == b
        k, node = nk[sel], nn[sel]
        lo, hi = np.searchsorted(keys_b, k, "left"), np.searchsorted(keys_b, k, "right")
        count = np.minimum(hi - lo, max_bucket)
        hit = count > 0
        lo, count, node = lo[hit], count[hit], node[hit]
        # each new member against the bucket's first `count` old members (a Python-free expansion)
        start_of = np.repeat(lo - np.r_[0, np.cumsum(count)[:-1]], count)
        lefts.append(np.repeat(node, count))
        rights.append(rows_b[start_of + np.arange(count.sum())])
    if not lefts:
        return 0
    packed = np.unique(np.concatenate(lefts) * n_old + np.concatenate(rights))
    new, old = packed // n_old, packed % n_old
    shard = np.searchsorted(np.asarray(old_start), old, "right") - 1
    (part_of,) = _load_node_arrays(wd, "part_of")
    pn = np.asarray(part_of[new], dtype=np.int64)
    _save_pairs(wd / AGAINST, r, new, old, pn, [_part_name(p) for p in range(n_parts)], "pairs")
    _save_pairs(
        wd / AGAINST, r, old, pn, shard, [_old_name(i) for i in range(len(old_start) - 1)], "requests"
    )
    return int(len(packed))


def old_serve_task(work: str, index: int, old_sig: str, old_docs: str, start: int, cfg: DedupConfig) -> int:
    """Answer the requests for one old shard's sets, read once: exact Jaccard re-shingles the old
    documents' text from the --against output (they are not signed again), else its stored
    signatures; the old id and text hash ride along for the report."""
    root = Path(work) / AGAINST
    nodes, asking = _read_pairs(root / "requests" / _old_name(index))
    if len(nodes) == 0:
        return 0
    old = pq.read_table(old_sig, columns=["id", "text_hash", "signature"]).take(
        pa.array(nodes - start, pa.int64())
    )
    if cfg.verify:
        docs = pl.read_parquet(old_docs, columns=["id", "text"])
        text = pl.DataFrame({"id": old.column("id").to_pylist()}).join(
            docs, on="id", how="left", maintain_order="left"
        )
        sh = shingle_batch(text["text"].to_arrow(), cfg)
        sets = pa.LargeListArray.from_arrays(pa.array(sh.offsets), pa.array(sh.hashes, pa.uint32()))
    else:
        sets = old.column("signature").combine_chunks()
    for p in np.unique(asking):
        sel = np.flatnonzero(asking == p)
        take = pa.array(sel, pa.int64())
        served = pa.table(
            {
                "node": pa.array(nodes[sel]),
                "set": sets.take(take),
                "old_id": old.column("id").take(take),
                "old_text_hash": old.column("text_hash").take(take),
            }
        )
        write_table(
            served,
            root / "served" / _part_name(int(p)) / f"from_{_old_name(index)}.parquet",
            compression="none",
        )
    return int(len(nodes))


@dataclasses.dataclass
class AgainstMatches:
    """Documents removed because they duplicate a document kept in the --against output."""

    node: np.ndarray  # removed nodes, ascending
    kept_id: list[str]  # per removed node: the old document it duplicates (most similar, then smallest id)
    similarity: np.ndarray
    is_exact: np.ndarray  # same normalised text as that old document
    stats: dict[str, Any]


def check_against(old: Path | str, cfg: DedupConfig) -> Manifest:
    """The --against output's manifest, once it is shown to hold comparable signatures."""
    m = Manifest.load(old)
    if m.stage != "dedup":
        raise InputError(
            f"--against {old}: made by {m.stage}, not a dedup output; pass a `mixlab dedup` --out"
        )
    if not m.config.get("keep_signatures"):
        raise InputError(
            f"--against {old}: it was deduplicated without --keep-signatures, so it holds no signatures; "
            "run its dedup again with --keep-signatures"
        )
    missing = [rel for rel in m.missing_outputs() if rel.startswith((f"{SIGNATURES}/", "documents/"))]
    if missing:
        raise InputError(
            f"--against {old}: {len(missing)} file(s) missing or changed since it was written "
            f"({', '.join(missing[:3])}); run its dedup again with --keep-signatures --force"
        )
    differ = [
        f"{name} {m.config.get(name)!r} there, {getattr(cfg, name)!r} here"
        for name in SIGNATURE_SETTINGS
        if m.config.get(name) != getattr(cfg, name)
    ]
    banding = m.stats.get("banding", {})
    if (banding.get("bands"), banding.get("rows")) != resolve_bands(cfg):
        b, r = resolve_bands(cfg)
        differ.append(f"bands x rows {banding.get('bands')}x{banding.get('rows')} there, {b}x{r} here")
    if differ:
        raise InputError(
            f"--against {old}: signed with other settings ({'; '.join(differ)}); signatures are "
            "comparable only with the same settings: rerun with those (pass --bands/--rows to match)"
        )
    return m


def against_matches(
    client: Any,
    old: Path,
    nodes: Nodes,
    parts: Sequence[Partition],
    sig_files: Sequence[str],
    cfg: DedupConfig,
    work: Path,
    n_ranges: int,
) -> AgainstMatches:
    """NEW documents at Jaccard >= threshold to a document kept in `old`, found through the same
    band keys (the old ones computed from its stored signatures) and verified on workers."""
    bands, rows = resolve_bands(cfg)
    old_sigs = sorted(str(f) for f in (old / SIGNATURES).glob("*.parquet"))
    for folder in (work / OLD_KEYS, work / AGAINST):
        shutil.rmtree(folder, ignore_errors=True)
    counts = client.gather(
        [
            client.submit(old_band_keys_task, f, i, bands, rows, str(work), n_ranges, pure=False)
            for i, f in enumerate(old_sigs)
        ]
    )
    old_start = [0, *np.cumsum(counts).tolist()]
    pairs = client.gather(
        [
            client.submit(against_range_task, str(work), r, len(parts), old_start, cfg.max_bucket, pure=False)
            for r in range(n_ranges)
        ]
    )
    client.gather(
        [
            client.submit(
                old_serve_task,
                str(work),
                i,
                f,
                str(old / "documents" / Path(f).name),
                old_start[i],
                cfg,
                pure=False,
            )
            for i, f in enumerate(old_sigs)
        ]
    )
    results = client.gather(
        [
            client.submit(
                verify_task,
                str(work),
                str(work / AGAINST),
                p,
                sig_files[p],
                cfg.verify,
                cfg.threshold,
                pure=False,
            )
            for p in range(len(sig_files))
            if (work / AGAINST / "pairs" / _part_name(p)).is_dir()
        ]
    )
    checked = sum(x["checked"] for x in results)
    results = [x for x in results if len(x["u"])]
    found = pl.DataFrame(
        {
            "node": np.concatenate([x["u"] for x in results]) if results else np.zeros(0, np.int64),
            "similarity": np.concatenate([x["similarity"] for x in results]) if results else np.zeros(0),
            "old_id": pl.Series(
                np.concatenate([x["old_id"] for x in results]) if results else [], dtype=pl.String
            ),
            "old_text_hash": np.concatenate([x["old_text_hash"] for x in results])
            if results
            else np.zeros(0, np.uint64),
        },
    )
    best = found.sort(["node", "similarity", "old_id"], descending=[False, True, False]).unique(
        "node", keep="first", maintain_order=True
    )
    node = best["node"].to_numpy().astype(np.int64)
    is_exact = nodes.text_hash[node] == best["old_text_hash"].to_numpy()
    stats = {
        "documents": int(old_start[-1]),
        "pairs": int(sum(pairs)),
        "checked": int(checked),
        "rejected": int(checked - len(found)),
        "removed_exact": int(is_exact.sum()),
        "removed_near": int((~is_exact).sum()),
    }
    log(f"dedup: against {old}: {len(node)} documents duplicate one of its {old_start[-1]} kept documents")
    return AgainstMatches(
        node=node,
        kept_id=best["old_id"].to_list(),
        similarity=np.where(is_exact, 1.0, best["similarity"].to_numpy()),
        is_exact=is_exact,
        stats=stats,
    )


# --- the phases ------------------------------------------------------------------------------


@dataclasses.dataclass
class Nodes:
    """Every document as a node numbered by its position in id order, with what dedup needs of it."""

    ids: pl.Series
    domains: pl.Series
    part_of: np.ndarray  # (n,) signature partition holding the document
    row_of: np.ndarray  # (n,) row inside that partition
    gidx: np.ndarray  # (n,) position in partition order (how band columns are laid out)
    nbytes: np.ndarray  # (n,) UTF-8 bytes of the text (0 for null)
    status: np.ndarray  # (n,) OK, SHORT, EMPTY or NULL
    text_hash: np.ndarray  # (n,) exact-duplicate key of the normalised text
    pref: np.ndarray  # (n,) rank under the keep policy (0 = kept first)
    excluded: np.ndarray | None = None  # (n,) removed already (duplicates of an --against output)

    @property
    def n(self) -> int:
        return len(self.status)

    @property
    def eligible(self) -> np.ndarray:
        """Documents taking part in deduplication (null and empty texts are kept as they are)."""
        ok = (self.status == OK) | (self.status == SHORT)
        return ok if self.excluded is None else ok & ~self.excluded


@dataclasses.dataclass
class Candidates:
    """The accepted candidate pairs (u < v, similarity >= threshold), how many pairs the LSH
    buckets gave and were checked, and bucket statistics."""

    u: np.ndarray
    v: np.ndarray
    similarity: np.ndarray
    checked: int
    rejected: int
    buckets: Counter


@dataclasses.dataclass
class Removals:
    """Who is removed in favour of whom: the outcome of clustering and the keep policy."""

    label: np.ndarray  # (n,) cluster label per node (its smallest node)
    size: np.ndarray  # (n,) cluster size per label
    clustered: np.ndarray  # (n,) node is in a cluster of two or more
    removed: np.ndarray  # (n,) bool
    r: np.ndarray  # removed nodes
    kept_of_r: np.ndarray  # the node each removed one is removed in favour of (-1: an --against document)
    is_exact: np.ndarray  # per removed node: same normalised text as its kept one
    jaccard: np.ndarray  # per removed node: similarity to its kept one
    rounds: int
    unresolved: int
    outside_kept: list[str] = dataclasses.field(default_factory=list)  # kept ids where kept_of_r is -1


class Similarity:
    """Similarity of any node pairs (the keep rounds' checks), on workers, through `check_pairs`."""

    def __init__(self, client: Any, work: Path, files: list[str], part_of: np.ndarray, exact: bool):
        self.client, self.work, self.files, self.part_of, self.exact = client, work, files, part_of, exact

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        if len(u) == 0:
            return np.zeros(0)
        root = self.work / ROUNDS
        shutil.rmtree(root, ignore_errors=True)
        send_pairs(root, 0, u, v, self.part_of, len(self.files))
        results = check_pairs(self.client, self.work, root, self.files, self.exact, None)
        n = len(self.part_of)
        key = np.concatenate([x["u"] * n + x["v"] for x in results])
        sim = np.concatenate([x["similarity"] for x in results])
        order = np.argsort(key)
        return sim[order][np.searchsorted(key[order], u * n + v)]


def compute_signatures(
    parts: Sequence[Partition], cfg: DedupConfig, work: Path, client: Any
) -> tuple[list[str], int]:
    """Signature files of every partition (one task per partition not yet marked done), and how
    many were reused from a killed run."""
    markers = TaskMarkers.in_work(work, SIGNATURES)
    done = markers.finished()
    todo = [p for p in parts if not (_part_name(p.index) in done and _part_file(work, p.index).is_file())]
    reused = len(parts) - len(todo)
    if reused:
        log(f"dedup: resuming: {reused} of {len(parts)} signature partitions already done")
    bands, rows = resolve_bands(cfg)
    log(
        f"dedup: signatures for {len(todo)} partition(s), {cfg.num_perm} permutations, bands {bands} x rows {rows}"
    )
    from distributed import as_completed

    n_ranges = band_ranges(len(parts))
    futures = client.map(signature_partition, todo, cfg=cfg, work=str(work), n_ranges=n_ranges, pure=False)
    for future in progress(as_completed(futures), len(futures), "dedup signatures", "partition"):
        future.result()
    return [str(_part_file(work, p.index)) for p in parts], reused


def load_nodes(sig_files: Sequence[str], cfg: DedupConfig) -> Nodes:
    """The documents of every signature file as nodes in id order (ids are unique: checked on input)."""
    meta = pl.concat(
        [
            pl.read_parquet(f, columns=["id", "domain", "bytes", "status", "text_hash"]).with_columns(
                pl.lit(i, pl.Int32).alias("part"), pl.int_range(pl.len(), dtype=pl.Int64).alias("row")
            )
            for i, f in enumerate(sig_files)
        ]
    )
    meta = meta.with_row_index("gidx").sort("id")  # node = position in id order
    nbytes = meta["bytes"].to_numpy()
    return Nodes(
        ids=meta["id"],
        domains=meta["domain"].cast(pl.Categorical),
        part_of=meta["part"].to_numpy(),
        row_of=meta["row"].to_numpy(),
        gidx=meta["gidx"].to_numpy(),
        nbytes=nbytes,
        status=meta["status"].to_numpy(),
        text_hash=meta["text_hash"].to_numpy(),
        pref=preference(cfg.keep, nbytes, meta["domain"].to_numpy(), cfg.domain_priority),
    )


def save_nodes(nodes: Nodes, in_lsh: np.ndarray, sig_files: Sequence[str], work: Path) -> None:
    """The per-document arrays the range and verify tasks memory-map (written once, by the client)."""
    folder = work / NODES
    folder.mkdir(parents=True, exist_ok=True)
    counts = (
        np.bincount(nodes.part_of, minlength=len(sig_files))
        if nodes.n
        else np.zeros(len(sig_files), np.int64)
    )
    node_of_gidx = np.empty(nodes.n, dtype=np.int64)
    node_of_gidx[nodes.gidx] = np.arange(nodes.n)
    arrays = {
        "node_of_gidx": node_of_gidx,
        "part_start": np.r_[0, np.cumsum(counts)].astype(np.int64),
        "part_of": nodes.part_of.astype(np.int64),
        "row_of": nodes.row_of.astype(np.int64),
        "in_lsh": in_lsh,
        "eligible": nodes.eligible,
    }
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)


def exact_representatives(text_hash: np.ndarray, eligible: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Per node, the preferred member of its exact group (itself when not eligible or unique)."""
    sub = np.flatnonzero(eligible)
    rep = np.arange(len(text_hash), dtype=np.int64)
    rep[sub] = sub[keep_per_group(text_hash[sub], pref[sub])]
    return rep


def bucket_pairs(client: Any, work: Path, n_parts: int, n_in_lsh: int, cfg: DedupConfig) -> Counter:
    """Candidate pairs among the nodes in LSH (documents sharing any band bucket), found one hash
    range per task and left in the work dir for `verified_candidates`; bucket statistics come back."""
    n_ranges = band_ranges(n_parts)
    shutil.rmtree(work / CANDIDATES, ignore_errors=True)  # pairs of a killed run (rewritten whole below)
    range_stats = client.gather(
        [
            client.submit(band_range_task, str(work), r, n_parts, cfg.max_bucket, pure=False)
            for r in range(n_ranges)
        ]
    )
    buckets: Counter = Counter()
    for s in range_stats:
        for k in ("buckets", "giant_buckets", "capped_members"):
            buckets[k] += s[k]
        buckets["largest_bucket"] = max(buckets["largest_bucket"], s["largest_bucket"])
    if n_in_lsh < 2:  # no band holds two keys: no bucket was looked at
        buckets["largest_bucket"] = 0
    if buckets["giant_buckets"]:
        log(
            f"dedup: {buckets['giant_buckets']} giant LSH bucket(s) (largest {buckets['largest_bucket']}); "
            f"linked {cfg.max_bucket} members each, {buckets['capped_members']} member links skipped "
            "(raise --max-bucket to link them)"
        )
    return buckets


def verified_candidates(
    client: Any, work: Path, sig_files: Sequence[str], buckets: Counter, cfg: DedupConfig
) -> Candidates:
    """The bucket pairs verified one partition per task (left document's); only accepted pairs come back."""
    results = check_pairs(client, work, work / CANDIDATES, sig_files, cfg.verify, cfg.threshold)
    u = np.concatenate([x["u"] for x in results]) if results else np.zeros(0, np.int64)
    v = np.concatenate([x["v"] for x in results]) if results else np.zeros(0, np.int64)
    sim = np.concatenate([x["similarity"] for x in results]) if results else np.zeros(0)
    checked = sum(x["checked"] for x in results)
    log(f"dedup: {checked} candidate pairs, {len(u)} at Jaccard >= {cfg.threshold}")
    return Candidates(u, v, sim, checked=checked, rejected=checked - len(u), buckets=buckets)


def _keepers(
    members: np.ndarray,
    label: np.ndarray,
    pref: np.ndarray,
    pair_similarity: Any,
    threshold: float,
    max_rounds: int = 64,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Who each clustered document is removed in favour of, so every removal is a true near duplicate.

    Round by round, the most preferred unresolved member of each cluster becomes a keeper and
    every unresolved member at Jaccard >= threshold to it is removed in its favour; the rest
    go to the next round. So each removed document is similar to its `kept_id` (connected
    components alone would chain A~B~C and remove C for A), and no two survivors of a cluster
    are near duplicates of each other. Returns (keeper per node, similarity to it, rounds,
    members still unresolved after `max_rounds`, which are kept).
    """
    n = len(label)
    keeper = np.arange(n, dtype=np.int64)
    to_keeper = np.ones(n)
    pending = members[np.lexsort((pref[members], label[members]))]
    rounds = 0
    while len(pending) and rounds < max_rounds:
        lab = label[pending]
        first = np.r_[True, lab[1:] != lab[:-1]]
        heads = pending[first]
        head_of = heads[np.cumsum(first) - 1]
        rest = ~first
        s = pair_similarity(pending[rest], head_of[rest])
        hit = s >= threshold
        keeper[pending[rest][hit]] = head_of[rest][hit]
        to_keeper[pending[rest][hit]] = s[hit]
        pending = pending[rest][~hit]  # stays sorted by (label, pref)
        rounds += 1
    return keeper, to_keeper, rounds, int(len(pending))


def choose_kept(
    nodes: Nodes, rep: np.ndarray, candidates: Candidates, similarity: Similarity, threshold: float
) -> Removals:
    """Cluster exact groups and accepted pairs, then apply the keep policy inside each cluster."""
    n = nodes.n
    node = np.arange(n, dtype=np.int64)
    exact_edge = nodes.eligible & (rep != node)
    cu, cv = candidates.u, candidates.v  # the accepted pairs
    label = connected_components(
        n, np.concatenate([node[exact_edge], cu]), np.concatenate([rep[exact_edge], cv])
    )
    size = np.bincount(label, minlength=n)
    clustered = size[label] > 1
    order = np.argsort(cu * n + cv)
    known_key, known_sim = (cu * n + cv)[order], candidates.similarity[order]

    def pair_similarity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Similarity of node pairs: from the accepted candidates where known, else computed now
        (on workers: the same function on the same sets, so the same value a check gave)."""
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        key = lo * n + hi
        out = np.full(len(x), np.nan)
        if len(known_key) and len(x):
            at = np.searchsorted(known_key, key).clip(max=len(known_key) - 1)
            hit = known_key[at] == key
            out[hit] = known_sim[at[hit]]
        todo = np.isnan(out)
        out[todo] = similarity(lo[todo], hi[todo])
        return out

    keeper, to_keeper, rounds, unresolved = _keepers(
        np.flatnonzero(clustered & (rep == node)), label, nodes.pref, pair_similarity, threshold
    )
    kept = np.where(clustered, keeper[rep], node)
    removed = kept != node
    r = np.flatnonzero(removed)
    kr = kept[r]
    is_exact = nodes.text_hash[r] == nodes.text_hash[kr]
    return Removals(
        label=label,
        size=size,
        clustered=clustered,
        removed=removed,
        r=r,
        kept_of_r=kr,
        is_exact=is_exact,
        jaccard=np.where(is_exact, 1.0, to_keeper[rep[r]]),
        rounds=rounds,
        unresolved=unresolved,
    )


def with_against(removals: Removals, against: AgainstMatches) -> Removals:
    """The removals of the deduplication within NEW plus those of documents duplicating --against ones."""
    removed = removals.removed.copy()
    removed[against.node] = True
    r = np.flatnonzero(removed)
    inside = np.searchsorted(removals.r, r).clip(max=max(len(removals.r) - 1, 0))
    is_inside = (removals.r[inside] == r) if len(removals.r) else np.zeros(len(r), bool)
    outside = np.searchsorted(against.node, r).clip(max=max(len(against.node) - 1, 0))
    pick = np.where(is_inside, 0, 1)
    return dataclasses.replace(
        removals,
        removed=removed,
        r=r,
        kept_of_r=np.where(is_inside, removals.kept_of_r[inside] if len(removals.r) else -1, -1),
        is_exact=np.choose(
            pick, [removals.is_exact[inside] if len(removals.r) else False, against.is_exact[outside]]
        ),
        jaccard=np.choose(
            pick, [removals.jaccard[inside] if len(removals.r) else 0.0, against.similarity[outside]]
        ),
        outside_kept=[against.kept_id[i] for i in outside[~is_inside].tolist()],
    )


def write_outputs(
    nodes: Nodes,
    removals: Removals,
    parts: Sequence[Partition],
    sig_files: Sequence[str],
    out: Path,
    client: Any,
    keep_signatures: bool,
) -> None:
    """duplicates.parquet (one row per removed document), the kept documents (one shard per
    partition that keeps any) and, when asked, their signatures."""
    r, ids = removals.r, nodes.ids
    kr = removals.kept_of_r
    outside = np.flatnonzero(kr < 0)
    kept_id = ids.gather(np.where(kr >= 0, kr, 0))
    cluster_id = ids.gather(removals.label[r])
    if len(outside):  # removed for a document of the --against output: it is kept and clusters them
        old = pl.Series(removals.outside_kept, dtype=pl.String)
        kept_id = kept_id.scatter(outside, old)
        cluster_id = cluster_id.scatter(outside, old)
    dup = pa.table(
        {
            "id": ids.gather(r).to_arrow(),
            "domain": nodes.domains.gather(r).cast(pl.String).to_arrow(),
            "cluster_id": cluster_id.to_arrow(),
            "kept_id": kept_id.to_arrow(),
            "kind": pa.array(np.where(removals.is_exact, "exact", "near").tolist(), pa.string()),
            "jaccard": pa.array(removals.jaccard, pa.float64()),
        }
    )
    write_table(dup.cast(DUPLICATES_SCHEMA), out / "duplicates.parquet")
    (out / "documents").mkdir(parents=True, exist_ok=True)
    part_of, row_of = nodes.part_of, nodes.row_of
    write_futures = [
        client.submit(
            write_kept,
            p,
            np.sort(row_of[r[part_of[r] == p.index]]),
            str(out),
            sig_files[p.index] if keep_signatures else None,
            pure=False,
        )
        for p in parts
    ]
    client.gather(write_futures)


def _histogram(sizes: np.ndarray) -> dict[str, int]:
    """Cluster sizes in power-of-two bins: 2, 3-4, 5-8, ..."""
    out: dict[str, int] = {}
    for size, count in sorted(Counter(sizes.tolist()).items()):
        hi = 1 << max(1, int(size - 1).bit_length())
        lo = hi // 2 + 1
        label = str(hi) if lo == hi else f"{lo}-{hi}"
        out[label] = out.get(label, 0) + count
    return out


def _per_domain(nodes: Nodes, removals: Removals) -> dict[str, dict[str, int]]:
    domains, nbytes, removed = nodes.domains.cast(pl.String).to_numpy(), nodes.nbytes, removals.removed
    r, is_exact = removals.r, removals.is_exact
    out: dict[str, dict[str, int]] = {}
    for d in sorted(set(domains.tolist())):
        m = domains == d
        out[d] = {
            "documents_in": int(m.sum()),
            "documents_out": int((m & ~removed).sum()),
            "bytes_in": int(nbytes[m].sum()),
            "bytes_out": int(nbytes[m & ~removed].sum()),
            "removed_exact": int(np.isin(r, np.flatnonzero(m))[is_exact].sum()),
            "removed_near": int(np.isin(r, np.flatnonzero(m))[~is_exact].sum()),
        }
    return out


def dedup_stats(
    nodes: Nodes, candidates: Candidates, removals: Removals, cfg: DedupConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest's counts and statistics (without partitions and timings, which the caller adds)."""
    n, status = nodes.n, nodes.status
    bands, rows = resolve_bands(cfg)
    size, label, clustered, removed = removals.size, removals.label, removals.clustered, removals.removed
    cluster_sizes = size[(size > 1)]
    stats: dict[str, Any] = {
        "domains": _per_domain(nodes, removals),
        "banding": bands_summary(cfg.threshold, bands, rows),
        "candidates": {
            "pairs": int(candidates.checked),
            "checked": int(candidates.checked),
            "rejected": int(candidates.rejected),
            "verified_by": "exact_jaccard" if cfg.verify else "minhash_estimate",
            **{k: int(v) for k, v in candidates.buckets.items()},
        },
        "clusters": {
            "count": int(len(cluster_sizes)),
            "size_histogram": _histogram(cluster_sizes),
            "largest": int(cluster_sizes.max()) if len(cluster_sizes) else 0,
            "with_several_survivors": int((np.bincount(label[clustered & ~removed], minlength=n) > 1).sum()),
            "survivors": int((clustered & ~removed).sum()),
            "keep_rounds": removals.rounds,
            "unresolved_kept": removals.unresolved,
        },
        "bad_input": {
            **{STATUS_NAMES[s]: int((status == s).sum()) for s in (NULL, EMPTY, SHORT)},
            "huge": int((nodes.nbytes >= cfg.huge_doc_bytes).sum()),
            "policy": "null/empty kept and not deduplicated; short = one shingle; huge processed in chunks",
        },
    }
    is_exact = removals.is_exact
    counts = {
        "documents_in": n,
        "documents_out": int(n - len(removals.r)),
        "removed_exact": int(is_exact.sum()),
        "removed_near": int((~is_exact).sum()),
    }
    return counts, stats


# --- the stage -------------------------------------------------------------------------------


def run_dedup(
    inputs: Inputs, cfg: DedupConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Deduplicate `inputs["documents"]` (one or more documents tables) into `out_dir`; with
    `inputs["against"]` (a dedup output run with --keep-signatures) also remove the documents that
    duplicate one it kept.

    See the module docstring for what is written. Runs on `client`, else on the cluster
    `mixlab.cluster.dask_client` finds or starts.
    """
    inputs = absolute_inputs(inputs)
    documents = inputs.get("documents")
    paths = [documents] if isinstance(documents, (str, Path)) else list(documents or [])
    if not paths:
        raise InputError("dedup: no input given; pass a documents table (file or folder)")
    files = check_documents(paths)  # ids unique across all inputs together
    against = inputs.get("against")
    if against is not None:
        check_against(against, cfg)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        with dask_client(client) as c:
            return _dedup(files, cfg, stage, c, Path(against) if against is not None else None)

    return run_stage("dedup", cfg, {"documents": paths, "against": against}, out_dir, body, force=force)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


def _dedup(
    files: list[Path], cfg: DedupConfig, stage: StageDir, client: Any, against: Path | None = None
) -> tuple[dict, dict]:
    seconds: dict[str, float] = {}
    parts = plan_partitions(files, cfg.partition_docs)
    with _timed(seconds, "signatures"):
        sig_files, reused = compute_signatures(parts, cfg, stage.work, client)
    with _timed(seconds, "exact"):
        nodes = load_nodes(sig_files, cfg)
    matches = None
    if against is not None:
        with _timed(seconds, "against"):
            save_nodes(nodes, nodes.eligible, sig_files, stage.work)
            matches = against_matches(
                client, against, nodes, parts, sig_files, cfg, stage.work, band_ranges(len(parts))
            )
            nodes.excluded = np.zeros(nodes.n, dtype=bool)
            nodes.excluded[matches.node] = True
    with _timed(seconds, "exact"):
        rep = exact_representatives(nodes.text_hash, nodes.eligible, nodes.pref)
        in_lsh = nodes.eligible & (rep == np.arange(nodes.n))  # exact groups: representatives only
        save_nodes(nodes, in_lsh, sig_files, stage.work)
    with _timed(seconds, "candidates"):
        buckets = bucket_pairs(client, stage.work, len(parts), int(in_lsh.sum()), cfg)
    with _timed(seconds, "verify"):
        candidates = verified_candidates(client, stage.work, sig_files, buckets, cfg)
    with _timed(seconds, "cluster"):
        similarity = Similarity(client, stage.work, sig_files, nodes.part_of, exact=cfg.verify)
        removals = choose_kept(nodes, rep, candidates, similarity, cfg.threshold)
        if matches is not None:
            removals = with_against(removals, matches)
    with _timed(seconds, "write"):
        write_outputs(nodes, removals, parts, sig_files, stage.out, client, cfg.keep_signatures)
    counts, stats = dedup_stats(nodes, candidates, removals, cfg)
    if matches is not None:
        stats["against"] = {"path": str(against), **matches.stats}
    stats["partitions"] = {"total": len(parts), "reused": reused}
    stats["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    log(
        f"dedup: {counts['documents_in']} documents in, {counts['documents_out']} out; removed "
        f"{counts['removed_exact']} exact, {counts['removed_near']} near duplicates"
    )
    return counts, stats
