"""The training questions whose gold answer the retriever can reach, computed once and cached.

``--train_reachable`` trains only on these (issue #20: when the gold is not retrieved the
agent scores F1 ~0.02 whatever it learns, so those groups are all-zero outcome groups that
cost rollouts and carry no signal). "Reachable" is the warm start's first move: search with
the question itself (trailing "?" dropped) and look for a gold alias in the documents as
the agent reads them (title plus text cut to ``doc_max_words``: the env's
``info["gold_retrieved"]``). A search that fails is an error, not "unreachable".

The list depends on the QA set, the retriever and its settings, so the cache key hashes
all of them together with every question and answer; the file lands in
``$IGPO_CACHE_DIR`` (default ``~/.cache/igpo``) as ``reachable-KEY.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from igpo_agent.learn.demonstrations import search_turn

CACHE_ENV = "IGPO_CACHE_DIR"
SETTINGS = ("qa", "corpus", "retriever", "url", "top_k", "doc_max_words")


def cache_dir() -> Path:
    """Where cached lists live: ``$IGPO_CACHE_DIR`` or ``~/.cache/igpo``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "igpo")


def cache_key(env_kwargs: dict[str, Any], questions: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A hash of the retrieval settings and every (question, answers) pair, in order."""
    h = hashlib.sha256()
    h.update(json.dumps({k: env_kwargs.get(k) for k in SETTINGS}, sort_keys=True).encode())
    for q, answers in questions:
        h.update(json.dumps([q, list(answers)]).encode())
    return h.hexdigest()[:20]


def _examples(env: gym.Env) -> list[Any]:
    examples = getattr(env.unwrapped, "examples", None)
    if examples is None:
        raise TypeError(
            f"{type(env.unwrapped).__name__} does not expose `examples`: train_reachable "
            "needs the question list"
        )
    return list(examples)


def first_search_reaches(env: gym.Env, index: int) -> bool:
    """Whether searching with question ``index`` itself retrieves a document holding its gold."""
    _, info = env.reset(options={"index": int(index)})
    question = str(info.get("question", ""))
    query = question.strip().rstrip("?").strip() or question
    _, _, _, _, step = env.step(search_turn(query, question, random.Random(0)))
    if step.get("search_failed"):
        raise RuntimeError(
            f"the search for question {index} failed ({step.get('search_error')}): "
            "train_reachable needs a working retriever"
        )
    if not step.get("valid", True) or step.get("action") != "search":
        raise RuntimeError(f"the env did not take the search for question {index}: {step}")
    return bool(step.get("gold_retrieved"))


def reachable_indices(
    env_id: str,
    env_kwargs: dict[str, Any],
    *,
    use_cache: bool = True,
    progress: bool = True,
) -> list[int]:
    """Indices (into the env's QA set) of the questions a first search answers, in order.

    Builds its own env with the tags protocol (the search turn is written in it; the
    retrieval settings are ``env_kwargs``'s), reads a cached list when one matches.
    """
    kw = {**env_kwargs, "protocol": "tags"}
    env = gym.make(env_id, max_episode_steps=3, **kw)
    try:
        examples = _examples(env)
        key = cache_key(kw, [(ex.question, ex.answers) for ex in examples])
        path = cache_dir() / f"reachable-{key}.json"
        if use_cache and path.is_file():
            data = json.loads(path.read_text())
            if data.get("count") == len(examples):
                return [int(i) for i in data["indices"]]
        out = _scan(env, len(examples), progress)
    finally:
        env.close()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"count": len(examples), "settings": {k: kw.get(k) for k in SETTINGS}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**record, "indices": out}))
        tmp.replace(path)
    return out


def _scan(env: gym.Env, n: int, progress: bool) -> list[int]:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="reachable questions", unit="q", dynamic_ncols=True)
    out = []
    for i in range(n):
        if first_search_reaches(env, i):
            out.append(i)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out
