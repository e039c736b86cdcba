"""Policy loss: clip / dual clip, KL, entropy, aggregation, masking, helpers (igpo_agent.algo.loss)."""

import math

import pytest
import torch

from igpo_agent.algo.loss import (
    aggregate_loss,
    entropy_from_logits,
    loss_normalizer,
    low_var_kl,
    policy_loss,
    selective_log_softmax,
    truncated_is_weights,
)

torch.set_num_threads(1)

# Worked batch: B = 2 rollouts, L = 3 tokens, eps = 0.2, c = 3.
RATIO = [[1.1, 1.5, 0.5], [0.7, 4.0, 1.0]]
ADV = [[1.0, 1.0, 1.0], [-1.0, -1.0, 2.0]]
MASK = [[1, 1, 1], [1, 1, 0]]  # token (1, 2) is an observation token
# per-token pg = max(-A r, -A clip(r, 0.8, 1.2)), then min(., 3|A|) where A < 0:
#   (0,0) r 1.1 A 1: max(-1.1, -1.1) = -1.1
#   (0,1) r 1.5 A 1: max(-1.5, -1.2) = -1.2       ratio clip active
#   (0,2) r 0.5 A 1: max(-0.5, -0.8) = -0.5       (pessimistic: no clip for A > 0, r < 1-eps)
#   (1,0) r 0.7 A -1: max(0.7, 0.8) = 0.8         ratio clip active; min(0.8, 3) = 0.8
#   (1,1) r 4.0 A -1: max(4.0, 1.2) = 4.0; dual clip: min(4.0, 3.0) = 3.0
PG = [[-1.1, -1.2, -0.5], [0.8, 3.0]]


def _worked(requires_grad=False):
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + torch.tensor(RATIO, dtype=torch.float64).log()).detach()
    logp.requires_grad_(requires_grad)
    return logp, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)


def test_worked_pg_loss_three_modes():
    logp, old, adv, mask = _worked()
    kw = dict(kl_coef=0.0, ent_coef=0.0)
    # token-mean: (-1.1 - 1.2 - 0.5 + 0.8 + 3.0) / 5 = 1.0 / 5 = 0.2
    loss, m = policy_loss(logp, old, adv, mask, loss_agg="token-mean", **kw)
    assert loss.item() == pytest.approx(0.2)
    assert m["pg_loss"] == pytest.approx(0.2) and m["loss"] == pytest.approx(0.2)
    # seq-mean-token-sum: rows -2.8 and 3.8 -> (-2.8 + 3.8) / 2 = 0.5
    loss, _ = policy_loss(logp, old, adv, mask, loss_agg="seq-mean-token-sum", **kw)
    assert loss.item() == pytest.approx(0.5)
    # seq-mean-token-mean: rows -2.8/3 and 3.8/2 = 1.9 -> (-0.933333 + 1.9) / 2 = 0.483333
    loss, _ = policy_loss(logp, old, adv, mask, loss_agg="seq-mean-token-mean", **kw)
    assert loss.item() == pytest.approx((-2.8 / 3 + 1.9) / 2)


def test_truncated_is_weights_by_hand():
    # per token: min(exp(proximal - sampler), cap = 2), 1 off the mask (NaN there is fine)
    prox = torch.tensor([[-1.0, -0.2, -2.0], [-0.5, -3.0, float("nan")]])
    samp = torch.tensor([[-1.5, -1.5, -1.0], [-0.5, -3.1, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w = truncated_is_weights(prox, samp, mask, cap=2.0)
    # exp(0.5) = 1.648721; exp(1.3) = 3.669297 -> 2; exp(-1) = 0.367879; exp(0) = 1;
    # exp(0.1) = 1.105171; masked -> 1
    want = [[1.648721, 2.0, 0.367879], [1.0, 1.105171, 1.0]]
    assert w.tolist() == [pytest.approx(row, abs=1e-6) for row in want]
    assert w.dtype == torch.float32 and not w.requires_grad
    g = truncated_is_weights(prox.requires_grad_(True), samp, mask)
    assert not g.requires_grad  # detached: the weights are constants of the loss
    assert truncated_is_weights(prox, samp, mask, cap=1.2)[0, 0].item() == pytest.approx(1.2)
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(prox, samp, mask, cap=0.0)
    with pytest.raises(ValueError, match="one shape"):
        truncated_is_weights(prox, samp[:, :2], mask)


def test_is_weights_multiply_the_per_token_pg_loss():
    logp, old, adv, mask = _worked(requires_grad=True)
    w = torch.tensor([[2.0, 0.5, 1.0], [1.0, 0.25, 7.0]], dtype=torch.float64)
    loss, m = policy_loss(logp, old, adv, mask, kl_coef=0.0, ent_coef=0.0, is_weights=w)
    # token-mean of w * PG: (-2.2 - 0.6 - 0.5 + 0.8 + 0.75) / 5 = -1.75 / 5 = -0.35
    assert loss.item() == pytest.approx(-0.35) and m["pg_loss"] == pytest.approx(-0.35)
    loss.backward()
    # gradient of the unclipped tokens scaled by their weight: (0,0) 2 * -1.1/5, (0,2) -0.5/5
    expected = [[-2.2 / 5, 0.0, -0.5 / 5], [0.0, 0.0, 0.0]]
    assert logp.grad.tolist() == [pytest.approx(row) for row in expected]
    assert m["clipfrac"] == pytest.approx(2 / 5)  # the clip statistics are unweighted
    ones, _ = policy_loss(
        logp, old, adv, mask, kl_coef=0.0, ent_coef=0.0, is_weights=torch.ones_like(w)
    )
    assert ones.item() == pytest.approx(0.2)  # weights of 1: the plain loss
    with pytest.raises(ValueError, match="is_weights has shape"):
        policy_loss(logp, old, adv, mask, kl_coef=0, ent_coef=0, is_weights=w[:, :2])


def test_worked_metrics():
    logp, old, adv, mask = _worked()
    _, m = policy_loss(logp, old, adv, mask, kl_coef=0.0, ent_coef=0.0)
    assert m["clipfrac"] == pytest.approx(2 / 5)  # tokens (0,1) and (1,0)
    assert m["clipfrac_lower"] == pytest.approx(1 / 5)  # token (1,1)
    assert m["ratio_mean"] == pytest.approx((1.1 + 1.5 + 0.5 + 0.7 + 4.0) / 5)  # 1.56
    assert (m["ratio_min"], m["ratio_max"]) == pytest.approx((0.5, 4.0))
    logs = [math.log(r) for r in (1.1, 1.5, 0.5, 0.7, 4.0)]
    assert m["approx_kl"] == pytest.approx(0.5 * sum(x * x for x in logs) / 5)
    assert m["ppo_kl"] == pytest.approx(-sum(logs) / 5)
    assert (m["num_tokens"], m["num_seqs"]) == (5.0, 2.0)


def test_worked_gradients_only_through_unclipped_masked_in_tokens():
    logp, old, adv, mask = _worked(requires_grad=True)
    loss, _ = policy_loss(logp, old, adv, mask, kl_coef=0.0, ent_coef=0.0)
    loss.backward()
    # d(-A r)/d logp = -A r on active unclipped tokens, / 5 tokens; clipped, dual-clipped
    # and masked tokens get 0
    expected = [[-1.1 / 5, 0.0, -0.5 / 5], [0.0, 0.0, 0.0]]
    assert logp.grad.tolist() == [pytest.approx(row) for row in expected]


@pytest.mark.parametrize(
    "ratio, adv, grad_nonzero",
    [
        (1.2 - 1e-4, 1.0, True),  # just inside the upper clip
        (1.2 + 1e-4, 1.0, False),  # just outside: clipped, no gradient
        (0.8 + 1e-4, -1.0, True),
        (0.8 - 1e-4, -1.0, False),
        (0.5, 1.0, True),  # A > 0, ratio low: the unclipped term is the max
        (2.0, -1.0, True),  # A < 0, ratio high, still under the dual clip c = 3
        (3.0 - 1e-4, -1.0, True),
        (3.0 + 1e-4, -1.0, False),  # dual clip: loss bounded by c |A|
    ],
)
def test_clip_and_dual_clip_boundaries(ratio, adv, grad_nonzero):
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    a = torch.tensor([[adv]], dtype=torch.float64)
    loss, _ = policy_loss(logp, old, a, torch.ones(1, 1), kl_coef=0.0, ent_coef=0.0)
    loss.backward()
    assert (logp.grad.abs().item() > 0) == grad_nonzero
    if ratio > 3.0 and adv < 0:
        assert loss.item() == pytest.approx(3.0 * abs(adv))


def test_dual_clip_off_and_asymmetric_clip():
    logp = torch.tensor([[math.log(4.0), math.log(1.25)]], dtype=torch.float64)
    old = torch.zeros(1, 2, dtype=torch.float64)
    a = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    kw = dict(kl_coef=0.0, ent_coef=0.0, loss_agg="seq-mean-token-sum")
    # no dual clip: token 0 = max(4, 1.2) = 4 ; eps_high 0.28: token 1 = -1.25 (not clipped)
    loss, _ = policy_loss(
        logp, old, a, torch.ones(1, 2), clip_ratio_c=None, clip_eps_high=0.28, **kw
    )
    assert loss.item() == pytest.approx(4.0 - 1.25)
    # default eps 0.2 clips token 1 to -1.2 ; dual clip c=3 bounds token 0 to 3
    loss, _ = policy_loss(logp, old, a, torch.ones(1, 2), **kw)
    assert loss.item() == pytest.approx(3.0 - 1.2)


def test_low_var_kl_hand_numbers_and_zero_when_equal():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[0.0, -3.0, -3.0]])
    # d = ref - logp = 1, -1, 0 -> e - 2 = 0.718282, e^-1 + 1 - 1 = 0.367879, 0
    assert low_var_kl(logp, ref)[0].tolist() == pytest.approx(
        [math.e - 2, math.exp(-1), 0.0], abs=1e-6
    )
    # clamped at 10: d = 30 -> clamp d to 20 -> huge -> 10
    assert low_var_kl(torch.tensor([-30.0]), torch.tensor([0.0])).item() == 10.0
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    old = x.detach()
    loss, m = policy_loss(
        x, old, torch.randn(3, 4, dtype=torch.float64), torch.ones(3, 4), ref_logp=old, ent_coef=0.0
    )
    assert m["kl_loss"] == 0.0
    assert m["ratio_min"] == m["ratio_max"] == 1.0 and m["clipfrac"] == 0.0


def test_kl_and_entropy_terms_add_with_their_coefficients():
    logp, old, adv, mask = _worked()
    ref = old.clone()  # ref - logp = -log r
    ent = torch.full((2, 3), 2.0, dtype=torch.float64)
    loss, m = policy_loss(
        logp, old, adv, mask, ref_logp=ref, entropy=ent, kl_coef=0.1, ent_coef=0.01
    )
    kl = [1 / r + math.log(r) - 1 for r in (1.1, 1.5, 0.5, 0.7, 4.0)]  # exp(-log r) + log r - 1
    assert m["kl_loss"] == pytest.approx(sum(kl) / 5)
    assert m["entropy"] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(0.2 + 0.1 * sum(kl) / 5 - 0.01 * 2.0)
    assert m["loss"] == pytest.approx(loss.item())


def test_nan_in_masked_positions_never_reaches_loss_or_grads():
    torch.manual_seed(0)
    logp = torch.randn(2, 4, dtype=torch.float64) - 2
    logp[0, 3] = float("nan")
    logp[0, 2] = -float("inf")
    logp.requires_grad_(True)
    ent = torch.rand(2, 4, dtype=torch.float64)
    ent[0, 3] = float("nan")
    ent.requires_grad_(True)
    old = logp.detach().clone().nan_to_num(0.0, neginf=0.0) + 0.05
    adv = torch.randn(2, 4, dtype=torch.float64)
    adv[1, 0] = float("nan")  # logp is finite there: only the masking keeps NaN out
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        logp.grad = ent.grad = None
        loss, m = policy_loss(logp, old, adv, mask, ref_logp=old, entropy=ent, loss_agg=mode)
        loss.backward()
        assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in m.values())
        for g in (logp.grad, ent.grad):
            assert torch.isfinite(g).all()
            assert (g[mask == 0] == 0).all() and (g[mask == 1] != 0).all()


def test_aggregate_modes_hand_numbers():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0], [100.0] * 4])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    # tokens 1, 2, 3, 4: mean 10/4 = 2.5 ; rows with tokens: 2 (the empty row is not counted)
    assert aggregate_loss(x, mask, "token-mean").item() == 2.5
    assert aggregate_loss(x, mask, "seq-mean-token-sum").item() == (6 + 4) / 2
    assert aggregate_loss(x, mask, "seq-mean-token-mean").item() == (2 + 4) / 2
    assert loss_normalizer(mask, "token-mean") == 4.0
    assert loss_normalizer(mask, "seq-mean-token-mean") == 2.0
    assert aggregate_loss(x, mask, "token-mean", normalizer=8.0).item() == 10 / 8
    assert aggregate_loss(x, torch.zeros_like(mask), "token-mean").item() == 0.0
    # masked-out entries are selected away, not multiplied by 0: NaN there is harmless
    nan_x = torch.where(mask.bool(), x, torch.tensor(float("nan")))
    for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"):
        assert aggregate_loss(nan_x, mask, mode).item() == aggregate_loss(x, mask, mode).item()


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
def test_micro_batches_with_global_normalizer_equal_full_batch(mode):
    g = torch.Generator().manual_seed(1)
    b, seq = 7, 9
    logp0 = torch.randn(b, seq, generator=g, dtype=torch.float64) - 1
    old = logp0 + 0.3 * torch.randn(b, seq, generator=g, dtype=torch.float64)
    ref = logp0 + 0.3 * torch.randn(b, seq, generator=g, dtype=torch.float64)
    adv = torch.randn(b, seq, generator=g, dtype=torch.float64)
    ent = torch.rand(b, seq, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, seq, generator=g) < 0.6).long()
    mask[4] = 0  # a row with no trainable token (e.g. padding row)
    kw = dict(ref_logp=ref, entropy=ent, loss_agg=mode, kl_coef=0.1, ent_coef=0.05)

    full_p = logp0.clone().requires_grad_(True)
    full, _ = policy_loss(full_p, old, adv, mask, **kw)
    full.backward()

    micro_p = logp0.clone().requires_grad_(True)
    parts = [slice(0, 2), slice(2, 5), slice(5, 7)]
    total_norm = sum(loss_normalizer(mask[s], mode) for s in parts)
    assert total_norm == loss_normalizer(mask, mode)
    acc = 0.0
    for s in parts:
        kws = {**kw, "ref_logp": ref[s], "entropy": ent[s]}
        part, _ = policy_loss(micro_p[s], old[s], adv[s], mask[s], normalizer=total_norm, **kws)
        part.backward()
        acc += part.item()
    assert acc == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(micro_p.grad, full_p.grad, atol=1e-14)
    # without the global normaliser the micro-batch sum is not the full loss
    local = sum(
        policy_loss(
            logp0[s], old[s], adv[s], mask[s], **{**kw, "ref_logp": ref[s], "entropy": ent[s]}
        )[0].item()
        for s in parts
    )
    assert local != pytest.approx(full.item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selective_log_softmax_matches_naive(dtype):
    g = torch.Generator().manual_seed(2)
    logits = (5 * torch.randn(3, 6, 50, generator=g)).to(dtype).requires_grad_(True)
    ids = torch.randint(0, 50, (3, 6), generator=g)
    naive = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    fast = selective_log_softmax(logits, ids, chunk_rows=2)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert fast.dtype == dtype and torch.allclose(fast, naive, atol=tol)
    (gf,) = torch.autograd.grad(fast.sum(), logits)
    (gn,) = torch.autograd.grad(naive.sum(), logits)
    assert torch.allclose(gf, gn, atol=tol)
    assert torch.allclose(selective_log_softmax(logits[0, 0], ids[0, 0]), naive[0, 0], atol=tol)


def test_selective_log_softmax_bf16_upcasts():
    g = torch.Generator().manual_seed(3)
    logits = (5 * torch.randn(2, 4, 1000, generator=g)).to(torch.bfloat16)
    ids = torch.randint(0, 1000, (2, 4), generator=g)
    naive32 = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    fast = selective_log_softmax(logits, ids)
    assert fast.dtype == torch.float32 and torch.allclose(fast, naive32, atol=1e-5)
    with pytest.raises(ValueError, match="must match"):
        selective_log_softmax(logits, ids[:, :3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_entropy_from_logits_matches_naive(dtype):
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(2, 5, 40, generator=g)).to(dtype)
    ref = logits.double()
    naive = -(torch.softmax(ref, -1) * torch.log_softmax(ref, -1)).sum(-1)
    fast = entropy_from_logits(logits, chunk_rows=1)
    assert torch.allclose(fast.double(), naive, atol=1e-5)
    # uniform logits: entropy = log V
    assert entropy_from_logits(torch.zeros(40)).item() == pytest.approx(math.log(40), abs=1e-6)
    lg = logits.double().requires_grad_(True)
    (gf,) = torch.autograd.grad(entropy_from_logits(lg).sum(), lg)
    (gn,) = torch.autograd.grad(
        (-(torch.softmax(lg, -1) * torch.log_softmax(lg, -1)).sum(-1)).sum(), lg
    )
    assert torch.allclose(gf, gn, atol=1e-10)


def test_bad_arguments_are_named():
    x = torch.zeros(1, 2)
    m = torch.ones(1, 2)
    with pytest.raises(ValueError, match="loss_agg"):
        policy_loss(x, x, x, m, kl_coef=0, ent_coef=0, loss_agg="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(x, x, x, m, ent_coef=0)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(x, x, x, m, kl_coef=0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss(x, x, x, m, kl_coef=0, ent_coef=0, clip_ratio_c=0.5)
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(x, x, torch.zeros(2, 2), m, kl_coef=0, ent_coef=0)
    with pytest.raises(ValueError, match="ref_logp has shape"):
        policy_loss(x, x, x, m, ref_logp=torch.zeros(2), ent_coef=0)
    with pytest.raises(ValueError, match="normalizer"):
        aggregate_loss(x, m, normalizer=0.0)
