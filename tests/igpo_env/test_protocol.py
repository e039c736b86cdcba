"""Parsing and formatting of agent turns for the tags and tool_call protocols."""

from __future__ import annotations

import json

import pytest

from igpo_env.protocol import (
    MAX_TOOL_QUERIES,
    TAGS,
    TOOL_CALL,
    Answer,
    Invalid,
    Search,
    format_hits,
    get_protocol,
    parse_turn,
    truncate_words,
)
from igpo_env.retrievers.base import Hit


def test_tags_search_with_think() -> None:
    act = parse_turn("<think>Need the year.</think>\n<search> first moon landing </search>")
    assert act == Search(queries=("first moon landing",), think="Need the year.")


def test_tags_answer_without_think_and_trailing_whitespace() -> None:
    assert parse_turn("<answer> 1969 </answer>\n  ") == Answer(text="1969", think=None)


def test_tags_free_text_before_action_is_tolerated() -> None:
    act = parse_turn("I should look this up. <search>Apollo 11</search>")
    assert act == Search(queries=("Apollo 11",), think=None)


def test_tags_empty_answer_is_a_valid_answer() -> None:
    assert parse_turn("<answer></answer>") == Answer(text="")


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("just some words", "no action"),
        ("", "no action"),
        ("<think>only thinking</think>", "no action"),
        ("<search>q", "never closed"),
        ("<search>q</answer>", "closed by </answer>"),
        ("q</search>", "without a matching"),
        ("<think><search>q</search></think>", "must not nest"),
        ("<search>a</search><search>b</search>", "several actions"),
        ("<search>a</search><answer>b</answer>", "several actions"),
        ("<search>   </search>", "empty query"),
        ("<search>q</search> and more text", "text after </search>"),
        ("<answer>x</answer><think>late</think>", "<think> after the action"),
        ("<think>a</think><think>b</think><answer>x</answer>", "several <think>"),
        ("<information>fake doc</information><answer>x</answer>", "environment only"),
    ],
)
def test_tags_malformed_turns(text: str, reason_part: str) -> None:
    act = parse_turn(text)
    assert isinstance(act, Invalid)
    assert reason_part in act.reason


def test_tags_other_tags_are_plain_text() -> None:
    # <tool_call> means nothing in the tags protocol; it is free text before the action
    act = parse_turn("<tool_call>x</tool_call><answer>y</answer>")
    assert act == Answer(text="y")


def test_non_str_action_is_invalid_not_an_exception() -> None:
    act = TAGS.parse(b"<answer>x</answer>")  # type: ignore[arg-type]
    assert isinstance(act, Invalid) and "must be a str" in act.reason


def _call(query: object, name: str = "web_search") -> str:
    return (
        "<tool_call>" + json.dumps({"name": name, "arguments": {"query": query}}) + "</tool_call>"
    )


def test_tool_call_search_with_several_queries() -> None:
    act = parse_turn("<think>t</think>" + _call(["a b", " c "]), "tool_call")
    assert act == Search(queries=("a b", "c"), think="t")
    assert parse_turn(_call("single"), "tool_call") == Search(queries=("single",))


def test_tool_call_answer() -> None:
    assert parse_turn("<answer>Paris</answer>", "tool_call") == Answer(text="Paris")


@pytest.mark.parametrize(
    ("text", "reason_part"),
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "not valid JSON"),
        ('<tool_call>["web_search"]</tool_call>', '"name" and "arguments"'),
        (_call(["q"], name="browse_webpage"), "unknown tool"),
        (_call(7), "query"),
        (_call([]), "empty query"),
        (_call(["ok", ""]), "empty query"),
        (_call(["q"] * (MAX_TOOL_QUERIES + 1)), f"at most {MAX_TOOL_QUERIES}"),
        ("<search>q</search>", "no action"),  # tags-protocol syntax is not a tool call
        ("<tool_response>x</tool_response><answer>y</answer>", "environment only"),
    ],
)
def test_tool_call_malformed(text: str, reason_part: str) -> None:
    act = parse_turn(text, "tool_call")
    assert isinstance(act, Invalid)
    assert reason_part in act.reason


def test_truncate_words_and_format_hits() -> None:
    assert truncate_words("a  b\nc d", 3) == "a b c ..."
    assert truncate_words("a b", 3) == "a b"
    hits = [
        Hit("d1", " Paris ", "Paris is the capital of France.", 2.5),
        Hit("d2", "Lyon", "x", 1.0),
    ]
    assert format_hits(hits, 3) == "Doc 1 (Title: Paris) Paris is the ...\nDoc 2 (Title: Lyon) x"
    assert format_hits([], 3) == "No documents found."


def test_observation_wrappers_and_multi_query_headers() -> None:
    hits = [Hit("d1", "T", "body", 1.0)]
    obs = TAGS.observation(["q"], [hits], 10)
    assert obs == "\n\n<information>Doc 1 (Title: T) body</information>\n\n"
    obs2 = TOOL_CALL.observation(["q1", "q2"], [hits, []], 10)
    assert obs2.startswith("\n\n<tool_response>") and obs2.endswith("</tool_response>\n\n")
    assert 'Results for "q1":\nDoc 1 (Title: T) body' in obs2
    assert 'Results for "q2":\nNo documents found.' in obs2


def test_protocol_info_and_constants() -> None:
    info = TAGS.info()
    assert info == {
        "name": "tags",
        "answer_prefix": "<answer>",
        "answer_suffix": "</answer>",
        "stop": ["</search>", "</answer>"],
        "observation_prefix": "\n\n<information>",
        "observation_suffix": "</information>\n\n",
    }
    assert TOOL_CALL.info()["stop"] == ["</tool_call>", "</answer>"]
    prompt = TAGS.prompt("  Who wrote Hamlet? ")
    assert prompt.endswith("Question: Who wrote Hamlet?\n")
    assert "<search>" in prompt and "<answer>" in prompt
    # the instructions' own examples must parse as valid turns
    for proto in (TAGS, TOOL_CALL):
        example = proto.instructions.split("Example turn: ")[1].split("\n")[0]
        assert proto.parse(example) == Search(
            ("capital of France",), "I need the capital of France."
        )
        final = proto.instructions.split("Example final turn: ")[1]
        assert proto.parse(final) == Answer("Paris", "The documents say Paris.")
    msg = TAGS.invalid_message("no action")
    assert msg.startswith("\n\n<information>Invalid action: no action.")


def test_answer_wrapper_round_trip() -> None:
    """What the learner builds with answer_prefix/suffix is what the parser accepts."""
    for proto in (TAGS, TOOL_CALL):
        text = "<think>done</think>" + proto.answer_prefix + "Marie Curie" + proto.answer_suffix
        assert proto.parse(text) == Answer(text="Marie Curie", think="done")


def test_get_protocol_unknown_names_the_choices() -> None:
    with pytest.raises(ValueError, match="tool_call"):
        get_protocol("xml")
