"""A seeded synthetic multi-domain corpus with known structure, for tests, benchmarks and the demo.

Writes ``documents/<domain>.parquet`` (documents contract), ``near_duplicates.parquet``
(every planted duplicate pair with its exact Jaccard similarity on word 5-grams; absent when
none is planted) and, when a target blend is given, ``target/documents.parquet`` plus
``target_blend.json``: held-out text drawn from a known blend of domains, so a mixture search
should put its weight there.
``documents/`` and ``target/`` are data folders (parquet only, so any parquet reader opens
each whole); the planted answers (``near_duplicates.parquet``, ``target_blend.json``) sit beside.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixlab.config import check_weights, option
from mixlab.console import log
from mixlab.errors import ConfigError
from mixlab.stage import (
    Inputs,
    Manifest,
    OutDir,
    StageDir,
    absolute_inputs,
    derive_rng,
    run_stage,
    write_json,
)
from mixlab.tables import DOCUMENT_ROW_GROUP, write_shard


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """`mixlab synth`: a seeded synthetic multi-domain corpus with planted structure."""

    domains: tuple[str, ...] = option(
        ("prose", "code", "tabular", "legal"),
        "domains to generate (any of prose, code, tabular, legal, news)",
    )
    docs_per_domain: int = option(2000, "documents generated per domain (before planted duplicates)")
    doc_words: int = option(300, "mean document length in words (~6 bytes each)")
    near_dup_clusters: int = option(100, "planted near-duplicate clusters per domain")
    near_dup_levels: tuple[float, ...] = option(
        (0.95, 0.9, 0.85, 0.7, 0.5),
        "target Jaccard similarities (word 5-grams) of planted near-duplicates to their source",
    )
    exact_dups: int = option(20, "planted exact duplicates per domain")
    target_blend: dict[str, float] = option(
        {}, "domains and weights of a held-out target validation set, e.g. prose=0.7,code=0.3"
    )
    target_docs: int = option(400, "documents in the target validation set")
    seed: int = option(0, "global seed; everything random derives from it")

    def __post_init__(self) -> None:
        from mixlab.synth import DOMAIN_GENERATORS

        unknown = [d for d in self.domains if d not in DOMAIN_GENERATORS]
        if unknown:
            raise ConfigError(
                f"--domains: unknown domain(s) {unknown} (known: {', '.join(DOMAIN_GENERATORS)})"
            )
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"--domains: listed twice: {list(self.domains)}")
        if self.docs_per_domain < 1:
            raise ConfigError("--docs-per-domain: must be at least 1")
        if self.doc_words < 20:
            raise ConfigError("--doc-words: must be at least 20 (a document needs several 5-gram shingles)")
        if self.near_dup_clusters < 0 or self.exact_dups < 0:
            raise ConfigError("--near-dup-clusters / --exact-dups: must not be negative")
        if self.near_dup_clusters > self.docs_per_domain:
            raise ConfigError("--near-dup-clusters: cannot exceed --docs-per-domain")
        if any(not 0.0 < x < 1.0 for x in self.near_dup_levels):
            raise ConfigError("--near-dup-levels: each level must lie strictly between 0 and 1")
        if self.target_blend:
            check_weights(self.target_blend, "target_blend")
            missing = [d for d in self.target_blend if d not in self.domains]
            if missing:
                raise ConfigError(
                    f"--target-blend: domain(s) {missing} are not in --domains {list(self.domains)}"
                )
        if self.target_docs < 1:
            raise ConfigError("--target-docs: must be at least 1")


TARGET_DIR = "target"  # the target's documents: a data folder, parquet only
TARGET_BLEND = (
    "target_blend.json"  # the planted answer, beside it: {"blend": {domain: weight}, "documents": n}
)

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


def _make_words(rng: np.random.Generator, style: str, n: int, taken: set[str]) -> list[str]:
    """`n` new pronounceable words in a domain's letter style (so domains differ in characters too).

    Each word is 1-4 consonant+vowel syllables and, two times in five, a closing consonant.
    The draws come in batches; only the dedup against words already taken is a Python loop.
    """
    cons = np.array(_CONSONANTS[style], dtype=object)
    vows = np.array(_VOWELS[style], dtype=object)
    words: list[str] = []
    while len(words) < n:
        batch = 2 * (n - len(words)) + 16  # headroom for candidates that are already taken
        syllables = rng.integers(1, 5, batch)
        pieces = (
            cons[rng.integers(len(cons), size=(batch, 4))] + vows[rng.integers(len(vows), size=(batch, 4))]
        )
        tails = np.where(rng.random(batch) < 0.4, cons[rng.integers(len(cons), size=batch)], "")
        for row, k, tail in zip(pieces, syllables, tails):
            w = "".join(row[:k]) + tail
            if w not in taken:
                taken.add(w)
                words.append(w)
                if len(words) == n:
                    break
    return words


def _zipf_cdf(k: int, s: float = 1.1) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** s
    return np.cumsum(p / p.sum())


class _Vocab:
    """Per-seed vocabularies: a common pool shared by the prose-like domains, plus each domain's own.

    Also each Markov domain's successor table, drawn once per seed and name: a domain is one
    generative process, so its documents and the held-out target's documents of that domain
    are samples of the same language (a target drawn from another chain would share only the
    words, and a model that learns the corpus's prose would get *worse* on the target's).
    """

    def __init__(self, seed: int):
        taken: set[str] = set()
        self.seed = seed
        self.common = _make_words(derive_rng(seed, "vocab", "common"), "prose", 300, taken)
        self.own = {
            style: _make_words(
                derive_rng(seed, "vocab", style), style, 2500 if style != "tabular" else 300, taken
            )
            for style in _CONSONANTS
        }
        self._chains: dict[str, np.ndarray] = {}

    def chain(self, name: str, size: int, successors: int) -> np.ndarray:
        """(size, successors) successor table of the Markov process `name`, the same on every call."""
        if name not in self._chains:
            self._chains[name] = derive_rng(self.seed, "chain", name).integers(
                0, size, size=(size, successors)
            )
        return self._chains[name]


# --- domain generators: (rng, vocab, n_docs, mean_words) -> list of texts -------------------


def _markov_docs(
    rng: np.random.Generator, words: Sequence[str], succ: np.ndarray, n_docs: int, mean_words: int
) -> list[str]:
    """Word-level first-order Markov text: word i is followed by one of ``succ[i]``, Zipf-weighted.

    Vectorised over documents: one numpy step per word position, not per word.
    """
    vocab = np.array(words, dtype=object)
    v, successors = succ.shape
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
    words = vocab.common + vocab.own["prose"]
    return _markov_docs(rng, words, vocab.chain("prose", len(words), 24), n, mean_words)


def _news(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    # Shares the common pool and a slice of prose's own words: a domain related to prose.
    words = vocab.common + vocab.own["prose"][:800] + vocab.own["news"][:1500]
    return _markov_docs(rng, words, vocab.chain("news", len(words), 24), n, mean_words)


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


def _lines_to_docs(lines: pa.Array, lines_per_doc: Sequence[int], header: str | None = None) -> list[str]:
    """Join consecutive lines into documents (`lines_per_doc` lines each), one vectorised pass."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(lines_per_doc)]), pa.int32())
    docs = pc.binary_join(pa.ListArray.from_arrays(offsets, lines), "\n")
    if header is not None:
        docs = pc.binary_join_element_wise(header, docs, "\n")
    return docs.to_pylist()


def _format_lines(templates: Sequence[str], which: np.ndarray, fields: dict[str, pa.Array]) -> pa.Array:
    """Line k is ``templates[which[k]].format(**{name: fields[name][k]})``, vectorised per template."""
    parts, positions = [], []
    for t, template in enumerate(templates):
        rows = np.flatnonzero(which == t)
        if rows.size == 0:
            continue
        pieces: list[Any] = []
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            if literal:
                pieces.append(literal)
            if name is not None:
                pieces.append(fields[name].take(pa.array(rows)))
        if all(isinstance(p, str) for p in pieces):
            parts.append(pa.array(["".join(pieces)] * rows.size, pa.string()))
        else:
            parts.append(pc.binary_join_element_wise(*pieces, ""))
        positions.append(rows)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return pa.concat_arrays(parts).take(pa.array(order))


def _as_text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _code(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    parts = vocab.own["code"][:120]
    idents = [f"{a}_{b}" for a, b in itertools.islice(itertools.product(parts[:40], parts[40:120]), 800)]
    classes = [i.title().replace("_", "") for i in idents]
    comment_words = vocab.common[:150]
    t_cdf = _zipf_cdf(len(_CODE_TEMPLATES), 0.8)
    id_cdf = _zipf_cdf(len(idents), 1.05)
    # The draws are per document (each has its own small set of identifiers); the formatting
    # of every line of every document is one vectorised pass below.
    n_lines, tpls, picks, nums, words = [], [], [], [], []
    for _ in range(n):
        lines_wanted = max(2, int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1)) // 4)
        local = np.minimum(np.searchsorted(id_cdf, rng.random(12)), len(idents) - 1)
        tpls.append(np.minimum(np.searchsorted(t_cdf, rng.random(lines_wanted)), len(t_cdf) - 1))
        picks.append(local[rng.integers(0, len(local), size=(lines_wanted, 3))])
        nums.append(rng.integers(0, 64, lines_wanted))
        words.append(rng.integers(0, len(comment_words), lines_wanted))
        n_lines.append(lines_wanted)
    pick = np.concatenate(picks)
    ident_arr, class_arr = pa.array(idents, pa.string()), pa.array(classes, pa.string())
    w = pa.array(comment_words, pa.string()).take(pa.array(np.concatenate(words)))
    fields = {
        "a": ident_arr.take(pa.array(pick[:, 0])),
        "b": ident_arr.take(pa.array(pick[:, 1])),
        "c": ident_arr.take(pa.array(pick[:, 2])),
        "A": class_arr.take(pa.array(pick[:, 0])),
        "B": class_arr.take(pa.array(pick[:, 1])),
        "n": _as_text(np.concatenate(nums)),
        "q": pc.binary_join_element_wise('"', w, '"', ""),
        "w": w,
    }
    templates = ["    " * indent + template for template, indent in _CODE_TEMPLATES]
    return _lines_to_docs(_format_lines(templates, np.concatenate(tpls), fields), n_lines)


def _money(cents: np.ndarray) -> pa.Array:
    """Integer cents as ``1234.05`` strings (what ``f"{x:.2f}"`` prints), vectorised."""
    whole, frac = _as_text(cents // 100), pc.utf8_lpad(_as_text(cents % 100), 2, "0")
    return pc.binary_join_element_wise(whole, frac, ".")


def _tabular(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    regions = vocab.own["tabular"][:12]
    products = vocab.own["tabular"][12:80]
    product_cdf = _zipf_cdf(len(products))
    # Draws per document, formatting of all rows at once.
    n_rows, days, region, product, qty, cents = [], [], [], [], [], []
    for _ in range(n):
        rows = max(2, int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1)) // 6)
        days.append(rng.integers(0, 3650, size=rows))
        region.append(rng.integers(0, len(regions), rows))
        product.append(np.minimum(np.searchsorted(product_cdf, rng.random(rows)), len(products) - 1))
        qty.append(rng.integers(1, 50, rows))
        # Prices in whole cents, so totals (qty * price) are exact.
        cents.append(np.rint(np.round(rng.lognormal(3, 1, rows), 2) * 100).astype(np.int64))
        n_rows.append(rows)
    dates = (np.datetime64("2015-01-01") + np.concatenate(days).astype("timedelta64[D]")).astype(str)
    q, c = np.concatenate(qty), np.concatenate(cents)
    lines = pc.binary_join_element_wise(
        pa.array(dates, pa.string()),
        pa.array(regions, pa.string()).take(pa.array(np.concatenate(region))),
        pa.array(products, pa.string()).take(pa.array(np.concatenate(product))),
        _as_text(q),
        _money(c),
        _money(q * c),
        " ",
    )
    return _lines_to_docs(lines, n_rows, header="date region product qty price total")


_MONTHS = ["January", "March", "June", "October"]


def _legal(rng: np.random.Generator, vocab: _Vocab, n: int, mean_words: int) -> list[str]:
    words = vocab.common[:150] + vocab.own["legal"][:1200]
    # Boilerplate: few clauses, reused. The clause book belongs to the domain (drawn from the
    # seed, not from this call's stream), so every sample of legal text quotes the same clauses.
    clauses = _markov_docs(
        derive_rng(vocab.seed, "clauses", "legal"), words, vocab.chain("legal", len(words), 6), 200, 18
    )
    parties = [
        w.capitalize() + " " + s
        for w, s in zip(vocab.own["legal"][1200:1260], itertools.cycle(["Ltd", "LLC", "Inc", "GmbH"]))
    ]
    c_cdf = _zipf_cdf(len(clauses), 0.7)
    # Every sentence is "<k>. <clause> The <A> shall pay the <B> <amount> on <d> <Month> <yyyy>.":
    # the clause's words plus 14, so the sentences a document needs follow from its clause draws.
    sentence_words = np.array([len(c.split()) for c in clauses]) + 14
    texts = []
    for _ in range(n):  # per document: a handful of batched draws, then one f-string per sentence
        target_words = int(rng.integers(mean_words // 2, mean_words * 3 // 2 + 1))
        a, b = rng.choice(len(parties), 2, replace=False)
        picks = np.minimum(np.searchsorted(c_cdf, rng.random(target_words // 15 + 1)), len(clauses) - 1)
        m = int(np.searchsorted(np.cumsum(sentence_words[picks]), target_words)) + 1
        picks = picks[:m]
        day, month = rng.integers(1, 29, m), rng.integers(0, len(_MONTHS), m)
        year, amount = rng.integers(1990, 2026, m), rng.integers(100, 99999, m)
        texts.append(
            "\n".join(
                f"{k + 1}. {clauses[picks[k]]} The {parties[a]} shall pay the {parties[b]} {amount[k]} "
                f"on {day[k]} {_MONTHS[month[k]]} {year[k]}."
                for k in range(m)
            )
        )
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
    return set(zip(*(words[i:] for i in range(n))))


def jaccard(a: str, b: str, n: int = SHINGLE_WORDS) -> float:
    """Exact Jaccard similarity of two texts' word n-gram sets (the reference, not the fast path)."""
    return _set_jaccard(word_shingles(a, n), word_shingles(b, n))


def _set_jaccard(sa: set, sb: set) -> float:
    if not sa and not sb:
        return 1.0
    inter = len(sa & sb)
    return inter / (len(sa) + len(sb) - inter)


_WHITESPACE = re.compile(r"(\s+)")


def near_duplicate(rng: np.random.Generator, text: str, level: float, fill: Sequence[str]) -> str:
    """A copy of `text` whose word 5-gram Jaccard with it is close to `level`.

    Changing k of the N shingles gives J = (N - k) / (N + k), so k = N (1 - J) / (1 + J).
    A replaced word at position p >= 4 (and at least 5 from the end) lies in exactly 5
    shingles, so such edits 5 apart change 5 shingles each; one edit at position p < 4 changes
    p + 1, which makes up the remainder. Words are whitespace-split as in the shingles, and
    the text's own whitespace (newlines, indentation) is kept.
    """
    parts = _WHITESPACE.split(text)  # word, space, word, ...: words at even positions
    word_at = [i for i in range(0, len(parts), 2) if parts[i]]
    n_words = len(word_at)
    n_sh = max(1, n_words - SHINGLE_WORDS + 1)
    changed = max(1, round(n_sh * (1 - level) / (1 + level)))
    full, rest = divmod(changed, SHINGLE_WORDS)
    # Slots start at 2n-2 so their shingles (p-4..p) miss the first n-1, which the remainder uses.
    slots = np.arange(2 * SHINGLE_WORDS - 2, n_words - SHINGLE_WORDS + 1, SHINGLE_WORDS)
    positions = rng.choice(slots, size=min(full, len(slots)), replace=False).tolist()
    if rest and rest <= n_words:
        positions.append(rest - 1)
    for p in positions:
        new = fill[int(rng.integers(len(fill)))]
        i = word_at[p]
        parts[i] = new if new != parts[i] else new + "x"
    return "".join(parts)


def _domain_documents(cfg: SynthConfig, domain: str, vocab: _Vocab) -> tuple[pa.Table, list[dict[str, Any]]]:
    rng = derive_rng(cfg.seed, "docs", domain)
    texts = DOMAIN_GENERATORS[domain](rng, vocab, cfg.docs_per_domain, cfg.doc_words)
    fill = vocab.own[domain][:500]
    dup_rng = derive_rng(cfg.seed, "dups", domain)
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
    shingles: dict[int, set] = {}  # each planted text is in several pairs: shingle it once
    for members in groups.values():
        for i in members:
            shingles[i] = word_shingles(texts[i])
        for a, b in itertools.combinations(sorted(set(members)), 2):
            j = _set_jaccard(shingles[a], shingles[b])
            exact = texts[a].split() == texts[b].split()
            pairs.append(
                {
                    "id_a": ids[a],
                    "id_b": ids[b],
                    "domain": domain,
                    "jaccard": j,
                    "kind": "exact" if exact else "near",
                }
            )
    return table, pairs


def run_synth(
    inputs: Inputs, cfg: SynthConfig, out_dir: OutDir, client: Any = None, *, force: bool = False
) -> Manifest:
    """Generate the corpus into `out_dir` (atomically); see the module docstring for the layout.

    `inputs` is empty (``{}``): everything derives from `cfg.seed`. Runs in this process;
    `client` is accepted for the stage contract and unused.
    """
    inputs = absolute_inputs(inputs)

    def body(stage: StageDir) -> tuple[dict[str, Any], dict[str, Any]]:
        vocab = _Vocab(cfg.seed)
        counts: dict[str, Any] = {"documents": 0, "bytes": 0}
        per_domain: dict[str, Any] = {}
        all_pairs: list[dict[str, Any]] = []
        for domain in cfg.domains:
            table, pairs = _domain_documents(cfg, domain, vocab)
            write_shard(
                table, stage.out / "documents" / f"{domain}.parquet", row_group_size=DOCUMENT_ROW_GROUP
            )
            nbytes = int(pc.sum(pc.binary_length(table["text"])).as_py())
            per_domain[domain] = {"documents": table.num_rows, "bytes": nbytes, "planted_pairs": len(pairs)}
            counts["documents"] += table.num_rows
            counts["bytes"] += nbytes
            all_pairs.extend(pairs)
            log(
                f"synth: {domain}: {table.num_rows} documents, {nbytes / 1e6:.1f} MB, {len(pairs)} planted pairs"
            )
        truth = pa.Table.from_pylist(
            all_pairs,
            schema=pa.schema(
                [
                    ("id_a", pa.string()),
                    ("id_b", pa.string()),
                    ("domain", pa.string()),
                    ("jaccard", pa.float64()),
                    ("kind", pa.string()),
                ]
            ),
        )
        # none planted (--near-dup-clusters 0 --exact-dups 0): no file, as HF datasets refuses 0-row parquet
        write_shard(truth, stage.out / "near_duplicates.parquet")
        stats: dict[str, Any] = {"domains": per_domain, "planted_pairs": len(all_pairs)}
        if cfg.target_blend:
            stats["target"] = _write_target(cfg, vocab, stage.out)
        return counts, stats

    return run_stage("synth", cfg, inputs, out_dir, body, force=force)


def _write_target(cfg: SynthConfig, vocab: _Vocab, out: Path) -> dict[str, Any]:
    """Held-out documents from the blend's domains (a fresh random stream, so none are in the corpus)."""
    domains = list(cfg.target_blend)
    counts = np.floor(np.array([cfg.target_blend[d] for d in domains]) * cfg.target_docs).astype(int)
    counts[0] += cfg.target_docs - counts.sum()
    ids, texts, source = [], [], []
    for domain, k in zip(domains, counts):
        if k == 0:
            continue
        docs = DOMAIN_GENERATORS[domain](derive_rng(cfg.seed, "target", domain), vocab, int(k), cfg.doc_words)
        ids += [f"target-{domain}-{i:06d}" for i in range(len(docs))]
        texts += docs
        source += [domain] * len(docs)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "domain": pa.array(["target"] * len(ids), pa.string()),
            "text": pa.array(texts, pa.string()),
            "source_domain": pa.array(source, pa.string()),
        }
    )
    write_shard(table, out / TARGET_DIR / "documents.parquet")
    write_json(out / TARGET_BLEND, {"blend": dict(cfg.target_blend), "documents": len(ids)})
    return {"blend": dict(cfg.target_blend), "documents": len(ids)}
