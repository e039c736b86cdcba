"""Swappable retrieval backends behind one batch-first protocol (see :mod:`.base`), built
by name through a registry of lazily imported specs (see :mod:`.registry`)."""

from igpo_env.retrievers.base import Hit, Retriever, SearchError
from igpo_env.retrievers.registry import (
    ENTRY_POINT_GROUP,
    RetrieverSpec,
    available_retrievers,
    make_retriever,
    register_retriever,
    retriever_spec,
    retriever_specs,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Hit",
    "Retriever",
    "RetrieverSpec",
    "SearchError",
    "available_retrievers",
    "make_retriever",
    "register_retriever",
    "retriever_spec",
    "retriever_specs",
]
