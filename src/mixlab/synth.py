"""A seeded synthetic multi-domain corpus with known structure, for tests, benchmarks and the demo.

Writes ``documents/<domain>.parquet`` (documents contract), ``near_duplicates.parquet``
(every planted duplicate pair with its exact Jaccard similarity on word 5-grams) and, when a
target blend is given, ``target/documents.parquet`` plus ``target/blend.json``: held-out text
drawn from a known blend of domains, so a mixture search should put its weight there.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from mixlab.config import SynthConfig
from mixlab.io import Manifest, StageDir, log, run_stage, write_json, write_table

SHINGLE_WORDS = 5  # the ground truth's shingle: word 5-grams of the whitespace-split text

# --- vocabularies ----------------------------------------------------------------------------

_CONSONANTS = {
    "prose": list("bcdfghlmnprstvw"),
    "legal": ["th", "r", "s", "t", "n", "l", "d", "c", "p", "m", "g", "v"],
    "news": list("bcdfgklmnprstvz"),
    "code": list("bcdfgklmnprstxz"),
    "tabular": list("bdkmnprstv"),
}
_VOWELS = {
    "prose": ["a", "e", "i", "o", "u", "ea", "ou"],
    "legal": ["e", "i", "a", "o", "io", "ue"],
    "news": ["a", "e", "i", "o", "u", "ai", "ee"],
    "code": ["a", "e", "i", "o", "u"],
    "tabular": ["a", "e", "i", "o"],
}


def _rng(seed: int, *names: object) -> np.random.Generator:
    """A generator derived from the global seed and a name path, independent of call order."""
    key = xxhash.xxh3_64_intdigest(("/".join(map(str, names))).encode(), seed=seed)
    return np.random.default_rng(key)


def _make_words(rng: np.random.Generator, style: str, n: int, taken: set[str]) -> list[str]:
    """`n` new pronounceable words in a domain's letter style (so domains differ in characters too)."""
    cons, vows = _CONSONANTS[style], _VOWELS[style]
    words: list[str] = []
    while len(words) < n:
        syllables = int(rng.integers(1, 5))
        w = "".join(cons[rng.integers(len(cons))] + vows[rng.integers(len(vows))] for _ in range(syllables))
        if rng.random() < 0.4:
            w += cons[rng.integers(len(cons))]
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def _zipf_cdf(k: int, s: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** s
    return np.cumsum(p / p.sum())


class _Vocab:
    """Per-seed vocabularies: a common pool shared by the prose-like domains, plus each domain's own."""

    def __init__(self, seed: int):
        taken: set[str] = set()
        self.common = _make_words(_rng(seed, "vocab", "common"), "prose", 300, taken)
        self.own = {
            style: _make_words(_rng(seed, "vocab", style), style, 2500 if style != "tabular" else 300, taken)
            for style in _CONSONANTS
        }


# --- domain generators: (rng, vocab, n_docs, mean_words) -> list of texts -------------------


def _markov_docs(
    rng: np.random.Generator, words: Sequence[str], n_docs: int, mean_words: int, successors: int = 24
) -> list[str]:
    """Word-level first-order Markov text: every word has a few Zipf-weighted successors.

    Vectorised over documents: one numpy step per word position, not per word.
    """
    vocab = np.array(words, dtype=object)
    v = len(vocab)
    succ = rng.integers(0, v, size=(v, successors))
    cdf = _zipf_cdf(successors)
    lengths = rng.integers(mean_words // 2, mean_words * 3 // 2 + 1, size=n_docs)
    steps = int(lengths.max())
    idx = np.empty((n_docs, steps), dtype=np.int64)
    state = np.minimum(np.searchsorted(_zipf_cdf(v, 1.0), rng.random(n_docs)), v - 1)
    for t in range(steps):
        idx[:, t] = state
        choice = np.minimum(np.searchsorted(cdf, rng.random(n_docs)), successors - 1)
        state = succ[state, choice]
    tokens = vocab[idx]
    # Sentence ends: a period on roughly one word in twelve, then a capitalised word.
    ends = rng.random((n_docs, steps)) < 1 / 12
    texts = []
    for i in range(n_docs):  # per document (thousands), not per word
        row = tokens[i, : lengths[i]].copy()
        e = np.flatnonzero(ends[i, : lengths[i] - 1])
        row[e] = [w + "." for w in row[e]]
        starts = np.concatenate([[0], e + 1])
        row[starts] = [w.capitalize() for w in row[starts]]
        texts.append(" ".join(row) + ".")
    return texts


def _prose(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    return _markov_docs(rng, vocab.common + vocab.own["prose"], n, mean_words)


def _news(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    # Shares the common pool and a slice of prose's own words: a domain related to prose.
    return _markov_docs(rng, vocab.common + vocab.own["prose"][:800] + vocab.own["news"][:1500], n, mean_words)


_CODE_TEMPLATES = [
    ("def {a}({b}, {c}):", 0),
    ("return {a}({b})", 1),
    ("{a} = {b} + {c}", 1),
    ("{a} = {b}.{c}({n})", 1),
    ("if {a} > {n}:", 1),
    ("{a}.append({b})", 2),
    ("for {a} in range({n}):", 1),
    ("{a} += {b}[{c}]", 2),
    ("import {a}", 0),
    ("from {a} import {b}", 0),
    ("class {A}({B}):", 0),
    ("self.{a} = {b}", 2),
    ("# {w} {w} {w} {w}", 1),
    ("raise {A}Error({q})", 2),
    ("while {a} < {b}:", 1),
    ("print({q}, {a})", 2),
]


def _code(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    parts = vocab.own["code"][:120]
    idents = [f"{a}_{b}" for a, b in itertools.islice(itertools.product(parts[:40], parts[40:120]), 800)]
    classes = [i.title().replace("_", "") for i in idents]
    comment_words = vocab.common[:150]
    t_cdf = _zipf_cdf(len(_CODE_TEMPLATES), 0.8)
    id_cdf = _zipf_cdf(len(idents), 1.05)
    texts = []
    for _ in range(n):  # per-line formatting is inherent to templated code; the draws are batched
        lines_wanted = max(2, int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1)) // 4)
        local = np.minimum(np.searchsorted(id_cdf, rng.random(12)), len(idents) - 1)
        tpl = np.minimum(np.searchsorted(t_cdf, rng.random(lines_wanted)), len(t_cdf) - 1)
        pick = local[rng.integers(0, len(local), size=(lines_wanted, 3))]
        nums = rng.integers(0, 64, lines_wanted)
        words = rng.integers(0, len(comment_words), lines_wanted)
        lines = []
        for k in range(lines_wanted):
            template, indent = _CODE_TEMPLATES[tpl[k]]
            a, b, c = pick[k]
            w = comment_words[words[k]]
            lines.append("    " * indent + template.format(
                a=idents[a], b=idents[b], c=idents[c], A=classes[a], B=classes[b],
                n=nums[k], q=f'"{w}"', w=w,
            ))
        texts.append("\n".join(lines))
    return texts


def _tabular(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    regions = vocab.own["tabular"][:12]
    products = vocab.own["tabular"][12:80]
    texts = []
    for _ in range(n):
        rows = max(2, int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1)) // 6)
        day = rng.integers(0, 3650, size=rows)
        dates = (np.datetime64("2015-01-01") + day.astype("timedelta64[D]")).astype(str)
        region = np.array(regions)[rng.integers(0, len(regions), rows)]
        product = np.array(products)[np.minimum(np.searchsorted(_zipf_cdf(len(products)), rng.random(rows)), len(products) - 1)]
        qty = rng.integers(1, 50, rows)
        price = np.round(rng.lognormal(3, 1, rows), 2)
        header = "date region product qty price total"
        body = [
            f"{d} {r} {p} {q} {c:.2f} {q * c:.2f}"
            for d, r, p, q, c in zip(dates, region, product, qty, price)
        ]
        texts.append("\n".join([header, *body]))
    return texts


def _legal(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    words = vocab.common[:150] + vocab.own["legal"][:1200]
    clause_rng = np.random.default_rng(int(rng.integers(2**63)))
    clauses = _markov_docs(clause_rng, words, 200, 18, successors=6)  # boilerplate: few, reused clauses
    parties = [w.capitalize() + " " + s for w, s in zip(vocab.own["legal"][1200:1260], itertools.cycle(["Ltd", "LLC", "Inc", "GmbH"]))]
    c_cdf = _zipf_cdf(len(clauses), 0.7)
    texts = []
    for _ in range(n):
        target_words = int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1))
        out, count, k = [], 0, 1
        a, b = rng.choice(len(parties), 2, replace=False)
        while count < target_words:
            clause = clauses[min(int(np.searchsorted(c_cdf, rng.random())), len(clauses) - 1)]
            date = f"{int(rng.integers(1, 29))} {['January', 'March', 'June', 'October'][int(rng.integers(4))]} {int(rng.integers(1990, 2026))}"
            sentence = (
                f"{k}. {clause} The {parties[a]} shall pay the {parties[b]} {int(rng.integers(100, 99999))} "
                f"on {date}."
            )
            out.append(sentence)
            count += len(sentence.split())
            k += 1
        texts.append("\n".join(out))
    return texts


DOMAIN_GENERATORS: dict[str, Callable[[np.random.Generator, _Vocab, int, int], list[str]]] = {
    "prose": _prose,
    "code": _code,
    "tabular": _tabular,
    "legal": _legal,
    "news": _news,
}

# --- planted duplicates and their ground truth -------------------------------------------


def word_shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    """The ground truth's shingles: word n-grams of the whitespace-split text (a short text is one shingle)."""
    words = text.split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int = SHINGLE_WORDS) -> float:
    """Exact Jaccard similarity of two texts' word n-gram sets (the reference, not the fast path)."""
    sa, sb = word_shingles(a, n), word_shingles(b, n)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def near_duplicate(rng: np.random.Generator, text: str, level: float, fill: Sequence[str]) -> str:
    """A copy of `text` whose word 5-gram Jaccard with it is close to `level`.

    Replacing one word (with 5+ words between edits) changes 5 of N shingles on each side,
    so J = (N - 5e) / (N + 5e); solve for the number of edits e.
    """
    words = text.split(" ")
    n_sh = max(1, len(words) - SHINGLE_WORDS + 1)
    edits = max(1, round(n_sh * (1 - level) / (SHINGLE_WORDS * (1 + level))))
    slots = np.arange(2, max(3, len(words) - 2), SHINGLE_WORDS)
    positions = rng.choice(slots, size=min(edits, len(slots)), replace=False)
    for p in positions:
        new = fill[int(rng.integers(len(fill)))]
        words[p] = new if new != words[p] else new + "x"
    return " ".join(words)


def _domain_documents(cfg: SynthConfig, domain: str, vocab: _Vocab) -> tuple[pa.Table, list[dict[str, Any]]]:
    rng = _rng(cfg.seed, "docs", domain)
    texts = DOMAIN_GENERATORS[domain](rng, vocab, cfg.docs_per_domain, cfg.doc_words)
    fill = vocab.own[domain][:500]
    dup_rng = _rng(cfg.seed, "dups", domain)
    origin = list(range(len(texts)))  # index of the document each text was derived from
    # Near-duplicate clusters: one source, one to three variants at the configured levels.
    sources = dup_rng.choice(len(texts), size=cfg.near_dup_clusters, replace=False)
    levels = itertools.cycle(cfg.near_dup_levels)
    for s in sources:
        for _ in range(int(dup_rng.integers(1, 4))):
            texts.append(near_duplicate(dup_rng, texts[s], next(levels), fill))
            origin.append(int(s))
    # Exact duplicates: byte-identical copies, or copies with only whitespace changed.
    for k, s in enumerate(dup_rng.choice(cfg.docs_per_domain, size=cfg.exact_dups, replace=True)):
        t = texts[s]
        texts.append(t if k % 2 == 0 else "  " + t.replace(" ", "  ", 3) + "\n")
        origin.append(int(s))

    # Opaque ids: shuffle so neither id order nor position reveals which copy is the source.
    order = dup_rng.permutation(len(texts))
    ids = np.empty(len(texts), dtype=object)
    ids[order] = [f"{domain}-{k:07d}" for k in range(len(texts))]
    table = pa.table(
        {
            "id": pa.array([ids[i] for i in np.argsort(order)], pa.string()),
            "domain": pa.array([domain] * len(texts), pa.string()),
            "text": pa.array([texts[i] for i in np.argsort(order)], pa.string()),
        }
    )
    # Ground truth: every pair within a planted group, with its exact Jaccard.
    groups: dict[int, list[int]] = {}
    for i, o in enumerate(origin):
        if i != o and o >= 0:
            groups.setdefault(o, [o]).append(i)
    pairs = []
    for members in groups.values():
        for a, b in itertools.combinations(sorted(set(members)), 2):
            j = jaccard(texts[a], texts[b])
            exact = texts[a].split() == texts[b].split()
            pairs.append(
                {"id_a": ids[a], "id_b": ids[b], "domain": domain,
                 "jaccard": j, "kind": "exact" if exact else "near"}
            )
    return table, pairs


def run_synth(cfg: SynthConfig, out_dir: Path | str, *, force: bool = False) -> Manifest:
    """Generate the corpus into `out_dir` (atomically); see the module docstring for the layout."""

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        vocab = _Vocab(cfg.seed)
        counts: dict[str, Any] = {"documents": 0, "bytes": 0}
        per_domain: dict[str, Any] = {}
        all_pairs: list[dict[str, Any]] = []
        for domain in cfg.domains:
            table, pairs = _domain_documents(cfg, domain, vocab)
            write_table(table, stage.out / "documents" / f"{domain}.parquet")
            nbytes = sum(len(t.encode()) for t in table["text"].to_pylist())
            per_domain[domain] = {"documents": table.num_rows, "bytes": nbytes, "planted_pairs": len(pairs)}
            counts["documents"] += table.num_rows
            counts["bytes"] += nbytes
            all_pairs.extend(pairs)
            log(f"synth: {domain}: {table.num_rows} documents, {nbytes / 1e6:.1f} MB, {len(pairs)} planted pairs")
        truth = pa.Table.from_pylist(
            all_pairs,
            schema=pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("domain", pa.string()),
                              ("jaccard", pa.float64()), ("kind", pa.string())]),
        )
        write_table(truth, stage.out / "near_duplicates.parquet")
        stats: dict[str, Any] = {"domains": per_domain, "planted_pairs": len(all_pairs)}
        if cfg.target_blend:
            stats["target"] = _write_target(cfg, vocab, stage.out / "target")
        return counts, stats

    return run_stage("synth", cfg, {}, out_dir, body, force=force)


def _write_target(cfg: SynthConfig, vocab: _Vocab, out: Path) -> dict[str, Any]:
    """Held-out documents from the blend's domains (a fresh random stream, so none are in the corpus)."""
    domains = list(cfg.target_blend)
    counts = np.floor(np.array([cfg.target_blend[d] for d in domains]) * cfg.target_docs).astype(int)
    counts[0] += cfg.target_docs - counts.sum()
    ids, texts, source = [], [], []
    for domain, k in zip(domains, counts):
        if k == 0:
            continue
        docs = DOMAIN_GENERATORS[domain](_rng(cfg.seed, "target", domain), vocab, int(k), cfg.doc_words)
        ids += [f"target-{domain}-{i:06d}" for i in range(len(docs))]
        texts += docs
        source += [domain] * len(docs)
    table = pa.table(
        {"id": pa.array(ids, pa.string()), "domain": pa.array(["target"] * len(ids), pa.string()),
         "text": pa.array(texts, pa.string()), "source_domain": pa.array(source, pa.string())}
    )
    write_table(table, out / "documents.parquet")
    write_json(out / "blend.json", {"blend": dict(cfg.target_blend), "documents": len(ids)})
    return {"blend": dict(cfg.target_blend), "documents": len(ids)}
