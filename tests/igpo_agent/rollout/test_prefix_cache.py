"""shared_prefill: one batched forward gives each distinct prompt the KV cache of prompt[:-1]."""

from __future__ import annotations

import pytest
import torch

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.rollout.prefix_cache import shared_prefill
from igpo_agent.rollout.sampling import RolloutStats, TurnRequest, generate_turn
from tests.fixtures import load_model

torch.set_num_threads(1)


def test_caches_match_a_plain_prefill(tiny_smol_model_path, smol_tokenizer):
    model, tok = load_model(tiny_smol_model_path), smol_tokenizer
    prompts = [tok.encode("Who wrote the novel 1984?"), tok.encode("Capital of France?")]
    stats = RolloutStats()
    caches = shared_prefill(model, prompts, stats)
    assert stats.prefill_tokens == sum(len(p) - 1 for p in prompts)
    for p, cache in zip(prompts, caches, strict=True):
        assert cache.length == len(p) - 1
        # the same turn from the shared cache (feeding the last token) or from nothing
        kw = {"temperature": 0.0, "keep_cache": True}
        a = generate_turn(model, tok, [TurnRequest(p[-1:], 5, cache=cache)], **kw)[0]
        b = generate_turn(model, tok, [TurnRequest(p, 5)], **kw)[0]
        assert a.tokens == b.tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        for (k1, v1), (k2, v2) in zip(a.cache.layers, b.cache.layers, strict=True):
            torch.testing.assert_close(k1, k2, atol=1e-5, rtol=0)
            torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)


def test_short_prompt_is_refused(tiny_smol_model_path):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        shared_prefill(load_model(tiny_smol_model_path), [[5]])
