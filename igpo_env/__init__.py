"""igpo_env: a Gymnasium search-QA environment suite with swappable retrieval backends.

Importing the package registers these ids (entry point ``igpo_env.env:SearchQAEnv``,
imported lazily on ``gym.make``), each with ``max_episode_steps=4`` (a CPU-friendly turn
limit; override with ``gym.make(id, max_episode_steps=N)``):

=======================  ==========================================================
id                       behaviour
=======================  ==========================================================
``SearchQA-v0``          shipped corpus + ``default:train`` QA, bm25s, tags protocol
``SearchQA-Dense-v0``    as above with the FAISS + MiniLM dense backend
``SearchQA-ToolCall-v0`` as ``SearchQA-v0`` with the IGPO/DeepResearcher tool_call protocol
``SearchQA-HTTP-v0``     a Search-R1 ``/retrieve`` server (``url=`` or
                         ``$IGPO_RETRIEVER_URL``); deterministic when the server is
                         (e.g. ``python -m igpo_env.serve`` over a local backend)
``SearchQA-Web-v0``      a SearxNG instance (``url=`` or ``$IGPO_SEARXNG_URL``), tags
                         protocol; ``nondeterministic=True`` (the live web changes)
=======================  ==========================================================

``gym.make("igpo_env:SearchQA-v0")`` works from a fresh interpreter without importing
this package first.
"""

from gymnasium.envs.registration import register, registry

from igpo_env.data import Document, QAExample, load_corpus, load_qa
from igpo_env.retrievers import Hit, Retriever, SearchError, make_retriever

ENTRY_POINT = "igpo_env.env:SearchQAEnv"
MAX_EPISODE_STEPS = 4

ENV_IDS: dict[str, dict] = {
    "SearchQA-v0": {"kwargs": {"retriever": "bm25", "protocol": "tags"}},
    "SearchQA-Dense-v0": {"kwargs": {"retriever": "dense", "protocol": "tags"}},
    "SearchQA-ToolCall-v0": {"kwargs": {"retriever": "bm25", "protocol": "tool_call"}},
    "SearchQA-HTTP-v0": {"kwargs": {"retriever": "http", "protocol": "tags"}},
    "SearchQA-Web-v0": {
        "kwargs": {"retriever": "searxng", "protocol": "tags"},
        "nondeterministic": True,
    },
}

for _id, _spec in ENV_IDS.items():
    if _id not in registry:
        register(
            id=_id,
            entry_point=ENTRY_POINT,
            max_episode_steps=MAX_EPISODE_STEPS,
            kwargs={"qa": "default:train", **_spec["kwargs"]},
            nondeterministic=_spec.get("nondeterministic", False),
        )


def __getattr__(name: str):
    """Import the env class lazily so that ``import igpo_env`` stays cheap."""
    if name == "SearchQAEnv":
        from igpo_env.env import SearchQAEnv

        return SearchQAEnv
    raise AttributeError(f"module 'igpo_env' has no attribute {name!r}")


__all__ = [
    "ENV_IDS",
    "Document",
    "Hit",
    "QAExample",
    "Retriever",
    "SearchError",
    "SearchQAEnv",
    "load_corpus",
    "load_qa",
    "make_retriever",
]
