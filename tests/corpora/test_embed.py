"""The embeddings builder (python -m corpora.embed) on a small real corpus folder."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from corpora import embed as ce
from igpo_env.data import default_data_dir, load_corpus
from igpo_env.retrievers.encoder import default_model_dir, shared_encoder
from igpo_env.retrievers.shipped import (
    EMBEDDINGS_FILE,
    META_FILE,
    load_shipped,
    read_meta,
    sha256_path,
)

N_DOCS = 10


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder(str(default_model_dir()), 256, 1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:
    """A folder with the first 10 default documents, embedded by the builder."""
    folder = tmp_path_factory.mktemp("embed")
    with (
        gzip.open(default_data_dir() / "corpus.jsonl.gz", "rt", encoding="utf-8") as src,
        gzip.open(folder / ce.CORPUS_FILE, "wt", encoding="utf-8") as dst,
    ):
        dst.writelines(itertools.islice(src, N_DOCS))
    ce.embed(folder, encoder, threads=1, batch_size=4)
    return folder


def test_embed_writes_float16_rows_and_their_meta(built: Path, encoder) -> None:
    array = np.load(built / EMBEDDINGS_FILE)
    assert array.shape == (N_DOCS, 384) and array.dtype == np.float16
    meta = read_meta(built)
    assert meta["rows"] == N_DOCS and meta["dtype"] == "float16"
    assert meta["corpus_sha256"] == sha256_path(built / ce.CORPUS_FILE)
    assert meta["embeddings_sha256"] == sha256_path(built / EMBEDDINGS_FILE)
    assert meta["encode_precision"] == "float32" and meta["max_length"] == 256
    rows, reason = load_shipped(load_corpus(built / ce.CORPUS_FILE), encoder, built)
    assert reason == "" and rows.shape == (N_DOCS, 384)


def test_check_passes_then_catches_swapped_rows_and_settings(
    built: Path, encoder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ce.check(built, encoder, sample=N_DOCS, seed=0, threads=1) == 0
    assert "agree" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ce.CORPUS_FILE).write_bytes((built / ce.CORPUS_FILE).read_bytes())
    array = np.load(built / EMBEDDINGS_FILE)
    np.save(bad / EMBEDDINGS_FILE, array[::-1].copy())  # rows of the wrong documents
    meta = read_meta(built)
    meta["embeddings_sha256"] = sha256_path(bad / EMBEDDINGS_FILE)
    (bad / META_FILE).write_text(json.dumps(meta))
    assert ce.check(bad, encoder, sample=N_DOCS, seed=0, threads=1) == 1
    assert "DISAGREE" in capsys.readouterr().out
    meta["max_length"] = 128
    (bad / META_FILE).write_text(json.dumps(meta))
    assert ce.check(bad, encoder, sample=4, seed=0, threads=1) == 1
    assert "max_length" in capsys.readouterr().err


def test_front_door_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ce.main(["--out", str(tmp_path)]) == 2
    assert "no corpus.jsonl.gz" in capsys.readouterr().err
    (tmp_path / ce.CORPUS_FILE).write_bytes(b"")
    assert ce.main(["--out", str(tmp_path), "--check"]) == 2
    assert "run python -m corpora.embed" in capsys.readouterr().err


def test_sample_rows_are_seeded_distinct_and_clipped() -> None:
    a = ce.sample_rows(100, 48, 0)
    assert a.tolist() == ce.sample_rows(100, 48, 0).tolist() != ce.sample_rows(100, 48, 1).tolist()
    assert len(set(a.tolist())) == 48 and a.tolist() == sorted(a.tolist())
    assert ce.sample_rows(5, 48, 0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="at least one"):
        ce.sample_rows(5, 0, 0)


def test_written_files_are_world_readable(built: Path) -> None:
    for name in (EMBEDDINGS_FILE, META_FILE):
        assert (built / name).stat().st_mode & 0o044 == 0o044, name  # package data
