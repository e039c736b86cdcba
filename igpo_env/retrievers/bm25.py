"""Lexical BM25 retrieval: bm25s (fast, default) and rank-bm25 (reference).

Both backends share one tokeniser (:func:`tokenize`: lower-case, ``\\w\\w+`` words, the
bm25s English stopword list, no stemming) so their scores can be compared.

Score variants (``N`` documents, ``n`` of them contain the term, ``tf`` its count in the
document, ``L = k1 * (1 - b + b * dl / avgdl)``):

=====================================  ==================================  =====================
backend / setting                      idf                                 tf part
=====================================  ==================================  =====================
bm25s ``method="lucene"`` (default)    ``log(1 + (N - n + .5) / (n + .5))``  ``tf / (tf + L)``
bm25s ``method="robertson"``           ``log((N - n + .5) / (n + .5))``,     ``tf / (tf + L)``
                                       clamped at 0
bm25s ``method="atire"``               ``log(N / n)``                       ``tf (k1+1) / (tf + L)``
rank-bm25 ``BM25Okapi``                ``log((N - n + .5) / (n + .5))``,     ``tf (k1+1) / (tf + L)``
                                       negatives -> ``epsilon * mean idf``
=====================================  ==================================  =====================

So bm25s with ``method="atire", idf_method="robertson"`` equals ``BM25Okapi`` exactly
whenever no query term occurs in more than half of the documents (where the two idf floors
differ); ``tests/igpo_env/retrievers/test_bm25.py`` checks this to 1e-5. The default here is
Lucene's variant with Anserini/Pyserini's ``k1=0.9, b=0.4`` (what Search-R1's BM25 server uses).

Documents that share no term with the query score 0 and are not returned, so a query of
only stopwords or punctuation yields no hits instead of an arbitrary ranking.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import threading
from pathlib import Path

import numpy as np

from igpo_env.data import Document
from igpo_env.retrievers.base import (  # the checks are re-exported here for old imports
    Hit,
    announce,
    build_dir_atomically,
    check_k,
    check_queries,
)

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
_TOKENIZER_VERSION = "lower-w2-stopen-v1"
_INDEX_FORMAT = 1
PROGRESS_MIN_DOCS = 50_000
"""Index builds over at least this many documents show progress bars (tokenising, indexing)."""


@functools.cache
def _stopwords() -> frozenset[str]:
    """bm25s's English stopword list (imported lazily: importing this module stays cheap)."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def tokenize(text: str) -> list[str]:
    """Lower-case words of two or more word characters, English stopwords removed."""
    stop = _stopwords()
    return [t for t in _TOKEN_RE.findall(text.lower()) if t not in stop]


def document_tokens(doc: Document) -> list[str]:
    """Tokens of a document as indexed: title and text together."""
    return tokenize(f"{doc.title} {doc.text}")


def corpus_tokens(docs: list[Document], desc: str) -> list[list[str]]:
    """:func:`document_tokens` of every document, with a tqdm bar for big corpora."""
    if len(docs) < PROGRESS_MIN_DOCS:
        return [document_tokens(d) for d in docs]
    from tqdm import tqdm

    return [document_tokens(d) for d in tqdm(docs, desc=desc, unit="doc", smoothing=0.1)]


def _hits(docs: list[Document], idx: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Hits for positive scores only, in the given (best-first) order."""
    out = []
    for i, s in zip(idx.tolist(), scores.tolist(), strict=True):
        if s > 0:
            d = docs[i]
            out.append(Hit(doc_id=d.id, title=d.title, text=d.text, score=float(s)))
    return out


class BM25sRetriever:
    """bm25s index (numba backend when numba is importable), saved once and loaded memory-mapped.

    ``index_dir`` holds the bm25s arrays plus ``meta.json`` (corpus fingerprint, parameters,
    tokeniser); a folder whose metadata does not match is rebuilt. The numba JIT is warmed up
    at construction so the first agent query is as fast as the rest.
    """

    def __init__(
        self,
        docs: list[Document],
        index_dir: str | Path | None = None,
        *,
        fingerprint: str = "",
        method: str = "lucene",
        idf_method: str | None = None,
        k1: float = 0.9,
        b: float = 0.4,
        mmap: bool = True,
        name: str = "bm25",
    ) -> None:
        import bm25s

        if not docs:
            raise ValueError("cannot build a BM25 index over an empty corpus; pass some documents")
        self.name = name
        self.docs = list(docs)
        self.backend = "numba" if _numba_available() else "numpy"
        self.params = {"method": method, "idf_method": idf_method, "k1": float(k1), "b": float(b)}
        self.meta = {
            "format": _INDEX_FORMAT,
            "fingerprint": fingerprint,
            "num_docs": len(self.docs),
            "tokenizer": _TOKENIZER_VERSION,
            **self.params,
        }
        self._lock = threading.Lock()
        if self.backend == "numba":
            _enable_numba_cache()
        self.index_dir = Path(index_dir) if index_dir is not None else None
        if self.index_dir is None:
            self.model = self._build(bm25s)
        else:
            if not self._meta_matches(self.index_dir):
                build_dir_atomically(self.index_dir, self._save_new)
            self.model = bm25s.BM25.load(
                str(self.index_dir),
                mmap=mmap,
                show_progress=False,
                override_params={"backend": self.backend, "auto_compile": False},
            )
        self.model.backend = self.backend
        self._warm_up()

    def _build(self, bm25s_mod):
        # auto_compile=False: index building runs in numpy (fast enough, and it skips ~10 s of
        # JIT for the build kernels); retrieval still uses bm25s's numba kernel.
        model = bm25s_mod.BM25(**self.params, backend=self.backend, auto_compile=False)
        tokens = corpus_tokens(self.docs, "igpo: tokenising corpus")
        model.index(tokens, show_progress=len(self.docs) >= PROGRESS_MIN_DOCS)
        for key in ("data", "indices", "indptr"):
            # read-only like a memory-mapped load, so both share one compiled numba kernel
            model.scores[key].setflags(write=False)
        return model

    def _save_new(self, folder: Path) -> None:
        import bm25s

        announce(
            f"igpo: building bm25 index (bm25s, {self.params['method']}) over "
            f"{len(self.docs):,} documents; caching it in {self.index_dir}"
        )
        self._build(bm25s).save(str(folder), show_progress=False)
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=1))

    def _meta_matches(self, folder: Path) -> bool:
        try:
            return json.loads((folder / "meta.json").read_text()) == self.meta
        except (OSError, ValueError):
            return False

    def _warm_up(self) -> None:
        """Compile the numba kernels now (one real retrieval), not on the agent's first query."""
        token = next(iter(self.model.vocab_dict))
        self._retrieve_ids([[self.model.vocab_dict[token]]], 1)

    def _retrieve_ids(self, ids: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            docs_idx, scores = self.model.retrieve(
                ids, k=k, show_progress=False, n_threads=1, return_as="tuple"
            )
        return np.asarray(docs_idx), np.asarray(scores)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query; empty or stopword-only queries get no hits."""
        queries = check_queries(queries)
        k = min(check_k(k), len(self.docs))
        vocab = self.model.vocab_dict
        ids = [[vocab[t] for t in tokenize(q) if t in vocab] for q in queries]
        out: list[list[Hit]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(ids) if q]
        if todo:
            idx, scores = self._retrieve_ids([ids[i] for i in todo], k)
            for row, i in enumerate(todo):
                out[i] = _hits(self.docs, idx[row], scores[row])
        return out

    def __repr__(self) -> str:
        return (
            f"BM25sRetriever(docs={len(self.docs)}, backend={self.backend!r}, "
            f"index_dir={str(self.index_dir) if self.index_dir else None!r}, {self.params})"
        )


class RankBM25Retriever:
    """rank-bm25's ``BM25Okapi``, the slow reference for exact compatibility with older work.

    With ``index_dir`` the fitted model is pickled there once (our own cache file) and reused.
    """

    def __init__(
        self,
        docs: list[Document],
        index_dir: str | Path | None = None,
        *,
        fingerprint: str = "",
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        name: str = "bm25-rank",
    ) -> None:
        from rank_bm25 import BM25Okapi

        if not docs:
            raise ValueError("cannot build a BM25 index over an empty corpus; pass some documents")
        self.name = name
        self.docs = list(docs)
        self.params = {"k1": float(k1), "b": float(b), "epsilon": float(epsilon)}
        meta = {
            "format": _INDEX_FORMAT,
            "fingerprint": fingerprint,
            "num_docs": len(self.docs),
            "tokenizer": _TOKENIZER_VERSION,
            **self.params,
        }
        self.index_dir = Path(index_dir) if index_dir is not None else None

        def fit() -> BM25Okapi:
            return BM25Okapi(corpus_tokens(self.docs, "igpo: tokenising corpus"), **self.params)

        if self.index_dir is None:
            self.model = fit()
            return

        def save(folder: Path) -> None:
            announce(
                f"igpo: building bm25-rank index (rank-bm25 BM25Okapi) over "
                f"{len(self.docs):,} documents; caching it in {self.index_dir}"
            )
            with open(folder / "model.pkl", "wb") as fh:
                pickle.dump(fit(), fh, protocol=pickle.HIGHEST_PROTOCOL)
            (folder / "meta.json").write_text(json.dumps(meta, indent=1))

        try:
            ok = json.loads((self.index_dir / "meta.json").read_text()) == meta
        except (OSError, ValueError):
            ok = False
        if not ok:
            build_dir_atomically(self.index_dir, save)
        with open(self.index_dir / "model.pkl", "rb") as fh:
            self.model = pickle.load(fh)  # noqa: S301  (our own cache file)

    def scores(self, query: str) -> np.ndarray:
        """BM25Okapi score of every document for one query (the reference numbers)."""
        return np.asarray(self.model.get_scores(tokenize(query)), dtype=np.float64)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query (ties broken by corpus order); no hits for empty queries."""
        queries = check_queries(queries)
        k = min(check_k(k), len(self.docs))
        out = []
        for q in queries:
            if not tokenize(q):
                out.append([])
                continue
            s = self.scores(q)
            top = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -s[top]))]
            out.append(_hits(self.docs, top, s[top]))
        return out

    def __repr__(self) -> str:
        return f"RankBM25Retriever(docs={len(self.docs)}, {self.params})"


@functools.cache
def _enable_numba_cache() -> None:
    """Cache bm25s's retrieval kernel on disk (numba's own cache, beside bm25s or in the user
    cache dir): its JIT compile costs 5-20 s here, so every later process starts in ~0.3 s.
    bm25s does not ask for this itself; if its internals move, we only lose the cache."""
    try:
        from bm25s.numba import retrieve_utils

        retrieve_utils._retrieve_internal_jitted_serial.enable_caching()
    except (ImportError, AttributeError, OSError, RuntimeError):  # pragma: no cover
        pass


def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("NUMBA_DISABLE_JIT", "0") in ("", "0")
