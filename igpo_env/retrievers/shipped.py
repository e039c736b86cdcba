"""Shipped MiniLM embeddings of the default corpus, used instead of encoding it.

``igpo_env/corpora/default/minilm_embeddings.npy`` holds one float16 row per document of
``igpo_env/corpora/default/corpus.jsonl.gz`` (in file order), written with float32 encoding
by ``python -m corpora.embed`` (a checkout tool, not installed); ``minilm_embeddings.json``
says how they were made. They are used only when everything that decides the vectors
matches: the documents (content fingerprint and count), the encoder (hash of its model
files), ``max_length``, pooling and the text template, and the array file itself (sha256,
shape). Anything else returns the reason instead, and the caller encodes.

Storing float16 changes each component by at most ~1.2e-4 (unit vectors, components below
0.25); :data:`MIN_COSINE` and :data:`MAX_ABS_DIFF` bound a fresh float32 encode against the
stored rows (``tests/igpo_env/retrievers/test_shipped.py`` and ``python -m corpora.embed
--check``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from igpo_env.data import Document, corpus_fingerprint, default_data_dir
from igpo_env.retrievers.encoder import MODEL_NAME, POOLING, TEXT_TEMPLATE, MiniLMEncoder

EMBEDDINGS_FILE = "minilm_embeddings.npy"
META_FILE = "minilm_embeddings.json"
META_FORMAT = 1
STORE_DTYPE = "float16"
MIN_COSINE = 0.9999
"""Lowest cosine allowed between a stored row and a fresh float32 encode of its document."""
MAX_ABS_DIFF = 1e-3
"""Largest component difference allowed between a stored row and a fresh float32 encode."""


def shipped_dir() -> Path:
    """The folder holding the shipped embeddings (the default data folder)."""
    return default_data_dir()


def sha256_path(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encoder_meta(encoder: MiniLMEncoder) -> dict[str, Any]:
    """The settings that decide an embedding: model (name, file hash), length, pooling, text."""
    return {
        "model": MODEL_NAME,
        "model_fingerprint": encoder.fingerprint(),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "pooling": POOLING,
        "text": TEXT_TEMPLATE,
    }


def build_meta(
    encoder: MiniLMEncoder,
    docs: list[Document],
    corpus_file: Path,
    embeddings_file: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON written next to the shipped array (what :func:`mismatch` checks, plus info)."""
    return {
        "format": META_FORMAT,
        **encoder_meta(encoder),
        "corpus_file": corpus_file.name,
        "corpus_sha256": sha256_path(corpus_file),
        "corpus_fingerprint": corpus_fingerprint(docs),
        "rows": len(docs),
        "dtype": STORE_DTYPE,
        "embeddings_file": embeddings_file.name,
        "embeddings_sha256": sha256_path(embeddings_file),
        "embeddings_bytes": embeddings_file.stat().st_size,
        **(extra or {}),
    }


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The shipped meta JSON in ``folder``, or None if it is missing or unreadable."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def mismatch(meta: dict[str, Any], docs: list[Document], encoder: MiniLMEncoder) -> str | None:
    """Why the shipped embeddings described by ``meta`` do not fit (None when they do)."""
    if meta.get("format") != META_FORMAT:
        return f"meta format {meta.get('format')!r}, expected {META_FORMAT}"
    if meta.get("rows") != len(docs):
        return f"different corpus ({len(docs)} documents, shipped for {meta.get('rows')})"
    if meta.get("corpus_fingerprint") != corpus_fingerprint(docs):
        return "different corpus (same size, other content)"
    want = encoder_meta(encoder)
    for key, value in want.items():
        if meta.get(key) != value:
            return f"encoder setting {key}={value!r} differs from the shipped {meta.get(key)!r}"
    if meta.get("dtype") != STORE_DTYPE:
        return f"stored dtype {meta.get('dtype')!r}, expected {STORE_DTYPE}"
    return None


def load_array(folder: Path, meta: dict[str, Any]) -> np.ndarray:
    """The stored rows as float32, after checking the file's sha256 and shape."""
    path = folder / str(meta.get("embeddings_file", EMBEDDINGS_FILE))
    if sha256_path(path) != meta.get("embeddings_sha256"):
        raise ValueError(f"{path} does not match the sha256 in {folder / META_FILE}")
    array = np.load(path, allow_pickle=False)
    if array.shape != (meta["rows"], meta["dim"]) or array.dtype != np.dtype(STORE_DTYPE):
        raise ValueError(f"{path} holds {array.dtype} {array.shape}, not as its meta says")
    return array.astype(np.float32)


def load_shipped(
    docs: list[Document], encoder: MiniLMEncoder, folder: Path | None = None
) -> tuple[np.ndarray | None, str]:
    """``(float32 rows, "")`` when the shipped embeddings fit ``docs`` and ``encoder``, else
    ``(None, reason)``. ``folder`` defaults to :func:`shipped_dir`."""
    try:
        folder = Path(folder) if folder is not None else shipped_dir()
    except FileNotFoundError as exc:
        return None, str(exc)
    meta = read_meta(folder)
    if meta is None:
        return None, f"no readable {META_FILE} in {folder}"
    reason = mismatch(meta, docs, encoder)
    if reason is not None:
        return None, reason
    try:
        return load_array(folder, meta), ""
    except (OSError, ValueError, KeyError) as exc:
        return None, f"shipped array unusable: {exc}"


def agreement(stored: np.ndarray, fresh: np.ndarray) -> tuple[float, float]:
    """(lowest row cosine, largest absolute difference) between two row-aligned arrays."""
    stored = np.asarray(stored, dtype=np.float32)
    fresh = np.asarray(fresh, dtype=np.float32)
    if stored.shape != fresh.shape or stored.ndim != 2 or not len(stored):
        raise ValueError(f"need two non-empty (n, dim) arrays, got {stored.shape}, {fresh.shape}")
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    cos = (stored * fresh).sum(axis=1) / np.maximum(norms, 1e-12)
    return float(cos.min()), float(np.abs(stored - fresh).max())
