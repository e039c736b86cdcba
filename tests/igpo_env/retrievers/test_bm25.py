"""bm25s and rank-bm25 backends: agreement, score equality, save/load, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from igpo_env.data import Document
from igpo_env.retrievers import Hit, make_retriever
from igpo_env.retrievers.bm25 import BM25sRetriever, RankBM25Retriever, tokenize

EASY = {
    "capital of France": "d0",
    "highest mountain Himalayas": "d2",
    "Guido van Rossum programming language": "d3",
    "radioactivity Nobel physicist": "d6",
    "fifth planet Solar System": "d8",
    "Beethoven ninth symphony": "d10",
}


def test_tokenize_drops_stopwords_case_and_punctuation():
    assert tokenize("The Capital of FRANCE?!") == ["capital", "france"]
    assert tokenize("a, the ... of !!") == []
    assert tokenize("Café Müller") == ["café", "müller"]


@pytest.mark.parametrize("name", ["bm25", "bm25-rank"])
def test_easy_queries_top1(docs, name):
    r = make_retriever(name, corpus=docs)
    results = r.search(list(EASY), k=3)
    assert [hits[0].doc_id for hits in results] == list(EASY.values())
    for hits in results:
        assert all(isinstance(h, Hit) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_backends_agree_on_top1(docs):
    fast = make_retriever("bm25", corpus=docs)
    ref = make_retriever("bm25-rank", corpus=docs)
    queries = list(EASY) + ["largest river", "capital of Japan", "German composer"]
    a = [h[0].doc_id for h in fast.search(queries, 1)]
    b = [h[0].doc_id for h in ref.search(queries, 1)]
    assert a == b


def test_bm25s_atire_robertson_idf_equals_bm25okapi(docs):
    """bm25s(method=atire, idf_method=robertson) is BM25Okapi when no term is in > N/2 docs."""
    fast = BM25sRetriever(docs, None, method="atire", idf_method="robertson", k1=1.5, b=0.75)
    ref = RankBM25Retriever(docs, None, k1=1.5, b=0.75)
    queries = list(EASY) + ["capital capital city", "largest river South America", "café"]
    for q in queries:
        expected = ref.scores(q)
        got = np.asarray(fast.model.get_scores(tokenize(q)), dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert expected.max() > 0
    # and through search(): the returned scores are the same numbers
    for hf, hr in zip(fast.search(queries, 5), ref.search(queries, 5), strict=True):
        assert [h.doc_id for h in hf] == [h.doc_id for h in hr]
        np.testing.assert_allclose([h.score for h in hf], [h.score for h in hr], rtol=1e-5)


def test_variants_differ_where_documented(docs):
    """A term in more than half the documents: robertson idf clamps to 0, BM25Okapi floors at eps."""
    common = [Document(d.id, d.title, d.text + " zebra") for d in docs[:8]] + docs[8:]
    fast = BM25sRetriever(common, None, method="atire", idf_method="robertson", k1=1.5, b=0.75)
    ref = RankBM25Retriever(common, None, k1=1.5, b=0.75)
    assert np.allclose(fast.model.get_scores(["zebra"]), 0)
    assert ref.scores("zebra").max() > 0
    # the default (lucene) idf is always positive
    lucene = BM25sRetriever(common, None)
    assert lucene.search(["zebra"], 3)[0]


def test_save_load_roundtrip_is_memory_mapped(docs, tmp_path):
    folder = tmp_path / "idx"
    built = BM25sRetriever(docs, folder, fingerprint="fp")
    assert (folder / "meta.json").exists()
    loaded = BM25sRetriever(docs, folder, fingerprint="fp")
    assert isinstance(loaded.model.scores["data"], np.memmap)
    queries = list(EASY) + ["capital city", "largest"]
    assert built.search(queries, 5) == loaded.search(queries, 5)
    in_memory = BM25sRetriever(docs, None)
    assert in_memory.search(queries, 5) == loaded.search(queries, 5)


def test_changed_params_or_corpus_rebuilds(docs, tmp_path):
    folder = tmp_path / "idx"
    BM25sRetriever(docs, folder, fingerprint="a")
    other = BM25sRetriever(docs[:3], folder, fingerprint="b")
    assert len(other.docs) == 3
    assert other.search(["Everest"], 2)[0][0].doc_id == "d2"


@pytest.mark.parametrize("name", ["bm25", "bm25-rank"])
def test_edge_cases(docs, name):
    r = make_retriever(name, corpus=docs)
    assert r.search([], 5) == []
    assert r.search([""], 5) == [[]]
    assert r.search(["the of and ?!..."], 5) == [[]]
    assert r.search(["qwertyuiop"], 5) == [[]]
    # unicode matches
    assert r.search(["Müller café"], 2)[0][0].doc_id == "d9"
    # k larger than the corpus: every matching document, no error
    hits = r.search(["capital"], 1000)[0]
    assert {h.doc_id for h in hits} == {"d0", "d1", "d7"}
    # mixed batch keeps order and per-query results
    mixed = r.search(["", "Jupiter", "!!"], 2)
    assert mixed[0] == [] and mixed[2] == [] and mixed[1][0].doc_id == "d8"


@pytest.mark.parametrize("name", ["bm25", "bm25-rank"])
def test_bad_arguments_give_clear_errors(docs, name):
    r = make_retriever(name, corpus=docs)
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["paris"], 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["paris"], -3)
    with pytest.raises(TypeError, match="k must be an int"):
        r.search(["paris"], 2.5)
    with pytest.raises(TypeError, match="list of strings"):
        r.search("paris", 2)
    with pytest.raises(TypeError, match=r"queries\[1\]"):
        r.search(["paris", 3], 2)


def test_empty_corpus_is_rejected():
    with pytest.raises(ValueError, match="empty corpus"):
        BM25sRetriever([], None)


def test_factory_memoises_and_uses_default_index_dir(docs, tmp_path):
    a = make_retriever("bm25", corpus=docs)
    b = make_retriever("bm25", corpus=list(docs))
    assert a is b
    assert a.index_dir.parent == tmp_path / "igpo-cache" / "indexes"
    assert a.index_dir.name.startswith("bm25-")
    c = make_retriever("bm25", corpus=docs, k1=1.2)
    assert c is not a and c.index_dir != a.index_dir


def test_factory_reads_corpus_files(docs, tmp_path):
    import json

    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"id": d.id, "contents": d.contents}) for d in docs))
    r = make_retriever("bm25", corpus=str(path))
    assert r.search(["Great Wall fortifications"], 1)[0][0].doc_id == "d11"
    assert r is make_retriever("bm25", corpus=path)
    with pytest.raises(FileNotFoundError):
        make_retriever("bm25", corpus=tmp_path / "missing.jsonl")
    with pytest.raises(TypeError, match="Document"):
        make_retriever("bm25", corpus=["not a doc"])


@pytest.mark.parametrize("name", ["bm25", "bm25-rank"])
def test_first_build_says_what_and_where_later_loads_are_quiet(docs, tmp_path, capfd, name):
    folder = tmp_path / name
    cls = BM25sRetriever if name == "bm25" else RankBM25Retriever
    cls(docs, folder)
    err = capfd.readouterr().err
    assert f"igpo: building {name} index" in err and f"{len(docs)} documents" in err
    assert str(folder) in err
    cls(docs, folder)
    assert capfd.readouterr().err == ""


def test_big_corpus_builds_show_progress_bars(docs, capfd, monkeypatch):
    from igpo_env.retrievers import bm25 as bm25_module

    monkeypatch.setattr(bm25_module, "PROGRESS_MIN_DOCS", 5)
    BM25sRetriever(docs, None)
    err = capfd.readouterr().err
    assert "igpo: tokenising corpus" in err and f"{len(docs)}/{len(docs)}" in err
