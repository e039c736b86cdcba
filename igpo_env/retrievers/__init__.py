"""Swappable retrieval backends behind one batch-first protocol (see :mod:`.base`)."""

from igpo_env.retrievers.base import (
    Hit,
    Retriever,
    SearchError,
    available_retrievers,
    make_retriever,
    register_retriever,
)

__all__ = [
    "Hit",
    "Retriever",
    "SearchError",
    "available_retrievers",
    "make_retriever",
    "register_retriever",
]
