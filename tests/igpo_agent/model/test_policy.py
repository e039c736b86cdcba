"""Policy: loading, per-token log-probs (padding-proof), reference policy, save/load, prompts."""

from __future__ import annotations

import pytest
import torch

from igpo_agent.model.policy import (
    LoraSettings,
    Policy,
    configure_torch_threads,
    resolve_device,
    resolve_dtype,
    selective_log_softmax,
)


def _perturb_adapter(policy: Policy, seed: int = 1) -> None:
    """LoRA B starts at zero (adapter = identity); give it weights so it changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def _naive_logprobs(policy: Policy, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        logits = policy.forward_model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    lp = logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)[:-1]
    return torch.cat([torch.zeros(1), lp]), torch.cat([torch.zeros(1), ent])


def _pad(rows: list[list[int]], side: str, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    return ids, mask


ROWS = [[5, 900, 41, 7000, 12, 3], [77, 1500, 8], [31, 32, 33, 34, 35, 36, 37, 38, 39]]


def test_load_attributes(tiny_policy):
    assert tiny_policy.device == torch.device("cpu") and tiny_policy.dtype == torch.float32
    assert tiny_policy.max_context == 2048
    assert tiny_policy.tokenizer.pad_token is not None
    named = [n for n, p in tiny_policy.model.named_parameters() if p.requires_grad]
    assert named and all("lora_" in n for n in named)
    assert len(tiny_policy.trainable_parameters()) == len(named)
    total = sum(p.numel() for p in tiny_policy.model.parameters())
    assert sum(p.numel() for p in tiny_policy.trainable_parameters()) < total / 10


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_logprobs_match_naive_with_padding(tiny_policy, side):
    _perturb_adapter(tiny_policy)
    ids, mask = _pad(ROWS, side, tiny_policy.tokenizer.pad_token_id)
    with torch.no_grad():
        lp, ent = tiny_policy.sequence_logprobs(ids, mask, with_entropy=True)
    assert lp.shape == ent.shape == ids.shape
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    for i, row in enumerate(ROWS):
        real = mask[i].bool()
        want_lp, want_ent = _naive_logprobs(tiny_policy, row)
        torch.testing.assert_close(lp[i, real], want_lp, atol=1e-4, rtol=0)
        torch.testing.assert_close(ent[i, real][1:], want_ent[1:], atol=1e-4, rtol=0)
        assert (lp[i, ~real] == 0).all() and lp[i, real][0] == 0


def test_sequence_logprobs_gradients_reach_the_adapter(tiny_policy):
    ids, mask = _pad(ROWS, "left", tiny_policy.tokenizer.pad_token_id)
    lp, ent = tiny_policy.sequence_logprobs(ids, mask, with_entropy=True)
    (lp.sum() + ent.sum()).backward()
    grads = [p.grad for p in tiny_policy.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("side", ["left", "right"])
def test_action_logprobs_equal_masked_sequence_logprobs(tiny_policy, side):
    _perturb_adapter(tiny_policy)
    ids, mask = _pad(ROWS, side, tiny_policy.tokenizer.pad_token_id)
    act = torch.zeros_like(mask, dtype=torch.bool)
    act[0, -3:] = True  # a tail span, a single token, and a span in the middle
    act[1, -1] = True
    act[2, 4:7] = True
    act &= mask.bool()
    lp, ent = tiny_policy.sequence_logprobs(ids, mask, with_entropy=True)
    want = (lp * act).sum() + (ent * act).sum()
    want.backward()
    want_grads = [p.grad.clone() for p in tiny_policy.trainable_parameters()]
    tiny_policy.model.zero_grad(set_to_none=True)
    alp, aent = tiny_policy.action_logprobs(ids, mask, act, with_entropy=True)
    torch.testing.assert_close(alp, lp.detach() * act, atol=1e-5, rtol=0)
    torch.testing.assert_close(aent, ent.detach() * act, atol=1e-5, rtol=0)
    (alp.sum() + aent.sum()).backward()
    for got, exp in zip(tiny_policy.trainable_parameters(), want_grads, strict=True):
        torch.testing.assert_close(got.grad, exp, atol=1e-5, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in want_grads)


def test_action_logprobs_without_action_tokens(tiny_policy):
    ids, mask = _pad(ROWS, "right", tiny_policy.tokenizer.pad_token_id)
    lp, ent = tiny_policy.action_logprobs(ids, mask, torch.zeros_like(mask), with_entropy=True)
    assert (lp == 0).all() and (ent == 0).all()


def test_sequence_logprobs_rejects_bad_shapes(tiny_policy):
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        tiny_policy.sequence_logprobs(torch.ones(3, dtype=torch.long), torch.ones(3))


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_selective_log_softmax_equals_naive(chunk):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen) * 3
    targets = torch.randint(0, 11, (2, 5), generator=gen)
    lp, ent = selective_log_softmax(logits, targets, with_entropy=True, chunk=chunk)
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(lp, logp.gather(-1, targets[..., None]).squeeze(-1))
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1))


def test_reference_is_base_model_with_adapter_off(tiny_policy, tiny_smol_model_path):
    ids, mask = _pad(ROWS, "right", tiny_policy.tokenizer.pad_token_id)
    base = Policy.load(str(tiny_smol_model_path), device="cpu")
    with torch.no_grad():
        want, _ = base.sequence_logprobs(ids, mask)
        _perturb_adapter(tiny_policy)
        now, _ = tiny_policy.sequence_logprobs(ids, mask)
        with tiny_policy.reference():
            ref, _ = tiny_policy.sequence_logprobs(ids, mask)
        after, _ = tiny_policy.sequence_logprobs(ids, mask)
    torch.testing.assert_close(ref, want)
    torch.testing.assert_close(after, now)  # adapter back on after the block
    assert (now - want).abs().max() > 1e-2


def test_full_finetune_reference_copy(tiny_full_policy):
    policy = tiny_full_policy
    assert sum(p.numel() for p in policy.trainable_parameters()) == sum(
        p.numel() for p in policy.model.parameters()
    )
    ids, mask = _pad(ROWS, "left", policy.tokenizer.pad_token_id)
    with torch.no_grad():
        before, _ = policy.sequence_logprobs(ids, mask)
        for p in policy.trainable_parameters():
            p.mul_(1.5)
        changed, _ = policy.sequence_logprobs(ids, mask)
        with policy.reference():
            ref, _ = policy.sequence_logprobs(ids, mask)
    torch.testing.assert_close(ref, before)
    assert (changed - before).abs().max() > 1e-2


def test_full_finetune_without_copy_has_no_reference(tiny_smol_model_path):
    policy = Policy.load(str(tiny_smol_model_path), device="cpu")
    assert not policy.has_reference
    with pytest.raises(RuntimeError, match="reference_copy=True"), policy.reference():
        pass


def test_save_and_reload_adapter(tiny_policy, tiny_smol_model_path, tmp_path):
    _perturb_adapter(tiny_policy)
    ids, mask = _pad(ROWS, "left", tiny_policy.tokenizer.pad_token_id)
    with torch.no_grad():
        want, _ = tiny_policy.sequence_logprobs(ids, mask)
    tiny_policy.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ckpt" / "igpo_policy.json").is_file()

    fresh = Policy.load(str(tiny_smol_model_path), lora=tiny_policy.lora, device="cpu", seed=5)
    fresh.load_adapter(tmp_path / "ckpt")
    resumed = Policy.load(str(tiny_smol_model_path), init_adapter=tmp_path / "ckpt", device="cpu")
    assert resumed.lora.r == tiny_policy.lora.r and resumed.trainable_parameters()
    with torch.no_grad():
        torch.testing.assert_close(fresh.sequence_logprobs(ids, mask)[0], want)
        torch.testing.assert_close(resumed.sequence_logprobs(ids, mask)[0], want)
    with pytest.raises(FileNotFoundError, match="Policy.save"):
        fresh.load_adapter(tmp_path / "nowhere")


def test_save_full_weights_loads_as_a_model(tiny_full_policy, tmp_path):
    ids, mask = _pad(ROWS, "right", tiny_full_policy.tokenizer.pad_token_id)
    tiny_full_policy.save(tmp_path / "full")
    again = Policy.load(str(tmp_path / "full"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(
            again.sequence_logprobs(ids, mask)[0], tiny_full_policy.sequence_logprobs(ids, mask)[0]
        )
    with pytest.raises(RuntimeError, match="no adapter"):
        again.load_adapter(tmp_path / "full")


def test_prompt_ids_chat_template(tiny_policy):
    tok = tiny_policy.tokenizer
    assert tiny_policy.has_chat_template
    ids = tiny_policy.prompt_ids("Who wrote 1984?", "Be brief.")
    text = tok.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who wrote 1984?"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert "Who wrote 1984?" in tok.decode(tiny_policy.prompt_ids("Who wrote 1984?"))


def test_prompt_ids_plain_template(tiny_bpe_model_path):
    policy = Policy.load(str(tiny_bpe_model_path), lora=LoraSettings(r=2), device="cpu")
    assert not policy.has_chat_template
    decode = policy.tokenizer.decode
    assert decode(policy.prompt_ids("when?", "you are a search agent.")) == (
        "System: you are a search agent.\n\nUser: when?\n\nAssistant:"
    )
    assert decode(policy.prompt_ids("when?")) == "User: when?\n\nAssistant:"


def test_settings_validation_and_resolution():
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ValueError, match="target_modules"):
        LoraSettings(target_modules=())
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_configure_torch_threads():
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads() == 1 and torch.get_num_threads() == 1
        assert configure_torch_threads(2) == 2 and torch.get_num_threads() == 2
        with pytest.raises(ValueError, match=">= 1"):
            configure_torch_threads(0)
    finally:
        torch.set_num_threads(before)
