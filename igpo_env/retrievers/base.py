"""The retrieval contract shared by every backend.

A retriever is batch-first (bm25s style): ``search(queries, k)`` takes a list of query
strings and returns, for each query, up to ``k`` :class:`Hit` objects, best first.
Backends that talk to a network raise :class:`SearchError` when they finally give up,
and the environment turns that into a "search failed: ..." observation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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


_FACTORIES: dict[str, Callable[..., Retriever]] = {}


def register_retriever(name: str, factory: Callable[..., Retriever]) -> None:
    """Make ``make_retriever(name, **kw)`` build a backend with ``factory(**kw)``."""
    _FACTORIES[name] = factory


def available_retrievers() -> list[str]:
    """Names accepted by :func:`make_retriever`."""
    _load_builtin()
    return sorted(_FACTORIES)


def make_retriever(name: str, **kwargs: Any) -> Retriever:
    """Build a retrieval backend by name (``bm25``, ``bm25-rank``, ``dense``, ``http``, ...)."""
    _load_builtin()
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown retriever {name!r}; choose one of {sorted(_FACTORIES)} "
            "or register your own with igpo_env.retrievers.register_retriever"
        )
    return _FACTORIES[name](**kwargs)


def _load_builtin() -> None:
    """Import the built-in backends lazily so that importing the env stays cheap."""
    from igpo_env.retrievers import builtin  # noqa: F401  (registers on import)
