"""Demonstration trajectories for the supervised warm start, built with the real environment.

A 135M instruct model does not emit the search protocol zero-shot, so :mod:`igpo_agent.sft`
first imitates scripted episodes. Each demonstration is played in a real ``SearchQA`` env:

1. search with the question itself; if a gold alias appears in the retrieved documents
   (as the env formatted them, i.e. after ``top_k`` and ``doc_max_words``), answer with it;
2. otherwise search again with a derived query (the question's content words) and answer
   if a gold alias appears now;
3. otherwise (the gold answer was never retrieved) the episode is skipped, unless the
   ``unfound_rate`` lottery keeps it as "search, search, answer with the gold". Skipping is
   the default: a demonstration that answers what the documents do not say teaches
   hallucination, and the found cases already show every turn shape the agent needs.

Every turn is stepped through the env, which must parse it as valid; the final answer
must score F1 = 1. Only episodes that pass are kept. The record is the same as a rollout's
(:mod:`igpo_agent.rollout.episodes`): ``prompt_fn(prompt_text)`` ids, then each agent turn as
``tokenizer.encode(text, add_special_tokens=False)`` (an ``action`` span), each observation
encoded the same way (an ``observation`` span), nothing inserted between them. A turn ends
at its stop string (``</search>``, ``</answer>``), exactly where the sampler stops it. With
``answer_eos_id`` (sft's ``--answer_eos``) the answer turn also carries the end-of-sequence
token after ``</answer>``: the agent learns to end the episode as a chat model ends its
reply, and RL with ``answer_eos`` samples up to that token.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from igpo_agent.rollout.trajectory import Span, Trajectory
from igpo_env.metrics import cover_em

__all__ = [
    "DemoStats",
    "answer_turn",
    "build_demonstration",
    "build_demonstrations",
    "derived_query",
    "found_answer",
    "search_turn",
]

PromptFn = Callable[[str], list[int]]

STOPWORDS = frozenset(
    """a an the of in on at to for from by with about as into over under after before
    between during through and or but if then than that this these those which who whom
    whose what when where why how is are was were be been being do does did done have has
    had having can could would should will shall may might must not no nor any all some
    its it his her their there they them he she we you i me my our your one ones did
    called name named kind type many much more most also other""".split()
)

_FIRST_THINK = (
    "I need to find {topic}.",
    "I should search for {topic}.",
    "Let me look up {topic}.",
    "I do not know this yet, so I will search for {topic}.",
)
_MAX_TOPIC_WORDS = 6
_RETRY_THINK = (
    "The documents do not mention the answer. I will try other keywords.",
    "The answer is not in these documents. Let me search with different words.",
    "These results do not answer the question. I will search again.",
)
_ANSWER_THINK = (  # no "Doc i (Title: ...)": a model imitating that copies the document
    "The {doc} document says {answer}.",
    "The documents say {answer}.",
    "According to the {doc} document, the answer is {answer}.",
    "The {doc} document answers it: {answer}.",
)
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_GUESS_THINK = (
    "The documents do not say it directly; my best answer is {answer}.",
    "I could not find it in the documents, but I believe the answer is {answer}.",
)

# "Doc i (Title: ...)" at the start of a line or right after the wrapper's opening tag
_DOC_START = re.compile(r"(?:^|(?<=\n)|(?<=>))Doc (\d+) \(Title: ")


@dataclass
class DemoStats:
    """Counts of how demonstrations were built (and why others were not)."""

    tried: int = 0
    kept: int = 0
    found_first: int = 0  # answered after the first search
    found_second: int = 0  # answered after the derived second search
    unfound_kept: int = 0  # kept by the unfound_rate lottery (answer not retrieved)
    not_found: int = 0  # skipped: the gold answer was never retrieved
    too_long: int = 0  # skipped: a turn over max_turn_tokens or too many turns
    rejected: int = 0  # skipped: the env did not accept a turn or the answer scored < 1
    reasons: list[str] = field(default_factory=list)  # the first few rejection reasons

    def as_metrics(self, prefix: str = "sft/demos_") -> dict[str, float]:
        """Flat metric names for logging."""
        keys = ("tried", "kept", "found_first", "found_second", "unfound_kept", "not_found")
        keys += ("too_long", "rejected")
        return {f"{prefix}{k}": float(getattr(self, k)) for k in keys}


def derived_query(question: str) -> str:
    """The question's content words (lower-cased, stopwords and punctuation dropped).

    ``"What is the capital city of France?"`` -> ``"capital city france"``. Falls back to
    the stripped question when nothing is left.
    """
    words = re.findall(r"[\w'-]+", question.lower())
    kept = [w.strip("'-") for w in words if w.strip("'-") and w not in STOPWORDS]
    return " ".join(kept) if kept else question.strip()


def _topic(question: str) -> str:
    """What to look up, for the think text: the first few content words of the question."""
    words = derived_query(question).split()[:_MAX_TOPIC_WORDS]
    return " ".join(words) if words else "the answer"


def search_turn(query: str, question: str, rng: random.Random, *, retry: bool = False) -> str:
    """One search turn: ``<think>...</think><search>query</search>`` (phrasing from ``rng``)."""
    if retry:
        think = rng.choice(_RETRY_THINK)
    else:
        think = rng.choice(_FIRST_THINK).format(topic=_topic(question))
    return f"<think>{think}</think><search>{query.strip()}</search>"


def answer_turn(answer: str, rng: random.Random, *, doc: int | None) -> str:
    """The final turn: ``<think>...</think><answer>answer</answer>``; ``doc`` is the number
    of the document that holds the answer (None: not retrieved, a plain belief)."""
    if doc is None:
        think = rng.choice(_GUESS_THINK).format(answer=answer)
    else:
        nth = _ORDINALS[doc - 1] if 1 <= doc <= len(_ORDINALS) else "retrieved"
        think = rng.choice(_ANSWER_THINK).format(answer=answer, doc=nth)
    return f"<think>{think}</think><answer>{answer.strip()}</answer>"


def found_answer(observation: str, answers: Iterable[str]) -> tuple[str, int] | None:
    """The first gold alias contained (as whole normalised tokens) in a retrieved document
    of ``observation``, with that document's 1-based number; None when no alias is there.

    Documents are the env's ``Doc i (Title: ...) text`` lines; an observation without
    such lines counts as one document.
    """
    starts = list(_DOC_START.finditer(observation))
    ends = [m.start() for m in starts[1:]] + [len(observation)]
    docs = [
        (int(m.group(1)), observation[m.start() : end])
        for m, end in zip(starts, ends[: len(starts)], strict=True)
    ]
    if not docs:
        docs = [(1, observation)]
    for alias in answers:
        if not alias.strip():
            continue
        for number, text in docs:
            if cover_em(text, alias) == 1.0:
                return alias.strip(), number
    return None


class _Reject(Exception):
    """A demonstration the env did not accept (the message says why)."""


class _TooLong(_Reject):
    """A demonstration that does not fit the turn or token budget."""


class _Recorder:
    """Steps one env episode with scripted turns, recording spans like a rollout does."""

    def __init__(
        self,
        env: gym.Env,
        traj: Trajectory,
        tokenizer: Any,
        max_turn_tokens: int,
        answer_eos_id: int | None = None,
    ):
        self.env, self.traj, self.tokenizer = env, traj, tokenizer
        self.max_turn_tokens = max_turn_tokens
        self.answer_eos_id = answer_eos_id

    def step(self, text: str, *, final: bool = False) -> tuple[str, float, bool, dict[str, Any]]:
        traj = self.traj
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if final and self.answer_eos_id is not None:
            ids = [*ids, int(self.answer_eos_id)]  # the answer turn ends the sequence
        if len(ids) > self.max_turn_tokens:
            raise _TooLong(f"turn of {len(ids)} tokens > max_turn_tokens={self.max_turn_tokens}")
        turn = traj.num_turns
        start = len(traj.token_ids)
        traj.token_ids.extend(ids)
        traj.sample_logprobs.extend([0.0] * len(ids))
        traj.spans.append(Span("action", start, len(traj.token_ids), turn))
        traj.turn_texts.append(text)
        obs, reward, terminated, truncated, info = self.env.step(text)
        action = str(info.get("action", "invalid"))
        if not info.get("valid", False):
            raise _Reject(f"env rejected turn {turn} ({info.get('error')}): {text!r}")
        traj.turn_kinds.append(action)
        traj.env_rewards.append(float(reward))
        if terminated or truncated:
            if not (terminated and action == "answer"):
                raise _TooLong(f"the episode ended at turn {turn} before the answer")
            traj.answered = True
            traj.outcome_f1 = float(reward)
            traj.answer_text = str(info.get("answer") or "")
            traj.answer_metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items()}
            return obs, float(reward), True, info
        if info.get("search_failed"):
            raise _Reject(f"the search failed: {info.get('search_error')}")
        obs_ids = self.tokenizer.encode(obs, add_special_tokens=False)
        start = len(traj.token_ids)
        traj.token_ids.extend(obs_ids)
        traj.sample_logprobs.extend([0.0] * len(obs_ids))
        traj.spans.append(Span("observation", start, len(traj.token_ids), turn))
        traj.observations.append(obs)
        return obs, float(reward), False, info


def build_demonstration(
    env: gym.Env,
    index: int,
    prompt_fn: PromptFn,
    tokenizer: Any,
    rng: random.Random,
    *,
    unfound_rate: float = 0.0,
    max_turn_tokens: int = 64,
    stats: DemoStats | None = None,
    answer_eos_id: int | None = None,
) -> Trajectory | None:
    """Play one scripted episode of question ``index`` in ``env``; the Trajectory, or None
    when it is skipped (answer not retrieved, too long, or not accepted by the env).

    The env needs room for 3 turns (``max_episode_steps >= 3``) for the second-search case.
    ``answer_eos_id`` is appended to the answer turn's tokens (the env reads its text only).
    """
    stats = stats if stats is not None else DemoStats()
    stats.tried += 1
    prompt_text, info = env.reset(options={"index": int(index)})
    question = str(info.get("question", ""))
    answers = [str(a) for a in info["answers"]]
    prompt = [int(t) for t in prompt_fn(prompt_text)]
    traj = Trajectory(
        question=question,
        answers=answers,
        token_ids=list(prompt),
        spans=[Span("prompt", 0, len(prompt), -1)],
        sample_logprobs=[0.0] * len(prompt),
        qid=str(info.get("qid", "")),
        dataset=str(info.get("dataset", "")),
    )
    rec = _Recorder(env, traj, tokenizer, max_turn_tokens, answer_eos_id)
    first_query = question.strip().rstrip("?").strip() or question
    try:
        obs, _, _, _ = rec.step(search_turn(first_query, question, rng))
        hit = found_answer(obs, answers)
        kind = "found_first"
        second = derived_query(question)
        if hit is None and second.lower() != first_query.lower():
            obs, _, _, _ = rec.step(search_turn(second, question, rng, retry=True))
            hit = found_answer(obs, answers)
            kind = "found_second"
        if hit is None:
            if not answers or rng.random() >= unfound_rate:
                stats.not_found += 1
                return None
            kind = "unfound_kept"
            answer, doc = answers[0].strip(), None
        else:
            answer, doc = hit
        _, reward, done, ans_info = rec.step(answer_turn(answer, rng, doc=doc), final=True)
        f1 = float((ans_info.get("metrics") or {}).get("f1", reward))
        if not done or f1 < 1.0:
            raise _Reject(f"the answer {answer!r} scored F1={f1:.2f} against {answers}")
    except _TooLong as e:
        stats.too_long += 1
        _note(stats, str(e))
        return None
    except _Reject as e:
        stats.rejected += 1
        _note(stats, str(e))
        return None
    setattr(stats, kind, getattr(stats, kind) + 1)
    stats.kept += 1
    return traj


def _note(stats: DemoStats, reason: str) -> None:
    if len(stats.reasons) < 5:
        stats.reasons.append(reason)


def build_demonstrations(
    env: gym.Env,
    indices: Sequence[int],
    prompt_fn: PromptFn,
    tokenizer: Any,
    *,
    count: int,
    seed: int = 0,
    unfound_rate: float = 0.0,
    max_turn_tokens: int = 64,
    progress: Callable[[DemoStats], None] | None = None,
    answer_eos_id: int | None = None,
) -> tuple[list[Trajectory], DemoStats]:
    """Demonstrations from the questions ``indices`` (in order) until ``count`` are kept.

    Returns the kept trajectories (``group`` = their position) and the build statistics;
    fewer than ``count`` when the indices run out. ``progress`` is called after each try.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1 demonstrations, got {count}")
    if not 0.0 <= unfound_rate <= 1.0:
        raise ValueError(f"unfound_rate must be in [0, 1], got {unfound_rate}")
    rng = random.Random(seed)
    stats = DemoStats()
    out: list[Trajectory] = []
    for index in indices:
        traj = build_demonstration(
            env,
            int(index),
            prompt_fn,
            tokenizer,
            rng,
            unfound_rate=unfound_rate,
            max_turn_tokens=max_turn_tokens,
            stats=stats,
            answer_eos_id=answer_eos_id,
        )
        if traj is not None:
            traj.group = len(out)
            out.append(traj)
        if progress is not None:
            progress(stats)
        if len(out) >= count:
            break
    return out, stats
