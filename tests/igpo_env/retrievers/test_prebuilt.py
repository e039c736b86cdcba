"""faiss-prebuilt: an index built here the way Search-R1 builds e5_Flat.index, loaded as-is.

The encoder is a tiny random BERT (MiniLM's tokenizer) saved to a folder; passages are
encoded with ``passage: `` + contents, indexed with ``faiss.IndexFlatIP`` and written with
``faiss.write_index``; the corpus is Search-R1 JSONL. Every search is checked against a
brute-force numpy inner product over query vectors computed here, independently.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

import gymnasium as gym  # noqa: E402

import igpo_env  # noqa: E402, F401  (registers the env ids)
from igpo_env.data import QAExample, load_corpus, split_contents  # noqa: E402
from igpo_env.retrievers import make_retriever  # noqa: E402
from igpo_env.retrievers.encoder import default_model_dir  # noqa: E402
from igpo_env.retrievers.prebuilt import PrebuiltFaissRetriever  # noqa: E402
from igpo_env.retrievers.rows import JsonlRows, offsets_cache_path  # noqa: E402
from igpo_env.serve import backend_kwargs, build_parser  # noqa: E402

N_PASSAGES = 50
MAX_LEN = 64
WORDS = (
    "river mountain city king queen war treaty river planet star music opera painter novel "
    "island ocean desert forest bridge tower church castle empire republic election senate "
    "physics chemistry biology engine railway airport harbour festival football olympic "
    "medal poet language grammar volcano glacier storm harvest wheat coffee silver copper"
).split()
QUERIES = [
    "which river flows past the castle",
    "a poet who wrote about the ocean",
    "volcano glacier storm",
    "olympic football medal",
    "coffee harvest in the desert",
    "empire senate election treaty",
]


def embed(model, tok, texts: list[str], pooling: str, normalize: bool) -> np.ndarray:
    """Reference encoder, written out here: one padded batch, float32 numpy rows."""
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    if pooling == "mean":
        mask = enc["attention_mask"].unsqueeze(-1).float()
        vec = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    elif pooling == "cls":
        vec = out.last_hidden_state[:, 0]
    else:
        vec = out.pooler_output
    vec = vec.numpy().astype(np.float32)
    if normalize:
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return vec


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The encoder folder, the corpus JSONL and one index per (pooling, normalize)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("prebuilt")
    tok = AutoTokenizer.from_pretrained(str(default_model_dir()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,  # BERT's 0.02 gives near-identical random [CLS] vectors
    )
    model = BertModel(config).eval()
    encoder_dir = root / "tiny-e5"
    model.save_pretrained(encoder_dir)
    tok.save_pretrained(encoder_dir)

    rng = random.Random(0)
    rows = []
    for i in range(N_PASSAGES):
        title = f"{rng.choice(WORDS).title()} {i}"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + "."
        rows.append({"id": f"w{1000 + 7 * i}", "contents": f'"{title}"\n{text}'})
    corpus = root / "wiki.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))

    indexes, passages = {}, {}
    for pooling, normalize in (("mean", True), ("cls", True), ("pooler", False)):
        vecs = embed(model, tok, [f"passage: {r['contents']}" for r in rows], pooling, normalize)
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        path = root / f"{pooling}_Flat.index"
        faiss.write_index(index, str(path))
        indexes[pooling], passages[pooling] = path, vecs
    return {
        "root": root,
        "model": model,
        "tok": tok,
        "encoder_dir": encoder_dir,
        "corpus": corpus,
        "rows": rows,
        "indexes": indexes,
        "passages": passages,
    }


def reference(setup, pooling: str, normalize: bool, queries: list[str], k: int):
    """Brute force: (top-k row ids, their scores, all scores) of ``query: q`` per query."""
    q = embed(setup["model"], setup["tok"], [f"query: {x}" for x in queries], pooling, normalize)
    scores = q @ setup["passages"][pooling].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1), scores


def backend(setup, pooling="mean", normalize=True, **kw) -> PrebuiltFaissRetriever:
    return PrebuiltFaissRetriever(
        kw.pop("index_path", None) or setup["indexes"][pooling],
        kw.pop("corpus_path", setup["corpus"]),
        kw.pop("encoder_dir", setup["encoder_dir"]),
        pooling=pooling,
        normalize=normalize,
        max_length=MAX_LEN,
        **kw,
    )


def check_against_reference(setup, r, pooling, normalize, k=5) -> list[list[str]]:
    """The backend's top-k equals brute force: ids and order, and scores to 1e-5.

    Ids must match exactly except within a near-tie (two reference scores within 1e-5, where
    float32 rounding may order them either way): there the hit's own reference score must
    equal the reference score at its rank.
    """
    order, top, full = reference(setup, pooling, normalize, QUERIES, k)
    row_of = {row["id"]: j for j, row in enumerate(setup["rows"])}
    results = r.search(QUERIES, k)
    exact = 0
    for qi, hits in enumerate(results):
        ids = [h.doc_id for h in hits]
        assert len(ids) == k and len(set(ids)) == k
        np.testing.assert_allclose([h.score for h in hits], top[qi], rtol=0, atol=1e-5)
        for p, doc_id in enumerate(ids):
            assert abs(full[qi, row_of[doc_id]] - top[qi, p]) <= 1e-5, (qi, p, doc_id)
            exact += doc_id == setup["rows"][order[qi, p]]["id"]
    assert exact >= len(QUERIES) * k - 2  # ties are rare: nearly every id matches as is
    return [[h.doc_id for h in hits] for hits in results]


@pytest.mark.parametrize(
    ("pooling", "normalize"), [("mean", True), ("cls", True), ("pooler", False)]
)
def test_search_equals_brute_force(setup, pooling, normalize):
    r = backend(setup, pooling, normalize)
    check_against_reference(setup, r, pooling, normalize)
    # a hit carries the row's title and text, split from contents as load_corpus does
    docs = {d.id: d for d in load_corpus(setup["corpus"])}
    hit = r.search([QUERIES[0]], 1)[0][0]
    assert (hit.title, hit.text) == (docs[hit.doc_id].title, docs[hit.doc_id].text)
    assert hit.title and not hit.title.startswith('"') and "\n" not in hit.title


def test_pooling_changes_results_and_each_matches_its_own_reference(setup):
    mean = check_against_reference(setup, backend(setup, "mean"), "mean", True)
    cls = check_against_reference(setup, backend(setup, "cls"), "cls", True)
    assert mean != cls
    # the mean-pooled query against the cls index is not the cls answer either
    crossed = backend(setup, "mean", index_path=setup["indexes"]["cls"]).search(QUERIES, 5)
    assert [[h.doc_id for h in hits] for hits in crossed] != cls


def test_query_prefix_is_applied(setup):
    plain, prefixed = backend(setup, query_prefix=""), backend(setup)
    np.testing.assert_allclose(
        plain.encode_queries(["query: volcano"]), prefixed.encode_queries(["volcano"]), atol=1e-6
    )
    assert not np.allclose(
        plain.encode_queries(["volcano"]), prefixed.encode_queries(["volcano"]), atol=1e-3
    )


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_mmap_and_in_memory_agree(setup, tmp_path):
    copy = tmp_path / "copy.index"
    shutil.copy(setup["indexes"]["mean"], copy)
    in_memory = backend(setup, index_path=copy, mmap=False)
    assert not in_memory.mapped and not _mapped(copy)
    mapped = backend(setup, mmap=True)
    assert mapped.mapped and _mapped(setup["indexes"]["mean"])
    assert mapped.search(QUERIES, 7) == in_memory.search(QUERIES, 7)


def test_edge_cases_and_memo(setup):
    kw = {
        "index_path": str(setup["indexes"]["mean"]),
        "corpus_path": str(setup["corpus"]),
        "encoder_dir": str(setup["encoder_dir"]),
        "max_length": MAX_LEN,
    }
    r = make_retriever("faiss-prebuilt", **kw)
    assert r is make_retriever("faiss-prebuilt", **kw)
    assert r is not make_retriever("faiss-prebuilt", **kw, pooling="cls")
    assert r.search([], 3) == [] and r.search(["", "  "], 3) == [[], []]
    assert len(r.search([QUERIES[0]], 500)[0]) == N_PASSAGES  # k > ntotal: all rows
    assert r.search([QUERIES[0]], 2) == r.search([QUERIES[0]], 2)  # memo gives the same
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["x"], 0)


def test_rows_read_on_demand_match_load_corpus(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "contents": f'"T {i}"\nbody {i} ü'} for i in range(5)]
    rows[3] = {"id": "r3", "title": "Plain", "text": "explicit fields"}
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path = tmp_path / "c.jsonl"
    # blank and whitespace-only lines are not rows; CRLF endings and no final newline are fine
    path.write_bytes(("\r\n".join(lines[:2]) + "\n\n  \n" + "\n".join(lines[2:])).encode())
    jr = JsonlRows(path)
    assert len(jr) == 5 and list(jr) == load_corpus(path)
    assert jr[-1].id == "r4" and [d.id for d in jr[1:3]] == ["r1", "r2"]
    with pytest.raises(IndexError, match="out of range for 5"):
        jr[5]
    assert offsets_cache_path(path).exists()
    # the offsets are cached: a second open does not scan the file again
    import igpo_env.retrievers.rows as rows_mod

    monkeypatch.setattr(rows_mod, "scan_row_starts", lambda p: pytest.fail("rescanned"))
    assert list(JsonlRows(path)) == load_corpus(path)


def test_bad_input_gives_clear_errors(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.index.*index_path="):
        backend(setup, index_path=tmp_path / "nope.index")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl.*corpus_path="):
        backend(setup, corpus_path=tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"no-model.*encoder_dir="):
        backend(setup, encoder_dir=tmp_path / "no-model")
    with pytest.raises(ValueError, match="needs index_path="):
        PrebuiltFaissRetriever(None, setup["corpus"], setup["encoder_dir"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a transformers model folder"):
        backend(setup, encoder_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="pooling must be one of"):
        backend(setup, pooling="max", index_path=setup["indexes"]["mean"])
    with pytest.raises(ValueError, match="nprobe does not apply"):
        backend(setup, nprobe=4)

    small = faiss.IndexFlatIP(16)
    small.add(np.random.default_rng(0).standard_normal((N_PASSAGES, 16)).astype(np.float32))
    faiss.write_index(small, str(tmp_path / "d16.index"))
    with pytest.raises(ValueError, match=r"16-dimensional.*hidden size 32"):
        backend(setup, index_path=tmp_path / "d16.index")

    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in setup["rows"][:-1]))
    with pytest.raises(ValueError, match=r"holds 50 vectors.*has 49 rows"):
        backend(setup, corpus_path=short)


def test_env_ids_end_to_end(setup):
    query = QUERIES[1]
    order, _, _ = reference(setup, "mean", True, [query], 3)
    titles = [split_contents(setup["rows"][j]["contents"])[0] for j in order[0]]
    kwargs = {
        "index_path": str(setup["indexes"]["mean"]),
        "encoder_dir": str(setup["encoder_dir"]),
        "max_length": MAX_LEN,
    }
    qa = [QAExample(id="q0", question="Who wrote about the ocean?", answers=("a poet",))]
    for env_id in ("SearchQA-Dense-v0", "SearchQA-v0"):
        env = gym.make(
            env_id,
            qa=qa,
            retriever="faiss-prebuilt",
            corpus=str(setup["corpus"]),
            retriever_kwargs=kwargs,
            top_k=3,
        )
        obs, info = env.reset(seed=0)
        assert "Who wrote about the ocean?" in obs
        obs, reward, terminated, truncated, info = env.step(f"<search>{query}</search>")
        assert info["doc_ids"] == [setup["rows"][j]["id"] for j in order[0]]
        assert [obs.index(f"(Title: {t})") for t in titles] == sorted(
            obs.index(f"(Title: {t})") for t in titles
        )
        assert (reward, terminated) == (0.0, False)
        env.close()
    with pytest.raises(ValueError, match="needs corpus_path="):
        gym.make("SearchQA-v0", qa=qa, retriever="faiss-prebuilt", retriever_kwargs=kwargs)
    with pytest.raises(ValueError, match="takes corpus= as the path"):
        gym.make("SearchQA-v0", qa=qa, retriever="faiss-prebuilt", corpus="default")


def test_serve_cli_builds_the_backend(setup):
    parser = build_parser()
    argv = ["--retriever", "faiss-prebuilt", "--corpus", str(setup["corpus"])]
    argv += [
        "--index-path",
        str(setup["indexes"]["cls"]),
        "--encoder-dir",
        str(setup["encoder_dir"]),
    ]
    argv += ["--pooling", "cls", "--max-length", str(MAX_LEN), "--no-mmap"]
    kw = backend_kwargs(parser.parse_args(argv))
    assert kw["corpus_path"] == str(setup["corpus"]) and kw["mmap"] is False
    r = make_retriever("faiss-prebuilt", **kw)
    assert not r.mapped
    check_against_reference(setup, r, "cls", True)
    with pytest.raises(ValueError, match="needs --corpus PATH"):
        backend_kwargs(parser.parse_args(argv[:2] + argv[4:]))
    with pytest.raises(ValueError, match="only for --retriever faiss-prebuilt"):
        backend_kwargs(parser.parse_args(["--index-path", "x.index"]))
