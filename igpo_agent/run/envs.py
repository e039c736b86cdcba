"""Build the environments the learner rolls out in, from config values, via Gymnasium only.

The learner never imports ``igpo_env`` internals: it calls ``gym.make(env_id, **kwargs)``
(any env that takes these keyword arguments and returns gold answers in ``info`` works)
and reads the question count from ``env.unwrapped.examples`` when it needs to sample.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def env_kwargs(
    *,
    qa: str,
    corpus: str,
    retriever: str,
    top_k: int,
    doc_max_words: int,
    protocol: str,
    format_penalty: float,
    on_invalid: str,
) -> dict[str, Any]:
    """Keyword arguments for ``gym.make``; a ``retriever`` that is an http(s) URL selects the
    Search-R1 ``/retrieve`` client pointed at it (e.g. a shared ``python -m igpo_env.serve``).

    ``corpus="default"`` is left out, so the env applies its own default: the shipped corpus
    for backends that read one, nothing for those that hold their own documents (``searxng``,
    ``serper``, a third-party web backend), which refuse a corpus. Any other corpus is passed
    on, and such a backend then says it reads none."""
    kw: dict[str, Any] = {
        "qa": qa,
        "top_k": top_k,
        "doc_max_words": doc_max_words,
        "protocol": protocol,
        "format_penalty": format_penalty,
        "on_invalid": on_invalid,
    }
    if retriever.startswith(("http://", "https://")):
        kw["retriever"] = "http"
        kw["url"] = retriever
    else:
        kw["retriever"] = retriever
        if corpus != "default":
            kw["corpus"] = corpus
    return kw


def env_kwargs_from(settings: Any, qa: str) -> dict[str, Any]:
    """:func:`env_kwargs` from an object with the env option fields (any front door's config:
    ``igpo_agent.options.EnvOptions``) for the QA set ``qa``."""
    return env_kwargs(
        qa=qa,
        corpus=settings.corpus,
        retriever=settings.retriever,
        top_k=settings.top_k,
        doc_max_words=settings.doc_max_words,
        protocol=settings.protocol,
        format_penalty=settings.format_penalty,
        on_invalid=settings.on_invalid,
    )


def make_envs(env_id: str, n: int, max_turns: int, **kwargs: Any) -> list[gym.Env]:
    """``n`` independent envs (one per concurrent episode), each with a ``max_turns`` limit.

    Local retrievers are memoised per process by the backend, so ``n`` envs share one index.
    """
    if n < 1:
        raise ValueError(f"need at least one env, got n={n}")
    return [gym.make(env_id, max_episode_steps=max_turns, **kwargs) for _ in range(n)]


def question_count(env: gym.Env) -> int:
    """How many questions the env can be reset to with ``options={"index": i}``."""
    examples = getattr(env.unwrapped, "examples", None)
    if examples is None:
        raise TypeError(
            f"{type(env.unwrapped).__name__} does not expose `examples`; the trainer needs the "
            "question count to sample questions (or pass explicit question/answers tasks)"
        )
    return len(examples)


def question_strata(env: gym.Env) -> list[str]:
    """The stratum of each question the env can be reset to (``options={"index": i}``): its
    source article where the QA set names one (``example.article``), else its ``dataset``;
    the groups an evaluation subset is stratified by (:mod:`igpo_agent.run.subsets`)."""
    examples = getattr(env.unwrapped, "examples", None)
    if examples is None:
        question_count(env)  # raises the explanatory TypeError
    return [str(getattr(ex, "article", "") or getattr(ex, "dataset", "") or "") for ex in examples]
