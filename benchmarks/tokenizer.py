"""Tokenizer benchmark: mixlab's train and tokenize stages against what a user would write by hand.

(a) raw `tokenizers` `train_from_iterator` over an in-memory list vs `mixlab tokenizer train`
    on the same text (parquet in, mixture sampling, files out): the overhead ratio.
(b) a per-document `Tokenizer.encode` loop in one process vs `mixlab tokenize` on a Dask
    LocalCluster (parquet in, shards + streams out): MB/s per core.

Run: python benchmarks/tokenizer.py [--docs-per-domain N] [--doc-words N] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-domain", type=int, default=1500)
    parser.add_argument("--doc-words", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    from distributed import Client, LocalCluster
    from tokenizers import Tokenizer

    from mixlab.config import SynthConfig
    from mixlab.synth import run_synth
    from mixlab.tokenize.config import TokenizeConfig, TokenizerTrainConfig
    from mixlab.tokenize.corpus import run_tokenize
    from mixlab.tokenize.tokenizer import build_tokenizer
    from mixlab.tokenize.train import run_tokenizer_train

    work = Path(tempfile.mkdtemp(prefix="mixlab-bench-tok-"))
    run_synth(SynthConfig(docs_per_domain=args.docs_per_domain, doc_words=args.doc_words), work / "corpus")
    docs = work / "corpus" / "documents"
    texts = [t for f in sorted(docs.glob("*.parquet")) for t in pq.read_table(f, columns=["text"])["text"].to_pylist()]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB")

    # (a) training: same text (no held-out split, budget above the corpus), same tokenizer setup.
    cfg = TokenizerTrainConfig(vocab_size=args.vocab_size, sample_bytes=10**12, valid_fraction=0.0)
    tok, trainer = build_tokenizer(cfg)
    start = time.perf_counter()
    tok.train_from_iterator((texts[i: i + 1000] for i in range(0, len(texts), 1000)), trainer, length=len(texts))
    raw_s = time.perf_counter() - start
    start = time.perf_counter()
    run_tokenizer_train(docs, cfg, work / "tokenizer")
    mixlab_s = time.perf_counter() - start
    same = Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json")).get_vocab() == tok.get_vocab()
    print(f"(a) train  raw train_from_iterator: {raw_s:6.2f} s   mixlab tokenizer train: {mixlab_s:6.2f} s   "
          f"overhead {mixlab_s / raw_s:.2f}x (target <= 1.2x); same vocabulary: {same}")

    # (b) tokenizing: a per-document encode loop (one core) vs the tokenize stage on all cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json"))
    start, cpu = time.perf_counter(), time.process_time()
    n_tokens = sum(len(tok.encode(t).ids) + 1 for t in texts)
    loop_s, loop_cpu = time.perf_counter() - start, time.process_time() - cpu
    workers = len(os.sched_getaffinity(0))
    runs = []  # (wall s, CPU s): cold workers (each loads its tokenizer, fills its BPE cache), then warm
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env={"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        # Workers up, imports done and the tokenizer loaded before timing, as the loop's was; their
        # piece memories stay empty, so the cold run meets every word for the first time.
        from mixlab.tokenize.encode import worker_tokenizer

        client.run(worker_tokenizer, str(work / "tokenizer"))
        for name in ("tokens", "tokens_warm"):
            start, cpu = time.perf_counter(), time.process_time()
            manifest = run_tokenize({"documents": docs, "tokenizer": work / "tokenizer"},
                                    TokenizeConfig(), work / name, client)
            runs.append((time.perf_counter() - start, time.process_time() - cpu + manifest.stats["worker_cpu_seconds"]))
            assert manifest.counts["tokens"] == n_tokens, (manifest.counts["tokens"], n_tokens)
    loop_rate = mb / loop_s
    print(f"(b) encode per-document loop: {loop_rate:6.2f} MB/s/core ({loop_s:.1f} s, 1 core, {mb / loop_cpu:.2f} MB per CPU-second)")
    for label, (stage_s, stage_cpu) in zip(("cold workers", "warm workers"), runs):
        stage_rate = mb / stage_s / workers
        print(f"    mixlab tokenize, {label}: {stage_rate:6.2f} MB/s/core ({stage_s:.1f} s, {workers} workers, same token "
              f"count), {mb / stage_cpu:.2f} MB per CPU-second (driver + workers); ratio {stage_rate / loop_rate:.1f}x per "
              f"core, {loop_cpu / stage_cpu:.1f}x per CPU-second (target >= 5x)")
    print(f"    space-segmented: {manifest.stats['space_segmented']}; cold = first run on fresh workers (tokenizer "
          "loaded, every word met for the first time): the figure for a new corpus; warm = the same corpus "
          "again on those workers, every piece already in their memory: the ceiling")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
