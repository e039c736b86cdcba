"""The retrieval contract shared by every backend, and the argument checks they share.

A retriever is batch-first (bm25s style): ``search(queries, k)`` takes a list of query
strings and returns, for each query, up to ``k`` :class:`Hit` objects, best first.
Backends that talk to a network raise :class:`SearchError` when they finally give up,
and the environment turns that into a "search failed: ..." observation.

This module imports nothing else of the package, so any backend (built-in or yours) can
import it without a cycle. Building a backend by name is :mod:`igpo_env.retrievers.registry`.
"""

from __future__ import annotations

import numbers
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its corpus id, title, body text and backend score."""

    doc_id: str
    title: str
    text: str
    score: float


class SearchError(RuntimeError):
    """A backend could not answer (network down, server error after retries, replay miss)."""


@runtime_checkable
class Retriever(Protocol):
    """Anything with a batch ``search``; ``name`` identifies the backend in caches and logs."""

    name: str

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Return up to ``k`` hits per query, best first (one list per query, same order)."""
        ...


def check_k(k: int) -> int:
    """Validate ``k`` (an int >= 1, numpy ints too) and return it as an ``int``; the error
    says what to pass instead."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int >= 1, got {type(k).__name__} {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (the number of hits per query), got {k}")
    return int(k)


def check_queries(queries: list[str]) -> list[str]:
    """Validate a batch of queries: a list of strings (an empty list is allowed)."""
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise TypeError(
            f"queries must be a list of strings (wrap one query as [query]), got {type(queries).__name__}"
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] must be a str, got {type(q).__name__}")
    return list(queries)


def announce(message: str) -> None:
    """One line on stderr about a first-time index build (what, from what, where)."""
    print(message, file=sys.stderr, flush=True)


def build_dir_atomically(final: Path, build: Callable[[Path], None]) -> None:
    """Build into a temporary sibling folder, then rename it into place (safe for racing builders)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # another process won only if it finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
