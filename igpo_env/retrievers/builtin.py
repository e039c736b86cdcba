"""The factories of the built-in retrieval backends (``make_bm25``, ``make_dense``, ...).

:data:`igpo_env.retrievers.registry.BUILTIN_SPECS` names each one by a
``"igpo_env.retrievers.builtin:make_..."`` string, so this module (and the backend module
each factory imports on its first call) loads only when a backend is built.

Local backends (``bm25``, ``bm25-rank``, ``dense``) take ``corpus=`` (a JSONL path,
``"default"`` for the shipped corpus, or a ``list[Document]``) and ``index_dir=`` (default
``cache_dir()/indexes/<backend>-<corpus fingerprint>[-<params hash>]``, the hash only for
non-default parameters). A built local backend is memoised per process: the same name,
corpus and keyword arguments give back the same object, so 16 envs share one index.

``faiss-prebuilt`` loads a prebuilt FAISS index as-is (Search-R1's ``e5_Flat.index``):
``index_path=``, ``corpus_path=`` (the JSONL whose row i is FAISS id i, read row by row, never
parsed whole), ``encoder_dir=`` and the encoder's settings (see
:mod:`igpo_env.retrievers.prebuilt`). It is memoised per process by its files (path, size,
mtime) and keyword arguments, so 16 envs share one mapped index.

Remote backends (``http``, ``searxng``, ``serper``) take no corpus.

Every factory also accepts ``cache=PATH`` (an sqlite file) and ``replay_only=False``: the
backend is then wrapped in :class:`~igpo_env.retrievers.cache.CachedRetriever`, which
records results and replays them offline (``replay_only=True`` never calls the backend and
raises ``SearchError`` on a miss; the backend is then not even built).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from igpo_env.data import Document, cache_dir, corpus_fingerprint, load_corpus, resolve_corpus_path
from igpo_env.retrievers.base import Retriever

CorpusArg = str | Path | list[Document]

_MEMO: dict[tuple, Retriever] = {}
_MEMO_LOCK = threading.Lock()
_CORPUS_MEMO: dict[tuple, tuple[list[Document], str]] = {}


def resolve_corpus(corpus: CorpusArg) -> tuple[list[Document], str]:
    """Load a corpus argument into documents plus their fingerprint (files read once per process)."""
    if isinstance(corpus, (list, tuple)):
        docs = list(corpus)
        bad = next((d for d in docs if not isinstance(d, Document)), None)
        if bad is not None:
            raise TypeError(
                f"corpus list must hold igpo_env.data.Document objects, found {type(bad).__name__}"
            )
        return docs, corpus_fingerprint(docs)
    if not isinstance(corpus, (str, Path)):
        raise TypeError(
            f"corpus must be a path, 'default' or a list of Document, got {type(corpus).__name__}"
        )
    path = resolve_corpus_path(corpus).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _CORPUS_MEMO:
        docs = load_corpus(path)
        if not docs:
            raise ValueError(f"corpus file {path} holds no documents")
        _CORPUS_MEMO[key] = (docs, corpus_fingerprint(docs))
    return _CORPUS_MEMO[key]


def default_index_dir(backend: str, fingerprint: str, params: dict[str, Any]) -> Path:
    """``cache_dir()/indexes/<backend>-<fingerprint>``, plus a params hash when params are set."""
    name = f"{backend}-{fingerprint}"
    if params:
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        name += "-" + hashlib.sha256(blob).hexdigest()[:8]
    return cache_dir() / "indexes" / name


def _memo_key(name: str, fingerprint: str, index_dir: Any, kwargs: dict[str, Any]) -> tuple:
    frozen = json.dumps(kwargs, sort_keys=True, default=str)
    return (name, fingerprint, str(index_dir), frozen)


def _local(name: str, build: Callable[..., Retriever]) -> Callable[..., Retriever]:
    """Factory for a corpus-backed backend: resolve corpus, pick index dir, memoise, maybe cache."""

    def factory(
        corpus: CorpusArg = "default",
        index_dir: str | Path | None = None,
        cache: str | Path | None = None,
        replay_only: bool = False,
        **params: Any,
    ) -> Retriever:
        def inner() -> Retriever:
            docs, fp = resolve_corpus(corpus)
            key = _memo_key(name, fp, index_dir, params)
            with _MEMO_LOCK:
                if key not in _MEMO:
                    folder = index_dir or default_index_dir(name, fp, params)
                    _MEMO[key] = build(docs, folder, fingerprint=fp, name=name, **params)
                return _MEMO[key]

        return _maybe_cached(name, inner, cache, replay_only)

    factory.__doc__ = f"Build the {name!r} backend over ``corpus`` (see module docstring)."
    return factory


def _remote(name: str, build: Callable[..., Retriever]) -> Callable[..., Retriever]:
    def factory(
        cache: str | Path | None = None, replay_only: bool = False, **kwargs: Any
    ) -> Retriever:
        return _maybe_cached(name, lambda: build(**kwargs), cache, replay_only)

    factory.__doc__ = f"Build the remote {name!r} backend (see module docstring)."
    return factory


def _maybe_cached(
    name: str, inner: Callable[[], Retriever], cache: str | Path | None, replay_only: bool
) -> Retriever:
    if cache is None:
        if replay_only:
            raise ValueError("replay_only=True needs cache=PATH (the sqlite file to replay from)")
        return inner()
    from igpo_env.retrievers.cache import CachedRetriever

    return CachedRetriever(
        None if replay_only else inner(), path=cache, replay_only=replay_only, name=name
    )


def _bm25s(docs, folder, **kw):
    from igpo_env.retrievers.bm25 import BM25sRetriever

    return BM25sRetriever(docs, folder, **kw)


def _rank(docs, folder, **kw):
    from igpo_env.retrievers.bm25 import RankBM25Retriever

    return RankBM25Retriever(docs, folder, **kw)


def _dense(docs, folder, **kw):
    from igpo_env.retrievers.dense import DenseRetriever

    return DenseRetriever(docs, folder, **kw)


def _file_key(path: Any) -> Any:
    """A path's identity for the memo: resolved path, size and mtime (the raw value if absent)."""
    try:
        found = Path(path).expanduser().resolve()
        stat = found.stat()
    except (TypeError, OSError):
        return str(path)
    return (str(found), stat.st_size, stat.st_mtime_ns)


def make_faiss_prebuilt(
    index_path: str | Path | None = None,
    corpus_path: str | Path | None = None,
    encoder_dir: str | Path | None = None,
    cache: str | Path | None = None,
    replay_only: bool = False,
    **params: Any,
) -> Retriever:
    """Build the ``faiss-prebuilt`` backend (see :class:`~.prebuilt.PrebuiltFaissRetriever`)."""

    def inner() -> Retriever:
        from igpo_env.retrievers.prebuilt import PrebuiltFaissRetriever

        files = [_file_key(p) for p in (index_path, corpus_path, encoder_dir)]
        key = _memo_key("faiss-prebuilt", json.dumps(files, default=str), None, params)
        with _MEMO_LOCK:
            if key not in _MEMO:
                _MEMO[key] = PrebuiltFaissRetriever(index_path, corpus_path, encoder_dir, **params)
            return _MEMO[key]

    return _maybe_cached("faiss-prebuilt", inner, cache, replay_only)


def _http(**kw):
    from igpo_env.retrievers.http import HTTPRetriever

    return HTTPRetriever(**kw)


def _searxng(**kw):
    from igpo_env.retrievers.web import SearxNGRetriever

    return SearxNGRetriever(**kw)


def _serper(**kw):
    from igpo_env.retrievers.web import SerperRetriever

    return SerperRetriever(**kw)


def clear_memo() -> None:
    """Forget memoised backends and corpora (tests; or to free memory)."""
    with _MEMO_LOCK:
        _MEMO.clear()
        _CORPUS_MEMO.clear()


make_bm25 = _local("bm25", _bm25s)
make_bm25_rank = _local("bm25-rank", _rank)
make_dense = _local("dense", _dense)
make_http = _remote("http", _http)
make_searxng = _remote("searxng", _searxng)
make_serper = _remote("serper", _serper)
