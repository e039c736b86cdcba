"""merged_state_dict: LoRA merged into base-model names, checked against peft's own merge."""

from __future__ import annotations

import copy

import torch

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.model.policy import LoraSettings, Policy
from igpo_agent.rollout.vllm_weights import merged_state_dict

torch.set_num_threads(1)


def _perturbed_lora_policy(path) -> Policy:
    lora = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj", "o_proj", "up_proj"))
    policy = Policy.load(str(path), lora=lora, device="cpu", dtype="float32", seed=0)
    with torch.no_grad():  # lora_B starts at zero: give every adapter a real delta
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return policy


def test_lora_merge_matches_peft_merge_and_unload(tiny_vllm_model_path):
    policy = _perturbed_lora_policy(tiny_vllm_model_path)
    merged = merged_state_dict(policy.model)
    reference = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    assert set(merged) == set(reference)
    assert not any("lora" in k or "base_layer" in k for k in merged)
    changed = 0
    for key, ref in reference.items():
        torch.testing.assert_close(merged[key], ref, rtol=0, atol=1e-6)
        base = (
            policy.model.get_base_model()
            .state_dict()
            .get(key.replace(".weight", ".base_layer.weight"))
        )
        if base is not None and key.endswith(".weight"):
            changed += int(not torch.equal(base, merged[key]))
    assert changed == 2 * 4  # 2 layers x 4 adapted modules differ from the base weights
    # the training model itself is untouched (still a peft model with unmerged adapters)
    assert any("lora_A" in n for n, _ in policy.model.named_parameters())


def test_disabled_adapter_gives_base_weights(tiny_vllm_model_path):
    policy = _perturbed_lora_policy(tiny_vllm_model_path)
    base = {k: v.clone() for k, v in merged_state_dict(policy.model).items()}
    with policy.model.disable_adapter():
        off = merged_state_dict(policy.model)
    plain = Policy.load(str(tiny_vllm_model_path), device="cpu", dtype="float32")
    for key, value in merged_state_dict(plain.model).items():
        torch.testing.assert_close(off[key], value, rtol=0, atol=0)
    assert any(not torch.equal(base[k], off[k]) for k in off)


def test_full_model_state_dict_is_passed_through(tiny_vllm_model_path):
    plain = Policy.load(str(tiny_vllm_model_path), device="cpu", dtype="float32")
    state = merged_state_dict(plain.model)
    assert set(state) == set(plain.model.state_dict())
    assert all(not t.requires_grad for t in state.values())
