"""Fixtures for the tokenizer tests: a small trained byte-level BPE and an in-process Dask client."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from mixlab.tables import write_table
from mixlab.tokenize.config import TokenizerTrainConfig

SMALL_BPE = TokenizerTrainConfig(model="bpe", vocab_size=400, sample_bytes=2_000_000)

# Text a real corpus holds and synthetic text does not: accents, CJK, emoji, odd whitespace,
# a literal end-of-document string, digits, contractions.
HARD_TEXTS = [
    "Héllo wörld — naïve café, we're done. 日本語のテキスト 🎉🚀👩‍👩‍👧 ok",
    "line one\n\n   indented line\twith tab\r\nand CRLF\u00a0nbsp \u3000ideographic space",
    "a literal <|endoftext|> inside a document must stay text",
    "numbers 1234567 and 3.14159, prices $12.50 ¹²³ ½",
    "   leading and trailing spaces   ",
    "",
]


@pytest.fixture(scope="session")
def hard_documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A documents table of HARD_TEXTS (domain "hard")."""
    out = tmp_path_factory.mktemp("hard") / "documents.parquet"
    ids = [f"hard-{i}" for i in range(len(HARD_TEXTS))]
    write_table(pa.table({"id": ids, "domain": ["hard"] * len(ids), "text": HARD_TEXTS}), out)
    return out


@pytest.fixture(scope="session")
def bpe_dir(tiny_corpus: Path, hard_documents: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mixlab.tokenize.train import run_tokenizer_train

    out = tmp_path_factory.mktemp("tok") / "bpe"
    run_tokenizer_train({"documents": [tiny_corpus / "documents", hard_documents]}, SMALL_BPE, out)
    return out


@pytest.fixture(scope="session")
def dask_threads():
    """A two-worker in-process Dask client (threads: cheap to start, same code path as processes)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()
