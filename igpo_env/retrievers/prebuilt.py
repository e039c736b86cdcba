"""A prebuilt FAISS index and its corpus, loaded as-is (Search-R1's wiki-18 + ``e5_Flat.index``).

Nothing is encoded or indexed here: the index file, the corpus JSONL whose row ``i`` is the
passage of FAISS id ``i``, and the encoder folder that built the index are the user's. Queries
are encoded with that encoder's settings: ``query_prefix`` (e5: ``"query: "``; the passages
were indexed with ``"passage: "``), ``pooling`` ("mean", "cls" or "pooler"), ``normalize``
(L2, for inner-product indexes of unit vectors) and ``max_length``. The defaults are
intfloat/e5-base-v2's, which built Search-R1's index.

Memory: with ``mmap=True`` (default) the index is memory-mapped (``IO_FLAG_MMAP_IFC``,
which maps flat and HNSW vectors and IVF lists; ``IO_FLAG_MMAP`` on FAISS builds without it), so
opening it costs seconds and the OS page cache holds what searches touch. A flat index is read
whole by every search: Search-R1's 21M x 768 float32 ``e5_Flat.index`` is 65 GB, and a search
from disk rather than RAM runs at disk speed. The corpus is read row by row
(:class:`~igpo_env.retrievers.rows.JsonlRows`: 8 bytes of cached offsets per row). The
encoder is loaded into memory (e5-base-v2: 0.44 GB).

Scores are FAISS's: inner products for an inner-product index, squared L2 distances (smaller
is nearer) for an L2 one. Lone queries are memoised as in the dense backend.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from igpo_env.retrievers.base import Hit, announce, check_k, check_queries
from igpo_env.retrievers.dense import LRUMemo, faiss_hits, faiss_search, vector_search
from igpo_env.retrievers.encoder import POOLINGS, MiniLMEncoder, check_threads, resolve_precision
from igpo_env.retrievers.rows import JsonlRows

NAME = "faiss-prebuilt"


def _require_path(path: str | Path | None, what: str, arg: str, example: str) -> Path:
    """``path`` as a Path that exists, else an error naming the argument to pass."""
    if path is None or str(path) == "":
        raise ValueError(f"the {NAME} backend needs {arg}=... (the {what}, e.g. {example})")
    found = Path(path).expanduser()
    if not found.exists():
        raise FileNotFoundError(f"{what} not found: {found} (pass an existing path as {arg}=...)")
    return found


def read_faiss_index(path: str | Path, mmap: bool = True) -> tuple[Any, bool]:
    """``faiss.read_index`` memory-mapped when asked and possible: (index, mapped).

    An index type FAISS cannot map is read into memory, with a note on stderr.
    """
    import faiss

    if not mmap:
        return faiss.read_index(str(path)), False
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None) or faiss.IO_FLAG_MMAP
    try:
        return faiss.read_index(str(path), flag), True
    except RuntimeError as exc:
        announce(f"igpo: FAISS cannot memory-map {path} ({exc}); reading it into memory")
        return faiss.read_index(str(path)), False


def encoder_hidden_size(encoder_dir: Path) -> int:
    """The ``hidden_size`` in an encoder folder's config (read before loading its weights)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(encoder_dir))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"encoder_dir={str(encoder_dir)!r} is not a transformers model folder "
            f"(config.json, weights, tokenizer files): {exc}"
        ) from exc
    return int(config.hidden_size)


class PrebuiltFaissRetriever:
    """Search a prebuilt FAISS index, mapping FAISS id ``i`` to row ``i`` of ``corpus_path``.

    Required: ``index_path`` (a ``faiss.write_index`` file), ``corpus_path`` (JSONL rows
    ``{"id", "contents": "\\"Title\\"\\ntext"}`` or ``{"id", "title", "text"}``) and
    ``encoder_dir`` (a local transformers model folder). ``query_precision`` ("fp32" default,
    "bf16", "auto"), ``torch_threads`` and ``batch_size`` apply to query encoding;
    ``search_threads`` (0: one FAISS thread for up to 16 queries, two above, as the dense
    backend) to searching; ``nprobe`` (IVF) and ``ef_search`` (HNSW) are set on the index when
    given. Raises ``ValueError`` when the index's dimension is not the encoder's hidden size or
    its vector count is not the corpus's row count.
    """

    def __init__(
        self,
        index_path: str | Path | None = None,
        corpus_path: str | Path | None = None,
        encoder_dir: str | Path | None = None,
        *,
        pooling: str = "mean",
        query_prefix: str = "query: ",
        normalize: bool = True,
        max_length: int = 256,
        mmap: bool = True,
        query_precision: str = "fp32",
        torch_threads: int = 1,
        search_threads: int = 0,
        batch_size: int = 32,
        nprobe: int | None = None,
        ef_search: int | None = None,
        query_cache_size: int = 2048,
        name: str = NAME,
    ) -> None:
        self.index_path = _require_path(
            index_path, "FAISS index file", "index_path", "Search-R1's e5_Flat.index"
        )
        self.corpus_path = _require_path(
            corpus_path,
            "corpus JSONL whose row i is FAISS id i",
            "corpus_path",
            "Search-R1's wiki-18.jsonl; gym.make takes it as corpus=",
        )
        self.encoder_dir = _require_path(
            encoder_dir,
            "encoder model folder",
            "encoder_dir",
            "a local copy of intfloat/e5-base-v2",
        )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(query_prefix, str):
            raise ValueError(f"query_prefix must be a str ('' for none), got {query_prefix!r}")
        for arg, value in (("mmap", mmap), ("normalize", normalize)):
            if not isinstance(value, bool):
                raise ValueError(f"{arg} must be a bool, got {value!r}")
        if isinstance(search_threads, bool) or not isinstance(search_threads, int):
            raise ValueError(f"search_threads must be an int >= 0, got {search_threads!r}")
        self.search_threads = check_threads(search_threads) if search_threads else 0
        self.name = name
        self.query_prefix = query_prefix
        self.batch_size = batch_size
        self.query_precision = resolve_precision(query_precision)
        self.memo = LRUMemo(query_cache_size)

        self.index, self.mapped = read_faiss_index(self.index_path, mmap)
        self.ntotal, self.dim = int(self.index.ntotal), int(self.index.d)
        hidden = encoder_hidden_size(self.encoder_dir)
        if hidden != self.dim:
            raise ValueError(
                f"the index {self.index_path} holds {self.dim}-dimensional vectors but the "
                f"encoder {self.encoder_dir} has hidden size {hidden}: pass the encoder_dir "
                "of the model that built this index"
            )
        self.rows = JsonlRows(self.corpus_path)
        if len(self.rows) != self.ntotal:
            raise ValueError(
                f"the index {self.index_path} holds {self.ntotal:,} vectors but the corpus "
                f"{self.corpus_path} has {len(self.rows):,} rows: FAISS id i must be corpus "
                "row i, so pass the corpus this index was built from"
            )
        self._set_search_params(nprobe, ef_search)
        self.encoder = MiniLMEncoder(
            self.encoder_dir,
            max_length=max_length,
            torch_threads=torch_threads,
            pooling=pooling,
            normalize=normalize,
        )
        self._lock = threading.Lock()

    def _set_search_params(self, nprobe: int | None, ef_search: int | None) -> None:
        """Apply ``nprobe`` / ``ef_search`` (FAISS ParameterSpace names them for any index)."""
        import faiss

        for param, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{param} must be an int >= 1, got {value!r}")
            try:
                faiss.ParameterSpace().set_index_parameter(self.index, param, value)
            except RuntimeError as exc:
                kind = type(self.index).__name__
                raise ValueError(f"{param} does not apply to a {kind} index ({exc})") from exc

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """The query vectors searched: ``query_prefix + query``, encoded (float32, (n, dim))."""
        texts = [self.query_prefix + q for q in queries]
        return self.encoder.encode(texts, self.batch_size, precision=self.query_precision)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` nearest corpus rows of each query, best first (blank queries: no hits)."""
        queries = check_queries(queries)
        return vector_search(
            queries,
            min(check_k(k), self.ntotal),
            memo=self.memo,
            lock=self._lock,
            encode=self.encode_queries,
            search=self._faiss_search,
            hits=self._hits,
        )

    def _faiss_search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.search_threads:
            return faiss_search(self.index, vectors, k)
        import faiss

        faiss.omp_set_num_threads(self.search_threads)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        """Hits for one query's FAISS row, read from the corpus (id -1, an empty slot, skipped)."""
        return faiss_hits(ids, scores, self.rows.__getitem__)

    def __repr__(self) -> str:
        return (
            f"PrebuiltFaissRetriever(index={str(self.index_path)!r}, "
            f"{type(self.index).__name__}, ntotal={self.ntotal}, dim={self.dim}, "
            f"mapped={self.mapped}, corpus={str(self.corpus_path)!r}, "
            f"encoder={str(self.encoder_dir)!r}, pooling={self.encoder.pooling!r})"
        )
