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

    domains = ("prose", "code", "tabular", "legal")
    per_domain = max(1, args.docs // len(domains))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        run_synth(
            {},
            SynthConfig(
                domains=domains,
                docs_per_domain=per_domain,
                doc_words=args.doc_words,
                near_dup_clusters=max(1, per_domain // 50),
                exact_dups=max(1, per_domain // 250),
            ),
            corpus,
        )
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
        # (b) first: it is quick, and warms nothing (a) reuses.
        b_s = mixlab_signatures(docs["text"].to_arrow(), cfg)
        pairs_a, a_sig_s, a_lsh_s = datasketch_loop(ids, texts, args.threshold, args.num_perm)

        workers = args.workers or local_cluster_size()[0]
        out = Path(tmp) / "out"
        with dask_client(n_workers=workers, quiet=True) as client:
            # Workers import their libraries before the clock starts: that is start-up, not throughput.
            client.run(lambda: __import__("mixlab.dedup.stage") and __import__("pandas"))
            start = time.perf_counter()
            manifest = run_dedup({"documents": corpus / "documents"}, cfg, out, client)
        c_s = time.perf_counter() - start
        seconds = manifest.stats["seconds"]

        def quality_pairs(pairs: set) -> tuple[float, float]:
            recall = len(pairs & positives) / max(1, len(positives))
            true = sum(jaccard(text_of[a], text_of[b]) >= args.threshold for a, b in pairs)
            return recall, true / max(1, len(pairs))

        dup = pl.read_parquet(out / "duplicates.parquet")
        removed = set(dup["id"])
        m_recall = sum(a in removed or b in removed for a, b in positives) / max(1, len(positives))
        m_true = sum(
            jaccard(text_of[i], text_of[k]) >= args.threshold for i, k in zip(dup["id"], dup["kept_id"])
        )
        m_precision = m_true / max(1, dup.height)
        a_recall, a_precision = quality_pairs(pairs_a)

        def rate(seconds_: float, cores: int = 1) -> str:
            return f"{n / max(seconds_, 1e-9) / cores:>12,.0f}"

        print()
        print(f"{'phase':<44}{'seconds':>9}{'docs/s/core':>14}")
        print(f"{'(a) datasketch MinHash.update per shingle':<44}{a_sig_s:>9.2f}{rate(a_sig_s)}")
        print(f"{'(a) datasketch MinHashLSH insert + query':<44}{a_lsh_s:>9.2f}{rate(a_lsh_s)}")
        print(f"{'(b) mixlab signatures (1 core, normalised)':<44}{b_s:>9.2f}{rate(b_s)}")
        print(f"{f'(c) mixlab end to end ({workers} workers)':<44}{c_s:>9.2f}{rate(c_s, workers)}")
        for phase in ("signatures", "exact", "candidates", "verify", "cluster", "write"):
            cores = workers if phase in ("signatures", "candidates", "verify", "write") else 1
            print(f"{'    ' + phase:<44}{seconds[phase]:>9.2f}{rate(seconds[phase], cores)}")
        grouping = seconds["exact"] + seconds["candidates"] + seconds["verify"] + seconds["cluster"]
        print()
        print(f"signature speed-up (b)/(a): {a_sig_s / b_s:.1f}x")
        print(f"candidates + verification + clustering: {n / grouping:,.0f} docs/s (all workers)")
        print()
        print(f"{'quality vs exact Jaccard':<44}{'recall':>9}{'precision':>11}")
        print(f"{'(a) datasketch LSH query pairs':<44}{a_recall:>9.4f}{a_precision:>11.4f}")
        print(f"{'mixlab removals (verified)':<44}{m_recall:>9.4f}{m_precision:>11.4f}")
        print("  recall: planted pairs at >= threshold flagged (a) / with a member removed (mixlab);")
        print(
            "  precision: flagged pairs (a) / removed documents vs their kept_id (mixlab) truly >= threshold"
        )
        stats = manifest.stats
        print(
            f"mixlab: banding {stats['banding']['bands']}x{stats['banding']['rows']}, "
            f"{stats['candidates']['checked']} candidates checked, {stats['candidates']['rejected']} rejected; "
            f"removed {manifest.counts['removed_exact']} exact, {manifest.counts['removed_near']} near"
        )


if __name__ == "__main__":
    main()
