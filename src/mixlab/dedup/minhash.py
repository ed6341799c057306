"""MinHash signatures, LSH banding and exact Jaccard, over whole batches of shingle hashes.

Signatures use datasketch 2.x's default "affine32" scheme: each 32-bit shingle hash is
pre-mixed with the MurmurHash3 32-bit finaliser, then permuted as ``a * h + b mod 2**32``
with (a, b) drawn exactly as ``datasketch.MinHash(num_perm, seed)`` draws them, so
``datasketch.LeanMinHash(seed=seed, hashvalues=row, scheme="affine32")`` is the same sketch.
"""

from __future__ import annotations

import numpy as np

from mixlab.dedup.shingles import FOLD, fmix

SCHEME = "affine32"  # the datasketch permutation scheme these signatures follow
EMPTY_VALUE = np.uint32(0xFFFFFFFF)  # a signature value no shingle reached (datasketch's initial value)
CHUNK_SHINGLES = 1 << 20  # shingles hashed per permutation pass (4 MiB of uint32)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays as datasketch's MinHash(num_perm, seed) draws them for affine32."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def signatures(hashes: np.ndarray, offsets: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures of documents' shingle-hash sets.

    One permutation at a time over a chunk of shingles: a 1-D multiply, add and segmented
    min (``reduceat``) per permutation is several times faster in numpy than the 2-D
    (shingles x permutations) form. Chunks bound memory whatever the document size (a 10 MB
    document spans many chunks); a document without shingles keeps EMPTY_VALUE.
    """
    a, b = perms
    n_docs, num_perm = len(offsets) - 1, len(a)
    sig_t = np.full((num_perm, n_docs), EMPTY_VALUE, dtype=np.uint32)  # (P, D): rows written whole
    total = len(hashes)
    if total == 0:
        return np.ascontiguousarray(sig_t.T)
    mixed = fmix(hashes.astype(np.uint32, copy=False))
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    buf = np.empty(min(total, CHUNK_SHINGLES), dtype=np.uint32)
    for lo in range(0, total, CHUNK_SHINGLES):
        hi = min(total, lo + CHUNK_SHINGLES)
        h, vals = mixed[lo:hi], buf[: hi - lo]
        docs = doc_of[lo:hi]
        seg = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])  # where the owning document changes
        owners = docs[seg]
        first = lo == 0 or doc_of[lo - 1] != docs[0]
        last = hi == total or doc_of[hi] != docs[-1]
        whole = first and last  # no document straddles this chunk: assign instead of min-merge
        for p in range(num_perm):
            np.multiply(h, a[p], out=vals)  # wraps mod 2**32, as datasketch's uint32 arithmetic
            np.add(vals, b[p], out=vals)
            mins = np.minimum.reduceat(vals, seg)
            if whole:
                sig_t[p, owners] = mins
            else:
                sig_t[p, owners] = np.minimum(sig_t[p, owners], mins)
    return np.ascontiguousarray(sig_t.T)


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Chance that a pair with Jaccard `s` shares at least one band: 1 - (1 - s**r)**b."""
    return 1.0 - (1.0 - np.asarray(s, dtype=float) ** rows) ** bands


def choose_bands(threshold: float, num_perm: int, recall: float) -> tuple[int, int]:
    """(bands, rows) with the most rows (fewest chance candidates) that still catch a pair at
    `threshold` with probability >= `recall`; bands x rows <= num_perm.

    More rows sharpen the S-curve and cut false candidates; the recall floor keeps its knee
    below the threshold. Falls back to rows=1 (every permutation its own band).
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if bands and candidate_probability(threshold, bands, rows) >= recall:
            return bands, rows
    return num_perm, 1


def knee(bands: int, rows: int) -> float:
    """Similarity where the S-curve crosses 1/2 (approximately (1/b)**(1/r))."""
    return float((1.0 - 0.5 ** (1.0 / bands)) ** (1.0 / rows))


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) uint64 bucket keys: each band's `rows` values folded and mixed into 64 bits."""
    n_docs = sig.shape[0]
    keys = np.zeros((n_docs, bands), dtype=np.uint64)
    view = sig[:, : bands * rows].reshape(n_docs, bands, rows).astype(np.uint64)
    for r in range(rows):
        keys = keys * FOLD + view[:, :, r]
    return fmix(keys)


def jaccard_sets(left: tuple[np.ndarray, np.ndarray], right: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Exact Jaccard of pairs of sorted, unique hash sets, all pairs at once.

    `left` and `right` are (flat hashes, offsets) with one set per pair, aligned. The sets of
    pair k are tagged with k, pooled and sorted; a value present on both sides shows up as
    two equal adjacent entries, so intersections are a bincount of equal neighbours.
    """
    lh, lo = left
    rh, ro = right
    n = len(lo) - 1
    if n == 0:
        return np.zeros(0)
    lsz, rsz = np.diff(lo), np.diff(ro)
    tag = np.concatenate(
        [np.repeat(np.arange(n, dtype=np.uint64), lsz), np.repeat(np.arange(n, dtype=np.uint64), rsz)]
    )
    pooled = np.sort((tag << np.uint64(32)) | np.concatenate([lh, rh]).astype(np.uint64))
    same = pooled[1:] == pooled[:-1]
    inter = np.bincount((pooled[1:][same] >> np.uint64(32)).astype(np.int64), minlength=n)
    union = lsz + rsz - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def jaccard_estimate(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """MinHash estimate of Jaccard for aligned rows of two signature matrices."""
    return (left == right).mean(axis=1)


def bands_summary(threshold: float, bands: int, rows: int) -> dict[str, float]:
    return {
        "bands": bands,
        "rows": rows,
        "p_candidate_at_threshold": round(float(candidate_probability(threshold, bands, rows)), 6),
        "knee": round(knee(bands, rows), 4),
        "p_candidate_at_0.5": round(float(candidate_probability(0.5, bands, rows)), 6),
    }
