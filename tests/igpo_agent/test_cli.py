"""The YAML + command-line reader on its own: coercion by field type, parser shape."""

from __future__ import annotations

from typing import Literal

import pytest

from igpo_agent.cli import build_parser, coerce, literal_values, parse_bool
from igpo_agent.evaluate import EvalConfig


@pytest.mark.parametrize(
    "value, tp, expected",
    [
        ("3", int, 3),
        (4.0, int, 4),
        ("1e-5", float, 1e-5),  # YAML 1.1 reads 1e-5 as a string
        ("none", int | None, None),
        ("off", bool, False),
        ("yes", bool | str, True),
        ("runs/x/step-4", bool | str, "runs/x/step-4"),
        ("a.jsonl", list[str], ["a.jsonl"]),
        (["a", 1], list[str], ["a", "1"]),
        ("grpo", Literal["igpo", "grpo"], "grpo"),
    ],
)
def test_coerce_by_field_type(value, tp, expected) -> None:
    assert coerce("f", value, tp) == expected


@pytest.mark.parametrize(
    "value, tp", [("2.5", int), (True, int), ("x", float), (None, int), ({"a": 1}, str)]
)
def test_coerce_refuses_with_the_field_name(value, tp) -> None:
    with pytest.raises(ValueError, match="^f"):
        coerce("f", value, tp)


def test_parse_bool_and_literal_values() -> None:
    assert parse_bool(" TRUE ") is True and parse_bool("0") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")
    assert literal_values(Literal["a", "b"]) == ("a", "b") and literal_values(str) == ()


def test_parser_lists_choices_and_both_spellings() -> None:
    parser = build_parser(EvalConfig, prog="x")
    text = " ".join(parser.format_help().split())
    assert "{hf,vllm}" in text and "--vllm_dtype" in text and "--vllm-dtype" in text
    assert "--qa" in text and "model:" in text and "env:" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--engine", "tgi"])
