"""SearchQAEnv: a multi-turn search-and-answer environment over text actions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.error import ResetNeeded

from igpo_env.data import QAExample, load_qa, resolve_qa_path
from igpo_env.metrics import METRICS, MODES, cover_em, max_over_aliases, score_answer
from igpo_env.protocol import Answer, Invalid, Protocol, Search, get_protocol, truncate_words
from igpo_env.retrievers.base import Retriever, SearchError
from igpo_env.retrievers.registry import RetrieverSpec, retriever_spec, retriever_specs
from igpo_env.spaces import FreeText

MAX_OBSERVATION_CHARS = 200_000  # observations (prompt included) are clipped to this
ON_INVALID = ("continue", "terminate")
DEFAULT_FORMAT_PENALTY = -2.0  # IGPO's lambda_fmt: the reward of a malformed turn

_QA_MEMO: dict[tuple, tuple[QAExample, ...]] = {}


def load_qa_cached(qa: str | Path) -> tuple[QAExample, ...]:
    """``load_qa`` once per process and file version (16 envs share one parsed QA set)."""
    path = resolve_qa_path(qa).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _QA_MEMO:
        _QA_MEMO[key] = tuple(load_qa(path))
    return _QA_MEMO[key]


def cap_query(query: str, max_words: int, max_chars: int) -> str:
    """The first ``max_words`` words of ``query``, then at most ``max_chars`` characters."""
    capped = " ".join(query.split()[:max_words])
    return capped[:max_chars]


class SearchQAEnv(gym.Env[str, str]):
    """
    ## Description

    An agent answers an open-domain question in several text turns. Each turn it may
    search a retrieval backend (BM25, dense FAISS, a Search-R1 ``/retrieve`` server or a
    SearxNG instance) and read the top documents, or give its final answer. This is the
    environment of Search-R1 and IGPO: the policy is a language model, the actions and
    observations are strings, and the reward is the answer's F1 against gold aliases.
    The environment knows nothing of the policy; the gold answers are in ``info`` so a
    learner can compute its own (e.g. information-gain) turn rewards.

    ## Action Space

    ``FreeText(max_action_chars)``: any ``str`` of at most ``max_action_chars``
    (default 100,000) characters, one agent turn. With ``protocol="tags"`` (default)::

        <think>optional reasoning</think><search>a query</search>
        <think>optional reasoning</think><answer>the answer</answer>

    With ``protocol="tool_call"`` a search is
    ``<tool_call>{"name": "web_search", "arguments": {"query": ["q1", "q2"]}}</tool_call>``.
    A turn must end at its stop string (``info["protocol"]["stop"]``) with the stop string
    included. The parsing rules are in :mod:`igpo_env.protocol`. Each query is cut to its
    first ``max_query_words`` (256) words and then ``max_query_chars`` (2,000) characters
    before it reaches the retriever. A longer action is a malformed turn.

    ## Observation Space

    ``FreeText(200_000)``: a ``str``. After ``reset`` it is the user prompt: protocol
    instructions with a short example, then ``Question: ...``. After a search it is the
    top ``top_k`` documents, each cut to ``doc_max_words`` words, inside the protocol's
    wrapper, e.g. ``"\\n\\n<information>Doc 1 (Title: T) text\\nDoc 2 ...</information>\\n\\n"``.
    After a malformed turn it is a corrective message in the same wrapper. After an
    answer it is ``""``.

    ## Rewards

    - answer: ``max`` over gold aliases of ``reward_metric`` (``"f1"`` default, ``"em"`` or
      ``"cover_em"``) under ``normalization`` (``"squad"`` default, or the IGPO
      reference's ``"igpo"``; see :mod:`igpo_env.metrics`), in ``[0, 1]``;
    - search: ``0.0`` (also when the search failed);
    - malformed turn: ``format_penalty`` (default ``-2.0``, IGPO's lambda_fmt).

    ## Starting State

    A question drawn uniformly from the QA set with ``self.np_random`` (seeded by
    ``reset(seed=...)``), or ``options={"index": i}``, or an ad hoc
    ``options={"question": "...", "answers": ["...", ...]}`` (optional ``"qid"``,
    ``"dataset"``).

    ## Episode End

    1. Termination: the agent answers (a parsed ``<answer>...</answer>``).
    2. Termination: a malformed turn when ``on_invalid="terminate"``.
    3. Truncation: the turn limit, ``max_episode_steps`` of the registration (4 for every
       ``SearchQA-*`` id, a CPU-friendly default; pass ``max_episode_steps=N`` to change).

    Calling ``step`` after termination raises :class:`gymnasium.error.ResetNeeded`.

    ## Info

    ``reset``: ``answers`` (list[str]), ``qid``, ``dataset``, ``article`` (the question's
    source article where the QA file names one, else ""), ``question``, ``index``
    (position in the QA set, -1 for an ad hoc question), ``protocol`` (dict: ``name``,
    ``answer_prefix``, ``answer_suffix``, ``stop``, ``observation_prefix``,
    ``observation_suffix``).

    ``step`` (every key below always present): ``action`` (``"search"``, ``"answer"`` or
    ``"invalid"``), ``valid`` (bool), ``turn`` (0-based), ``qid``, ``query`` (first query or
    None), ``queries`` (list[str], as sent, after capping), ``query_truncated`` (bool),
    ``answer`` (str or None), ``think`` (str or None), ``error`` (reason for a malformed
    turn or None), ``doc_ids`` and ``scores`` (flat lists in rank order, query after
    query), ``search_failed`` (bool), ``search_error`` (str or None), ``gold_retrieved``
    (bool: a document shown to the agent, title plus text cut to ``doc_max_words``, holds
    a gold alias as whole tokens after answer normalisation; False on non-search turns).
    On an answer only:
    ``metrics`` = ``{"em", "f1", "cover_em"}`` (absent otherwise, so that vector envs can
    batch it as a dict; there ``infos["_metrics"]`` marks the envs that answered).

    A failing backend never raises out of ``step``: the search turn gets the observation
    ``search failed: MESSAGE`` (reward 0.0), ``search_failed=True`` and the message in
    ``search_error``; ``search_failures`` (int, every ``step``) counts this episode's failed
    searches so far, so a learner or evaluator can tell an outage from the agent's own
    failures (``igpo_agent`` leaves such rollouts out of its update).

    ## Arguments

    ```python
    >>> import gymnasium as gym
    >>> import igpo_env
    >>> env = gym.make("SearchQA-v0", top_k=3, reward_metric="f1")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step("<search>capital of France</search>")
    ```

    | Parameter          | Type                          | Default           | Description |
    |--------------------|-------------------------------|-------------------|-------------|
    | `qa`               | str, Path, list[QAExample]    | `"default:train"` | QA set: JSONL path, `"default:SPLIT"`, or examples |
    | `corpus`           | str, Path, list[Document]     | None (`"default"`)| corpus of a backend whose spec has `takes_corpus` (bm25, bm25-rank, dense); for `faiss-prebuilt`, the JSONL whose row i is FAISS id i |
    | `retriever`        | str or Retriever              | `"bm25"`          | registered name, `"package.module:attr"`, or an instance (see `igpo_env.retrievers.registry`) |
    | `retriever_kwargs` | dict or None                  | None              | extra keyword arguments for the backend |
    | `url`              | str or None                   | None              | server of a remote backend (else its spec's `url_env`: `$IGPO_RETRIEVER_URL` for `http`, `$IGPO_SEARXNG_URL` for `searxng`) |
    | `protocol`         | str                           | `"tags"`          | `"tags"` or `"tool_call"` |
    | `top_k`            | int                           | 3                 | documents per query |
    | `doc_max_words`    | int                           | 100               | words kept per document |
    | `reward_metric`    | str                           | `"f1"`            | `"f1"`, `"em"` or `"cover_em"` |
    | `normalization`    | str                           | `"squad"`         | `"squad"` or `"igpo"` |
    | `format_penalty`   | float                         | -2.0              | reward of a malformed turn |
    | `on_invalid`       | str                           | `"continue"`      | `"continue"` (corrective observation) or `"terminate"` |
    | `max_action_chars` | int                           | 100000            | longest accepted turn |
    | `max_query_words`  | int                           | 256               | words of a query sent to the retriever |
    | `max_query_chars`  | int                           | 2000              | characters of a query sent to the retriever |
    | `render_mode`      | str or None                   | None              | `"ansi"`: `render()` returns the transcript |

    ## Version History

    * v0: initial version (Search-R1 tags and IGPO tool_call protocols; BM25, dense, HTTP
      and SearxNG backends).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        qa: str | Path | Sequence[QAExample] = "default:train",
        corpus: Any = None,
        retriever: str | Retriever = "bm25",
        retriever_kwargs: dict[str, Any] | None = None,
        url: str | None = None,
        protocol: str = "tags",
        top_k: int = 3,
        doc_max_words: int = 100,
        reward_metric: str = "f1",
        normalization: str = "squad",
        format_penalty: float = DEFAULT_FORMAT_PENALTY,
        on_invalid: str = "continue",
        max_action_chars: int = 100_000,
        max_query_words: int = 256,
        max_query_chars: int = 2_000,
        render_mode: str | None = None,
    ) -> None:
        self.protocol: Protocol = get_protocol(protocol)
        for name, value in (
            ("top_k", top_k),
            ("doc_max_words", doc_max_words),
            ("max_action_chars", max_action_chars),
            ("max_query_words", max_query_words),
            ("max_query_chars", max_query_chars),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if reward_metric not in METRICS:
            raise ValueError(f"unknown reward_metric {reward_metric!r}; choose one of {METRICS}")
        if normalization not in MODES:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {MODES}")
        if on_invalid not in ON_INVALID:
            raise ValueError(f"unknown on_invalid {on_invalid!r}; choose one of {ON_INVALID}")
        if not isinstance(format_penalty, (int, float)) or isinstance(format_penalty, bool):
            raise ValueError(f"format_penalty must be a number, got {format_penalty!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")

        self.examples = self._load_examples(qa)
        self.retriever = self._build_retriever(retriever, corpus, retriever_kwargs, url)
        self.top_k, self.doc_max_words = top_k, doc_max_words
        self.reward_metric, self.normalization = reward_metric, normalization
        self.format_penalty, self.on_invalid = float(format_penalty), on_invalid
        self.max_action_chars = max_action_chars
        self.max_query_words, self.max_query_chars = max_query_words, max_query_chars
        self.render_mode = render_mode

        self.action_space = FreeText(max_action_chars)
        self.observation_space = FreeText(MAX_OBSERVATION_CHARS)

        self._example: QAExample | None = None
        self._done = True
        self._turn = 0
        self._search_failures = 0  # failed searches of the current episode
        self._transcript: list[str] = []

    # ----------------------------------------------------------------- construction

    @staticmethod
    def _load_examples(qa: str | Path | Sequence[QAExample]) -> tuple[QAExample, ...]:
        if isinstance(qa, (str, Path)):
            examples = load_qa_cached(qa)
        elif isinstance(qa, Sequence) and all(isinstance(e, QAExample) for e in qa):
            examples = tuple(qa)
        else:
            raise TypeError(
                "qa must be a JSONL path, 'default:SPLIT' or a list of igpo_env.data.QAExample"
            )
        if not examples:
            raise ValueError(f"the QA set {qa!r} is empty; pass a file with at least one question")
        return examples

    @staticmethod
    def _build_retriever(
        retriever: str | Retriever, corpus: Any, kwargs: dict[str, Any] | None, url: str | None
    ) -> Retriever:
        kwargs = dict(kwargs or {})
        if not isinstance(retriever, str):
            if not isinstance(retriever, Retriever):
                raise TypeError(
                    "retriever must be a backend name or an object with "
                    "name and search(queries, k) (igpo_env.retrievers.Retriever)"
                )
            if corpus is not None or kwargs or url is not None:
                raise ValueError(
                    "corpus, retriever_kwargs and url configure a backend by name; "
                    "they cannot apply to a retriever instance (build it with them instead)"
                )
            return retriever
        try:
            spec = retriever_spec(retriever)
        except ValueError as exc:
            raise ValueError(f"{exc}; or pass a Retriever instance") from None
        if spec.takes_corpus:
            if url is not None:
                raise ValueError(f"url is for remote backends; {retriever!r} reads corpus=")
            _give_corpus(spec, corpus, kwargs)
        else:
            if corpus is not None:
                readers = sorted(n for n, s in retriever_specs().items() if s.takes_corpus)
                raise ValueError(
                    f"the {retriever!r} backend has no corpus= (its RetrieverSpec says "
                    "takes_corpus=False, as for a server that holds the documents); drop "
                    f"corpus or use one of {readers}"
                )
            url = url or (os.environ.get(spec.url_env) if spec.url_env else None)
            if url:
                kwargs.setdefault("url", url)
        return spec.make(**kwargs)

    # ----------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode on a drawn, indexed or given question; return its prompt."""
        super().reset(seed=seed)
        options = dict(options or {})
        index = -1
        if "question" in options:
            example = _adhoc_example(options)
        elif "index" in options:
            index = options["index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f'options["index"] must be an int, got {index!r}')
            if not -len(self.examples) <= index < len(self.examples):
                raise IndexError(
                    f'options["index"]={index} is out of range for {len(self.examples)} questions'
                )
            index %= len(self.examples)
            example = self.examples[index]
        else:
            index = int(self.np_random.integers(len(self.examples)))
            example = self.examples[index]
        self._example, self._done, self._turn = example, False, 0
        self._search_failures = 0
        obs = _clip(self.protocol.prompt(example.question))
        self._transcript = [obs]
        info = {
            "answers": list(example.answers),
            "qid": example.id,
            "dataset": example.dataset,
            "article": example.article,
            "question": example.question,
            "index": index,
            "protocol": self.protocol.info(),
        }
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Parse one agent turn; search, score an answer, or penalise a malformed turn."""
        if self._example is None or self._done:
            raise ResetNeeded(
                "Call reset before using step method: the episode has ended (or never began)."
            )
        if not isinstance(action, str):
            raise TypeError(
                f"the action must be a str (one decoded agent turn), got {type(action).__name__}; "
                "decode generated token ids to text before calling step"
            )
        info = self._blank_info()
        if len(action) > self.max_action_chars:
            parsed = Invalid(
                f"the turn is {len(action)} characters, over the limit of "
                f"{self.max_action_chars} (max_action_chars)"
            )
        else:
            parsed = self.protocol.parse(action)

        if isinstance(parsed, Search):
            obs, reward, terminated = self._search(parsed, info), 0.0, False
        elif isinstance(parsed, Answer):
            obs, reward, terminated = "", self._score(parsed, info), True
        else:
            info.update(action="invalid", valid=False, error=parsed.reason)
            obs = self.protocol.invalid_message(parsed.reason)
            reward, terminated = self.format_penalty, self.on_invalid == "terminate"

        self._search_failures += bool(info["search_failed"])
        info["search_failures"] = self._search_failures
        obs = _clip(obs)
        self._turn += 1
        self._done = terminated
        self._transcript += [action, obs]
        return obs, float(reward), terminated, False, info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the episode so far (prompt, turns, observations)."""
        if self.render_mode != "ansi":
            return None
        return "".join(self._transcript)

    # ----------------------------------------------------------------- turn handlers

    def _blank_info(self) -> dict[str, Any]:
        assert self._example is not None
        return {
            "action": None,
            "valid": True,
            "turn": self._turn,
            "qid": self._example.id,
            "query": None,
            "queries": [],
            "query_truncated": False,
            "answer": None,
            "think": None,
            "error": None,
            "doc_ids": [],
            "scores": [],
            "search_failed": False,
            "search_error": None,
            "gold_retrieved": False,
        }

    def _search(self, act: Search, info: dict[str, Any]) -> str:
        queries = [cap_query(q, self.max_query_words, self.max_query_chars) for q in act.queries]
        info.update(
            action="search",
            think=act.think,
            query=queries[0],
            queries=queries,
            query_truncated=any(q != c for q, c in zip(act.queries, queries, strict=True)),
        )
        try:
            results = self.retriever.search(queries, self.top_k)
            if len(results) != len(queries):
                raise SearchError(
                    f"backend {self.retriever.name!r} returned {len(results)} result lists "
                    f"for {len(queries)} queries"
                )
        except SearchError as exc:
            info.update(search_failed=True, search_error=str(exc))
            return self.protocol.wrap(f"search failed: {exc}")
        results = [list(hits)[: self.top_k] for hits in results]
        info["doc_ids"] = [h.doc_id for hits in results for h in hits]
        info["scores"] = [float(h.score) for hits in results for h in hits]
        info["gold_retrieved"] = self._holds_gold([h for hits in results for h in hits])
        return self.protocol.observation(queries, results, self.doc_max_words)

    def _holds_gold(self, hits: Sequence[Any]) -> bool:
        """Whether a document as the agent reads it (title + text cut to ``doc_max_words``)
        contains a gold alias (cover-EM under the env's normalisation): retrieval recall."""
        assert self._example is not None
        answers = self._example.answers
        return any(
            max_over_aliases(
                cover_em,
                f"{h.title} {truncate_words(h.text, self.doc_max_words)}",
                answers,
                self.normalization,
            )
            > 0
            for h in hits
        )

    def _score(self, act: Answer, info: dict[str, Any]) -> float:
        assert self._example is not None
        metrics = score_answer(act.text, self._example.answers, self.normalization)
        info.update(action="answer", think=act.think, answer=act.text, metrics=metrics)
        return metrics[self.reward_metric]


def _give_corpus(spec: RetrieverSpec, corpus: Any, kwargs: dict[str, Any]) -> None:
    """Put the env's ``corpus`` into the backend's keyword arguments, as its spec says:
    ``takes_corpus=True``: ``corpus=`` (``"default"`` when not given); a keyword name: that
    keyword, which must be a JSONL path (the file a prebuilt index was built from)."""
    if spec.takes_corpus is True:
        kwargs.setdefault("corpus", "default" if corpus is None else corpus)
        return
    if corpus is None:
        return
    arg = spec.corpus_kwarg
    if not isinstance(corpus, (str, Path)) or str(corpus) == "default":
        raise ValueError(
            f"the {spec.name!r} backend takes corpus= as the path of a JSONL file (its "
            f"{arg}=; for a prebuilt index, the file it was built from: row i = FAISS id i), "
            f"got {corpus!r}"
        )
    if arg in kwargs and str(kwargs[arg]) != str(corpus):
        raise ValueError(
            f"corpus={str(corpus)!r} and retriever_kwargs[{arg!r}]="
            f"{str(kwargs[arg])!r} disagree; pass the corpus once"
        )
    kwargs[arg] = corpus


def _adhoc_example(options: dict[str, Any]) -> QAExample:
    """A QAExample from ``options={"question": ..., "answers": [...]}`` (validated)."""
    question, answers = options["question"], options.get("answers")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('options["question"] must be a non-empty str')
    if isinstance(answers, str):
        answers = [answers]
    if (
        not isinstance(answers, (list, tuple))
        or not answers
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise ValueError('options["answers"] must be a non-empty list of non-empty strings')
    return QAExample(
        id=str(options.get("qid", "adhoc")),
        question=question.strip(),
        answers=tuple(answers),
        dataset=str(options.get("dataset", "adhoc")),
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS]
