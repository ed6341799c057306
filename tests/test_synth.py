"""The synthetic corpus: determinism, the documents contract, and ground truth that is actually true."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mixlab.stage import Manifest, derive_rng
from mixlab.synth import DOMAIN_GENERATORS, SynthConfig, _Vocab, near_duplicate, run_synth
from mixlab.tables import check_documents

SMALL = SynthConfig(docs_per_domain=30, doc_words=60, near_dup_clusters=3, exact_dups=3)


def shingle_set(text: str) -> frozenset[str]:
    """An independent reference: word 5-grams as joined strings (words = maximal non-space runs)."""
    words = re.findall(r"\S+", text)
    if len(words) < 5:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + 5]) for i in range(len(words) - 4))


def reference_jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def all_documents(corpus: Path) -> pl.DataFrame:
    return pl.read_parquet(corpus / "documents" / "*.parquet")


def corpus_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def test_the_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    cfg = dataclasses.replace(SMALL, target_blend={"prose": 1.0}, target_docs=10)
    run_synth({}, cfg, tmp_path / "a")
    run_synth({}, cfg, tmp_path / "b")
    run_synth({}, dataclasses.replace(cfg, seed=1), tmp_path / "c")
    a, b, c = (corpus_files(tmp_path / x) for x in "abc")
    assert a == b
    assert set(a) == set(c)
    assert all(a[name] != c[name] for name in a)


def test_a_domain_is_the_same_whichever_other_domains_are_generated(tmp_path):
    run_synth({}, dataclasses.replace(SMALL, domains=("legal",)), tmp_path / "one")
    run_synth({}, dataclasses.replace(SMALL, domains=("prose", "code", "legal")), tmp_path / "three")
    one = (tmp_path / "one" / "documents" / "legal.parquet").read_bytes()
    assert one == (tmp_path / "three" / "documents" / "legal.parquet").read_bytes()


def test_the_corpus_meets_the_documents_contract_with_the_planted_extras(tiny_corpus, tiny_config):
    files = check_documents(tiny_corpus / "documents")
    assert sorted(f.stem for f in files) == sorted(tiny_config.domains)
    manifest = Manifest.load(tiny_corpus)
    for file in files:
        docs = pl.read_parquet(file)
        assert docs.columns == ["id", "domain", "text"]
        assert docs["domain"].unique().to_list() == [file.stem]
        planted = docs.height - tiny_config.docs_per_domain - tiny_config.exact_dups
        assert tiny_config.near_dup_clusters <= planted <= 3 * tiny_config.near_dup_clusters
        assert manifest.stats["domains"][file.stem]["documents"] == docs.height
    docs = all_documents(tiny_corpus)
    assert manifest.counts == {"documents": docs.height, "bytes": sum(len(t.encode()) for t in docs["text"])}
    mean_words = docs["text"].str.split(" ").list.len().mean()
    assert 0.6 * tiny_config.doc_words < mean_words < 1.6 * tiny_config.doc_words


def test_recorded_jaccard_values_are_exact(tiny_corpus):
    texts = dict(all_documents(tiny_corpus).select("id", "text").iter_rows())
    truth = pl.read_parquet(tiny_corpus / "near_duplicates.parquet")
    assert truth.columns == ["id_a", "id_b", "domain", "jaccard", "kind"]
    assert truth.height > 0
    for id_a, id_b, domain, recorded, kind in truth.iter_rows():
        assert id_a.startswith(domain) and id_b.startswith(domain)
        assert recorded == pytest.approx(reference_jaccard(texts[id_a], texts[id_b]), abs=1e-12)
        same_words = texts[id_a].split() == texts[id_b].split()
        assert (kind == "exact") == same_words
        assert kind in ("exact", "near") and 0 < recorded <= 1


def test_every_domain_has_exact_and_near_planted_pairs(tiny_corpus, tiny_config):
    truth = pl.read_parquet(tiny_corpus / "near_duplicates.parquet")
    kinds = truth.group_by("domain", "kind").len()
    assert kinds.height == 2 * len(tiny_config.domains)
    exact = truth.filter(pl.col("kind") == "exact")
    assert (exact["jaccard"] == 1.0).all()


def test_near_duplicates_land_close_to_the_requested_levels():
    vocab = _Vocab(0)
    for domain in DOMAIN_GENERATORS:
        texts = DOMAIN_GENERATORS[domain](derive_rng(0, "docs", domain), vocab, 20, 300)
        rng = np.random.default_rng(7)
        for level in (0.95, 0.9, 0.85, 0.7, 0.5):
            got = [
                reference_jaccard(t, near_duplicate(rng, t, level, vocab.own[domain][:500])) for t in texts
            ]
            assert abs(np.mean(got) - level) < 0.03, (domain, level, np.mean(got))
            assert max(abs(g - level) for g in got) < 0.08, (domain, level, got)


def test_near_duplicates_keep_the_layout_of_the_text():
    vocab = _Vocab(0)
    code = DOMAIN_GENERATORS["code"](derive_rng(0, "docs", "code"), vocab, 1, 200)[0]
    copy = near_duplicate(np.random.default_rng(0), code, 0.7, ["REPLACED"])
    assert copy != code
    assert [len(line) - len(line.lstrip()) for line in copy.splitlines()] == [
        len(line) - len(line.lstrip()) for line in code.splitlines()
    ]
    assert len(copy.split()) == len(code.split())


def test_the_corpus_levels_cover_the_requested_ones(tiny_corpus, tiny_config):
    near = pl.read_parquet(tiny_corpus / "near_duplicates.parquet").filter(pl.col("kind") == "near")[
        "jaccard"
    ]
    for level in tiny_config.near_dup_levels:
        assert ((near - level).abs() < 0.05).sum() >= 2, level


def test_documents_that_were_not_planted_are_not_near_duplicates(tiny_corpus, tiny_config):
    truth = pl.read_parquet(tiny_corpus / "near_duplicates.parquet")
    planted = {frozenset(p) for p in truth.select("id_a", "id_b").iter_rows()}
    lowest = min(tiny_config.near_dup_levels)
    for domain in tiny_config.domains:
        docs = pl.read_parquet(tiny_corpus / "documents" / f"{domain}.parquet").head(80)
        shingles = {i: shingle_set(t) for i, t in docs.select("id", "text").iter_rows()}
        for a, b in itertools.combinations(shingles, 2):
            if frozenset((a, b)) in planted:
                continue
            sa, sb = shingles[a], shingles[b]
            # Legal boilerplate shares clauses between documents, but far below any planted level.
            assert len(sa & sb) / len(sa | sb) < lowest * 0.7, (a, b)


def test_domains_have_clearly_different_vocabularies(tiny_corpus, tiny_config):
    docs = all_documents(tiny_corpus)
    words = {
        d: set(" ".join(docs.filter(pl.col("domain") == d)["text"]).lower().split())
        for d in tiny_config.domains
    }
    for a, b in itertools.combinations(tiny_config.domains, 2):
        overlap = len(words[a] & words[b]) / len(words[a] | words[b])
        assert overlap < 0.3, (a, b, overlap)


def test_the_target_set_is_drawn_from_the_recorded_blend(tmp_path):
    cfg = dataclasses.replace(SMALL, target_blend={"prose": 0.7, "code": 0.3}, target_docs=50)
    manifest = run_synth({}, cfg, tmp_path / "out")
    target = pl.read_parquet(tmp_path / "out" / "target" / "documents.parquet")
    assert target.height == 50
    assert dict(target.group_by("source_domain").len().iter_rows()) == {"prose": 35, "code": 15}
    assert target["id"].n_unique() == 50
    assert not set(target["id"]) & set(all_documents(tmp_path / "out")["id"])
    assert not set(target["text"]) & set(all_documents(tmp_path / "out")["text"])
    assert sorted(p.name for p in (tmp_path / "out" / "target").iterdir()) == ["documents.parquet"]
    blend = json.loads((tmp_path / "out" / "target_blend.json").read_text())
    assert blend == {"blend": {"prose": 0.7, "code": 0.3}, "documents": 50}
    assert manifest.stats["target"]["blend"] == {"prose": 0.7, "code": 0.3}
    check_documents(tmp_path / "out" / "target")


def test_without_a_blend_there_is_no_target_set(tiny_corpus):
    assert not (tiny_corpus / "target").exists()


def test_every_domain_generator_produces_the_requested_number_of_nonempty_documents():
    vocab = _Vocab(3)
    for domain, generate in DOMAIN_GENERATORS.items():
        texts = generate(derive_rng(3, "docs", domain), vocab, 25, 40)
        assert len(texts) == 25 and all(t.strip() for t in texts), domain


def test_synth_through_the_cli_reports_what_it_wrote(tmp_path, cli):
    out = tmp_path / "corpus"
    args = [
        "synth",
        "--out",
        out,
        "--docs-per-domain",
        20,
        "--doc-words",
        30,
        "--near-dup-clusters",
        2,
        "--exact-dups",
        1,
        "--domains",
        "prose,news",
        "--target-blend",
        "news=1",
    ]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert f"synth: wrote {out}" in result.stdout
    assert sorted(p.name for p in (out / "documents").iterdir()) == ["news.parquet", "prose.parquet"]
    assert "already up to date" in cli(*args).stdout


def word_bigrams(texts) -> set[tuple[str, str]]:
    pairs = set()
    for text in texts:
        words = re.sub(r"[.\n]", " ", text).lower().split()
        pairs.update(zip(words, words[1:]))
    return pairs


@pytest.mark.parametrize("domain", ["prose", "legal"])
def test_target_documents_come_from_the_same_process_as_the_corpus_domain(domain):
    """A blend target is only answerable if its prose *is* the corpus's prose language: fresh
    samples of the same Markov chain share its word pairs; another seed's chain does not."""
    vocab = _Vocab(0)
    corpus = word_bigrams(DOMAIN_GENERATORS[domain](derive_rng(0, "docs", domain), vocab, 300, 200))
    target = word_bigrams(DOMAIN_GENERATORS[domain](derive_rng(0, "target", domain), vocab, 30, 200))
    vocab.seed = 1  # same words, another process: chains are drawn from the seed
    vocab._chains.clear()
    other = word_bigrams(DOMAIN_GENERATORS[domain](derive_rng(0, "target", domain), vocab, 30, 200))
    seen = len(target & corpus) / len(target)
    assert seen > 0.6  # (about 0.7 for prose, 0.8 for legal; another chain's: 0.002, 0.2)
    assert len(other & corpus) / len(other) < seen / 3


def test_with_nothing_planted_no_empty_truth_table_is_written(tmp_path):
    made = run_synth({}, dataclasses.replace(SMALL, near_dup_clusters=0, exact_dups=0), tmp_path / "out")
    assert made.stats["planted_pairs"] == 0
    assert not (tmp_path / "out" / "near_duplicates.parquet").exists()  # HF datasets refuses 0-row parquet
