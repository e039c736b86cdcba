"""The sampling loop: token sampling math, batched KV-cached turns, stop rules, cache reuse."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.rollout.sampling import (
    GenerationSettings,
    RolloutStats,
    StopDetector,
    TurnRequest,
    generate_turn,
    sample_tokens,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer):
    """The shared GPT-2-style byte-level BPE tokenizer (tests/igpo_agent/conftest.py)."""
    return bpe_tokenizer


def tiny_llama(vocab: int, seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(cfg).eval().to(dtype)


@pytest.fixture(scope="module")
def model(bpe):
    return tiny_llama(len(bpe))


@pytest.fixture(scope="module")
def model64(bpe):
    return tiny_llama(len(bpe), seed=1, dtype=torch.float64)


def prompts(tok) -> list[list[int]]:
    return [tok.encode(t) for t in ("Answer the question.", "Paris", "The quick brown fox jumps")]


def teacher_forced_logprobs(model, context: list[int], tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([context + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(context) - 1 : -1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


# ---- sample_tokens ----


def test_greedy_is_argmax_with_log_softmax():
    logits = torch.randn(5, 11)
    tokens, lp = sample_tokens(logits, temperature=0.0)
    assert tokens.tolist() == logits.argmax(-1).tolist()
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(lp, ref)


def test_sampling_matches_distribution_and_records_tempered_logprob():
    base = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    logits = base.repeat(40000, 1)
    g = torch.Generator().manual_seed(0)
    tokens, lp = sample_tokens(logits, temperature=2.0, generator=g)
    want = torch.softmax(base / 2.0, -1)
    freq = torch.bincount(tokens, minlength=4).double() / len(tokens)
    assert torch.allclose(freq, want.double(), atol=0.01)
    torch.testing.assert_close(lp, torch.log(want)[tokens])


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(20000, 1)
    g = torch.Generator().manual_seed(1)
    tokens, lp = sample_tokens(logits, temperature=1.0, top_p=0.7, generator=g)
    counts = torch.bincount(tokens, minlength=4)
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0].item() / len(tokens) - 0.5 / 0.8) < 0.015
    # the recorded log-prob is the tempered full-vocabulary one, not the renormalised one
    torch.testing.assert_close(lp, torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))[tokens])


def test_seeded_sampling_is_reproducible():
    logits = torch.randn(8, 50)
    a = sample_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(3))[0]
    b = sample_tokens(logits, 1.0, 0.9, torch.Generator().manual_seed(3))[0]
    c = sample_tokens(logits.repeat(50, 1), 1.0, 1.0, torch.Generator().manual_seed(4))[0]
    assert a.tolist() == b.tolist()
    assert len(set(c.view(50, 8)[:, 0].tolist())) > 1  # it is really random across draws


def test_nan_logits_raise_a_clear_error():
    with pytest.raises(RuntimeError, match="NaN"):
        sample_tokens(torch.full((2, 4), float("nan")), 1.0)


def test_settings_validation():
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_context"):
        GenerationSettings(max_context=1)


# ---- generate_turn ----


def test_batched_greedy_turn_equals_unbatched_generate(model, bpe):
    ps = prompts(bpe)
    outs = generate_turn(model, bpe, [TurnRequest(p, 12) for p in ps], temperature=0.0)
    for p, o in zip(ps, outs, strict=True):
        ref = model.generate(
            torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None
        )
        assert o.tokens == ref[0, len(p) :].tolist()
        assert o.finish == "length"
        lp = teacher_forced_logprobs(model, p, o.tokens)
        torch.testing.assert_close(torch.tensor(o.logprobs, dtype=lp.dtype), lp, atol=1e-4, rtol=0)


def test_finished_rows_leave_the_batch(model, bpe):
    ps = prompts(bpe)
    stats = RolloutStats()
    outs = generate_turn(
        model,
        bpe,
        [TurnRequest(p, n) for p, n in zip(ps, (2, 5, 9), strict=True)],
        temperature=0.0,
        stats=stats,
    )
    assert [len(o.tokens) for o in outs] == [2, 5, 9]
    # prefill of 3, then decodes: 3 rows until the first stops at 2 tokens, 2 until 5, then 1
    assert stats.batch_sizes == [3, 3, 2, 2, 2, 1, 1, 1, 1]
    assert stats.tokens_generated == 16 and stats.decode_rows == 13
    alone = generate_turn(model, bpe, [TurnRequest(ps[2], 9)], temperature=0.0)
    assert alone[0].tokens == outs[2].tokens


def test_stop_string_ending_inside_a_token_keeps_the_token(model, bpe):
    # find a greedy continuation and a 2-char stop string that first appears ending one
    # character before the end of token k (so it ends inside that token)
    found = None
    for p in prompts(bpe):
        free = generate_turn(model, bpe, [TurnRequest(p, 30)], temperature=0.0)[0].tokens
        for k in range(1, 30):
            text = bpe.decode(free[: k + 1])
            stop = text[-3:-1]
            if "\ufffd" in stop or len(stop) < 2 or text.endswith(stop):
                continue
            first = next(j for j in range(len(free)) if stop in bpe.decode(free[: j + 1]))
            if first == k:
                found = (p, free, stop, k)
                break
        if found:
            break
    assert found, "no usable stop string in the random model's output"
    p, free, stop, k = found
    out = generate_turn(model, bpe, [TurnRequest(p, 30, stop=(stop, "never-seen"))], temperature=0)
    assert out[0].finish == "stop"
    assert out[0].tokens == free[: k + 1]  # stopped at the first completion, token kept whole
    assert not bpe.decode(out[0].tokens).endswith(stop)  # nothing was cut


def test_eos_ends_the_turn(model, bpe):
    p = prompts(bpe)[1]
    free = generate_turn(model, bpe, [TurnRequest(p, 20)], temperature=0.0)[0].tokens
    eos = free[6]
    out = generate_turn(model, bpe, [TurnRequest(p, 20)], temperature=0.0, eos_ids=[eos])[0]
    assert out.finish == "eos"
    assert out.tokens == free[: free.index(eos) + 1]  # the EOS token itself is kept


def test_cache_reuse_matches_reprefill_over_turns(model64, bpe):
    ps = prompts(bpe)
    obs = [bpe.encode(t) for t in ("\n\n<information>Paris</information>\n\n", "\n\nx", "\n\n")]
    first = generate_turn(
        model64,
        bpe,
        [TurnRequest(p, n) for p, n in zip(ps, (7, 3, 5), strict=True)],
        temperature=0,
        keep_cache=True,
    )
    for p, o in zip(ps, first, strict=True):
        assert o.cache is not None and o.cache.length == len(p) + len(o.tokens) - 1
    cached = generate_turn(
        model64,
        bpe,
        [
            TurnRequest(o.tokens[-1:] + ob, 8, cache=o.cache)
            for o, ob in zip(first, obs, strict=True)
        ],
        temperature=0,
        keep_cache=True,
    )
    fresh = generate_turn(
        model64,
        bpe,
        [TurnRequest(p + o.tokens + ob, 8) for p, o, ob in zip(ps, first, obs, strict=True)],
        temperature=0,
    )
    for a, b in zip(cached, fresh, strict=True):
        assert a.tokens == b.tokens
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-9, rtol=0
        )


def test_seeded_turns_are_reproducible(model, bpe):
    ps = prompts(bpe)

    def run(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        outs = generate_turn(
            model, bpe, [TurnRequest(p, 10) for p in ps], temperature=1.0, generator=g
        )
        return [o.tokens for o in outs]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_bad_requests_raise_clear_errors(model, bpe):
    with pytest.raises(ValueError, match="at least one new token"):
        generate_turn(model, bpe, [TurnRequest([], 3)])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_turn(model, bpe, [TurnRequest([1], 0)])
    assert generate_turn(model, bpe, []) == []


def test_stop_detector_prefilter_has_no_false_negatives(bpe):
    det = StopDetector(bpe, ["</search>", "</answer>"])
    ids = bpe.encode("<search> q </search> <answer> x </answer>")
    flags = det.could_stop(torch.tensor(ids)).tolist()
    for j, tok in enumerate(ids):
        if det.hit(ids[: j + 1], ("</search>", "</answer>")) and not det.hit(
            ids[:j], ("</search>", "</answer>")
        ):
            assert flags[j], f"token {tok!r} completes a stop string but was filtered out"
    assert not all(flags)
