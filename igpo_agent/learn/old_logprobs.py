"""pi_old from the sampler's own records: the learner's log-prob layout, no forward.

Every rollout records the log-prob of each token it sampled under the sampling policy
(:attr:`igpo_agent.rollout.trajectory.Trajectory.sample_logprobs`: ``log_softmax(logits /
T)`` at the token, from the HF loop in :mod:`igpo_agent.rollout.sampling` or vLLM's
``processed_logprobs``). Where the sampler computes what the learner would (the hf engine,
fp32 weights, no autocast: ALGORITHM "Policy loss", ``old_logprobs``), these *are* pi_old
and the no-grad pi_old forward before the first of several optimiser steps can be skipped.
Where they differ (vLLM kernels, bf16), pi_old is recomputed and the records feed truncated
importance sampling instead (:func:`igpo_agent.algo.loss.truncated_is_weights`).

- :func:`recorded_logprobs`: the (N, L) tensor laid out exactly as the learner's
  :func:`igpo_agent.learn.learner.pad_batch` rows and
  :meth:`igpo_agent.model.policy.Policy.action_logprobs` output: right-padded, column j is
  token j, the value on the agent's tokens and 0 on prompt, observation and padding.
- :class:`SamplerDrift`: per micro-batch TIS weights and the statistics the trainer logs
  (``losses/tis_weight_mean|max``, ``losses/sampler_logp_diff``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from igpo_agent.algo.loss import truncated_is_weights
from igpo_agent.rollout.trajectory import Trajectory


def _row(i: int, t: Trajectory) -> torch.Tensor:
    """(len(token_ids),) trajectory ``i``'s records on its action tokens, 0 elsewhere;
    ``ValueError`` unless it holds one record per token, finite on the action tokens."""
    where = f"trajectory {i}" + (f" (qid {t.qid!r})" if t.qid else "")
    if len(t.sample_logprobs) != len(t.token_ids):
        raise ValueError(
            f"{where} records {len(t.sample_logprobs)} sampler log-probs for "
            f"{len(t.token_ids)} tokens: the records must align token for token with "
            "token_ids (as the rollout engines write them); use old_logprobs=recompute for "
            "trajectories built another way"
        )
    lp = torch.tensor(t.sample_logprobs, dtype=torch.float32)
    act = torch.tensor(t.action_mask(), dtype=torch.bool)
    act[:1] = False  # position 0 has no predecessor (as in action_logprobs)
    bad = (act & ~torch.isfinite(lp)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"{where} has non-finite sampler log-probs at action tokens {bad[:5]}: "
            "use old_logprobs=recompute"
        )
    return torch.where(act, lp, torch.zeros_like(lp))


def has_recorded_logprobs(trajs: Sequence[Trajectory]) -> bool:
    """Whether every trajectory holds one sampler log-prob per token, finite on its action
    tokens (what :func:`recorded_logprobs` needs); hand-built trajectories often do not."""
    try:
        recorded_logprobs(trajs)
    except ValueError:
        return False
    return bool(trajs)


def recorded_logprobs(trajs: Sequence[Trajectory], width: int | None = None) -> torch.Tensor:
    """(N, L) fp32 sampler log-probs of the agent's tokens, 0 elsewhere.

    The layout of :func:`igpo_agent.learn.learner.pad_batch` (right padding, ``L`` = the
    longest trajectory unless ``width`` is given) and of ``Policy.action_logprobs``: the
    value at column j is the log-prob of token j given tokens < j, on the action tokens
    only (position 0, a prompt token, holds 0). Naive equivalent, row i::

        torch.tensor(t.sample_logprobs) * torch.tensor(t.action_mask())

    Raises ``ValueError`` naming the trajectory when its records do not align with its
    tokens (one per token) or an action token's record is not finite.
    """
    length = max((len(t.token_ids) for t in trajs), default=0) if width is None else width
    out = torch.zeros(len(trajs), length, dtype=torch.float32)
    for i, t in enumerate(trajs):
        if len(t.token_ids) > length:
            raise ValueError(f"trajectory {i} has {len(t.token_ids)} tokens > width {length}")
        out[i, : len(t.token_ids)] = _row(i, t)
    return out


def batch_records(
    trajs: Sequence[Trajectory], width: int, *, required: bool
) -> torch.Tensor | None:
    """:func:`recorded_logprobs` of a batch ``width`` columns wide. ``required`` (sampler
    pi_old, TIS): a misaligned record raises; otherwise (the logged diagnostics) it gives
    None instead."""
    try:
        return recorded_logprobs(trajs, width)
    except ValueError:
        if required:
            raise
        return None


class SamplerDrift:
    """How far the learner's pi_old is from the sampler's records, one micro-batch at a time.

    ``recorded`` is the batch's :func:`recorded_logprobs` (None: nothing to compare, e.g.
    when they are pi_old themselves). :meth:`weights` returns the TIS weights
    ``min(exp(proximal - recorded), cap)`` of a micro-batch and accumulates, over its
    action tokens, the weights' sum and max and ``|proximal - recorded|``; :meth:`metrics`
    gives their means (empty when nothing was added). ``proximal`` is the learner's pi_old:
    recomputed before the first of several optimiser steps, or the detached current
    log-probs with one step in all.
    """

    def __init__(self, recorded: torch.Tensor | None, cap: float) -> None:
        self.recorded = recorded
        self.cap = cap
        self.tokens = 0.0
        self.weight_sum = 0.0
        self.weight_max = -math.inf
        self.diff_sum = 0.0

    def weights(
        self, proximal: torch.Tensor, rows: Sequence[int], mask: torch.Tensor
    ) -> torch.Tensor | None:
        """(B, W) pi_old of batch ``rows`` (cut to W columns) and their loss mask -> (B, W)
        detached TIS weights, or None without records."""
        if self.recorded is None:
            return None
        sampler = self.recorded[list(rows), : proximal.shape[1]].to(proximal.device)
        w = truncated_is_weights(proximal, sampler, mask, self.cap)
        m = mask.bool()
        n = int(m.sum())
        if n:
            self.tokens += n
            self.weight_sum += float(w[m].sum())
            self.weight_max = max(self.weight_max, float(w[m].max()))
            self.diff_sum += float((proximal.detach().float() - sampler.float())[m].abs().sum())
        return w

    def metrics(self) -> dict[str, float]:
        """``tis_weight_mean``, ``tis_weight_max``, ``sampler_logp_diff`` (mean
        |pi_old - recorded| per token), or {} when no token was added."""
        if not self.tokens:
            return {}
        return {
            "tis_weight_mean": self.weight_sum / self.tokens,
            "tis_weight_max": self.weight_max,
            "sampler_logp_diff": self.diff_sum / self.tokens,
        }
