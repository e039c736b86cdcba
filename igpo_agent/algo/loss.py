"""The policy loss: clipped ratio with dual clip, low-variance KL, entropy bonus (pure math).

ALGORITHM "Policy loss": PPO clipped ratio (eps 0.2, optionally eps_low/eps_high), dual
clip c = 3, ``low_var_kl`` to the reference policy (coef 0.001), entropy bonus (0.001).
All per-token inputs are (B, L) with a loss ``mask`` that is 1 only on tokens the agent
generated (prompt, observation and padding tokens are 0). Written term by term::

    ratio  = exp(clamp(logp - old_logp, -20, 20))
    pg     = max(-A * ratio, -A * clamp(ratio, 1 - eps_low, 1 + eps_high))
    pg     = min(pg, -A * c)            where A < 0 (dual clip: bounded by c * |A|)
    pg     = w * pg                     with truncated IS weights w (TIS), when given
    kl     = clamp(exp(ref - logp) - (ref - logp) - 1, -10, 10)       (k3 estimator)
    loss   = agg(pg) + kl_coef * agg(kl) - ent_coef * agg(entropy)

TIS (truncated importance sampling, :func:`truncated_is_weights`): when the sampler's
numerics differ from the learner's (vLLM, bf16), the tokens were drawn from pi_sampler,
not from the learner's pi_old; ``w = min(pi_old / pi_sampler, cap)`` per token reweights
the policy-gradient term toward pi_old (verl's ``tis_imp_ratio_cap``, TRL's
``vllm_importance_sampling_cap``). The KL and entropy terms are not reweighted.

``agg`` is a named mode (``token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-mean``).
Gradient accumulation: pass every micro-batch the *global* ``normalizer`` (the sum of
:func:`loss_normalizer` over the micro-batches of one optimizer step); then the sum of
the micro-batch losses equals the full-batch loss exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from igpo_agent.choices import LossAgg, choices

LOSS_AGG_MODES = choices(LossAgg)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def selective_log_softmax(logits: Tensor, ids: Tensor, chunk_rows: int = 1) -> Tensor:
    """Log-prob of the chosen ids: (..., V) logits, (...) ids -> (...) log-probs.

    Naive equivalent (materialises the whole (..., V) log-softmax)::

        torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    Here the log-softmax is taken ``chunk_rows`` rows of the leading dim at a time and
    only the chosen entries are kept, so peak extra memory is one chunk, not a full-size
    copy of the logits; fp16/bf16 logits are upcast to fp32 one chunk at a time (their
    normaliser is too imprecise otherwise), so the result is fp32 for them.
    Differentiable.
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(
            f"ids {tuple(ids.shape)} must match logits' leading dims {tuple(logits.shape[:-1])}"
        )
    if logits.dim() == 1:
        return selective_log_softmax(logits[None], ids[None], chunk_rows)[0]
    out = []
    for lg, ix in zip(logits.split(chunk_rows), ids.split(chunk_rows), strict=True):
        if lg.dtype in _LOW_PRECISION:
            lg = lg.float()
        lsm = torch.log_softmax(lg, dim=-1)
        out.append(lsm.gather(-1, ix.long().unsqueeze(-1)).squeeze(-1))
    return torch.cat(out)


def entropy_from_logits(logits: Tensor, chunk_rows: int = 1) -> Tensor:
    """Entropy of the softmax at each position: (..., V) -> (...).

    Naive equivalent::

        p = torch.softmax(logits, -1)
        -(p * torch.log_softmax(logits, -1)).sum(-1)

    Here: ``-<exp(lsm), lsm>`` with ``lsm = log_softmax(z)``, ``chunk_rows`` leading rows
    at a time, fp16/bf16 upcast to fp32 per chunk (result fp32). Differentiable.
    """
    if logits.dim() == 1:
        return entropy_from_logits(logits[None], chunk_rows)[0]
    out = []
    for lg in logits.split(chunk_rows):
        if lg.dtype in _LOW_PRECISION:
            lg = lg.float()
        lsm = torch.log_softmax(lg, dim=-1)
        out.append(-torch.linalg.vecdot(lsm.exp(), lsm))
    return torch.cat(out)


def low_var_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref), as verl's ``low_var_kl``.

    ``d = clamp(ref - logp, -20, 20)``; ``kl = clamp(exp(d) - d - 1, -10, 10)``. It is >= 0,
    exactly 0 when the two log-probs are equal, and its gradient w.r.t. ``logp`` is
    ``1 - exp(ref - logp)``.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1.0).clamp(-10.0, 10.0)


def loss_normalizer(mask: Tensor, mode: LossAgg = "token-mean") -> float:
    """The denominator ``mode`` divides by: masked-in tokens, or sequences with >= 1 token.

    For gradient accumulation sum this over all micro-batches of one optimizer step and
    pass the total as ``normalizer`` to every micro-batch's :func:`aggregate_loss`.
    """
    _check_mode(mode)
    m = mask.bool()
    if mode == "token-mean":
        return float(m.sum())
    return float(m.any(dim=-1).sum())


def aggregate_loss(
    loss_mat: Tensor, mask: Tensor, mode: LossAgg = "token-mean", normalizer: float | None = None
) -> Tensor:
    """Reduce a (B, L) per-token loss to a scalar over the masked-in tokens.

    - ``token-mean``: sum of all masked tokens' losses / number of masked tokens.
    - ``seq-mean-token-sum``: per-sequence token sum, averaged over sequences.
    - ``seq-mean-token-mean``: per-sequence token mean, averaged over sequences.

    Sequences with no masked-in token contribute 0 and are not counted. ``normalizer``
    replaces the denominator (token or sequence count) with a global one, see
    :func:`loss_normalizer`; it defaults to this batch's own count (at least 1).
    Masked-out entries may hold anything (even NaN): they are selected away, not
    multiplied by 0.
    """
    _check_mode(mode)
    if loss_mat.shape != mask.shape or loss_mat.dim() != 2:
        raise ValueError(
            f"loss_mat {tuple(loss_mat.shape)} and mask {tuple(mask.shape)} must both be (B, L)"
        )
    m = mask.bool()
    x = torch.where(m, loss_mat, torch.zeros_like(loss_mat))
    if normalizer is None:
        normalizer = max(loss_normalizer(m, mode), 1.0)
    elif normalizer <= 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    if mode == "token-mean":
        total = x.sum()
    elif mode == "seq-mean-token-sum":
        total = x.sum(-1).sum()
    else:
        total = (x.sum(-1) / m.sum(-1).clamp(min=1).to(x.dtype)).sum()
    return total / normalizer


def truncated_is_weights(
    proximal_logp: Tensor, sampler_logp: Tensor, mask: Tensor, cap: float = 2.0
) -> Tensor:
    """Per-token truncated importance weights ``min(exp(proximal - sampler), cap)`` (TIS).

    (B, L) log-probs of the taken tokens under the learner's pi_old (``proximal_logp``) and
    as the sampler recorded them (``sampler_logp``), a (B, L) loss ``mask`` -> (B, L)
    detached fp32 weights, 1.0 off the mask (masked entries may hold anything, even NaN:
    they are selected away first). The weight corrects for the sampler and the learner
    computing slightly different distributions (vLLM kernels, bf16): the tokens came from
    pi_sampler, the PPO ratio is taken against pi_old. Truncating at ``cap`` bounds the
    variance a token the sampler found unlikely would add. Naive equivalent::

        torch.where(mask, torch.exp(proximal - sampler).clamp(max=cap), 1.0)
    """
    if proximal_logp.shape != sampler_logp.shape or proximal_logp.shape != mask.shape:
        raise ValueError(
            f"proximal_logp {tuple(proximal_logp.shape)}, sampler_logp "
            f"{tuple(sampler_logp.shape)} and mask {tuple(mask.shape)} must have one shape"
        )
    if not cap > 0:
        raise ValueError(f"cap must be > 0 (verl/TRL use 2.0), got {cap}")
    m = mask.bool()
    with torch.no_grad():
        zero = torch.zeros_like(proximal_logp, dtype=torch.float32)
        d = torch.where(m, proximal_logp.float() - sampler_logp.float(), zero)
        w = torch.exp(d.clamp(max=20.0)).clamp(max=cap)
        return torch.where(m, w, torch.ones_like(w))


def _check_mode(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg={mode!r} is not supported; choose one of {LOSS_AGG_MODES}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = None,
    clip_ratio_c: float | None = 3.0,
    kl_coef: float = 0.001,
    ent_coef: float = 0.001,
    loss_agg: LossAgg = "token-mean",
    normalizer: float | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped policy-gradient loss + KL + entropy bonus over the masked tokens.

    Args:
        logp: (B, L) log-probs of the taken tokens under the current policy (with grad).
        old_logp: (B, L) log-probs under the policy that sampled them (no grad).
        advantages: (B, L) per-token advantages (:func:`igpo_agent.algo.advantages.token_advantages`).
        mask: (B, L) 1/True on agent-generated tokens only.
        ref_logp: (B, L) reference-policy log-probs; required when ``kl_coef > 0``.
        entropy: (B, L) per-token entropy (with grad); required when ``ent_coef > 0``.
        clip_eps / clip_eps_low / clip_eps_high: ratio clip range [1-low, 1+high];
            low/high default to ``clip_eps``.
        clip_ratio_c: dual-clip constant (> 1), or None to disable dual clip.
        kl_coef, ent_coef: coefficients (0 switches a term off).
        loss_agg, normalizer: see :func:`aggregate_loss`.
        is_weights: (B, L) per-token weights (:func:`truncated_is_weights`, no grad) that
            multiply the policy-gradient term (TIS); None leaves it unweighted.

    Returns:
        ``(loss, metrics)``: the scalar loss to backpropagate, and detached floats computed
        over this batch's own masked tokens (never the global normaliser, so micro-batches
        are comparable; weight them by ``num_tokens`` to average): ``loss``, ``pg_loss``,
        ``kl_loss``, ``entropy`` (each aggregated with ``loss_agg``), ``clipfrac``
        (fraction of tokens where the ratio clip is active), ``clipfrac_lower`` (dual clip
        active), ``approx_kl`` = 0.5 * mean((logp - old_logp)^2) (k2 estimator of
        KL(old || new)), ``ppo_kl`` = mean(old_logp - logp) (k1), ``ratio_mean``,
        ``ratio_min``, ``ratio_max`` (NaN with no tokens), ``num_tokens``, ``num_seqs``.
    """
    _check_mode(loss_agg)
    shape = logp.shape
    named = {"old_logp": old_logp, "advantages": advantages, "mask": mask}
    named.update({"ref_logp": ref_logp, "entropy": entropy, "is_weights": is_weights})
    for name, t in named.items():
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logp has {tuple(shape)}")
    lo = clip_eps if clip_eps_low is None else clip_eps_low
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    if lo < 0 or hi < 0 or lo >= 1:
        raise ValueError(f"clip range must satisfy 0 <= eps_low < 1, eps_high >= 0; got {lo}, {hi}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (reference 3.0) or None, got {clip_ratio_c}")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError(
            "kl_coef > 0 needs ref_logp (reference-policy log-probs); or set kl_coef=0"
        )
    if ent_coef > 0 and entropy is None:
        raise ValueError("ent_coef > 0 needs entropy (entropy_from_logits); or set ent_coef=0")

    m = mask.bool()

    def clean(t: Tensor) -> Tensor:  # select away masked entries before any math (NaN-safe grads)
        return torch.where(m, t, torch.zeros_like(t))

    logp, old_logp, adv = clean(logp), clean(old_logp.detach()), clean(advantages.detach())
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)  # (B, L)
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - lo, 1.0 + hi)
    pg = torch.maximum(pg1, pg2)
    dual_active = torch.zeros_like(m)
    if clip_ratio_c is not None:
        pg3 = -adv * clip_ratio_c
        dual_active = (adv < 0) & (pg > pg3)
        pg = torch.where(adv < 0, torch.minimum(pg, pg3), pg)
    if is_weights is not None:
        pg = pg * clean(is_weights.detach().to(pg.dtype))
    pg_loss = aggregate_loss(pg, m, loss_agg, normalizer)
    loss = pg_loss
    kl = ent = None
    if ref_logp is not None:
        kl = low_var_kl(logp, clean(ref_logp.detach()))
        if kl_coef > 0:
            loss = loss + kl_coef * aggregate_loss(kl, m, loss_agg, normalizer)
    if entropy is not None:
        ent = clean(entropy)
        if ent_coef > 0:
            loss = loss - ent_coef * aggregate_loss(ent, m, loss_agg, normalizer)

    with torch.no_grad():
        metrics = _metrics(m, pg, pg1, pg2, dual_active, ratio, log_ratio, kl, ent, loss_agg)
        local = metrics["pg_loss"] + kl_coef * metrics.get("kl_loss", 0.0)
        metrics["loss"] = local - ent_coef * metrics.get("entropy", 0.0)
    return loss, metrics


def _metrics(
    m: Tensor,
    pg: Tensor,
    pg1: Tensor,
    pg2: Tensor,
    dual_active: Tensor,
    ratio: Tensor,
    log_ratio: Tensor,
    kl: Tensor | None,
    ent: Tensor | None,
    mode: LossAgg,
) -> dict[str, float]:
    """Detached per-batch statistics over masked-in tokens (see :func:`policy_loss`)."""
    n = int(m.sum())
    denom = max(n, 1)

    def tmean(x: Tensor) -> float:
        return float(torch.where(m, x.float(), 0.0).sum() / denom)

    out: dict[str, float] = {
        "pg_loss": float(aggregate_loss(pg.detach(), m, mode)),
        "clipfrac": tmean((pg2 > pg1).float()),
        "clipfrac_lower": tmean(dual_active.float()),
        "approx_kl": 0.5 * tmean(log_ratio.detach() ** 2),
        "ppo_kl": tmean(-log_ratio.detach()),
        "ratio_mean": tmean(ratio.detach()) if n else float("nan"),
        "ratio_min": float(ratio.detach()[m].min()) if n else float("nan"),
        "ratio_max": float(ratio.detach()[m].max()) if n else float("nan"),
        "num_tokens": float(n),
        "num_seqs": float(m.any(-1).sum()),
    }
    if kl is not None:
        out["kl_loss"] = float(aggregate_loss(kl.detach(), m, mode))
    if ent is not None:
        out["entropy"] = float(aggregate_loss(ent.detach(), m, mode))
    return out
