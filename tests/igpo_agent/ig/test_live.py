"""Beliefs scored from the rollout's live KV cache == the naive/packed re-encoding paths."""

from __future__ import annotations

import pytest
import torch

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.ig.beliefs import reencoded_beliefs
from igpo_agent.ig.gold import gold_spec, trajectory_gold_specs
from igpo_agent.ig.live import LiveBeliefHook, score_after_prefill, score_on_cache
from igpo_agent.rollout.episodes import GenerationSettings, RolloutStats, rollout_batch
from igpo_agent.rollout.sampling import TurnRequest, generate_turn
from tests.igpo_agent.rollout.test_episodes import TASKS, make_envs

torch.set_num_threads(1)

PREFIX, SUFFIX = "<answer>", "</answer>"  # the tag protocol's wrapper (env info["protocol"])


def _rollout(model, tok, prompt_fn, *, score: bool, reuse: bool = True, seed: int = 3):
    stats = RolloutStats()
    trajs = rollout_batch(
        model,
        tok,
        prompt_fn,
        make_envs(6, max_steps=[1, 2, 3, 3, 3, 3]),
        TASKS,
        group_size=3,
        settings=GenerationSettings(max_new_tokens=12, temperature=1.0, reuse_cache=reuse),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        stats=stats,
        belief_hook=LiveBeliefHook(tok) if score else None,
    )
    return trajs, stats


def _reference(model, tok, trajs, method):
    return reencoded_beliefs(
        model,
        [t.token_ids for t in trajs],
        [t.boundaries() for t in trajs],
        trajectory_gold_specs(tok, trajs, PREFIX, SUFFIX),
        method=method,
    )


@pytest.mark.parametrize("family", ["smol", "bpe"])
@pytest.mark.parametrize("reuse", [True, False])
def test_live_beliefs_equal_naive_and_packed(family, reuse, request):
    model, tok, prompt_fn = request.getfixturevalue(family)
    trajs, stats = _rollout(model, tok, prompt_fn, score=True, reuse=reuse)
    assert sum(t.num_turns for t in trajs) > len(trajs)  # some multi-turn episodes
    naive = _reference(model, tok, trajs, "naive")
    packed = _reference(model, tok, trajs, "packed")
    for t, n, p in zip(trajs, naive, packed, strict=True):
        assert len(t.beliefs) == t.num_turns == len(n)
        assert t.beliefs == pytest.approx(n, abs=1e-4)
        assert t.beliefs == pytest.approx(p, abs=1e-4)
    assert stats.ig_seconds > 0


def test_scoring_does_not_change_the_rollout(smol):
    """Same seed with and without scoring: identical tokens and sampling log-probs (the
    wrapper's keys/values are cropped out of the cache before sampling)."""
    model, tok, prompt_fn = smol
    scored, _ = _rollout(model, tok, prompt_fn, score=True)
    plain, _ = _rollout(model, tok, prompt_fn, score=False)
    for a, b in zip(scored, plain, strict=True):
        assert a.token_ids == b.token_ids
        assert a.sample_logprobs == pytest.approx(b.sample_logprobs, abs=1e-6)
        assert b.beliefs == []


def test_peft_policy_live_beliefs(tiny_policy, smol_tokenizer):
    from igpo_agent.model.prompts import policy_prompt_fn

    model = tiny_policy.model
    trajs, _ = _rollout(model, smol_tokenizer, policy_prompt_fn(tiny_policy, "tags"), score=True)
    naive = _reference(model, smol_tokenizer, trajs, "naive")
    for t, n in zip(trajs, naive, strict=True):
        assert t.beliefs == pytest.approx(n, abs=1e-4)


def test_gold_without_wrapper_needs_no_extra_forward(smol):
    """A one-token gold with no prefix is predicted by the prefill's own last logits."""
    model, tok, _ = smol
    gold = gold_spec(tok, "Paris")
    assert gold.context_len == 0
    prompt = tok.encode("The capital of France is")
    out = generate_turn(
        model,
        tok,
        [TurnRequest(prompt, 2, gold=gold), TurnRequest(prompt[:3], 2)],
        temperature=0.0,
        keep_cache=True,
        after_prefill=score_after_prefill,
    )
    ref = reencoded_beliefs(model, [prompt], [[len(prompt)]], [gold], method="naive")[0][0]
    assert out[0].belief == pytest.approx(ref, abs=1e-5)
    assert out[1].belief is None
    assert out[0].cache.length == len(prompt) + 1  # prompt + first sampled token


def test_cache_is_left_as_it_was(smol):
    model, tok, _ = smol
    prompt = tok.encode("Who wrote the novel 1984? Answer:")
    gold = gold_spec(tok, "George Orwell", PREFIX, SUFFIX)
    kwargs = {"temperature": 0.0, "keep_cache": True, "after_prefill": score_after_prefill}
    with_gold = generate_turn(model, tok, [TurnRequest(prompt, 6, gold=gold)], **kwargs)[0]
    without = generate_turn(model, tok, [TurnRequest(prompt, 6)], **kwargs)[0]
    assert with_gold.tokens == without.tokens
    for (k1, v1), (k2, v2) in zip(with_gold.cache.layers, without.cache.layers, strict=True):
        assert k1.shape == k2.shape
        torch.testing.assert_close(k1, k2)
        torch.testing.assert_close(v1, v2)


def test_a_gold_needs_the_hook(smol):
    """(That rollout/ imports no ig/ code is tests/igpo_agent/test_layout.py's check.)"""
    model, tok, _ = smol
    prompt = tok.encode("Who wrote the novel 1984? Answer:")
    gold = gold_spec(tok, "George Orwell", PREFIX, SUFFIX)
    with pytest.raises(ValueError, match="after_prefill"):
        generate_turn(model, tok, [TurnRequest(prompt, 2, gold=gold)], temperature=0.0)


def test_the_hook_needs_the_answer_wrapper_and_memoises_its_golds(smol_tokenizer):
    hook = LiveBeliefHook(smol_tokenizer)
    info = {"protocol": {"answer_prefix": PREFIX, "answer_suffix": SUFFIX}}
    spec = hook.gold(["George Orwell", "Orwell"], info)
    assert spec == gold_spec(smol_tokenizer, "George Orwell", PREFIX, SUFFIX)
    assert hook.gold(["George Orwell"], info) is spec
    with pytest.raises(ValueError, match="answer wrapper"):
        hook.gold(["George Orwell"], {"protocol": {}})
    with pytest.raises(ValueError, match="answer wrapper"):
        hook.gold([], info)


def test_score_on_cache_checks_its_batch(smol):
    model, tok, _ = smol
    gold = gold_spec(tok, "Paris", PREFIX, SUFFIX)
    with pytest.raises(ValueError, match="golds for a batch"):
        score_on_cache(
            model, None, torch.ones(2, 3), torch.tensor([3, 3]), torch.zeros(2, 5), [gold]
        )
