"""The text protocol between agent and environment: parse a turn, format what comes back.

Pure and deterministic: no I/O, no randomness. Two protocols:

``"tags"`` (default, Search-R1 style)::

    <think>reasoning</think>
    <search>a query</search>          -> <information>Doc 1 (Title: ...) ...</information>
    <answer>final answer</answer>     -> the episode ends

``"tool_call"`` (the reference IGPO / DeepResearcher format)::

    <think>reasoning</think>
    <tool_call>{"name": "web_search", "arguments": {"query": ["q1", "q2"]}}</tool_call>
                                      -> <tool_response>...</tool_response>
    <answer>final answer</answer>

Parsing rules, shared by both protocols:

- Tags are exact, lowercase and attribute-free (``<search>``, not ``<Search q=..>``).
- At most one ``<think>...</think>`` block, which must come before the action.
- Exactly one action block (``search``/``tool_call`` or ``answer``), and it must be closed:
  the turn has to *include* its stop string (``</search>``, ``</answer>``...), so a
  generator must keep the stop string in its output.
- Blocks never nest, and every opening tag is closed by its own closing tag.
- Free text before the action (outside tags) is tolerated and ignored: small models often
  reason in plain text. Text after the action's closing tag must be whitespace, because an
  agent stops at the stop string; anything else is a malformed turn.
- The agent may not write the environment's own wrapper (``<information>`` /
  ``<tool_response>``): that would be the agent impersonating retrieved evidence.
- An empty query is invalid; an empty answer is a valid answer (it simply scores 0).

Anything that breaks a rule parses to :class:`Invalid` with a reason that says what to fix;
parsing never raises for any ``str`` input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from igpo_env.retrievers.base import Hit

MAX_TOOL_QUERIES = 5  # a tool_call may batch at most this many queries


@dataclass(frozen=True)
class Search:
    """A search action: one query (tags) or up to ``MAX_TOOL_QUERIES`` (tool_call)."""

    queries: tuple[str, ...]
    think: str | None = None


@dataclass(frozen=True)
class Answer:
    """A final answer (the text between the answer tags, stripped)."""

    text: str
    think: str | None = None


@dataclass(frozen=True)
class Invalid:
    """A malformed turn; ``reason`` says what was wrong and how to fix it."""

    reason: str


Action = Search | Answer | Invalid


@dataclass(frozen=True)
class _Block:
    tag: str
    body: str
    start: int  # index of the opening tag
    end: int  # index just past the closing tag


def _scan_blocks(text: str, tags: Sequence[str]) -> list[_Block] | Invalid:
    """Split ``text`` into non-nested, balanced ``<tag>...</tag>`` blocks, or say why not."""
    pattern = re.compile(r"<(/?)(" + "|".join(re.escape(t) for t in tags) + r")>")
    blocks: list[_Block] = []
    open_tag: str | None = None
    open_at = body_at = 0
    for m in pattern.finditer(text):
        closing, tag = m.group(1) == "/", m.group(2)
        if not closing:
            if open_tag is not None:
                return Invalid(f"<{tag}> opened inside <{open_tag}>: tags must not nest")
            open_tag, open_at, body_at = tag, m.start(), m.end()
        elif open_tag is None:
            return Invalid(f"</{tag}> without a matching <{tag}>")
        elif tag != open_tag:
            return Invalid(f"<{open_tag}> closed by </{tag}>: close it with </{open_tag}>")
        else:
            blocks.append(_Block(tag, text[body_at : m.start()], open_at, m.end()))
            open_tag = None
    if open_tag is not None:
        return Invalid(f"<{open_tag}> is never closed: end it with </{open_tag}>")
    return blocks


@dataclass(frozen=True)
class Protocol:
    """Everything protocol-specific: tags, instructions, stop strings, observation wrapper."""

    name: str
    search_tag: str  # "search" or "tool_call"
    observation_tag: str  # "information" or "tool_response"
    instructions: str  # shown before the question; teaches the format with an example
    answer_prefix: str = "<answer>"
    answer_suffix: str = "</answer>"

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end an agent turn (kept in the turn's text)."""
        return (f"</{self.search_tag}>", self.answer_suffix)

    @property
    def observation_prefix(self) -> str:
        return f"\n\n<{self.observation_tag}>"

    @property
    def observation_suffix(self) -> str:
        return f"</{self.observation_tag}>\n\n"

    def info(self) -> dict[str, Any]:
        """The ``info["protocol"]`` dict the learner relies on (plain, picklable values)."""
        return {
            "name": self.name,
            "answer_prefix": self.answer_prefix,
            "answer_suffix": self.answer_suffix,
            "stop": list(self.stop),
            "observation_prefix": self.observation_prefix,
            "observation_suffix": self.observation_suffix,
        }

    def prompt(self, question: str) -> str:
        """The user message for a question: instructions, then the question."""
        return f"{self.instructions}\n\nQuestion: {question.strip()}\n"

    def parse(self, text: str) -> Action:
        """Parse one agent turn into :class:`Search`, :class:`Answer` or :class:`Invalid`."""
        if not isinstance(text, str):
            return Invalid(f"the action must be a str, got {type(text).__name__}")
        tags = ("think", self.search_tag, "answer", self.observation_tag)
        blocks = _scan_blocks(text, tags)
        if isinstance(blocks, Invalid):
            return blocks
        wrapper = [b for b in blocks if b.tag == self.observation_tag]
        if wrapper:
            return Invalid(
                f"<{self.observation_tag}> is written by the environment only; "
                f"end the turn at {' or '.join(self.stop)}"
            )
        actions = [b for b in blocks if b.tag in (self.search_tag, "answer")]
        if not actions:
            return Invalid(
                f"no action: end the turn with <{self.search_tag}>...</{self.search_tag}> "
                "or <answer>...</answer>"
            )
        if len(actions) > 1:
            kinds = ", ".join(b.tag for b in actions)
            return Invalid(f"several actions in one turn ({kinds}); emit exactly one")
        action = actions[0]
        thinks = [b for b in blocks if b.tag == "think"]
        if len(thinks) > 1:
            return Invalid("several <think> blocks; use one before the action")
        if thinks and thinks[0].start > action.start:
            return Invalid("<think> after the action; think first, then act")
        if text[action.end :].strip():
            return Invalid(f"text after </{action.tag}>; stop the turn at the closing tag")
        think = thinks[0].body.strip() if thinks else None
        if action.tag == "answer":
            return Answer(text=action.body.strip(), think=think)
        queries = self._queries(action.body)
        if isinstance(queries, Invalid):
            return queries
        return Search(queries=queries, think=think)

    def _queries(self, body: str) -> tuple[str, ...] | Invalid:
        if self.search_tag == "search":
            query = body.strip()
            return (query,) if query else Invalid("empty query: put words in <search>...</search>")
        return _tool_call_queries(body)

    def observation(
        self, queries: Sequence[str], results: Sequence[Sequence[Hit]], doc_max_words: int
    ) -> str:
        """Format the hits of each query as one observation (documents numbered from 1)."""
        parts = []
        for query, hits in zip(queries, results, strict=True):
            head = f'Results for "{query}":\n' if len(queries) > 1 else ""
            parts.append(head + format_hits(hits, doc_max_words))
        return self.wrap("\n\n".join(parts))

    def wrap(self, body: str) -> str:
        """Put ``body`` inside the observation wrapper."""
        return f"{self.observation_prefix}{body}{self.observation_suffix}"

    def invalid_message(self, reason: str) -> str:
        """The corrective observation after a malformed turn."""
        return self.wrap(
            f"Invalid action: {reason}. To search, write "
            f"{_search_example(self.search_tag)}; to answer, write <answer>...</answer>."
        )


def _search_example(search_tag: str) -> str:
    if search_tag == "search":
        return "<search>your query</search>"
    return '<tool_call>{"name": "web_search", "arguments": {"query": ["your query"]}}</tool_call>'


def _tool_call_queries(body: str) -> tuple[str, ...] | Invalid:
    """Read the queries of a ``web_search`` tool call's JSON body."""
    try:
        call = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        msg = getattr(exc, "msg", "too deeply nested")
        return Invalid(f"<tool_call> body is not valid JSON ({msg})")
    if not isinstance(call, dict) or "name" not in call:
        return Invalid('<tool_call> needs a JSON object with "name" and "arguments"')
    if call["name"] != "web_search":
        return Invalid(f'unknown tool {str(call["name"])[:50]!r}; the only tool is "web_search"')
    args = call.get("arguments")
    query = args.get("query") if isinstance(args, dict) else None
    if isinstance(query, str):
        query = [query]
    if not isinstance(query, list) or not all(isinstance(q, str) for q in query):
        return Invalid('web_search needs "arguments": {"query": [strings]}')
    queries = tuple(q.strip() for q in query)
    if not queries or not all(queries):
        return Invalid("empty query: give web_search at least one non-empty query")
    if len(queries) > MAX_TOOL_QUERIES:
        return Invalid(f"{len(queries)} queries in one call; send at most {MAX_TOOL_QUERIES}")
    return queries


def truncate_words(text: str, max_words: int) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` ("..." if cut)."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + " ..."


def format_hits(hits: Sequence[Hit], doc_max_words: int) -> str:
    """``Doc 1 (Title: T) text`` lines, each document cut to ``doc_max_words`` words."""
    if not hits:
        return "No documents found."
    return "\n".join(
        f"Doc {i} (Title: {h.title.strip()}) {truncate_words(h.text, doc_max_words)}"
        for i, h in enumerate(hits, 1)
    )


TAGS = Protocol(
    name="tags",
    search_tag="search",
    observation_tag="information",
    instructions=(
        "Answer the question below. Think step by step inside <think> and </think>. "
        "When you are missing knowledge, search by writing <search>your query</search>; "
        "the search results will then appear between <information> and </information>. "
        "Search as often as you need. When you know the answer, give only the short answer "
        "inside <answer> and </answer>, with no explanation.\n"
        "Example turn: <think>I need the capital of France.</think>"
        "<search>capital of France</search>\n"
        "Example final turn: <think>The documents say Paris.</think><answer>Paris</answer>"
    ),
)

TOOL_CALL = Protocol(
    name="tool_call",
    search_tag="tool_call",
    observation_tag="tool_response",
    instructions=(
        "Answer the question below. Think step by step inside <think> and </think>. "
        "You have one tool, web_search, which takes a list of up to "
        f"{MAX_TOOL_QUERIES} queries. Call it by writing "
        '<tool_call>{"name": "web_search", "arguments": {"query": ["query 1", "query 2"]}}'
        "</tool_call>; the results will appear between <tool_response> and </tool_response>. "
        "When you know the answer, give only the short answer inside <answer> and </answer>.\n"
        "Example turn: <think>I need the capital of France.</think>"
        '<tool_call>{"name": "web_search", "arguments": {"query": ["capital of France"]}}'
        "</tool_call>\n"
        "Example final turn: <think>The documents say Paris.</think><answer>Paris</answer>"
    ),
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (TAGS, TOOL_CALL)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name`` (``"tags"`` or ``"tool_call"``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def parse_turn(text: str, protocol: str = "tags") -> Action:
    """Parse one agent turn with the named protocol (see the module docstring for the rules)."""
    return get_protocol(protocol).parse(text)
