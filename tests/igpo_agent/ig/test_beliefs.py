"""Belief values v_t: gold tokenisation in context, packed pass == naive reference."""

from __future__ import annotations

import random

import pytest
import torch

import igpo_agent.ig.beliefs as ig
from igpo_agent.ig.beliefs import reencoded_beliefs, reencoded_trajectory_beliefs
from igpo_agent.ig.gold import gold_spec
from igpo_agent.model.policy import Policy
from igpo_agent.rollout.trajectory import Span, Trajectory

GOLDS = ["1984", " Paris", "U.S.", "naïve café", '"quoted"', ">", "Paris", "-5"]
WRAPPER = ("<answer>", "</answer>")


@pytest.fixture(params=["smol", "bpe"])
def tokenizer(request, smol_tokenizer, bpe_tokenizer):
    return smol_tokenizer if request.param == "smol" else bpe_tokenizer


def _decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------------ gold_spec
@pytest.mark.parametrize("gold", GOLDS)
def test_gold_spec_covers_exactly_the_gold(tokenizer, gold):
    spec = gold_spec(tokenizer, gold, *WRAPPER)
    text = WRAPPER[0] + gold + WRAPPER[1]
    # the wrapper is tokenised in one go, exactly as the tokenizer does it in context
    assert list(spec.ids) == tokenizer(text, add_special_tokens=False)["input_ids"]
    scored_text = _decode(tokenizer, spec.ids[spec.scored[0] : spec.scored[-1] + 1])
    assert gold in scored_text
    # tokens before/after the scored run hold no gold character
    before = _decode(tokenizer, spec.ids[: spec.scored[0]])
    after = _decode(tokenizer, spec.ids[spec.scored[-1] + 1 :])
    assert WRAPPER[0].startswith(before) and WRAPPER[1].endswith(after)
    # the scored run is minimal: dropping an end token loses gold characters
    assert gold not in _decode(tokenizer, spec.ids[spec.scored[0] + 1 : spec.scored[-1] + 1])
    assert gold not in _decode(tokenizer, spec.ids[spec.scored[0] : spec.scored[-1]])


@pytest.mark.parametrize("gold", GOLDS)
def test_decode_fallback_agrees_with_offsets(tokenizer, gold):
    fast = gold_spec(tokenizer, gold, *WRAPPER, use_offsets=True)
    slow = gold_spec(tokenizer, gold, *WRAPPER, use_offsets=False)
    assert (fast.ids, fast.scored) == (slow.ids, slow.scored)
    assert (fast.method, slow.method) == ("offsets", "decode")


def test_token_straddling_the_wrapper_is_scored(smol_tokenizer):
    # SmolLM2 merges '>"' into one token: it holds the gold's first character, so it is scored
    spec = gold_spec(smol_tokenizer, '"quoted"', *WRAPPER)
    first = _decode(smol_tokenizer, [spec.ids[spec.scored[0]]])
    assert first == '>"'
    spec = gold_spec(smol_tokenizer, ">", *WRAPPER)
    assert _decode(smol_tokenizer, [spec.ids[spec.scored[0]]]) == ">>"


def test_leading_space_stays_with_the_gold(smol_tokenizer):
    spaced = gold_spec(smol_tokenizer, " Paris", *WRAPPER)
    plain = gold_spec(smol_tokenizer, "Paris", *WRAPPER)
    assert len(spaced.scored) == len(plain.scored) == 1
    assert spaced.ids[spaced.scored[0]] != plain.ids[plain.scored[0]]


def test_gold_spec_without_wrapper_and_errors(tokenizer):
    spec = gold_spec(tokenizer, "Paris")
    assert spec.scored[0] == 0 and spec.context_len == spec.scored[-1]
    with pytest.raises(ValueError, match="empty"):
        gold_spec(tokenizer, "", *WRAPPER)


# ------------------------------------------------------------------------ packed == naive
def _batch(tok, seed=0):
    """Unequal trajectories: different lengths and turn counts, golds of several shapes."""
    rng = random.Random(seed)
    vocab = len(tok)
    shapes = [(60, 3), (180, 5), (25, 1), (110, 2), (90, 4)]
    seqs, bounds, golds = [], [], []
    for i, (length, turns) in enumerate(shapes):
        seqs.append([rng.randrange(2, vocab) for _ in range(length)])
        bounds.append(sorted(rng.sample(range(3, length), turns)))
        golds.append(gold_spec(tok, GOLDS[i % len(GOLDS)], *WRAPPER))
    bounds[0][1] = bounds[0][0]  # two boundaries at the same place (an empty turn) are legal
    return seqs, bounds, golds


def _max_err(a, b):
    assert [len(r) for r in a] == [len(r) for r in b]
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_equals_naive_smol(tiny_smol_model_path, smol_tokenizer, attn, side):
    policy = Policy.load(str(tiny_smol_model_path), device="cpu", attn_implementation=attn)
    seqs, bounds, golds = _batch(smol_tokenizer)
    naive = reencoded_beliefs(policy.model, seqs, bounds, golds, method="naive")
    packed = reencoded_beliefs(  # one forward over all rows, so padding is really exercised
        policy.model, seqs, bounds, golds, padding_side=side, max_tokens_per_batch=10**6
    )
    assert _max_err(naive, packed) < 1e-4
    # the values do depend on the prefix (otherwise this comparison would prove little)
    assert max(max(r) - min(r) for r in naive if len(r) > 1) > 0.05


def test_packed_equals_naive_bpe_and_micro_batches(tiny_bpe_model_path, bpe_tokenizer):
    policy = Policy.load(str(tiny_bpe_model_path), device="cpu")
    seqs, bounds, golds = _batch(bpe_tokenizer, seed=1)
    naive = reencoded_beliefs(policy.model, seqs, bounds, golds, method="naive")
    one_batch = reencoded_beliefs(policy.model, seqs, bounds, golds, max_tokens_per_batch=10**6)
    per_row = reencoded_beliefs(policy.model, seqs, bounds, golds, max_tokens_per_batch=1)
    assert _max_err(naive, one_batch) < 1e-4
    assert _max_err(naive, per_row) < 1e-4


def test_wrong_mask_is_detected(tiny_smol_model_path, smol_tokenizer, monkeypatch):
    """Test power: a mask that lets copies see earlier copies must break the equality."""
    policy = Policy.load(str(tiny_smol_model_path), device="cpu")
    seqs, bounds, golds = _batch(smol_tokenizer)
    naive = reencoded_beliefs(policy.model, seqs, bounds, golds, method="naive")
    right = ig.packed_attention_mask

    def leaky(pos, seg, limit, doc, dtype):
        sq, sk = seg[:, :, None], seg[:, None, :]
        leak = (sq > sk) & (sk >= 0) & (doc[:, :, None] == doc[:, None, :])
        return right(pos, seg, limit, doc, dtype).masked_fill(leak[:, None], 0.0)

    monkeypatch.setattr(ig, "packed_attention_mask", leaky)
    assert _max_err(naive, reencoded_beliefs(policy.model, seqs, bounds, golds)) > 1e-3


def test_trajectories_sharing_a_row_stay_apart(tiny_smol_model_path, smol_tokenizer, monkeypatch):
    """Short trajectories are packed into one row; a mask ignoring that must be caught."""
    policy = Policy.load(str(tiny_smol_model_path), device="cpu")
    seqs, bounds, golds = _batch(smol_tokenizer)
    lengths = [len(ig._layout(s, b, g).ids) for s, b, g in zip(seqs, bounds, golds, strict=True)]
    assert any(len(row) > 1 for row in ig._pack_bins(lengths))
    naive = reencoded_beliefs(policy.model, seqs, bounds, golds, method="naive")
    right = ig.packed_attention_mask
    monkeypatch.setattr(
        ig,
        "packed_attention_mask",
        lambda p, s, lim, doc, dt: right(p, s, lim, doc.clamp(max=0), dt),
    )
    assert _max_err(naive, reencoded_beliefs(policy.model, seqs, bounds, golds)) > 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_pack_bins_is_a_partition_within_capacity(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 30))]
    bins = ig._pack_bins(lengths)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= max(lengths) for b in bins)
    widths = [sum(lengths[i] for i in b) for b in bins]
    batches = ig._micro_batches(widths, 150)
    assert sorted(i for b in batches for i in b) == list(range(len(bins)))
    assert all(len(b) == 1 or len(b) * max(widths[i] for i in b) <= 150 for b in batches)


def test_gold_at_wrapper_start_is_predicted_by_the_prefix(tiny_smol_model_path, smol_tokenizer):
    policy = Policy.load(str(tiny_smol_model_path), device="cpu")
    seqs, bounds, _ = _batch(smol_tokenizer)
    golds = [gold_spec(smol_tokenizer, "Paris")] * len(seqs)  # no answer prefix: j == 0
    naive = reencoded_beliefs(policy.model, seqs, bounds, golds, method="naive")
    assert _max_err(naive, reencoded_beliefs(policy.model, seqs, bounds, golds)) < 1e-4


def test_value_is_the_mean_gold_logprob(tiny_policy, smol_tokenizer):
    """Cross-check against the policy's own per-token log-probs of prefix + wrapper."""
    gold = gold_spec(smol_tokenizer, "naïve café", *WRAPPER)
    prefix = tiny_policy.prompt_ids("Which café?")
    seq = prefix + [100, 200, 300]
    ((v0, v1),) = reencoded_beliefs(tiny_policy.model, [seq], [[len(prefix), len(seq)]], [gold])
    for b, v in ((len(prefix), v0), (len(seq), v1)):
        ids = torch.tensor([seq[:b] + list(gold.ids)])
        with torch.no_grad():
            lp, _ = tiny_policy.sequence_logprobs(ids, torch.ones_like(ids))
        expected = lp[0, [b + j for j in gold.scored]].mean().item()
        assert v == pytest.approx(expected, abs=1e-4)


def test_scoring_leaves_model_mode_and_grads_alone(tiny_policy, smol_tokenizer):
    tiny_policy.model.train()
    seqs, bounds, golds = _batch(smol_tokenizer)
    reencoded_beliefs(tiny_policy.model, seqs[:2], bounds[:2], golds[:2])
    assert tiny_policy.model.training
    assert all(p.grad is None for p in tiny_policy.trainable_parameters())


def test_trajectories_and_empty_turns(tiny_policy, smol_tokenizer):
    prompt = tiny_policy.prompt_ids("Who wrote 1984?")
    p = len(prompt)
    full = Trajectory(
        question="Who wrote 1984?",
        answers=["George Orwell", "Orwell"],
        token_ids=prompt + list(range(500, 520)),
        spans=[
            Span("prompt", 0, p, -1),
            Span("action", p, p + 5, 0),
            Span("observation", p + 5, p + 15, 0),
            Span("action", p + 15, p + 20, 1),
        ],
    )
    empty = Trajectory(
        question="q", answers=["x"], token_ids=prompt, spans=[Span("prompt", 0, p, -1)]
    )
    values = reencoded_trajectory_beliefs(tiny_policy, [full, empty], *WRAPPER)
    naive = reencoded_trajectory_beliefs(tiny_policy, [full, empty], *WRAPPER, method="naive")
    assert len(values[0]) == 2 and values[1] == [] and _max_err(values, naive) < 1e-4
    with pytest.raises(ValueError, match="no gold"):
        reencoded_trajectory_beliefs(tiny_policy, [Trajectory(question="q", answers=[])], *WRAPPER)


def test_bad_inputs_give_clear_errors(tiny_policy, smol_tokenizer):
    gold = gold_spec(smol_tokenizer, "Paris", *WRAPPER)
    model = tiny_policy.model
    with pytest.raises(ValueError, match="ascending"):
        reencoded_beliefs(model, [[5, 6, 7, 8]], [[3, 2]], [gold])
    with pytest.raises(ValueError, match="within"):
        reencoded_beliefs(model, [[5, 6, 7, 8]], [[9]], [gold])
    with pytest.raises(ValueError, match="one entry per trajectory"):
        reencoded_beliefs(model, [[5, 6, 7, 8]], [[2], [3]], [gold])
    with pytest.raises(ValueError, match="empty prefix"):
        reencoded_beliefs(model, [[5, 6]], [[0]], [gold_spec(smol_tokenizer, "Paris")])
    with pytest.raises(ValueError, match="method"):
        reencoded_beliefs(model, [[5, 6]], [[1]], [gold], method="fast")


def test_packed_refuses_attention_without_4d_masks(tiny_policy, smol_tokenizer, monkeypatch):
    gold = gold_spec(smol_tokenizer, "Paris", *WRAPPER)
    config = tiny_policy.model.get_base_model().config
    monkeypatch.setattr(config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="method='naive'"):
        reencoded_beliefs(tiny_policy.model, [[5, 6, 7]], [[2]], [gold])


@pytest.mark.slow
def test_real_smollm2_belief_rises_after_a_relevant_observation():
    """SmolLM2-135M: reading a passage that states the answer makes the gold more likely."""
    policy = Policy.load("default", device="cpu", dtype="float32")
    tok = policy.tokenizer
    prompt = policy.prompt_ids("What is the capital of Australia? Search, then answer.")
    action = tok("<search>capital of Australia</search>", add_special_tokens=False)["input_ids"]
    relevant = "\n<information>Canberra is the capital city of Australia.</information>\n"
    other = "\n<information>The kangaroo is a marsupial found in Australia.</information>\n"
    gold = gold_spec(tok, "Canberra", *WRAPPER)
    seqs, bounds = [], []
    for obs in (relevant, other):
        seq = prompt + action + tok(obs, add_special_tokens=False)["input_ids"]
        seqs.append(seq)
        bounds.append([len(prompt), len(seq)])
    packed = reencoded_beliefs(policy.model, seqs, bounds, [gold, gold])
    naive = reencoded_beliefs(policy.model, seqs, bounds, [gold, gold], method="naive")
    assert _max_err(packed, naive) < 1e-4
    (v0, v_relevant), (_, v_other) = packed
    assert v_relevant > v0 + 1.0 and v_relevant > v_other + 1.0
