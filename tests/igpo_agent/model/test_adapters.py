"""Stacking two LoRA adapters into one, and the warm start merged under a fresh adapter."""

from __future__ import annotations

import pytest
import torch

from igpo_agent.model.adapters import stack_lora_states
from igpo_agent.model.policy import Policy
from tests.igpo_agent.conftest import TINY_LORA


def _delta(state: dict[str, torch.Tensor], module: str, scale: float) -> torch.Tensor:
    return scale * state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]


def test_stacked_delta_is_the_sum_of_both():
    g = torch.Generator().manual_seed(0)
    m = "layers.0.q_proj"
    first = {f"{m}.lora_A.weight": torch.randn(4, 6, generator=g)}
    first[f"{m}.lora_B.weight"] = torch.randn(5, 4, generator=g)
    second = {f"{m}.lora_A.weight": torch.randn(2, 6, generator=g)}
    second[f"{m}.lora_B.weight"] = torch.randn(5, 2, generator=g)
    state, rank = stack_lora_states(first, 2.0, second, 0.5)
    assert rank == 6
    want = _delta(first, m, 2.0) + _delta(second, m, 0.5)
    torch.testing.assert_close(_delta(state, m, 0.5), want)


def test_stacking_rejects_different_modules():
    a = {"x.lora_A.weight": torch.zeros(1, 1), "x.lora_B.weight": torch.zeros(1, 1)}
    b = {"y.lora_A.weight": torch.zeros(1, 1), "y.lora_B.weight": torch.zeros(1, 1)}
    with pytest.raises(ValueError, match="different modules"):
        stack_lora_states(a, 1.0, b, 1.0)


@pytest.fixture
def warm_adapter(tiny_smol_model_path, tmp_path):
    """A saved adapter with non-zero B (a 'warm start' that changes the model)."""
    p = Policy.load(
        str(tiny_smol_model_path), lora=TINY_LORA, device="cpu", dtype="float32", seed=1
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, w in p.model.named_parameters():
            if "lora_B" in n:
                w.copy_(0.5 * torch.randn(w.shape, generator=g))
    return p.save(tmp_path / "warm")


def _batch(policy: Policy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([policy.prompt_ids("What is the capital of France?")])
    attn = torch.ones_like(ids)
    act = torch.zeros_like(ids, dtype=torch.bool)
    act[:, 5:] = True
    return ids, attn, act


def test_merged_warm_start_is_the_reference_at_step_zero(tiny_smol_model_path, warm_adapter):
    kw = dict(device="cpu", dtype="float32", init_adapter=warm_adapter, seed=0)
    merged = Policy.load(str(tiny_smol_model_path), merge_init_adapter=True, **kw)
    plain = Policy.load(str(tiny_smol_model_path), **kw)
    ids, attn, act = _batch(merged)
    with torch.no_grad():
        lp, _ = merged.action_logprobs(ids, attn, act)
        with merged.reference():
            ref, _ = merged.action_logprobs(ids, attn, act)
        warm, _ = plain.action_logprobs(ids, attn, act)
        with plain.reference():
            base, _ = plain.action_logprobs(ids, attn, act)
    torch.testing.assert_close(ref, lp, atol=1e-5, rtol=0)  # the anchor is the warm start
    torch.testing.assert_close(lp, warm, atol=1e-5, rtol=0)  # the merge changed nothing
    assert float((base - warm).abs().max()) > 1e-2  # the old anchor (base) is another model


def test_merged_policy_saves_one_adapter_for_the_plain_base(
    tiny_smol_model_path, warm_adapter, tmp_path
):
    kw = dict(device="cpu", dtype="float32", seed=0)
    merged = Policy.load(
        str(tiny_smol_model_path), init_adapter=warm_adapter, merge_init_adapter=True, **kw
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # "train" the fresh adapter
        for n, w in merged.model.named_parameters():
            if "lora_" in n:
                w.add_(0.3 * torch.randn(w.shape, generator=g))
    out = merged.save(tmp_path / "final")
    reloaded = Policy.load(str(tiny_smol_model_path), init_adapter=out, **kw)
    assert reloaded.lora.r == 2 * TINY_LORA.r
    ids, attn, act = _batch(merged)
    with torch.no_grad():
        a, _ = merged.action_logprobs(ids, attn, act)
        b, _ = reloaded.action_logprobs(ids, attn, act)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_merge_needs_an_adapter(tiny_smol_model_path):
    with pytest.raises(ValueError, match="needs an init_adapter"):
        Policy.load(str(tiny_smol_model_path), device="cpu", merge_init_adapter=True)
