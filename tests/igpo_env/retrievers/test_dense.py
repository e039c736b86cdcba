"""Dense retriever: the real packaged MiniLM encoder over a small corpus, flat and HNSW."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from igpo_env.retrievers import make_retriever  # noqa: E402
from igpo_env.retrievers.dense import (  # noqa: E402
    DenseRetriever,
    LRUMemo,
    build_faiss_index,
    default_model_dir,
    faiss_search,
    shared_encoder,
)

# paraphrased questions: few words in common with the passage they should find
SEMANTIC = {
    "Which French city is the seat of government?": "d0",
    "tallest peak in the world": "d2",
    "how do plants turn sunlight into food": "d4",
    "woman scientist who studied radiation": "d6",
    "biggest planet orbiting the sun": "d8",
}


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder(str(default_model_dir()), 256, 1)


def test_encoder_gives_unit_vectors_that_rank_paraphrases(encoder):
    emb = encoder.encode(["A man is eating food.", "A man eats a meal.", "The stock market fell."])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > 0.6 > emb[0] @ emb[2]
    # batching does not change the embeddings (padding is masked out of the mean)
    one_by_one = np.stack(
        [encoder.encode([t])[0] for t in ["short", "a much longer sentence here"]]
    )
    together = encoder.encode(["short", "a much longer sentence here"], batch_size=2)
    np.testing.assert_allclose(one_by_one, together, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_flat_index_finds_paraphrases_and_round_trips(docs, tmp_path):
    folder = tmp_path / "dense"
    r = DenseRetriever(docs, folder, fingerprint="fp")
    results = r.search(list(SEMANTIC), 2)
    assert [h[0].doc_id for h in results] == list(SEMANTIC.values())
    assert all(h[0].score >= h[1].score for h in results)
    assert {"index.faiss", "embeddings.npy", "meta.json"} <= {p.name for p in folder.iterdir()}
    loaded = DenseRetriever(docs, folder, fingerprint="fp")
    assert loaded.search(list(SEMANTIC), 2) == results


def test_hnsw_matches_flat_on_small_corpus(docs):
    flat = DenseRetriever(docs, None)
    hnsw = DenseRetriever(docs, None, index_type="hnsw", hnsw_m=8, ef_search=32)
    queries = list(SEMANTIC)
    assert [h[0].doc_id for h in hnsw.search(queries, 1)] == [
        h[0].doc_id for h in flat.search(queries, 1)
    ]


def test_edge_cases(docs):
    r = make_retriever("dense", corpus=docs)
    assert r is make_retriever("dense", corpus=docs)
    assert r.search([], 3) == []
    assert r.search(["", "   "], 3) == [[], []]
    assert len(r.search(["Café Müller"], 100)[0]) == len(docs)  # k > corpus: all of it
    assert r.search(["Café Müller"], 1)[0][0].doc_id == "d9"
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["x"], 0)
    with pytest.raises(ValueError, match="index_type"):
        DenseRetriever(docs, None, index_type="ivf")


def test_faiss_search_on_random_vectors():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 384)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    index = build_faiss_index(base)
    scores, ids = faiss_search(index, base[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    scores, ids = faiss_search(index, base[:40], 5)  # the multi-thread path
    assert ids[:, 0].tolist() == list(range(40))


def test_lru_memo_is_bounded_and_keeps_the_recent():
    memo = LRUMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and len(memo) == 2
    off = LRUMemo(0)
    off.put("a", 1)
    assert len(off) == 0 and off.get("a") is None
    with pytest.raises(ValueError, match="query_cache_size"):
        LRUMemo(-1)


def test_lone_queries_are_memoised_batches_are_not(docs, monkeypatch):
    r = DenseRetriever(docs, None)
    calls = []
    real = r.encoder.encode

    def counting(texts, *args, **kwargs):
        calls.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(r.encoder, "encode", counting)
    query = "biggest planet orbiting the sun"
    first = r.search([query], 3)
    assert r.search([query], 3) == first and calls == [[query]]  # second one from the memo
    assert r.search(["", query], 3) == [[], first[0]] and len(calls) == 1  # still one query
    first_ids = [h.doc_id for h in first[0]]
    first[0].clear()  # callers own the lists they get
    assert len(r.search([query], 3)[0]) == 3
    assert len(r.search([query], 2)[0]) == 2 and calls[-1] == [query]  # other k: a new search
    batch = r.search([query, "tallest peak in the world"], 3)
    assert calls[-1] == [query, "tallest peak in the world"]  # a batch is encoded afresh
    assert [h.doc_id for h in batch[0]] == first_ids
    no_memo = DenseRetriever(docs, None, query_cache_size=0)
    monkeypatch.setattr(no_memo.encoder, "encode", counting)
    no_memo.search([query], 3)
    no_memo.search([query], 3)
    assert calls[-2:] == [[query], [query]]


def test_dense_build_settings_are_checked(docs):
    with pytest.raises(ValueError, match="precision"):
        DenseRetriever(docs, None, precision="half")
    with pytest.raises(ValueError, match="threads"):
        DenseRetriever(docs, None, build_threads=-2)
