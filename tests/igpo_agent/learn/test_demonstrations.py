"""Demonstrations are real env episodes in the rollout token format.

A small fixture corpus makes each branch happen with the real BM25 backend (top_k=1):

- q1: the question's own search retrieves the gold document -> search, answer;
- q2: the question is full of words that bm25s keeps but the derived query drops
  (name, called, kind, type), so the first search returns a distractor and the derived
  query ("river") finds the gold document -> search, search, answer;
- q3: the answer is nowhere in the corpus -> skipped, or kept by the unfound_rate lottery.
"""

from __future__ import annotations

import random
from pathlib import Path

import gymnasium as gym
import pytest

from igpo_agent.learn.demonstrations import (
    DemoStats,
    answer_turn,
    build_demonstration,
    build_demonstrations,
    derived_query,
    found_answer,
    search_turn,
)
from igpo_agent.model.prompts import policy_prompt_fn
from tests.fixtures import write_corpus, write_qa

DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    (
        "d3",
        "Naming",
        "A name is called a kind of type. Each kind has a name, each type is called a kind.",
    ),
    ("d4", "Zambezi", "The Zambezi river flows through six countries of southern Africa."),
    ("d5", "Jupiter", "Jupiter is the largest planet in the Solar System."),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "Which name is the river called, of what kind and type?", ["the Zambezi", "Zambezi"]),
    ("q3", "What is the tallest tower on the Moon?", ["Lunar Spire"]),
    ("q4", "Which planet is the largest in the Solar System?", ["Jupiter"]),
]


def write_data(folder: Path) -> dict[str, str]:
    """The fixture corpus and QA set as FlashRAG JSONL files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(folder / "corpus.jsonl", DOCS)
    return {"corpus": corpus, "qa": write_qa(folder / "qa.jsonl", QA, dataset="fixture")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_data(tmp_path_factory.mktemp("demo_data"))


@pytest.fixture
def env(data):
    e = gym.make(
        "igpo_env:SearchQA-v0",
        qa=data["qa"],
        corpus=data["corpus"],
        top_k=1,
        doc_max_words=32,
        max_episode_steps=3,
    )
    yield e
    e.close()


def _replay(env, traj) -> list[str]:
    """Observations of a fresh episode stepped with the demonstration's turn texts."""
    env.reset(options={"index": int(traj.qid[1:]) - 1})
    obs = []
    for text in traj.turn_texts:
        o, _, terminated, _, info = env.step(text)
        assert info["valid"], info["error"]
        if not terminated:
            obs.append(o)
    return obs


def test_found_by_first_search(env, tiny_policy) -> None:
    stats = DemoStats()
    t = build_demonstration(
        env, 0, policy_prompt_fn(tiny_policy), tiny_policy.tokenizer, random.Random(0), stats=stats
    )
    assert t is not None
    assert t.turn_kinds == ["search", "answer"]
    assert t.answered and t.format_ok and t.outcome_f1 == 1.0
    assert t.answer_text == "Paris" and t.answer_metrics["f1"] == 1.0
    assert "<search>What is the capital of France</search>" in t.turn_texts[0]
    assert t.turn_texts[1].endswith("<answer>Paris</answer>")
    assert "first document" in t.turn_texts[1] or "documents say" in t.turn_texts[1]
    assert "Doc" not in t.turn_texts[1]  # never the observation's own "Doc i (Title:" format
    assert (stats.kept, stats.found_first, stats.tried) == (1, 1, 1)


def test_found_by_derived_second_search(env, tiny_policy) -> None:
    stats = DemoStats()
    t = build_demonstration(
        env, 1, policy_prompt_fn(tiny_policy), tiny_policy.tokenizer, random.Random(0), stats=stats
    )
    assert t is not None
    assert t.turn_kinds == ["search", "search", "answer"]
    assert "Naming" in t.observations[0] and "Zambezi" in t.observations[1]
    assert t.turn_texts[1].endswith("<search>river</search>")
    assert t.outcome_f1 == 1.0 and t.answer_text == "the Zambezi"
    assert (stats.found_first, stats.found_second) == (0, 1)


def test_unfound_skipped_by_default_kept_by_the_lottery(env, tiny_policy) -> None:
    pf, tok = policy_prompt_fn(tiny_policy), tiny_policy.tokenizer
    stats = DemoStats()
    assert build_demonstration(env, 2, pf, tok, random.Random(0), stats=stats) is None
    assert stats.not_found == 1 and stats.kept == 0
    t = build_demonstration(env, 2, pf, tok, random.Random(0), unfound_rate=1.0, stats=stats)
    assert t is not None and stats.unfound_kept == 1
    assert t.turn_kinds == ["search", "search", "answer"]
    assert t.outcome_f1 == 1.0 and t.turn_texts[-1].endswith("<answer>Lunar Spire</answer>")
    assert "find" in t.turn_texts[-1] or "best answer" in t.turn_texts[-1]


def test_spans_are_the_rollout_format(env, tiny_policy) -> None:
    """prompt_fn ids | encode(turn) | encode(obs) | ...: contiguous spans, actions masked in."""
    tok = tiny_policy.tokenizer
    pf = policy_prompt_fn(tiny_policy)
    t = build_demonstration(env, 1, pf, tok, random.Random(3))
    assert t is not None
    prompt_text, _ = env.reset(options={"index": 1})
    kinds = [s.kind for s in t.spans]
    assert kinds == ["prompt", "action", "observation", "action", "observation", "action"]
    assert [s.turn for s in t.spans] == [-1, 0, 0, 1, 1, 2]
    assert t.spans[0].start == 0 and t.spans[-1].end == len(t.token_ids)
    for a, b in zip(t.spans, t.spans[1:], strict=False):
        assert a.end == b.start
    assert t.token_ids[: t.spans[0].end] == pf(prompt_text)
    actions = [s for s in t.spans if s.kind == "action"]
    observations = [s for s in t.spans if s.kind == "observation"]
    for s, text in zip(actions, t.turn_texts, strict=True):
        assert t.token_ids[s.start : s.end] == tok.encode(text, add_special_tokens=False)
    for s, text in zip(observations, t.observations, strict=True):
        assert t.token_ids[s.start : s.end] == tok.encode(text, add_special_tokens=False)
        assert text.startswith("\n\n<information>") and text.endswith("</information>\n\n")
    mask = t.action_mask()
    assert sum(mask) == sum(s.end - s.start for s in actions)
    assert all(mask[i] == 0 for s in observations for i in range(s.start, s.end))
    assert len(t.sample_logprobs) == len(t.token_ids)
    assert t.num_turns == 3 and t.boundaries() == [s.start for s in actions]
    assert _replay(env, t) == t.observations  # the env accepts the turns as recorded


def test_too_long_turns_are_skipped(env, tiny_policy) -> None:
    stats = DemoStats()
    t = build_demonstration(
        env,
        0,
        policy_prompt_fn(tiny_policy),
        tiny_policy.tokenizer,
        random.Random(0),
        max_turn_tokens=5,
        stats=stats,
    )
    assert t is None and stats.too_long == 1
    assert "max_turn_tokens" in stats.reasons[0]


def test_turn_limit_too_small_for_a_retry(data, tiny_policy) -> None:
    env = gym.make(
        "igpo_env:SearchQA-v0", qa=data["qa"], corpus=data["corpus"], top_k=1, max_episode_steps=2
    )
    stats = DemoStats()
    pf, tok = policy_prompt_fn(tiny_policy), tiny_policy.tokenizer
    assert build_demonstration(env, 1, pf, tok, random.Random(0), stats=stats) is None
    assert stats.too_long == 1 and "before the answer" in stats.reasons[0]
    env.close()


def test_build_demonstrations_count_order_and_determinism(env, tiny_policy) -> None:
    pf, tok = policy_prompt_fn(tiny_policy), tiny_policy.tokenizer
    demos, stats = build_demonstrations(env, [3, 2, 0, 1], pf, tok, count=2, seed=5)
    assert [d.qid for d in demos] == ["q4", "q1"]  # q3 skipped, stops once 2 are kept
    assert [d.group for d in demos] == [0, 1]
    assert (stats.tried, stats.kept, stats.not_found) == (3, 2, 1)
    again, _ = build_demonstrations(env, [3, 2, 0, 1], pf, tok, count=2, seed=5)
    assert [d.turn_texts for d in again] == [d.turn_texts for d in demos]
    assert [d.token_ids for d in again] == [d.token_ids for d in demos]
    with pytest.raises(ValueError, match="count"):
        build_demonstrations(env, [0], pf, tok, count=0)
    with pytest.raises(ValueError, match="unfound_rate"):
        build_demonstrations(env, [0], pf, tok, count=1, unfound_rate=1.5)


def test_derived_query() -> None:
    assert derived_query("What is the capital city of France?") == "capital city france"
    assert derived_query("Which name is the river called, of what kind and type?") == "river"
    assert derived_query("Who wrote 'Hamlet' in 1600?") == "wrote hamlet 1600"
    assert derived_query("What is it?") == "What is it?"  # nothing left: the question itself


def test_found_answer_whole_tokens_and_doc_number() -> None:
    obs = (
        "\n\n<information>Doc 1 (Title: A) The Parisian style of art.\n"
        "Doc 2 (Title: B) He lived in Paris,\nFrance for years.</information>\n\n"
    )
    assert found_answer(obs, ["Paris"]) == ("Paris", 2)
    assert found_answer(obs, ["paris france"]) == ("paris france", 2)  # across a line break
    assert found_answer(obs, ["Lyon", "", "the style"]) == ("the style", 1)
    assert found_answer(obs, ["Lyon"]) is None
    assert found_answer("no documents here, Paris", ["Paris"]) == ("Paris", 1)


def test_turn_texts_parse_as_valid_actions() -> None:
    from igpo_env.protocol import Answer, Search, parse_turn

    rng = random.Random(0)
    for _ in range(20):
        s = parse_turn(search_turn("capital of France", "What is the capital?", rng))
        assert isinstance(s, Search) and s.queries == ("capital of France",)
        r = parse_turn(search_turn("france", "q", rng, retry=True))
        assert isinstance(r, Search)
        for doc in (None, 2):
            a = parse_turn(answer_turn("Paris", rng, doc=doc))
            assert isinstance(a, Answer) and a.text == "Paris" and a.think


def test_answer_eos_ends_the_answer_turn_with_the_eos_token(env, tiny_policy) -> None:
    tok = tiny_policy.tokenizer
    fn = policy_prompt_fn(tiny_policy, "tags")
    plain = build_demonstration(env, 0, fn, tok, random.Random(0))
    eos = build_demonstration(env, 0, fn, tok, random.Random(0), answer_eos_id=tok.eos_token_id)
    assert plain is not None and eos is not None
    assert eos.token_ids == [*plain.token_ids, tok.eos_token_id]
    last = eos.spans[-1]
    assert last.kind == "action" and last.end == len(eos.token_ids)
    assert eos.turn_texts == plain.turn_texts and eos.outcome_f1 == 1.0
