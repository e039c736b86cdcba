"""The learner glue on a tiny model: real rollouts -> beliefs -> advantages -> update."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.learner import (
    LossSettings,
    belief_matrix,
    compute_advantages,
    pad_batch,
    policy_update,
)
from igpo_agent.prompts import policy_prompt_fn
from igpo_agent.rollout import rollout_batch
from igpo_agent.sampling import GenerationSettings
from igpo_agent.trajectory import Span, Trajectory
from tests.fixtures import write_corpus, write_qa

DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France."),
    ("d2", "Nile", "The Nile is a major river in northeastern Africa."),
]
QA = [("q1", "What is the capital of France?", ["Paris"]), ("q2", "Which river?", ["Nile"])]


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    d = tmp_path_factory.mktemp("learner_data")
    kw = {"qa": write_qa(d / "q.jsonl", QA), "corpus": write_corpus(d / "c.jsonl", DOCS)}
    kw["top_k"] = 1
    out = [gym.make("igpo_env:SearchQA-v0", max_episode_steps=3, **kw) for _ in range(4)]
    yield out
    for e in out:
        e.close()


def _rollouts(policy, envs, seed):
    gen = torch.Generator().manual_seed(seed)
    return rollout_batch(
        policy.model,
        policy.tokenizer,
        policy_prompt_fn(policy, "tags"),
        envs,
        [{"index": 0}, {"index": 1}],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=8),
        generator=gen,
        seed=seed,
    )


def test_two_updates_change_every_lora_parameter_and_no_base_one(tiny_policy, envs):
    before = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters()}
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=1e-2)
    for step in range(2):  # LoRA's B starts at 0, so A gets its first gradient on step 2
        trajs = _rollouts(tiny_policy, envs, seed=step)
        values = belief_matrix(tiny_policy, trajs, "<answer>", "</answer>")
        assert values.shape[0] == 4 and torch.isfinite(values).all()
        adv, outcome = compute_advantages(
            trajs,
            values,
            group_size=2,
            algo="igpo",
            ig_mode="log_prob_diff",
            norm="separate",
            gamma=1.0,
            format_penalty=-2.0,
            ig_turns="all",  # the random model rarely searches: IG on every turn here
        )
        assert bool(adv.returns.abs().sum() > 0), "IG should give non-zero advantages"
        metrics, timings = policy_update(
            tiny_policy, opt, trajs, adv.returns, LossSettings(micro_batch_size=3)
        )
        assert metrics["num_tokens"] > 0 and timings["update_s"] > 0
        assert abs(metrics["clipfrac"]) < 1e-9  # one epoch: ratio is exactly 1
    for n, p in tiny_policy.model.named_parameters():
        if "lora_" in n:
            assert not torch.equal(p, before[n]), f"LoRA parameter {n} did not change"
        else:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"


def test_pad_batch_masks_only_agent_tokens(tiny_policy, envs):
    trajs = _rollouts(tiny_policy, envs, seed=3)
    b = pad_batch(trajs, tiny_policy.tokenizer.pad_token_id)
    for i, t in enumerate(trajs):
        n = len(t.token_ids)
        assert b["attention_mask"][i, :n].all() and not b["attention_mask"][i, n:].any()
        assert b["action_mask"][i, :n].tolist() == [bool(x) for x in t.action_mask()]
        assert b["token_turns"][i, :n].tolist() == t.token_turns()


def test_grpo_ignores_beliefs(tiny_policy, envs):
    trajs = _rollouts(tiny_policy, envs, seed=4)
    values = belief_matrix(tiny_policy, trajs, "<answer>", "</answer>")
    kw = dict(
        group_size=2, ig_mode="log_prob_diff", norm="separate", gamma=1.0, format_penalty=-2.0
    )
    a, _ = compute_advantages(trajs, values, algo="grpo", **kw)
    b, _ = compute_advantages(trajs, torch.randn_like(values), algo="grpo", **kw)
    torch.testing.assert_close(a.returns, b.returns)


def test_compute_advantages_gives_ig_to_search_turns_only():
    def traj(kinds):
        t = Trajectory(
            question="q", answers=["a"], turn_kinds=kinds, format_ok="invalid" not in kinds
        )
        t.spans = [Span("action", i, i + 1, i) for i in range(len(kinds))]
        return t

    trajs = [traj(["invalid", "search", "answer"]), traj(["search", "search", "answer"])]
    values = torch.tensor([[-3.0, -2.0, -1.0], [-3.0, -2.5, -2.0]])
    kw = dict(group_size=2, algo="igpo", ig_mode="log_prob_diff", norm="separate", gamma=1.0)
    adv, _ = compute_advantages(trajs, values, format_penalty=-2.0, **kw)
    assert adv.is_ig.tolist() == [[False, True, False], [True, True, False]]
    every, _ = compute_advantages(trajs, values, format_penalty=-2.0, ig_turns="all", **kw)
    assert every.is_ig.tolist() == [[True, True, False], [True, True, False]]
    with pytest.raises(ValueError, match="ig_turns"):
        compute_advantages(trajs, values, format_penalty=-2.0, ig_turns="some", **kw)
