"""Stratified seeded evaluation subsets: allocation by hand, seeding, composition, the shipped dev."""

from __future__ import annotations

import gymnasium as gym
import pytest

import igpo_env  # noqa: F401  (registers the env ids)
from igpo_agent.evaluate import eval_subset
from igpo_agent.run.envs import question_strata
from igpo_agent.run.subsets import allocate, composition, describe, stratified_indices

STRATA = ["a"] * 6 + ["b"] * 3 + ["c"] * 1  # 10 questions in file order, grouped


def test_allocate_by_hand() -> None:
    # 5 of 10: quotas a 3.0, b 1.5, c 0.5 -> floors 3, 1, 0; one left: b and c tie at 0.5,
    # the larger stratum (b) takes it
    assert allocate({"a": 6, "b": 3, "c": 1}, 5) == {"a": 3, "b": 2, "c": 0}
    # 4 of 10: quotas 2.4, 1.2, 0.4 -> floors 2, 1, 0; one left: a and c tie at 0.4 (exactly:
    # remainders are integers), the larger stratum (a) takes it
    assert allocate({"a": 6, "b": 3, "c": 1}, 4) == {"a": 3, "b": 1, "c": 0}
    assert allocate({"a": 6, "b": 3, "c": 1}, 7) == {"a": 4, "b": 2, "c": 1}
    assert allocate({"a": 2, "b": 2}, 9) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="non-negative"):
        allocate({"a": 1}, -1)


def test_sample_is_proportional_seeded_and_sorted() -> None:
    idx = stratified_indices(STRATA, 5, seed=0)
    assert idx == sorted(idx) and len(set(idx)) == 5
    assert dict(composition(STRATA, idx)) == {"a": 3, "b": 2}
    assert stratified_indices(STRATA, 5, seed=0) == idx  # the same subset every time
    draws = {tuple(stratified_indices(STRATA, 5, seed=s)) for s in range(8)}
    assert len(draws) > 1  # the seed picks which questions within a stratum
    for s in range(8):  # ... but never the composition
        assert dict(composition(STRATA, stratified_indices(STRATA, 5, seed=s))) == {"a": 3, "b": 2}


def test_all_questions_when_n_is_zero_or_too_large() -> None:
    assert stratified_indices(STRATA, 0, seed=3) == list(range(10))
    assert stratified_indices(STRATA, 99, seed=3) == list(range(10))
    assert stratified_indices([], 4, seed=0) == []


def test_describe_names_size_seed_and_composition() -> None:
    idx = stratified_indices(STRATA, 5, seed=2)
    line = describe(STRATA, idx, source="x.jsonl", seed=2)
    assert line == "5 of 10 questions from x.jsonl, stratified sample (seed 2), 2 strata: a 3, b 2"
    assert "all" in describe(STRATA, list(range(10)), source="x", seed=0)


def test_shipped_dev_sample_covers_every_article() -> None:
    # the first 32 dev questions are all about Nikola Tesla; a stratified 32 is not
    env = gym.make("igpo_env:SearchQA-v0", qa="default:dev")
    strata = question_strata(env)
    assert len(set(strata[:32])) == 1
    sub = eval_subset(env, 32, seed=0, source="default:dev")
    comp = dict(composition(strata, sub.indices))
    assert len(sub.indices) == 32 and len(comp) == len(set(strata)) == 4
    assert comp["Nikola Tesla"] == max(comp.values()) < 32
    assert sub.description.startswith("32 of 1123 questions from default:dev")
    assert eval_subset(env, 32, seed=0).indices == sub.indices
    assert eval_subset(env, 32, seed=1).indices != sub.indices
    env.close()
