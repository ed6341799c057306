"""Dedup side by side on one synthetic corpus: a plain datasketch loop vs mixlab.

(a) datasketch: `MinHash.update` per shingle (its default SHA1 hash), `MinHashLSH` insert
    and query at the threshold (its own banding); (b) mixlab's vectorised signatures on one
    core; (c) `run_dedup` end to end on a LocalCluster. Prints docs/s per core per phase, the
    signature speed-up (b)/(a), and recall/precision against exact word-5-gram Jaccard
    computed independently (`mixlab.synth.jaccard`) on the planted ground truth.

    python benchmarks/dedup.py                # 10,000 documents of ~2.5 KB (the datasketch loop dominates)
    python benchmarks/dedup.py --docs 40000   # larger
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from mixlab.cluster import dask_client, local_cluster_size
from mixlab.dedup import DedupConfig, run_dedup
from mixlab.dedup.minhash import permutations, signatures
from mixlab.dedup.shingles import shingle_batch
from mixlab.dedup.stage import BATCH_DOCS
from mixlab.synth import SHINGLE_WORDS, SynthConfig, jaccard, run_synth, word_shingles


def datasketch_loop(
    ids: list[str], texts: list[str], threshold: float, num_perm: int
) -> tuple[set, float, float]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    sketches = []
    for text in texts:
        m = MinHash(num_perm=num_perm)
        for shingle in word_shingles(text, SHINGLE_WORDS):
            m.update(" ".join(shingle).encode())
        sketches.append(m)
    sig_s = time.perf_counter() - start
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for key, m in zip(ids, sketches):
        lsh.insert(key, m)
    pairs = set()
    for key, m in zip(ids, sketches):
        for other in lsh.query(m):
            if other != key:
                pairs.add((min(key, other), max(key, other)))
    return pairs, sig_s, time.perf_counter() - start


def mixlab_signatures(texts: pa.Array, cfg: DedupConfig) -> float:
    start = time.perf_counter()
    perms = permutations(cfg.num_perm, cfg.perm_seed)
    for lo in range(0, len(texts), BATCH_DOCS):
        batch = shingle_batch(texts.slice(lo, BATCH_DOCS), cfg)
        signatures(batch.hashes, batch.offsets, perms)
    return time.perf_counter() - start


def make_corpus(root: Path, docs: int, doc_words: int) -> Path:
    domains = ("prose", "code", "tabular", "legal")
    per_domain = max(1, docs // len(domains))
    corpus = root / "corpus"
    cfg = SynthConfig(
        domains=domains,
        docs_per_domain=per_domain,
        doc_words=doc_words,
        near_dup_clusters=max(1, per_domain // 50),
        exact_dups=max(1, per_domain // 250),
    )
    run_synth({}, cfg, corpus)
    return corpus


def mixlab_end_to_end(corpus: Path, cfg: DedupConfig, out: Path, workers: int) -> tuple[Any, float]:
    """(c): `run_dedup` on a LocalCluster of `workers` processes; (manifest, seconds)."""
    with dask_client(n_workers=workers, quiet=True) as client:
        # Workers import their libraries before the clock starts: that is start-up, not throughput.
        client.run(lambda: __import__("mixlab.dedup.stage") and __import__("pandas"))
        start = time.perf_counter()
        manifest = run_dedup({"documents": corpus / "documents"}, cfg, out, client)
    return manifest, time.perf_counter() - start


def quality(
    pairs_a: set, out: Path, positives: set, text_of: dict[str, str], threshold: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(recall, precision) of (a)'s flagged pairs and of mixlab's removals, against exact Jaccard."""
    a_recall = len(pairs_a & positives) / max(1, len(positives))
    a_true = sum(jaccard(text_of[a], text_of[b]) >= threshold for a, b in pairs_a)
    dup = pl.read_parquet(out / "duplicates.parquet")
    removed = set(dup["id"])
    m_recall = sum(a in removed or b in removed for a, b in positives) / max(1, len(positives))
    m_true = sum(jaccard(text_of[i], text_of[k]) >= threshold for i, k in zip(dup["id"], dup["kept_id"]))
    return (a_recall, a_true / max(1, len(pairs_a))), (m_recall, m_true / max(1, dup.height))


def report(
    n: int, times: dict[str, float], workers: int, manifest: Any, a_quality: tuple, m_quality: tuple
) -> None:
    def rate(seconds_: float, cores: int = 1) -> str:
        return f"{n / max(seconds_, 1e-9) / cores:>12,.0f}"

    seconds = manifest.stats["seconds"]
    print()
    print(f"{'phase':<44}{'seconds':>9}{'docs/s/core':>14}")
    print(f"{'(a) datasketch MinHash.update per shingle':<44}{times['a_sig']:>9.2f}{rate(times['a_sig'])}")
    print(f"{'(a) datasketch MinHashLSH insert + query':<44}{times['a_lsh']:>9.2f}{rate(times['a_lsh'])}")
    print(f"{'(b) mixlab signatures (1 core, normalised)':<44}{times['b']:>9.2f}{rate(times['b'])}")
    print(f"{f'(c) mixlab end to end ({workers} workers)':<44}{times['c']:>9.2f}{rate(times['c'], workers)}")
    for phase in ("signatures", "exact", "candidates", "verify", "cluster", "write"):
        cores = workers if phase in ("signatures", "candidates", "verify", "write") else 1
        print(f"{'    ' + phase:<44}{seconds[phase]:>9.2f}{rate(seconds[phase], cores)}")
    grouping = seconds["exact"] + seconds["candidates"] + seconds["verify"] + seconds["cluster"]
    print()
    print(f"signature speed-up (b)/(a): {times['a_sig'] / times['b']:.1f}x")
    print(f"candidates + verification + clustering: {n / grouping:,.0f} docs/s (all workers)")
    print()
    print(f"{'quality vs exact Jaccard':<44}{'recall':>9}{'precision':>11}")
    print(f"{'(a) datasketch LSH query pairs':<44}{a_quality[0]:>9.4f}{a_quality[1]:>11.4f}")
    print(f"{'mixlab removals (verified)':<44}{m_quality[0]:>9.4f}{m_quality[1]:>11.4f}")
    print("  recall: planted pairs at >= threshold flagged (a) / with a member removed (mixlab);")
    print("  precision: flagged pairs (a) / removed documents vs their kept_id (mixlab) truly >= threshold")
    stats = manifest.stats
    print(
        f"mixlab: banding {stats['banding']['bands']}x{stats['banding']['rows']}, "
        f"{stats['candidates']['checked']} candidates checked, {stats['candidates']['rejected']} rejected; "
        f"removed {manifest.counts['removed_exact']} exact, {manifest.counts['removed_near']} near"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=10_000, help="documents before planted duplicates")
    parser.add_argument("--doc-words", type=int, default=320, help="mean words per document (~2 KB)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument(
        "--workers", type=int, default=None, help="LocalCluster workers for (c) (default: cores)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp), args.docs, args.doc_words)
        docs = pl.concat([pl.read_parquet(f) for f in sorted((corpus / "documents").glob("*.parquet"))])
        ids, texts = docs["id"].to_list(), docs["text"].to_list()
        text_of = dict(zip(ids, texts))
        n = len(ids)
        mean_bytes = sum(len(t.encode()) for t in texts) / n
        truth = pl.read_parquet(corpus / "near_duplicates.parquet")
        positives = {
            (min(a, b), max(a, b))
            for a, b, j in truth.select("id_a", "id_b", "jaccard").iter_rows()
            if j >= args.threshold
        }
        print(
            f"corpus: {n} documents, mean {mean_bytes / 1024:.2f} KB, {len(positives)} planted pairs "
            f"with Jaccard >= {args.threshold}"
        )

        cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm)
        times = {
            "b": mixlab_signatures(docs["text"].to_arrow(), cfg)
        }  # (b) first: quick, warms nothing (a) uses
        pairs_a, times["a_sig"], times["a_lsh"] = datasketch_loop(ids, texts, args.threshold, args.num_perm)
        workers = args.workers or local_cluster_size()[0]
        out = Path(tmp) / "out"
        manifest, times["c"] = mixlab_end_to_end(corpus, cfg, out, workers)
        a_quality, m_quality = quality(pairs_a, out, positives, text_of, args.threshold)
        report(n, times, workers, manifest, a_quality, m_quality)


if __name__ == "__main__":
    main()
