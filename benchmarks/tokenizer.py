"""Tokenizer benchmark: mixlab's train and tokenize stages against what a user would write by hand.

(a) raw `tokenizers` `train_from_iterator` over an in-memory list vs `mixlab tokenizer train`
    on the same text (parquet in, mixture sampling, files out): the overhead ratio.
(b) a per-document `Tokenizer.encode` loop in one process vs `mixlab tokenize` on a Dask
    LocalCluster (parquet in, shards + streams out): MB/s per core and per CPU-second, on fresh
    workers, on workers in their steady state (they have tokenized another corpus first, so
    every word is new to them), and on the same corpus again (every piece remembered).

Run: python benchmarks/tokenizer.py [--docs-per-domain N] [--doc-words N] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def _forget_pieces() -> None:
    """Empty a worker's piece -> ids memories (run on the workers)."""
    from mixlab.tokenize import encode

    encode._MEMORIES.clear()


def bench_train(docs: Path, texts: list[str], vocab_size: int, work: Path) -> None:
    """(a) training: same text (no held-out split, budget above the corpus), same tokenizer setup."""
    from tokenizers import Tokenizer

    from mixlab.tokenize.config import TokenizerTrainConfig
    from mixlab.tokenize.tokenizer import build_tokenizer
    from mixlab.tokenize.train import run_tokenizer_train

    cfg = TokenizerTrainConfig(vocab_size=vocab_size, sample_bytes=10**12, valid_fraction=0.0)
    tok, trainer = build_tokenizer(cfg)
    start = time.perf_counter()
    tok.train_from_iterator(
        (texts[i : i + 1000] for i in range(0, len(texts), 1000)), trainer, length=len(texts)
    )
    raw_s = time.perf_counter() - start
    start = time.perf_counter()
    run_tokenizer_train({"documents": docs}, cfg, work / "tokenizer")
    mixlab_s = time.perf_counter() - start
    same = Tokenizer.from_file(str(work / "tokenizer" / "tokenizer.json")).get_vocab() == tok.get_vocab()
    print(
        f"(a) train  raw train_from_iterator: {raw_s:6.2f} s   mixlab tokenizer train: {mixlab_s:6.2f} s   "
        f"overhead {mixlab_s / raw_s:.2f}x (target <= 1.2x); same vocabulary: {same}"
    )


def encode_loop(texts: list[str], tokenizer_dir: Path) -> tuple[int, float, float]:
    """(b)'s baseline: a per-document encode loop in one process; (tokens, wall s, CPU s)."""
    from tokenizers import Tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    start, cpu = time.perf_counter(), time.process_time()
    n_tokens = sum(len(tok.encode(t).ids) + 1 for t in texts)
    return n_tokens, time.perf_counter() - start, time.process_time() - cpu


def tokenize_runs(docs: Path, work: Path, workers: int, n_tokens: int) -> tuple[dict, Any]:
    """(b): the tokenize stage on fresh, steady and remembering workers; {label: (wall s, CPU s)}."""
    from distributed import Client, LocalCluster

    from mixlab.tokenize.config import TokenizeConfig
    from mixlab.tokenize.corpus import run_tokenize
    from mixlab.tokenize.encode import worker_tokenizer

    runs = {}
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            env={"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
        ) as cluster,
        Client(cluster) as client,
    ):
        # Workers up, imports done and the tokenizer loaded before timing, as the loop's was.
        client.run(worker_tokenizer, str(work / "tokenizer"))
        for label, name in (
            ("fresh workers", "tokens"),
            ("steady workers", "tokens_steady"),
            ("same corpus again", "tokens_again"),
        ):
            if (
                label == "steady workers"
            ):  # forget this corpus's pieces (from the fresh run), then see other text
                client.run(_forget_pieces)
                run_tokenize(
                    {"documents": work / "other" / "documents", "tokenizer": work / "tokenizer"},
                    TokenizeConfig(),
                    work / "tokens_other",
                    client,
                )
            start, cpu = time.perf_counter(), time.process_time()
            manifest = run_tokenize(
                {"documents": docs, "tokenizer": work / "tokenizer"}, TokenizeConfig(), work / name, client
            )
            runs[label] = (
                time.perf_counter() - start,
                time.process_time() - cpu + manifest.stats["worker_cpu_seconds"],
            )
            assert manifest.counts["tokens"] == n_tokens, (manifest.counts["tokens"], n_tokens)
    return runs, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-domain", type=int, default=1500)
    parser.add_argument("--doc-words", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()

    from mixlab.synth import SynthConfig, run_synth

    work = Path(tempfile.mkdtemp(prefix="mixlab-bench-tok-"))
    run_synth(
        {}, SynthConfig(docs_per_domain=args.docs_per_domain, doc_words=args.doc_words), work / "corpus"
    )
    docs = work / "corpus" / "documents"
    texts = [
        t
        for f in sorted(docs.glob("*.parquet"))
        for t in pq.read_table(f, columns=["text"])["text"].to_pylist()
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(texts)} documents, {mb:.1f} MB")
    bench_train(docs, texts, args.vocab_size, work)

    # (b) tokenizing: a per-document encode loop (one core) vs the tokenize stage on all cores.
    n_tokens, loop_s, loop_cpu = encode_loop(texts, work / "tokenizer")
    workers = len(os.sched_getaffinity(0))
    # Another seed's corpus: the same kinds of text, none of the same words (synth vocabularies
    # are drawn per seed), to put the workers in their steady state without teaching them words.
    other = SynthConfig(docs_per_domain=args.docs_per_domain, doc_words=args.doc_words, seed=1)
    run_synth({}, other, work / "other")
    runs, manifest = tokenize_runs(docs, work, workers, n_tokens)
    loop_rate = mb / loop_s
    print(
        f"(b) encode per-document loop: {loop_rate:6.2f} MB/s/core ({loop_s:.1f} s, 1 core, {mb / loop_cpu:.2f} MB per CPU-second)"
    )
    for label, (stage_s, stage_cpu) in runs.items():
        stage_rate = mb / stage_s / workers
        print(
            f"    mixlab tokenize, {label:17s}: {stage_rate:6.2f} MB/s/core ({stage_s:.1f} s, {workers} workers, same "
            f"token count), {mb / stage_cpu:.2f} MB per CPU-second (driver + workers); ratio {stage_rate / loop_rate:.1f}x "
            f"per core, {loop_cpu / stage_cpu:.1f}x per CPU-second (target >= 5x)"
        )
    print(
        f"    space-segmented: {manifest.stats['space_segmented']}. fresh = the first task in each worker process "
        "(a one-off per worker); steady = workers that have tokenized another corpus, so every word here is new "
        "to them: the figure for a long run over new text; same corpus again = every piece remembered: a ceiling"
    )
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
