"""The shipped default-corpus embeddings: they agree with a fresh encode, and only fit the
exact corpus and encoder they were made for."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")

from igpo_env.data import default_data_dir, load_corpus  # noqa: E402
from igpo_env.retrievers import make_retriever  # noqa: E402
from igpo_env.retrievers.dense import DenseRetriever  # noqa: E402
from igpo_env.retrievers.encoder import default_model_dir, doc_text, shared_encoder  # noqa: E402
from igpo_env.retrievers.shipped import (  # noqa: E402
    EMBEDDINGS_FILE,
    MAX_ABS_DIFF,
    META_FILE,
    MIN_COSINE,
    agreement,
    load_shipped,
    read_meta,
    sha256_path,
)

SAMPLE, SEED = 48, 0


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder(str(default_model_dir()), 256, 1)


@pytest.fixture(scope="module")
def default_docs():
    return load_corpus("default")


@pytest.fixture(scope="module")
def shipped(default_docs, encoder) -> np.ndarray:
    rows, reason = load_shipped(default_docs, encoder)
    assert rows is not None, reason
    return rows


def test_meta_describes_the_shipped_corpus_and_array(default_docs, shipped):
    folder = default_data_dir()
    meta = read_meta(folder)
    assert meta["rows"] == len(default_docs) == 12_100
    assert meta["corpus_sha256"] == sha256_path(folder / "corpus.jsonl.gz")
    assert meta["max_length"] == 256 and meta["dtype"] == "float16" and meta["dim"] == 384
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert shipped.shape == (12_100, 384) and shipped.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(shipped, axis=1), 1.0, atol=2e-3)


def test_sample_agrees_with_a_fresh_float32_encode(default_docs, encoder, shipped):
    rows = np.sort(np.random.default_rng(SEED).choice(len(default_docs), SAMPLE, replace=False))
    fresh = encoder.encode([doc_text(default_docs[i]) for i in rows], precision="fp32")
    low, worst = agreement(shipped[rows], fresh)
    assert low >= MIN_COSINE and worst <= MAX_ABS_DIFF, (low, worst)
    # and the rows are each their own document's: a shifted pairing does not agree
    assert agreement(shipped[rows], np.roll(fresh, 1, axis=0))[0] < 0.9


def test_other_corpora_and_settings_do_not_use_them(default_docs, encoder):
    assert load_shipped(default_docs[:-1], encoder)[1].startswith("different corpus (12099")
    edited = list(default_docs)
    edited[5] = dataclasses.replace(edited[5], text=edited[5].text + " Edited.")
    assert load_shipped(edited, encoder) == (None, "different corpus (same size, other content)")
    short = shared_encoder(str(default_model_dir()), 128, 1)
    rows, reason = load_shipped(default_docs, short)
    assert rows is None and "max_length=128" in reason


def test_a_damaged_or_missing_file_is_not_used(default_docs, encoder, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(default_data_dir(), folder)
    array = folder / EMBEDDINGS_FILE
    raw = bytearray(array.read_bytes())
    raw[-1] ^= 0xFF
    array.write_bytes(bytes(raw))
    rows, reason = load_shipped(default_docs, encoder, folder)
    assert rows is None and "sha256" in reason
    (folder / META_FILE).unlink()
    assert load_shipped(default_docs, encoder, folder)[1].startswith("no readable")
    (folder / META_FILE).write_text(json.dumps({"format": 99}))
    assert "format" in load_shipped(default_docs, encoder, folder)[1]


def test_default_dense_index_builds_from_them(default_docs, shipped, capfd, tmp_path):
    r = DenseRetriever(default_docs, tmp_path / "idx", fingerprint="fp")
    assert r.source == "shipped"
    err = capfd.readouterr().err
    assert "from the shipped embeddings" in err and str(tmp_path / "idx") in err
    np.testing.assert_array_equal(np.asarray(r.embeddings), shipped)
    hits = r.search(["Which NFL team represented the AFC at Super Bowl 50?"], 3)[0]
    assert any(h.doc_id.startswith("squad-super-bowl-50-") for h in hits)
    again = DenseRetriever(default_docs, tmp_path / "idx", fingerprint="fp")
    assert again.source == "cache" and capfd.readouterr().err == ""


def test_mismatch_falls_back_to_encoding_and_says_why(default_docs, capfd):
    r = make_retriever("dense", corpus=default_docs[:20])
    assert r.source == "encoded"
    err = capfd.readouterr().err
    assert "shipped embeddings not used: different corpus (20 documents" in err
    assert "caching it in" in err
    forced = DenseRetriever(default_docs[:20], None, use_shipped=False)
    assert forced.source == "encoded"
    assert "not used: use_shipped=False" in capfd.readouterr().err


def test_other_max_length_on_the_default_corpus_encodes(default_docs, capfd, monkeypatch):
    short = shared_encoder(str(default_model_dir()), 128, 1)
    encoded = []

    def fake_encode(texts, *args, **kwargs):  # the real 12,100-document encode takes minutes
        encoded.append(len(texts))
        rows = np.random.default_rng(0).standard_normal((len(texts), short.dim))
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    monkeypatch.setattr(short, "encode", fake_encode)
    r = DenseRetriever(default_docs, None, max_length=128)
    assert r.source == "encoded" and encoded == [len(default_docs)]
    assert "not used: encoder setting max_length=128" in capfd.readouterr().err
