"""Dedup at scale on this machine, side by side with datatrove's MinHash pipeline, in one run.

A fast synthetic corpus (random word documents over a 50k vocabulary, of which a planted share
are near copies with 1-14 words replaced, and some exact copies) goes through (a) `run_dedup`
on a Dask LocalCluster of process workers and (b) datatrove's MinhashDedupSignature ->
Buckets -> Cluster -> Filter on a LocalPipelineExecutor with as many workers, same shingle
length, bands x rows and permutation count. Reported per system: docs/s (wall of the dedup
alone, corpus already on disk), peak RSS of the client (the driving process, which for
mixlab's LocalCluster also hosts the scheduler) and of each worker process (a psutil sampling
thread, 0.2 s), and recall / precision against exact word-5-gram Jaccard
(`mixlab.synth.jaccard`) on a sample of the planted pairs and of the removed documents.

    python benchmarks/dedup_scale.py --docs 200000
    python benchmarks/dedup_scale.py --docs 200000 1000000 --workers 2 --datatrove-max-docs 200000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixlab.dedup import DedupConfig, run_dedup
from mixlab.dedup.stage import resolve_bands
from mixlab.synth import jaccard

VOCAB = 50_000
FILE_DOCS = 50_000  # documents per input parquet file


def _letters(i: int) -> str:
    """Word `i` spelt in letters (datatrove's normalisation folds digits, so "w12" and "w13" would be one word)."""
    out = ""
    while True:
        out = chr(97 + i % 26) + out
        i //= 26
        if i == 0:
            return out + "x"


def make_corpus(n: int, folder: Path, seed: int = 0, near: float = 0.10, exact: float = 0.02) -> pl.DataFrame:
    """`n` documents in `folder`/*.parquet; returns the planted copies (id, source id, edits)."""
    rng = np.random.default_rng(seed)
    vocab = pa.array([_letters(i) for i in range(VOCAB)])
    lengths = rng.integers(80, 160, n)
    words = rng.integers(0, VOCAB, int(lengths.sum()))
    docs = np.split(words, np.cumsum(lengths)[:-1])
    n_near, n_exact = int(n * near), int(n * exact)
    copies = rng.choice(np.arange(n // 10, n), n_near + n_exact, replace=False)  # later docs copy earlier
    sources = (rng.random(len(copies)) * (copies * 0.9)).astype(np.int64)
    edits = np.r_[rng.integers(1, 15, n_near), np.zeros(n_exact, np.int64)]
    order = np.argsort(copies)  # a copy of a copy sees its source's final text
    for c, s, e in zip(copies[order], sources[order], edits[order]):  # a loop over the copies only
        w = docs[s].copy()
        at = rng.choice(len(w), min(int(e), len(w)), replace=False)
        w[at] = rng.integers(0, VOCAB, len(at))
        docs[c] = w
    offsets = np.r_[0, np.cumsum([len(d) for d in docs])].astype(np.int32)
    tokens = vocab.take(pa.array(np.concatenate(docs)))
    text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), tokens), " ")
    ids = pa.array([f"doc-{i:08d}" for i in range(n)])
    table = pa.table({"id": ids, "domain": pa.array(["web"] * n), "text": text})
    folder.mkdir(parents=True, exist_ok=True)
    for k, lo in enumerate(range(0, n, FILE_DOCS)):
        pq.write_table(table.slice(lo, FILE_DOCS), folder / f"part_{k:03d}.parquet", row_group_size=4096)
    name = np.char.add("doc-", np.char.zfill(np.arange(n).astype(str), 8))
    return pl.DataFrame({"id": name[copies], "source": name[sources], "edits": edits})


class PeakRSS:
    """Peak resident memory of this process and of each process `pids()` names, sampled every 0.2 s."""

    def __init__(self, pids: Any = lambda: []):
        self.pids, self.peak, self._stop = pids, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = {"client": [me]}
            for name, pid in self.pids():
                try:
                    procs.setdefault(name, []).append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
            for name, ps in procs.items():
                rss = 0
                for p in ps:
                    try:
                        rss += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                self.peak[name] = max(self.peak.get(name, 0), rss)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.thread.join()


def run_mixlab(docs: Path, out: Path, cfg: DedupConfig, workers: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0, dashboard_address=":0"
    ) as cluster:
        with Client(cluster) as client:
            pids = client.run(os.getpid)  # worker address -> pid
            names = {addr: f"worker{i}" for i, addr in enumerate(sorted(pids))}
            with PeakRSS(lambda: [(names[a], p) for a, p in pids.items()]) as rss:
                start = time.perf_counter()
                m = run_dedup({"documents": docs}, cfg, out, client)
                wall = time.perf_counter() - start
    removed = pl.read_parquet(out / "duplicates.parquet", columns=["id", "kept_id"])
    return {"wall": wall, "rss": rss.peak, "removed": removed, "stats": m.stats}


def _whitespace_tokenizer() -> Any:
    """datatrove's signature step wants a language word tokenizer (spaCy for English, not
    installed here); the corpus is space-separated words, so a whitespace split is the same
    tokenization mixlab uses, and cheaper than spaCy (which favours datatrove)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Whitespace(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return Whitespace("en")


def run_datatrove(docs: Path, work: Path, cfg: DedupConfig, workers: int) -> dict[str, Any]:
    import datatrove.pipeline.dedup.minhash as dt_minhash
    import datatrove.utils.hashes.xxhash as dt_xxhash
    import xxhash
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    dt_minhash.load_word_tokenizer = lambda language: _whitespace_tokenizer()
    # datatrove passes str to xxhash, which xxhash 3 refuses ("Strings must be encoded"): encode first
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    bands, rows = resolve_bands(cfg)
    mh = MinhashConfig(
        n_grams=cfg.ngram, num_buckets=bands, hashes_per_bucket=rows, hash_config=HashConfig(precision=64)
    )
    files = len(list(docs.glob("*.parquet")))

    def reader() -> ParquetReader:
        return ParquetReader(str(docs), text_key="text", id_key="id")

    stages = [
        ([reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=mh)], files),
        (
            [
                MinhashDedupBuckets(
                    input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=mh
                )
            ],
            bands,
        ),
        (
            [
                MinhashDedupCluster(
                    input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"), config=mh
                )
            ],
            1,
        ),
        (
            [
                reader(),
                MinhashDedupFilter(
                    input_folder=str(work / "remove_ids"),
                    exclusion_writer=ParquetWriter(str(work / "removed")),
                ),
                ParquetWriter(str(work / "kept")),
            ],
            files,
        ),
    ]
    with PeakRSS(
        lambda: [(f"proc{i}", p.pid) for i, p in enumerate(psutil.Process().children(recursive=True))]
    ) as rss:
        start = time.perf_counter()
        for k, (pipeline, tasks) in enumerate(stages):
            LocalPipelineExecutor(
                pipeline=pipeline,
                tasks=tasks,
                workers=min(workers, tasks),
                logging_dir=str(work / f"logs{k}"),
            ).run()
        wall = time.perf_counter() - start
    removed = (
        pl.read_parquet(work / "removed" / "*.parquet", columns=["id"])
        if any((work / "removed").glob("*.parquet"))
        else pl.DataFrame({"id": []}, schema={"id": pl.String})
    )
    workers_peak = max((v for k, v in rss.peak.items() if k != "client"), default=0)
    return {
        "wall": wall,
        "rss": {"client": rss.peak.get("client", 0), "largest_worker": workers_peak},
        "removed": removed,
    }


def quality(
    docs: Path, planted: pl.DataFrame, removed: set[str], threshold: float, sample: int, seed: int
) -> tuple[float, float, int, int]:
    """Recall on a sample of planted pairs at exact J >= threshold (either side removed), and
    precision on a sample of removed documents (exact J >= threshold to another member of its
    planted group; random documents of a 50k vocabulary share no 5-gram)."""
    rng = np.random.default_rng(seed)
    pairs = planted.sample(min(sample, planted.height), seed=seed)
    removed_sample = sorted(removed)
    removed_sample = (
        [
            removed_sample[i]
            for i in rng.choice(len(removed_sample), min(sample, len(removed_sample)), replace=False)
        ]
        if removed_sample
        else []
    )
    need = set(pairs["id"]) | set(pairs["source"]) | set(removed_sample)
    groups: dict[str, set[str]] = {}
    for c, s in zip(planted["id"], planted["source"]):
        groups.setdefault(c, set()).add(s)
        groups.setdefault(s, set()).add(c)
    for d in removed_sample:
        need |= groups.get(d, set())
    texts = dict(
        pl.scan_parquet(str(docs / "*.parquet"))
        .select("id", "text")
        .filter(pl.col("id").is_in(list(need)))
        .collect()
        .iter_rows()
    )
    true_pairs = [
        (a, b) for a, b in zip(pairs["id"], pairs["source"]) if jaccard(texts[a], texts[b]) >= threshold
    ]
    recall = sum(a in removed or b in removed for a, b in true_pairs) / max(len(true_pairs), 1)
    good = sum(
        any(jaccard(texts[d], texts[o]) >= threshold for o in groups.get(d, ())) for d in removed_sample
    )
    precision = good / max(len(removed_sample), 1)
    return recall, precision, len(true_pairs), len(removed_sample)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[200_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--sample", type=int, default=2000, help="planted pairs and removed documents checked exactly"
    )
    ap.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument(
        "--datatrove-max-docs",
        type=int,
        default=None,
        help="run datatrove only on corpora up to this size (on 2 shared cores it takes ~2.4 ms/doc)",
    )
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="dedup_scale_"))
    cfg = DedupConfig()
    bands, rows = resolve_bands(cfg)
    print(
        f"scratch {root}; threshold {cfg.threshold}, {cfg.num_perm} perms, {bands} bands x {rows} rows, {args.workers} workers"
    )
    rows_out = []
    for n in args.docs:
        case = root / f"n{n}"
        shutil.rmtree(case, ignore_errors=True)
        t = time.perf_counter()
        # made in a child process, so the benchmark's own RSS (the client's) never held the corpus
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            planted = pool.apply(make_corpus, (n, case / "docs"))
        print(
            f"{n}: corpus made in {time.perf_counter() - t:.1f}s ({planted.height} planted copies)",
            flush=True,
        )
        mix = run_mixlab(case / "docs", case / "mixlab", cfg, args.workers)
        mr, mp, n_true, n_rem = quality(
            case / "docs", planted, set(mix["removed"]["id"]), cfg.threshold, args.sample, 1
        )
        row = {
            "docs": n,
            "system": "mixlab",
            "docs_per_s": n / mix["wall"],
            "wall_s": mix["wall"],
            "client_rss_mb": mix["rss"].get("client", 0) / 2**20,
            "worker_rss_mb": {k: round(v / 2**20) for k, v in mix["rss"].items() if k != "client"},
            "removed": mix["removed"].height,
            "recall": mr,
            "precision": mp,
            "checked": f"{n_true} true pairs, {n_rem} removed",
            "candidates": mix["stats"]["candidates"]["checked"],
            "seconds": mix["stats"]["seconds"],
        }
        rows_out.append(row)
        print(row, flush=True)
        shutil.rmtree(case / "mixlab", ignore_errors=True)
        if not args.skip_datatrove and (args.datatrove_max_docs is None or n <= args.datatrove_max_docs):
            dt = run_datatrove(case / "docs", case / "datatrove", cfg, args.workers)
            dr, dp, n_true, n_rem = quality(
                case / "docs", planted, set(dt["removed"]["id"]), cfg.threshold, args.sample, 1
            )
            row = {
                "docs": n,
                "system": "datatrove",
                "docs_per_s": n / dt["wall"],
                "wall_s": dt["wall"],
                "client_rss_mb": dt["rss"]["client"] / 2**20,
                "worker_rss_mb": {"largest": round(dt["rss"]["largest_worker"] / 2**20)},
                "removed": dt["removed"].height,
                "recall": dr,
                "precision": dp,
                "checked": f"{n_true} true pairs, {n_rem} removed",
            }
            rows_out.append(row)
            print(row, flush=True)
            shutil.rmtree(case / "datatrove", ignore_errors=True)
            print(
                f"{n}: mixlab / datatrove docs/s = {rows_out[-2]['docs_per_s'] / row['docs_per_s']:.2f}",
                flush=True,
            )
    print(
        "\n| docs | system | docs/s | wall s | client peak RSS MB | worker peak RSS MB | removed | recall | precision |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows_out:
        print(
            f"| {r['docs']:,} | {r['system']} | {r['docs_per_s']:,.0f} | {r['wall_s']:.1f} | {r['client_rss_mb']:.0f} | "
            f"{r['worker_rss_mb']} | {r['removed']:,} | {r['recall']:.4f} | {r['precision']:.4f} |"
        )
    by = {(r["system"], r["docs"]): r for r in rows_out}
    for n in args.docs[1:]:
        a, b = by.get(("mixlab", args.docs[0])), by.get(("mixlab", n))
        if a and b:
            print(
                f"mixlab cost {args.docs[0]:,} -> {n:,}: x{b['wall_s'] / a['wall_s']:.2f} for x{n / args.docs[0]:.1f} documents"
            )


if __name__ == "__main__":
    main()
