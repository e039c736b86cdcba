"""SearchQA as a Hugging Face TRL environment (``GRPOTrainer(environment_factory=...)``).

TRL's GRPOTrainer (``environment_factory``, TRL >= 0.29; tested with 1.16) trains multi-turn
tool use from a class with ``reset(**row)`` and typed, docstringed tool methods. This module gives it the SearchQA environments::

    from trl import GRPOConfig, GRPOTrainer
    from igpo_env.integrations.trl import (
        answer_reward, build_dataset, make_environment_factory, prepare_tokenizer)

    trainer = GRPOTrainer(
        model=model,
        processing_class=prepare_tokenizer(tokenizer),   # a tool-calling chat template
        train_dataset=build_dataset("default:train"),    # prompt + question + answers
        environment_factory=make_environment_factory("SearchQA-v0", top_k=3),
        reward_funcs=answer_reward,                      # the env's answer score
        args=GRPOConfig(...),
    )

- :class:`SearchQATool` is one rollout's environment. Its only tool is
  ``search(query: str) -> str``: the query is capped, sent to the env's retriever (any
  backend: bm25, dense, http, searxng, a record/replay cache) and the top documents come
  back formatted exactly as inside the env's observation wrapper
  (``Doc 1 (Title: T) text``...); TRL's chat template puts them in ``<tool_response>``.
  Bad input (empty or non-string query, a failing backend) gives an observation string,
  never an exception. TRL itself answers calls to unknown tools or with wrong argument
  names with ``{"error": ...}`` and decodes malformed tool-call JSON as plain text.
- :func:`answer_reward` scores each rollout's final assistant turn the way
  ``env.step`` would score that turn: an ``<answer>...</answer>`` gets the env's
  ``reward_metric`` (F1, EM or cover-EM under its ``normalization``), a malformed turn
  the env's ``format_penalty``, a turn that is still a search (or a rollout cut off
  after a tool call) ``0.0``. TRL stops generating only at the end-of-turn token, so the
  turn is first cut after its first stop string (``</answer>``, ``</search>``...), as the
  env's own generators stop there.
- A rollout whose backend failed a search (a dead server, not the agent's bad query) is
  not scored as the agent's failure: :func:`answer_reward` returns ``None`` for it, which
  TRL (1.16) treats as unscorable (out of its group's baseline, advantage 0; with other
  reward functions it is scored by them alone), logs ``searchqa/search_failures``,
  ``searchqa/search_failure_rate`` and ``searchqa/unscored``, and warns with the error.
  ``igpo_agent``'s ``IGPOTrainer`` leaves such rollouts out of IGPO's groups the same way.
- :func:`build_dataset` turns a QA split into rows (chat prompt, question, gold answers).
- ``make_environment_factory(..., first_search=True)`` runs one search for the question at
  ``reset`` and appends its documents to the prompt, for small models that never call a tool.
- :func:`prepare_tokenizer` gives a ChatML tokenizer without tool support (SmolLM2)
  TRL's Qwen2.5 tool-calling template, which uses the same ``<|im_start|>``/``<|im_end|>``.

The module imports without TRL; the helpers that need TRL or ``datasets`` raise an
``ImportError`` naming ``pip install igpo[trl]``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

import igpo_env  # noqa: F401  (registers the SearchQA-* ids)
from igpo_env.env import MAX_OBSERVATION_CHARS, SearchQAEnv, cap_query
from igpo_env.metrics import score_answer
from igpo_env.protocol import Answer, Search

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "INSTALL_HINT",
    "SearchQATool",
    "answer_reward",
    "cut_at_stop",
    "build_dataset",
    "make_environment_factory",
    "prepare_tokenizer",
]

INSTALL_HINT = "pip install igpo[trl]"
log = logging.getLogger(__name__)
TOOL_NAME = "search"
FIRST_SEARCH_HEADER = "\n\nSearch results for the question:\n"
DEFAULT_SYSTEM_PROMPT = (
    "You are a careful research assistant. Answer the question by calling the search tool "
    "when you need facts."
)
INSTRUCTIONS = (
    "Answer the question below. When you are missing knowledge, call the search tool with a "
    "short query; it returns numbered documents. Search as often as you need. When you know "
    "the answer, reply with only the short answer inside <answer> and </answer>. "
    "Example final reply: <answer>Paris</answer>"
)


def _require(module: str) -> Any:
    """Import ``module`` or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this helper needs the '{module}' package, which TRL brings: `{INSTALL_HINT}` "
            "(or `pip install trl`)"
        ) from exc


def _searchqa_env(env: str | gym.Env, env_kwargs: Mapping[str, Any]) -> SearchQAEnv:
    """The SearchQAEnv behind an env id (made with ``env_kwargs``) or an env instance."""
    if isinstance(env, str):
        env = gym.make(env, **env_kwargs)
    elif env_kwargs:
        raise ValueError("env_kwargs configure an env id; pass them to gym.make for an instance")
    base = getattr(env, "unwrapped", env)
    if not isinstance(base, SearchQAEnv):
        raise TypeError(
            f"expected a SearchQA env id or instance (igpo_env.SearchQAEnv), got {type(base).__name__}"
        )
    return base


class SearchQATool:
    """One TRL rollout of a SearchQA environment: ``reset(**row)`` and the ``search`` tool.

    TRL exposes every public method except ``reset`` as a tool, so this class has exactly
    one, :meth:`search`; everything else is private or a plain attribute. Instances made by
    :func:`make_environment_factory` share one env (its retriever and index); each keeps its
    own question, gold answers and search log.

    ``first_search=True`` makes :meth:`reset` search for the question itself and return
    the documents, which TRL appends to the prompt's last user message.

    Attributes (read them in reward functions and tests): ``question``, ``answers``,
    ``searches`` (one dict per search: ``query``, ``sent``, ``truncated``, ``doc_ids``,
    ``failed``, ``error``, and ``backend_failed``: the backend raised, as opposed to a bad
    query), ``search_failures`` (how many searches the backend failed), ``metrics``
    (``{"em", "f1", "cover_em"}`` once :func:`answer_reward` scored an answer, else
    ``None``) and ``reward`` (``None`` for a rollout with a backend failure).
    """

    def __init__(
        self, env: str | gym.Env = "SearchQA-v0", *, first_search: bool = False, **env_kwargs: Any
    ) -> None:
        self.env = _searchqa_env(env, env_kwargs)
        self.first_search = bool(first_search)
        self.question: str | None = None
        self.answers: list[str] = []
        self.searches: list[dict[str, Any]] = []
        self.metrics: dict[str, float] | None = None
        self.reward: float | None = None

    def reset(
        self,
        question: str | None = None,
        answers: Sequence[str] | str | None = None,
        **row: Any,
    ) -> str | None:
        """Start a rollout on a dataset row (TRL passes every column as a keyword).

        Needs ``question`` and ``answers`` (a non-empty list of non-empty strings). Returns
        ``None`` (the prompt is used as it is), or with ``first_search`` a header and the
        documents of a search for the question, which TRL appends to the last user message.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                f"the dataset row needs a non-empty 'question' column, got {question!r}"
            )
        if isinstance(answers, str):
            answers = [answers]
        if (
            not isinstance(answers, Sequence)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise ValueError(
                "the dataset row needs an 'answers' column: a non-empty list of non-empty "
                f"strings, got {answers!r}"
            )
        self.question, self.answers = question.strip(), list(answers)
        self.searches, self.metrics, self.reward = [], None, None
        if not self.first_search:
            return None
        return FIRST_SEARCH_HEADER + self.search(self.question)

    def search(self, query: str) -> str:
        """Search the document collection and return the best matching documents.

        Args:
            query: A short search query, e.g. "capital of France".

        Returns:
            The top documents, one per line, as "Doc 1 (Title: ...) text".
        """
        env = self.env
        record: dict[str, Any] = {
            "query": query,
            "sent": None,
            "truncated": False,
            "doc_ids": [],
            "failed": False,
            "error": None,
            "backend_failed": False,
        }
        self.searches.append(record)
        if not isinstance(query, str):
            return self._invalid(record, f"the query must be a string, got {type(query).__name__}")
        if not query.strip():
            return self._invalid(record, "empty query")
        sent = cap_query(query.strip(), env.max_query_words, env.max_query_chars)
        record.update(sent=sent, truncated=sent != query.strip())
        try:
            results = env.retriever.search([sent], env.top_k)
            if len(results) != 1:
                raise RuntimeError(
                    f"backend {env.retriever.name!r} returned {len(results)} result lists for 1 query"
                )
            hits = list(results[0])[: env.top_k]
        except Exception as exc:  # noqa: BLE001  (any backend error is an observation in TRL's loop)
            record.update(failed=True, error=f"{type(exc).__name__}: {exc}", backend_failed=True)
            return _clip(f"search failed: {exc}")
        record["doc_ids"] = [h.doc_id for h in hits]
        observation = env.protocol.observation([sent], [hits], env.doc_max_words)
        return _clip(_unwrap(observation, env))

    @property
    def search_failures(self) -> int:
        """Searches of this rollout whose backend failed (not counting invalid queries)."""
        return sum(bool(r.get("backend_failed")) for r in self.searches)

    def _invalid(self, record: dict[str, Any], reason: str) -> str:
        record.update(failed=True, error=reason)
        return (
            f"Invalid search: {reason}. Call {TOOL_NAME} with a short non-empty query, or "
            f"give the final answer inside {self.env.protocol.answer_prefix} and "
            f"{self.env.protocol.answer_suffix}."
        )


def _unwrap(observation: str, env: SearchQAEnv) -> str:
    """The text inside the env's observation wrapper (``<information>`` / ``<tool_response>``)."""
    prefix, suffix = env.protocol.observation_prefix, env.protocol.observation_suffix
    return observation.removeprefix(prefix).removesuffix(suffix)


def _clip(text: str) -> str:
    return text[:MAX_OBSERVATION_CHARS]


def make_environment_factory(
    env: str | gym.Env = "SearchQA-v0", *, first_search: bool = False, **env_kwargs: Any
) -> Callable[[], SearchQATool]:
    """A zero-argument factory for ``GRPOTrainer(environment_factory=...)``.

    The env is built now, once (``gym.make(env, **env_kwargs)`` for an id, so a bad
    configuration fails here and not inside training); every :class:`SearchQATool` the
    factory makes shares it. ``env_kwargs`` are the env's own arguments: ``top_k``,
    ``doc_max_words``, ``reward_metric``, ``normalization``, ``format_penalty``,
    ``retriever``, ``corpus``, ``url``... ``first_search``: see :class:`SearchQATool`.
    """
    shared = _searchqa_env(env, env_kwargs)

    def factory() -> SearchQATool:
        return SearchQATool(shared, first_search=first_search)

    return factory


def _final_turn(completion: Any) -> str | None:
    """The text of a rollout's last assistant turn, or None when it ended on a tool call."""
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, list) or not completion:
        return ""
    last = completion[-1]
    if not isinstance(last, Mapping) or last.get("role") == "tool" or last.get("tool_calls"):
        return None
    content = last.get("content") or ""
    if isinstance(content, list):  # content blocks
        content = "".join(b.get("text", "") for b in content if isinstance(b, Mapping))
    think = last.get("reasoning_content")
    return f"<think>{think}</think>{content}" if think else str(content)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to and including its first stop string (all of it when there is none)."""
    ends = [i + len(s) for s in stops if (i := text.find(s)) >= 0]
    return text[: min(ends)] if ends else text


def _score_turn(tool: SearchQATool, text: str | None) -> float:
    """The reward ``env.step`` gives the turn cut at its first stop string; records metrics."""
    env = tool.env
    if text is None:  # the rollout stopped after a search: no answer, as a truncated episode
        return 0.0
    text = cut_at_stop(text, env.protocol.stop)
    if len(text) > env.max_action_chars:
        return env.format_penalty
    parsed = env.protocol.parse(text)
    if isinstance(parsed, Answer):
        tool.metrics = score_answer(parsed.text, tool.answers, env.normalization)
        return tool.metrics[env.reward_metric]
    if isinstance(parsed, Search):
        return 0.0
    return env.format_penalty


def answer_reward(
    completions: list[Any],
    environments: Sequence[SearchQATool] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Reward function for ``GRPOTrainer(reward_funcs=answer_reward)``: the env's score.

    Each completion's final assistant turn is scored against its environment's gold
    answers as ``env.step`` scores a turn (see the module docstring). Needs the trainer's
    ``environments`` (``environment_factory=make_environment_factory(...)``). With TRL's
    ``log_metric`` it also logs ``searchqa/{em,f1,cover_em}`` (mean over the batch, 0 for a
    rollout without an answer), ``searchqa/answered``, ``searchqa/searches`` and the
    backend's failures: ``searchqa/search_failures`` (count), ``searchqa/search_failure_rate``
    (failed / attempted searches) and ``searchqa/unscored`` (share of rollouts).

    A rollout with a failed backend search gets ``None`` (not scored: its outcome measures
    the outage, not the agent), and the batch's failures are logged as a warning.
    """
    if environments is None:
        raise ValueError(
            "answer_reward needs the trainer's environments: pass "
            "environment_factory=make_environment_factory(...) to GRPOTrainer"
        )
    if len(environments) != len(completions):
        raise ValueError(
            f"{len(completions)} completions but {len(environments)} environments; "
            "they must pair up one to one"
        )
    rewards: list[float | None] = []
    for completion, tool in zip(completions, environments, strict=True):
        if not isinstance(tool, SearchQATool):
            raise TypeError(f"expected SearchQATool environments, got {type(tool).__name__}")
        tool.metrics = None
        score = float(_score_turn(tool, _final_turn(completion)))
        tool.reward = None if tool.search_failures else score
        rewards.append(tool.reward)
    failures = sum(t.search_failures for t in environments)
    searches = sum(len(t.searches) for t in environments)
    unscored = sum(r is None for r in rewards)
    if failures:
        last = next(r["error"] for t in environments for r in t.searches if r["backend_failed"])
        log.warning(
            "%d of %d searches failed in the search backend; %d of %d rollouts are not scored "
            "(reward None). First error: %s",
            failures,
            searches,
            unscored,
            len(rewards),
            last,
        )
    if log_metric is not None and environments:
        n = len(environments)
        for name in ("em", "f1", "cover_em"):
            log_metric(
                f"searchqa/{name}", sum((t.metrics or {}).get(name, 0.0) for t in environments) / n
            )
        log_metric("searchqa/answered", sum(t.metrics is not None for t in environments) / n)
        log_metric("searchqa/searches", searches / n)
        log_metric("searchqa/search_failures", float(failures))
        log_metric("searchqa/search_failure_rate", failures / searches if searches else 0.0)
        log_metric("searchqa/unscored", unscored / n)
    return rewards


def build_dataset(
    qa: str = "default:train",
    *,
    limit: int | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    instructions: str = INSTRUCTIONS,
) -> Any:
    """A ``datasets.Dataset`` of GRPO rows from a QA split (``"default:train"`` or a JSONL).

    Columns: ``prompt`` (chat messages: the system prompt, then ``instructions`` and
    ``Question: ...``), ``question``, ``answers`` (gold aliases), ``qid``, ``dataset``.
    ``limit`` keeps the first questions. Needs ``datasets`` (``pip install igpo[trl]``).
    """
    datasets = _require("datasets")
    from igpo_env.data import load_qa

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    examples = load_qa(qa)[:limit]
    rows = []
    for ex in examples:
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": f"{instructions}\n\nQuestion: {ex.question}"})
        rows.append(
            {
                "prompt": prompt,
                "question": ex.question,
                "answers": list(ex.answers),
                "qid": ex.id,
                "dataset": ex.dataset,
            }
        )
    return datasets.Dataset.from_list(rows)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Make a tokenizer usable by TRL's tool-calling loop; returns it (changed in place).

    A tokenizer whose chat template already renders tool calls is left as it is. A ChatML
    one without tool support (SmolLM2: ``<|im_start|>``/``<|im_end|>``, eos ``<|im_end|>``)
    gets TRL's Qwen2.5 tool-calling template, which TRL recognises for parsing tool calls.
    Also sets a pad token (eos) and left padding. Any other tokenizer raises a ValueError:
    give it a tool-calling chat template yourself. Needs TRL (``pip install igpo[trl]``).
    """
    templates = _require("trl.chat_template_utils")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if templates.supports_tool_calling(tokenizer):
        return tokenizer
    vocab = tokenizer.get_vocab()
    if (
        "<|im_start|>" not in vocab
        or "<|im_end|>" not in vocab
        or tokenizer.eos_token != "<|im_end|>"
    ):
        raise ValueError(
            "the tokenizer's chat template cannot render tool calls and it is not a ChatML "
            "tokenizer (<|im_start|>/<|im_end|>, eos <|im_end|>) that TRL's Qwen2.5 template "
            "fits; set tokenizer.chat_template to a tool-calling template yourself"
        )
    tokenizer.chat_template = templates.qwen2_5_chat_template
    return tokenizer
