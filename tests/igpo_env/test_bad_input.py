"""Bad input never crashes or hangs: huge, odd or wrongly typed actions and arguments."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded

from igpo_env.env import SearchQAEnv, cap_query


@pytest.fixture()
def env(env_kwargs: dict) -> SearchQAEnv:
    e = SearchQAEnv(**env_kwargs)
    e.reset(seed=0, options={"index": 0})
    return e


def test_one_megabyte_action_is_a_quick_invalid_turn(env: SearchQAEnv) -> None:
    action = "<search>" + "x" * 1_000_000 + "</search>"
    start = time.perf_counter()
    obs, reward, terminated, _, info = env.step(action)
    assert time.perf_counter() - start < 1.0
    assert reward == -2.0 and not terminated and info["action"] == "invalid"
    assert "max_action_chars" in info["error"]
    assert obs in env.observation_space and len(obs) < 1000


def test_raised_action_limit_lets_a_long_turn_through(env_kwargs: dict) -> None:
    e = SearchQAEnv(**env_kwargs, max_action_chars=2_000_000)
    e.reset(options={"index": 0})
    pad = "<think>" + "ponder " * 150_000 + "</think>"  # ~1 MB of thinking
    _, reward, terminated, _, info = e.step(pad + "<answer>Paris</answer>")
    assert terminated and reward == 1.0 and len(info["think"]) > 1_000_000 - 10


def test_ten_thousand_word_query_is_capped(env: SearchQAEnv) -> None:
    words = ["capital", "France"] + [f"w{i}" for i in range(10_000)]
    start = time.perf_counter()
    obs, reward, _, _, info = env.step("<search>" + " ".join(words) + "</search>")
    assert time.perf_counter() - start < 5.0
    assert info["action"] == "search" and info["query_truncated"] is True
    assert len(info["query"].split()) == 256 and len(info["query"]) <= 2000
    assert info["doc_ids"][0] == "d-paris"
    assert reward == 0.0 and obs.startswith("\n\n<information>Doc 1 (Title: Paris)")


def test_cap_query_words_then_chars() -> None:
    assert cap_query("  a   b\nc  ", 2, 100) == "a b"
    assert cap_query("abcdef ghi", 5, 4) == "abcd"
    assert cap_query("short one", 256, 2000) == "short one"


@pytest.mark.parametrize(
    "action",
    [
        "",
        "   \n\t ",
        "\x00\x01\x1b[31m\x7f",
        "<search>\x00\x1b[2J</search>",  # control characters only: no words to match
        "<search>日本の首都は？</search>",
        "<search>🙂🙂🙂 café Zürich</search>",
        "<search>" + "\u202e" * 50 + "capital</search>",  # bidi override characters
        "<answer>\udcff</answer>",  # a lone surrogate
        "<search>" + "<" * 5000 + "</search>",
        "<" * 100_000,
        "</search>" * 1000,
        "<search>" * 1000,
        "<tool_call>" + "{" * 50_000 + "</tool_call>",
    ],
)
def test_odd_text_never_crashes(env: SearchQAEnv, action: str) -> None:
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs in env.observation_space
    assert isinstance(reward, float) and info["action"] in ("search", "answer", "invalid")
    assert info["valid"] == (info["action"] != "invalid")
    if info["action"] == "invalid":
        assert reward == -2.0 and info["error"]


def test_unicode_search_finds_unicode_documents(env: SearchQAEnv) -> None:
    _, _, _, _, info = env.step("<search>Zürich Switzerland</search>")
    assert info["doc_ids"][0] == "d-zurich"


def test_odd_text_in_tool_call_protocol(env_kwargs: dict) -> None:
    e = SearchQAEnv(**env_kwargs, protocol="tool_call")
    e.reset(options={"index": 0})
    for action in ("", "<tool_call>null</tool_call>", '<tool_call>"x"</tool_call>', "\x00" * 10):
        _, reward, _, _, info = e.step(action)
        assert info["action"] == "invalid" and reward == -2.0


def test_step_before_reset_and_after_the_end(env_kwargs: dict) -> None:
    e = SearchQAEnv(**env_kwargs)
    with pytest.raises(ResetNeeded, match="Call reset before using step method"):
        e.step("<answer>x</answer>")
    e.reset(options={"index": 0})
    e.step("<answer>x</answer>")
    with pytest.raises(ResetNeeded, match="Call reset before using step method"):
        e.step("<answer>x</answer>")
    e.reset()
    assert e.step("<search>France</search>")[4]["action"] == "search"


def test_step_after_terminating_invalid_turn(env_kwargs: dict) -> None:
    e = SearchQAEnv(**env_kwargs, on_invalid="terminate")
    e.reset(options={"index": 0})
    assert e.step("junk")[2] is True
    with pytest.raises(ResetNeeded):
        e.step("<answer>Paris</answer>")


def test_gym_make_wrapped_env_before_reset_names_the_fix(env_kwargs: dict) -> None:
    e = gym.make("SearchQA-v0", **env_kwargs)
    with pytest.raises(ResetNeeded, match="reset"):
        e.step("<answer>x</answer>")


@pytest.mark.parametrize(
    "action", [None, 42, b"<answer>x</answer>", ["<answer>x</answer>"], [1, 2, 3]]
)
def test_non_str_actions_raise_a_clear_type_error(env: SearchQAEnv, action: object) -> None:
    with pytest.raises(TypeError, match="decode generated token ids to text"):
        env.step(action)  # type: ignore[arg-type]
    # the episode is still usable afterwards
    assert env.step("<answer>Paris</answer>")[1] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"protocol": "xml"}, ValueError, "tool_call"),
        ({"top_k": 0}, ValueError, "top_k must be an int >= 1"),
        ({"top_k": 2.5}, ValueError, "top_k"),
        ({"doc_max_words": -1}, ValueError, "doc_max_words"),
        ({"max_action_chars": True}, ValueError, "max_action_chars"),
        ({"reward_metric": "accuracy"}, ValueError, "cover_em"),
        ({"normalization": "nfkc"}, ValueError, "igpo"),
        ({"on_invalid": "raise"}, ValueError, "terminate"),
        ({"format_penalty": "big"}, ValueError, "format_penalty"),
        ({"render_mode": "human"}, ValueError, "ansi"),
        ({"retriever": "elasticsearch"}, ValueError, "unknown retriever"),
        ({"retriever": 3}, TypeError, "search\\(queries, k\\)"),
        ({"url": "http://127.0.0.1:1"}, ValueError, "url is for remote backends"),
    ],
)
def test_bad_constructor_arguments_name_the_fix(env_kwargs: dict, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        SearchQAEnv(**{**env_kwargs, **kwargs})


def test_bad_data_arguments(env_kwargs: dict, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="QA file not found"):
        SearchQAEnv(qa=str(tmp_path / "missing.jsonl"), corpus=env_kwargs["corpus"])
    with pytest.raises(TypeError, match="QAExample"):
        SearchQAEnv(qa=[{"question": "q"}], corpus=env_kwargs["corpus"])
    with pytest.raises(ValueError, match="is empty"):
        SearchQAEnv(qa=[], corpus=env_kwargs["corpus"])
    with pytest.raises(ValueError, match="has no corpus="):
        SearchQAEnv(qa=env_kwargs["qa"], retriever="http", corpus=env_kwargs["corpus"])


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"index": 7}, IndexError, "out of range for 7 questions"),
        ({"index": "0"}, TypeError, "must be an int"),
        ({"question": "", "answers": ["x"]}, ValueError, "non-empty str"),
        ({"question": "Q?"}, ValueError, "answers"),
        ({"question": "Q?", "answers": [""]}, ValueError, "answers"),
        ({"question": "Q?", "answers": [3]}, ValueError, "answers"),
    ],
)
def test_bad_reset_options(env: SearchQAEnv, options: dict, error, match) -> None:
    with pytest.raises(error, match=match):
        env.reset(options=options)


def test_huge_adhoc_question_is_clipped_to_the_observation_space(env: SearchQAEnv) -> None:
    obs, info = env.reset(options={"question": "why " * 100_000, "answers": ["x"]})
    assert obs in env.observation_space and len(obs) == env.observation_space.max_length
