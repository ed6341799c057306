"""Frozen copy of main's `run_dedup` before issue 14.5 (the reference the new stage must equal).

The old design: exact then MinHash-LSH near-duplicate removal of a documents table, on Dask.

Reads a documents table (id, domain, text, other columns kept). Writes ``documents/shard_*.parquet``
(the kept documents, same columns), ``duplicates.parquet`` (one row per removed document:
id, domain, cluster_id, kept_id, kind, jaccard to the kept document) and the manifest's
statistics. Phases, one function each: `compute_signatures` per partition (resumable, one
completion marker each) -> `load_nodes` and `exact_representatives` -> `lsh_candidates` per
band -> verification (`Similarity`) -> `choose_kept` (connected components, keep policy) ->
`write_outputs` -> `dedup_stats`.

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
from mixlab.dedup.clusters import bucket_edges, keep_per_group, preference
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
SIGNATURES = "legacy_signatures"


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of every node 0..n-1: the smallest node of its connected component.

    Vectorised hook-and-compress: each round hooks every edge's larger root onto the smaller
    one, then pointer-jumps until every node points at its root; rounds repeat until no edge
    joins two different roots (a few rounds; logarithmic in the component diameter).
    """
    labels = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return labels
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while True:
        lu, lv = labels[u], labels[v]
        split = lu != lv
        if not split.any():
            return labels
        lu, lv = lu[split], lv[split]
        lo, hi = np.minimum(lu, lv), np.maximum(lu, lv)
        np.minimum.at(labels, hi, lo)
        while True:  # pointer jumping: follow labels until they are roots
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def resolve_bands(cfg: DedupConfig) -> tuple[int, int]:
    if cfg.bands is not None and cfg.rows is not None:
        return cfg.bands, cfg.rows
    return choose_bands(cfg.threshold, cfg.num_perm, cfg.band_recall)


def _part_name(index: int) -> str:
    return f"part_{index:05d}"


def _part_file(work: Path, index: int) -> Path:
    return work / SIGNATURES / f"{_part_name(index)}.parquet"


def signature_partition(part: Partition, cfg: DedupConfig, work: str) -> dict[str, Any]:
    """Shingle, sign and band one partition; write its table, then its completion marker."""
    start = time.perf_counter()
    bands, rows = resolve_bands(cfg)
    perms = permutations(cfg.num_perm, cfg.perm_seed)
    table = read_partition(part, ["id", "domain", "text"])
    pieces = []
    for lo in range(0, table.num_rows, BATCH_DOCS) if table.num_rows else [0]:
        batch = table.slice(lo, BATCH_DOCS)
        text = batch.column("text")
        sh = shingle_batch(text, cfg)
        sig = signatures(sh.hashes, sh.offsets, perms)
        keys = band_keys(sig, bands, rows)
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
        for b in range(bands):
            columns[f"band_{b:03d}"] = pa.array(keys[:, b], pa.uint64())
        pieces.append(pa.table(columns))
    out = pa.concat_tables(pieces) if pieces else pa.table({})
    write_table(out, _part_file(Path(work), part.index))
    info = {"docs": table.num_rows, "seconds": round(time.perf_counter() - start, 4)}
    TaskMarkers.in_work(work, SIGNATURES).mark(_part_name(part.index), info)
    return info


def band_task(
    files: Sequence[str], bands: Sequence[int], nodes: np.ndarray, max_bucket: int
) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Edges of some bands across all partitions (`nodes` is -1 for documents not taking part).

    Each file is read once for all of the task's band columns; each band is grouped alone.
    """
    columns = [f"band_{b:03d}" for b in bands]
    tables = [pq.read_table(f, columns=columns) for f in files]
    take = nodes >= 0
    out = []
    for column in columns:
        keys = (
            np.concatenate([t.column(column).to_numpy() for t in tables])
            if tables
            else np.zeros(0, np.uint64)
        )
        out.append(bucket_edges(keys[take], nodes[take], max_bucket))
    return out


def _sets(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    picked = column.take(pa.array(rows, pa.int64()))
    if isinstance(picked, pa.ChunkedArray):
        picked = picked.combine_chunks()
    if isinstance(picked, pa.FixedSizeListArray):
        return picked.flatten().to_numpy(), np.arange(len(picked) + 1) * picked.type.list_size
    offs = picked.offsets.to_numpy().astype(np.int64)
    values = picked.values.to_numpy()[offs[0] : offs[-1]] if len(picked) else np.zeros(0, np.uint32)
    return values, offs - offs[0]


def similarity_task(
    files: Sequence[str],
    part_u: int,
    rows_u: np.ndarray,
    parts_v: np.ndarray,
    rows_v: np.ndarray,
    exact: bool,
) -> np.ndarray:
    """Jaccard of pairs whose left documents live in partition `part_u`: exact on shingle sets,
    or the MinHash estimate from signatures; right documents are read partition by partition."""
    column = "shingles" if exact else "signature"
    left_col = pq.read_table(files[part_u], columns=[column]).column(0)
    out = np.zeros(len(rows_u))
    for pv in np.unique(parts_v):
        sel = np.flatnonzero(parts_v == pv)
        right_col = left_col if pv == part_u else pq.read_table(files[pv], columns=[column]).column(0)
        if exact:
            out[sel] = jaccard_sets(_sets(left_col, rows_u[sel]), _sets(right_col, rows_v[sel]))
        else:
            lsig = _sets(left_col, rows_u[sel])[0].reshape(len(sel), -1)
            rsig = _sets(right_col, rows_v[sel])[0].reshape(len(sel), -1)
            out[sel] = jaccard_estimate(lsig, rsig)
    return out


def write_kept(part: Partition, removed_rows: np.ndarray, out: str) -> dict[str, int]:
    """Copy a partition's surviving documents (all their columns) to its output shard."""
    table = read_partition(part)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[removed_rows] = False
    kept = table.filter(pa.array(keep))
    write_table(kept, Path(out) / shard_name(part.index), row_group_size=DOCUMENT_ROW_GROUP)
    return {"docs": kept.num_rows}


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

    @property
    def n(self) -> int:
        return len(self.status)

    @property
    def eligible(self) -> np.ndarray:
        """Documents taking part in deduplication (null and empty texts are kept as they are)."""
        return (self.status == OK) | (self.status == SHORT)


@dataclasses.dataclass
class Candidates:
    """Candidate pairs (u < v) from the LSH buckets, their similarity, and bucket statistics."""

    u: np.ndarray
    v: np.ndarray
    similarity: np.ndarray
    accepted: np.ndarray  # similarity >= threshold
    buckets: Counter


@dataclasses.dataclass
class Removals:
    """Who is removed in favour of whom: the outcome of clustering and the keep policy."""

    label: np.ndarray  # (n,) cluster label per node (its smallest node)
    size: np.ndarray  # (n,) cluster size per label
    clustered: np.ndarray  # (n,) node is in a cluster of two or more
    removed: np.ndarray  # (n,) bool
    r: np.ndarray  # removed nodes
    kept_of_r: np.ndarray  # the node each removed one is removed in favour of
    is_exact: np.ndarray  # per removed node: same normalised text as its kept one
    jaccard: np.ndarray  # per removed node: similarity to its kept one
    rounds: int
    unresolved: int


class Similarity:
    """Runs similarity tasks for node pairs, grouped by the left document's partition."""

    def __init__(self, client: Any, files: list[str], part_of: np.ndarray, row_of: np.ndarray, exact: bool):
        self.client, self.files, self.part_of, self.row_of, self.exact = client, files, part_of, row_of, exact

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.zeros(len(u))
        if len(u) == 0:
            return out
        pu = self.part_of[u]
        groups = [np.flatnonzero(pu == p) for p in np.unique(pu)]
        futures = [
            self.client.submit(
                similarity_task,
                self.files,
                int(pu[g[0]]),
                self.row_of[u[g]],
                self.part_of[v[g]],
                self.row_of[v[g]],
                self.exact,
                pure=False,
            )
            for g in groups
        ]
        for g, result in zip(groups, self.client.gather(futures)):
            out[g] = result
        return out


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

    futures = client.map(signature_partition, todo, cfg=cfg, work=str(work), pure=False)
    for future in progress(as_completed(futures), len(futures), "dedup signatures", "partition"):
        future.result()
    return [str(_part_file(work, p.index)) for p in parts], reused


def load_nodes(sig_files: Sequence[str], cfg: DedupConfig) -> Nodes:
    """The documents of every signature file as nodes in id order (ids are unique: checked on input)."""
    meta = pl.concat(
        [
            pl.read_parquet(f, columns=["id", "domain", "bytes", "status", "text_hash"]).with_columns(
                pl.lit(i, pl.Int64).alias("part"), pl.int_range(pl.len(), dtype=pl.Int64).alias("row")
            )
            for i, f in enumerate(sig_files)
        ]
    )
    meta = meta.with_row_index("gidx").sort("id")  # node = position in id order
    nbytes = meta["bytes"].to_numpy()
    return Nodes(
        ids=meta["id"],
        domains=meta["domain"],
        part_of=meta["part"].to_numpy(),
        row_of=meta["row"].to_numpy(),
        gidx=meta["gidx"].to_numpy(),
        nbytes=nbytes,
        status=meta["status"].to_numpy(),
        text_hash=meta["text_hash"].to_numpy(),
        pref=preference(cfg.keep, nbytes, meta["domain"].to_numpy(), cfg.domain_priority),
    )


def exact_representatives(text_hash: np.ndarray, eligible: np.ndarray, pref: np.ndarray) -> np.ndarray:
    """Per node, the preferred member of its exact group (itself when not eligible or unique)."""
    sub = np.flatnonzero(eligible)
    rep = np.arange(len(text_hash), dtype=np.int64)
    rep[sub] = sub[keep_per_group(text_hash[sub], pref[sub])]
    return rep


def lsh_candidates(
    client: Any, sig_files: Sequence[str], nodes: Nodes, in_lsh: np.ndarray, bands: int, max_bucket: int
) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Candidate pairs (u < v, unique) among the `in_lsh` nodes: documents sharing any band bucket."""
    n = nodes.n
    nodes_by_gidx = np.full(n, -1, dtype=np.int64)
    nodes_by_gidx[nodes.gidx[in_lsh]] = np.flatnonzero(in_lsh)
    nodes_future = client.scatter(nodes_by_gidx, broadcast=True)
    n_tasks = max(1, min(bands, 2 * len(client.scheduler_info().get("workers", {})) or 1))
    band_futures = [
        client.submit(
            band_task, sig_files, list(range(bands))[k::n_tasks], nodes_future, max_bucket, pure=False
        )
        for k in range(n_tasks)
    ]
    eu, ev, buckets = [], [], Counter()
    for u, v, s in (edge for result in client.gather(band_futures) for edge in result):
        eu.append(u)
        ev.append(v)
        buckets["buckets"] += s["buckets"]
        buckets["giant_buckets"] += s["giant_buckets"]
        buckets["capped_members"] += s["capped_members"]
        buckets["largest_bucket"] = max(buckets["largest_bucket"], s["largest_bucket"])
    packed = np.unique(np.concatenate(eu) * n + np.concatenate(ev)) if eu else np.zeros(0, np.int64)
    if buckets["giant_buckets"]:
        log(
            f"dedup: {buckets['giant_buckets']} giant LSH bucket(s) (largest {buckets['largest_bucket']}); "
            f"linked {max_bucket} members each, {buckets['capped_members']} member links skipped "
            "(raise --max-bucket to link them)"
        )
    return packed // max(n, 1), packed % max(n, 1), buckets


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
    cu, cv = candidates.u, candidates.v
    accepted = candidates.accepted
    label = connected_components(
        n, np.concatenate([node[exact_edge], cu[accepted]]), np.concatenate([rep[exact_edge], cv[accepted]])
    )
    size = np.bincount(label, minlength=n)
    clustered = size[label] > 1
    known = dict(zip((cu * n + cv).tolist(), candidates.similarity.tolist()))

    def pair_similarity(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Similarity of node pairs: from the candidate checks where known, else computed now."""
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        out = np.array([known.get(k, np.nan) for k in (lo * n + hi).tolist()]) if len(x) else np.zeros(0)
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


def write_outputs(
    nodes: Nodes, removals: Removals, parts: Sequence[Partition], out: Path, client: Any
) -> None:
    """duplicates.parquet (one row per removed document) and the kept documents, one shard per partition."""
    r, ids = removals.r, nodes.ids
    dup = pa.table(
        {
            "id": ids.gather(r).to_arrow(),
            "domain": nodes.domains.gather(r).to_arrow(),
            "cluster_id": ids.gather(removals.label[r]).to_arrow(),
            "kept_id": ids.gather(removals.kept_of_r).to_arrow(),
            "kind": pa.array(np.where(removals.is_exact, "exact", "near").tolist(), pa.string()),
            "jaccard": pa.array(removals.jaccard, pa.float64()),
        }
    )
    write_table(dup.cast(DUPLICATES_SCHEMA), out / "duplicates.parquet")
    docs_dir = out / "documents"
    docs_dir.mkdir(parents=True, exist_ok=True)
    part_of, row_of = nodes.part_of, nodes.row_of
    write_futures = [
        client.submit(write_kept, p, np.sort(row_of[r[part_of[r] == p.index]]), str(docs_dir), pure=False)
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
    domains, nbytes, removed = nodes.domains.to_numpy(), nodes.nbytes, removals.removed
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
            "pairs": int(len(candidates.u)),
            "checked": int(len(candidates.u)),
            "rejected": int((~candidates.accepted).sum()),
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


def run_legacy_dedup(
    inputs: Inputs, cfg: DedupConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Deduplicate `inputs["documents"]` (one or more documents tables) into `out_dir`.

    See the module docstring for what is written. Runs on `client`, else on the cluster
    `mixlab.cluster.dask_client` finds or starts.
    """
    inputs = absolute_inputs(inputs)
    documents = inputs.get("documents")
    paths = [documents] if isinstance(documents, (str, Path)) else list(documents or [])
    if not paths:
        raise InputError("dedup: no input given; pass a documents table (file or folder)")
    files = check_documents(paths)  # ids unique across all inputs together

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        with dask_client(client) as c:
            return _dedup(files, cfg, stage, c)

    return run_stage("dedup", cfg, {"documents": paths}, out_dir, body, force=force)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[phase] = time.perf_counter() - start


def _dedup(files: list[Path], cfg: DedupConfig, stage: StageDir, client: Any) -> tuple[dict, dict]:
    seconds: dict[str, float] = {}
    bands, _rows = resolve_bands(cfg)
    parts = plan_partitions(files, cfg.partition_docs)
    with _timed(seconds, "signatures"):
        sig_files, reused = compute_signatures(parts, cfg, stage.work, client)
    with _timed(seconds, "exact"):
        nodes = load_nodes(sig_files, cfg)
        rep = exact_representatives(nodes.text_hash, nodes.eligible, nodes.pref)
    with _timed(seconds, "candidates"):
        in_lsh = nodes.eligible & (rep == np.arange(nodes.n))  # exact groups: representatives only
        cu, cv, buckets = lsh_candidates(client, sig_files, nodes, in_lsh, bands, cfg.max_bucket)
    with _timed(seconds, "verify"):
        similarity = Similarity(client, sig_files, nodes.part_of, nodes.row_of, exact=cfg.verify)
        sim = similarity(cu, cv)
        candidates = Candidates(cu, cv, sim, sim >= cfg.threshold, buckets)
        log(
            f"dedup: {len(cu)} candidate pairs, {int(candidates.accepted.sum())} at Jaccard >= {cfg.threshold}"
        )
    with _timed(seconds, "cluster"):
        removals = choose_kept(nodes, rep, candidates, similarity, cfg.threshold)
    with _timed(seconds, "write"):
        write_outputs(nodes, removals, parts, stage.out, client)
    counts, stats = dedup_stats(nodes, candidates, removals, cfg)
    stats["partitions"] = {"total": len(parts), "reused": reused}
    stats["seconds"] = {k: round(v, 4) for k, v in seconds.items()}
    log(
        f"dedup: {counts['documents_in']} documents in, {counts['documents_out']} out; removed "
        f"{counts['removed_exact']} exact, {counts['removed_near']} near duplicates"
    )
    return counts, stats
