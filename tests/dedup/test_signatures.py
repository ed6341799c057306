from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from mixlab.dedup import minhash
from mixlab.dedup.clusters import bucket_edges, connected_components, keep_per_group, preference
from mixlab.dedup.config import DedupConfig
from mixlab.dedup.minhash import (
    band_keys,
    candidate_probability,
    choose_bands,
    jaccard_sets,
    knee,
    permutations,
    signatures,
)
from mixlab.dedup.shingles import EMPTY, NULL, OK, SHORT, shingle_batch, shingle_hash, shingles

TEXTS = [
    "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat",
    "the quick brown fox jumps over the lazy dog while the cat naps on the warm mat",
    "  Tabs\tand\nnewlines   and\u00a0odd\u3000spaces count as  whitespace here too ",
    "short text",
    "Ünïcödé wörds, ﬁligree and 123 numbers: 4,5 and 6!",
]


def _signed(texts, cfg, num_perm=64, seed=7):
    batch = shingle_batch(pa.array(texts, pa.string()), cfg)
    return batch, signatures(batch.hashes, batch.offsets, permutations(num_perm, seed))


@pytest.mark.parametrize(
    "cfg",
    [
        DedupConfig(),
        DedupConfig(shingle="chars", ngram=4),
        DedupConfig(lowercase=True, strip_punctuation=True, normalize_digits=True, nfkc=True, ngram=3),
        DedupConfig(collapse_whitespace=False, shingle="chars", ngram=3),
    ],
)
def test_signatures_equal_datasketch_minhash_updated_shingle_by_shingle(cfg):
    _, sig = _signed(TEXTS, cfg)
    for text, row in zip(TEXTS, sig):
        m = MinHash(num_perm=64, seed=7, hashfunc=shingle_hash)
        for s in shingles(text, cfg):
            m.update(s)
        assert m.hashvalues.dtype == np.uint32
        np.testing.assert_array_equal(m.hashvalues, row)


def test_batch_shingle_sets_equal_reference_shingle_hashes():
    cfg = DedupConfig(ngram=3)
    batch = shingle_batch(pa.array(TEXTS, pa.string()), cfg)
    for d, text in enumerate(TEXTS):
        mine = batch.hashes[batch.offsets[d] : batch.offsets[d + 1]]
        assert list(mine) == sorted({shingle_hash(s) for s in shingles(text, cfg)})


def test_lean_minhash_and_lsh_can_be_built_from_signatures():
    cfg = DedupConfig()
    words = [f"w{i % 37}x{i % 11}" for i in range(200)]
    texts = [" ".join(words), " ".join(words[:100] + ["changed"] + words[101:])]
    _, sig = _signed(texts, cfg, num_perm=128, seed=1)
    lean = [LeanMinHash(seed=1, hashvalues=row, scheme=minhash.SCHEME) for row in sig]
    reference = MinHash(num_perm=128, seed=1, hashfunc=shingle_hash)
    for s in shingles(texts[0], cfg):
        reference.update(s)
    assert lean[0].jaccard(LeanMinHash(reference)) == 1.0
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    lsh.insert("a", lean[0])
    assert lsh.query(lean[1]) == ["a"]


def test_bad_documents_get_a_status_not_an_error():
    cfg = DedupConfig()
    batch = shingle_batch(pa.array(["", None, " \n\t ", "two words", "one two three four five six"]), cfg)
    assert batch.status.tolist() == [EMPTY, NULL, EMPTY, SHORT, OK]
    assert np.diff(batch.offsets).tolist() == [0, 0, 0, 1, 2]  # a short document is one shingle


def test_whitespace_variants_share_the_exact_hash_when_collapsing():
    batch = shingle_batch(pa.array(["a  b\nc ", "a b c", "a b d"]), DedupConfig())
    assert batch.text_hash[0] == batch.text_hash[1] != batch.text_hash[2]


def test_chunked_signatures_equal_whole_signatures(monkeypatch):
    rng = np.random.default_rng(0)
    hashes = np.sort(rng.integers(0, 2**32, 5000, dtype=np.uint32))
    offsets = np.array([0, 10, 10, 4000, 4001, 5000])  # includes an empty document
    perms = permutations(32, 3)
    whole = signatures(hashes, offsets, perms)
    monkeypatch.setattr(minhash, "CHUNK_SHINGLES", 97)  # every document straddles chunks
    np.testing.assert_array_equal(signatures(hashes, offsets, perms), whole)
    assert (whole[1] == minhash.EMPTY_VALUE).all()


def test_chosen_banding_catches_pairs_at_the_threshold():
    for threshold in (0.7, 0.8, 0.9):
        bands, rows = choose_bands(threshold, 128, 0.99)
        assert bands * rows <= 128
        assert candidate_probability(threshold, bands, rows) >= 0.99
        assert knee(bands, rows) < threshold


def test_band_keys_equal_for_equal_bands_only():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [1, 2, 3, 4]], dtype=np.uint32)
    keys = band_keys(sig, 2, 2)
    assert keys[0, 0] == keys[1, 0] == keys[2, 0]
    assert keys[0, 1] != keys[1, 1] and keys[0, 1] == keys[2, 1]


def test_exact_jaccard_of_many_pairs_equals_python_sets():
    rng = np.random.default_rng(1)
    sets = [np.unique(rng.integers(0, 60, rng.integers(0, 40))).astype(np.uint32) for _ in range(30)]
    left, right = sets[:15], sets[15:]

    def packed(group):
        return np.concatenate(group), np.r_[0, np.cumsum([len(s) for s in group])]

    got = jaccard_sets(packed(left), packed(right))
    for g, a, b in zip(got, left, right):
        sa, sb = set(a.tolist()), set(b.tolist())
        assert g == pytest.approx(len(sa & sb) / len(sa | sb) if sa | sb else 1.0)


def test_buckets_link_members_to_their_smallest_node_and_cap_giants():
    keys = np.array([5, 5, 5, 7, 9, 9, 5], dtype=np.uint64)
    nodes = np.array([4, 2, 8, 1, 3, 0, 6])
    u, v, stats = bucket_edges(keys, nodes, max_bucket=3)
    assert sorted(zip(u.tolist(), v.tolist())) == [(0, 3), (2, 4), (2, 6)]
    assert stats["giant_buckets"] == 1 and stats["capped_members"] == 1


def test_connected_components_label_each_node_with_its_smallest_member():
    u = np.array([5, 3, 8, 1])
    v = np.array([3, 9, 7, 0])
    labels = connected_components(10, u, v)
    assert labels.tolist() == [0, 0, 2, 3, 4, 3, 6, 7, 7, 3]


def test_keep_policies_rank_documents():
    nbytes = np.array([10, 30, 30, 5])
    domains = ["a", "b", "c", "c"]
    assert preference("smallest-id", nbytes, domains).tolist() == [0, 1, 2, 3]
    assert preference("longest", nbytes, domains).tolist() == [2, 0, 1, 3]
    assert preference("domain-priority", nbytes, domains, ("c", "a")).tolist() == [2, 3, 0, 1]
    group = np.array([7, 7, 3, 7])
    assert keep_per_group(group, np.array([2, 1, 0, 3])).tolist() == [1, 1, 2, 1]
