# Over 400 lines: the PPO update and the helpers only it uses (padding, micro-batches, skipped rows) in one place.
"""One IGPO/GRPO update from a batch of trajectories: beliefs -> advantages -> loss -> step.

The glue between the pure math (:mod:`rewards`, :mod:`advantages`, :mod:`loss`) and the
model (:mod:`igpo_agent.model.policy`, :mod:`igpo_agent.ig`). ALGORITHM "Turn reward", "Advantage", "Policy loss".

- Beliefs v_t come from the rollout policy itself (pi_old, no grad) before the update.
- The update is PPO's: ``ppo_epochs`` passes, each split into mini-batches of
  ``ppo_mini_batch_size`` trajectories with one optimiser step each. pi_old's log-probs
  are computed once before the first step, or taken from the sampler's records
  (``old_logprobs="sampler"``, :mod:`igpo_agent.learn.old_logprobs`), or, with a single
  step in all, are the detached current ones (exact and one forward cheaper). With
  ``tis`` the records weight the PG term (truncated importance sampling). Every log-prob
  the loss reads uses the sampling temperature.
- The reference policy for ``low_var_kl`` is ``policy.reference()``: the policy training
  started from (the warm start merged into the base weights, see :mod:`igpo_agent.model.policy`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from igpo_agent.algo.advantages import (
    TurnAdvantages,
    exclusion_groups,
    group_advantages,
    token_advantages,
    zero_rows,
)
from igpo_agent.algo.loss import loss_normalizer, policy_loss
from igpo_agent.algo.rewards import outcome_rewards
from igpo_agent.ig.beliefs import reencoded_trajectory_beliefs
from igpo_agent.learn.old_logprobs import SamplerDrift, batch_records
from igpo_agent.rollout.trajectory import Trajectory


@dataclass
class LossSettings:
    """The loss and optimisation knobs of one update (ALGORITHM "Policy loss")."""

    clip_eps: float = 0.2
    clip_eps_low: float | None = None  # lower clip 1 - eps_low; None = clip_eps
    clip_eps_high: float | None = None  # upper clip 1 + eps_high; None = clip_eps
    dual_clip: float | None = 3.0
    kl_coef: float = 0.001
    entropy_coef: float = 0.001
    loss_agg: str = "token-mean"
    ppo_epochs: int = 1
    ppo_mini_batch_size: int | None = None  # trajectories per optimiser step; None = all
    micro_batch_size: int = 4
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # the sampling temperature: learner log-probs use logits / T
    autocast: torch.dtype | None = None  # e.g. bf16: forwards under autocast, loss in fp32
    skip_zero_advantage: bool = True  # no forward/backward for rows whose loss is 0 (below)
    old_logprobs: str = "recompute"  # pi_old with > 1 step: recompute, or the sampler's records
    tis: bool = False  # weight the PG term by min(exp(pi_old - recorded), tis_cap) per token
    tis_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.old_logprobs not in ("recompute", "sampler") or (
            self.tis and self.old_logprobs == "sampler"
        ):
            raise ValueError(
                f"old_logprobs={self.old_logprobs!r} with tis={self.tis}: use "
                "recompute or sampler, and recompute with tis (sampler: weights 1)"
            )

    def skips_zero_rows(self) -> bool:
        """Whether rows with advantage 0 on every token may skip the forward and backward:
        with no KL and no entropy term their loss and gradient are exactly 0 (they still
        count in the normaliser, so the step is the same)."""
        return self.skip_zero_advantage and self.kl_coef == 0 and self.entropy_coef == 0

    def mini_batches(self, n: int) -> list[slice]:
        """The optimiser steps of one epoch over ``n`` trajectories (adjacent rows each)."""
        size = n if self.ppo_mini_batch_size is None else min(self.ppo_mini_batch_size, n)
        return _micro_batches(n, max(size, 1))

    def optimizer_steps(self, n: int) -> int:
        """Optimiser steps one update of ``n`` trajectories takes (epochs x mini-batches)."""
        return self.ppo_epochs * len(self.mini_batches(n))


def belief_matrix(
    policy: Any,
    trajs: Sequence[Trajectory],
    answer_prefix: str,
    answer_suffix: str,
    *,
    method: str = "packed",
    scorer: Callable[[list[Trajectory], str, str], list[list[float]]] | None = None,
) -> torch.Tensor:
    """v_t for every trajectory as an (N, T_max) tensor (padding 0; ALGORITHM "Turn reward").

    ``scorer`` replaces the re-encoding scorer (one of
    :func:`igpo_agent.ig.scorer.make_belief_scorer`'s).
    Trajectories without a generated turn (context full at the prompt) get no values.
    """
    t_max = max([max(t.num_turns, 1) for t in trajs], default=1)
    values = torch.zeros(len(trajs), t_max)
    live = [trajs[i] for i, t in enumerate(trajs) if t.num_turns > 0]
    if live:
        if scorer is not None:
            rows = scorer(live, answer_prefix, answer_suffix)
        else:
            rows = reencoded_trajectory_beliefs(
                policy, live, answer_prefix, answer_suffix, method=method
            )
        idx = [i for i, t in enumerate(trajs) if t.num_turns > 0]
        for i, row in zip(idx, rows, strict=True):
            values[i, : len(row)] = torch.tensor(row, dtype=values.dtype)
    return values


def compute_advantages(
    trajs: Sequence[Trajectory],
    values: torch.Tensor,
    *,
    group_size: int,
    algo: str,
    ig_mode: str,
    norm: str,
    gamma: float,
    format_penalty: float,
    ig_turns: str = "search",
    ig_weight: float = 1.0,
    ig_exclude_zero: bool = False,
    exclude: Sequence[bool] | None = None,
) -> tuple[TurnAdvantages, torch.Tensor]:
    """Per-turn advantages of a batch (groups of ``group_size`` adjacent rollouts) and the
    raw outcome rewards (N,).

    ``ig_turns="search"`` (docs/ALGORITHM.md: "every turn that ends in a search gets r^IG_t") gives
    IG only to turns the env parsed as a search; ``"all"`` to every turn before the last,
    malformed ones included.

    ``exclude[i]`` leaves rollout i out (e.g. one whose search backend failed: its reward
    measures the outage, not the policy): it is taken out of its group before the group
    normalisation, so the others' advantages are those of the group without it (a group
    left with one rollout gives it 0, the lone-value rule), and its own advantages
    (``returns``, ``normalized``) are 0. ``raw``/``ig`` keep its values for logging.
    """
    outcome = outcome_rewards(
        [t.outcome_f1 for t in trajs],
        [t.answered for t in trajs],
        [t.format_ok for t in trajs],
        [t.truncated or t.context_truncated for t in trajs],
        format_penalty,
    )
    num_turns = [max(t.num_turns, 1) for t in trajs]
    eligible = None
    if ig_turns == "search":
        eligible = torch.zeros(values.shape, dtype=torch.bool)
        for i, t in enumerate(trajs):
            for k, kind in enumerate(t.turn_kinds[: values.shape[1]]):
                eligible[i, k] = kind == "search"
    elif ig_turns != "all":
        raise ValueError(f"ig_turns must be 'search' or 'all', got {ig_turns!r}")
    flags = [False] * len(trajs) if exclude is None else [bool(x) for x in exclude]
    if len(flags) != len(trajs):
        raise ValueError(f"exclude has {len(flags)} entries for {len(trajs)} trajectories")
    groups = exclusion_groups(flags, group_size=group_size) if any(flags) else None
    adv = group_advantages(
        values,
        num_turns,
        outcome,
        group_size=None if groups else group_size,
        group_ids=groups,
        algo=algo,  # type: ignore[arg-type]
        ig_mode=ig_mode,  # type: ignore[arg-type]
        norm=norm,  # type: ignore[arg-type]
        gamma=gamma,
        ig_turns=eligible,
        ig_weight=ig_weight,
        ig_exclude_zero=ig_exclude_zero,
    )
    return (zero_rows(adv, flags) if groups else adv), outcome


def turn_token_counts(trajs: Sequence[Trajectory], t_max: int) -> torch.Tensor:
    """(N, t_max) number of tokens the agent generated in each turn of each trajectory."""
    out = torch.zeros(len(trajs), t_max)
    for i, t in enumerate(trajs):
        for s in t.spans:
            if s.kind == "action" and s.turn < t_max:
                out[i, s.turn] += s.end - s.start
    return out


def pad_batch(trajs: Sequence[Trajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (N, L) tensors: ``input_ids``, ``attention_mask``, ``action_mask``,
    ``token_turns`` (-1 off the agent's tokens)."""
    length = max(len(t.token_ids) for t in trajs)
    n = len(trajs)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    attn = torch.zeros(n, length, dtype=torch.long)
    act = torch.zeros(n, length, dtype=torch.bool)
    turns = torch.full((n, length), -1, dtype=torch.long)
    for i, t in enumerate(trajs):
        k = len(t.token_ids)
        ids[i, :k] = torch.tensor(t.token_ids, dtype=torch.long)
        attn[i, :k] = 1
        act[i, :k] = torch.tensor(t.action_mask(), dtype=torch.bool)
        turns[i, :k] = torch.tensor(t.token_turns(), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "action_mask": act, "token_turns": turns}


def _micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _chunks(rows: Sequence[int], size: int) -> list[list[int]]:
    """``rows`` in consecutive chunks of ``size`` (the micro-batches)."""
    rows = list(rows)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _trim(batch: dict[str, torch.Tensor], rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """``rows`` with the columns cut to their longest sequence (less padding compute)."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    width = int(batch["attention_mask"][idx].sum(1).max())
    return {k: v[idx, :width] for k, v in batch.items()}


def _live_rows(batch: dict[str, torch.Tensor], skip_zero: bool) -> list[bool]:
    """Per row: whether its forward and backward are needed (it has an action token and,
    with ``skip_zero``, a non-zero advantage on one)."""
    act = batch["action_mask"]
    live = act.any(1)
    if skip_zero:
        live = live & ((batch["advantages"] != 0) & act).any(1)
    return [bool(x) for x in live]


def _autocast(policy: Any, dtype: torch.dtype | None) -> Any:
    """``torch.autocast`` on the policy's device type, or a no-op without a dtype."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=policy.device.type, dtype=dtype)


@torch.no_grad()
def _logprobs(
    policy: Any,
    batch: dict[str, torch.Tensor],
    size: int,
    temperature: float,
    autocast: torch.dtype | None = None,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """(N, L) action log-probs of ``rows`` (default: all), ``size`` rows per forward; 0 elsewhere."""
    out = torch.zeros(batch["input_ids"].shape, dtype=torch.float32)
    rows = range(batch["input_ids"].shape[0]) if rows is None else rows
    for chunk in _chunks(rows, size):
        mb = _trim(batch, chunk)
        with _autocast(policy, autocast):
            lp, _ = policy.action_logprobs(
                mb["input_ids"], mb["attention_mask"], mb["action_mask"], temperature=temperature
            )
        out[torch.tensor(chunk), : lp.shape[1]] = lp.float().cpu()
    return out


def policy_update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    trajs: Sequence[Trajectory],
    turn_returns: torch.Tensor,
    settings: LossSettings,
    *,
    global_count: Callable[[float], float] | None = None,
    reduce_grads: Callable[[list[torch.nn.Parameter]], None] | None = None,
    exclude: Sequence[bool] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Run the PPO update on the batch; returns (loss metrics, timings).

    ``exclude[i]`` masks every token of trajectory i out of the loss (no policy-gradient,
    KL or entropy term, not in the token count that normalises it): the update is the one
    the other trajectories alone would give, while the batch keeps its size (data-parallel
    ranks and mini-batches stay aligned).

    Every token the agent generated in turn t gets ``turn_returns[i, t]``; prompt and
    observation tokens are masked out. Each of ``ppo_epochs`` passes splits the batch into
    mini-batches of ``ppo_mini_batch_size`` trajectories, one optimiser step each (the
    reference code's Nov 2025 scripts: 16 steps per rollout batch; the ratio leaves 1
    after the first step and the clip acts). Micro-batches (``micro_batch_size``, memory
    only) accumulate gradients with the mini-batch's token (or sequence) count as the
    loss normaliser, so a mini-batch's step equals its full-batch step.

    pi_old: with one optimiser step in all, the sampled policy is the one differentiated,
    so its log-probs are the detached current ones (exact, one forward cheaper); with more
    they are computed once, before the first step, or with ``settings.old_logprobs ==
    "sampler"`` read from the trajectories' ``sample_logprobs`` (no forward; equal where
    the sampler's numerics are the learner's). With ``settings.tis`` the PG term of each
    token is multiplied by ``min(exp(pi_old - recorded), tis_cap)``. Whenever both pi_old
    and the records exist, ``tis_weight_mean|max`` and ``sampler_logp_diff`` (mean
    |pi_old - recorded|) are reported, applied or not. All log-probs use ``temperature``.

    No pass the loss does not need: no reference forward without a KL term, and (with
    ``settings.skips_zero_rows()``: no KL, no entropy term) no pi_old forward, forward or
    backward for a row whose advantage is 0 on every token, e.g. a group whose outcomes
    are all equal under GRPO. Such a row's loss and gradient are exactly 0; it still
    counts in the normaliser, and a mini-batch left with no row still takes its
    optimiser step on a zero gradient (Adam's moments move as they would), so the update
    is the one the full computation gives. The loss metrics then average over the rows
    that ran; ``skipped_rows`` counts the others.

    A step whose gradient norm is not finite is skipped (no optimiser step, gradients
    dropped) and counted in ``skipped_steps``: AdamW would otherwise write NaN into the
    adapter.

    Data parallel (:mod:`igpo_agent.run.distributed`): ``global_count(local)`` turns this
    rank's normaliser of a mini-batch into the sum over ranks, and ``reduce_grads(params)``
    sums the gradients over ranks before clipping and the optimiser step. Every rank must
    hold the same number of trajectories. A rank whose share has no action token still
    takes part (zero gradient); a mini-batch whose global count is 0 is skipped on every
    rank alike.
    """
    pad_id = policy.tokenizer.pad_token_id
    batch = pad_batch(trajs, pad_id)
    batch["advantages"] = token_advantages(turn_returns, batch["token_turns"])
    if exclude is not None and any(exclude):
        if len(exclude) != len(trajs):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(trajs)} trajectories")
        batch["action_mask"][torch.tensor([bool(x) for x in exclude])] = False
    mask = batch["action_mask"]
    timings = {"old_logprobs_s": 0.0, "update_s": 0.0}
    agg = settings.loss_agg
    if global_count is None and not bool(mask.any()):
        return {}, timings
    temp = settings.temperature
    mbs = settings.micro_batch_size
    t0 = time.perf_counter()
    n_steps = settings.optimizer_steps(len(trajs))
    cast = settings.autocast
    live = _live_rows(batch, settings.skips_zero_rows())
    live_rows = [i for i, x in enumerate(live) if x]
    from_sampler = settings.old_logprobs == "sampler"
    width = batch["input_ids"].shape[1]
    recorded = batch_records(trajs, width, required=from_sampler or settings.tis)
    old = None
    if n_steps > 1:
        old = recorded if from_sampler else _logprobs(policy, batch, mbs, temp, cast, live_rows)
    drift = SamplerDrift(None if old is recorded else recorded, settings.tis_cap)
    ref = None
    if settings.kl_coef > 0:
        with policy.reference():
            ref = _logprobs(policy, batch, mbs, temp, cast, live_rows)
    timings["old_logprobs_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    params = policy.trainable_parameters()
    policy.model.train()
    sums: dict[str, float] = {}
    weight = 0.0
    grad_norms: list[float] = []
    skipped = 0
    ratio_min, ratio_max = math.inf, -math.inf
    for _ in range(settings.ppo_epochs):
        for mini in settings.mini_batches(len(trajs)):
            count = loss_normalizer(mask[mini], agg)  # type: ignore[arg-type]
            if global_count is not None:
                count = global_count(count)
            if count <= 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            for rows in _chunks([i for i in range(mini.start, mini.stop) if live[i]], mbs):
                mb = _trim(batch, rows)
                width = mb["input_ids"].shape[1]
                with _autocast(policy, cast):
                    logp, ent = policy.action_logprobs(
                        mb["input_ids"],
                        mb["attention_mask"],
                        mb["action_mask"],
                        with_entropy=settings.entropy_coef > 0,
                        temperature=temp,
                    )
                dev = logp.device
                old_lp = logp.detach() if old is None else old[rows, :width].to(dev)
                tis = drift.weights(old_lp.float(), rows, mb["action_mask"].to(dev))
                loss, m = policy_loss(
                    logp.float(),
                    old_lp.float(),
                    mb["advantages"].to(dev),
                    mb["action_mask"].to(dev),
                    ref_logp=None if ref is None else ref[rows, :width].to(dev),
                    entropy=None if ent is None else ent.float(),
                    clip_eps=settings.clip_eps,
                    clip_eps_low=settings.clip_eps_low,
                    clip_eps_high=settings.clip_eps_high,
                    clip_ratio_c=settings.dual_clip,
                    kl_coef=settings.kl_coef,
                    ent_coef=settings.entropy_coef,
                    loss_agg=agg,  # type: ignore[arg-type]
                    normalizer=count,
                    is_weights=tis if settings.tis else None,
                )
                loss.backward()
                w = m["num_tokens"]
                weight += w
                ratio_min = min(ratio_min, m["ratio_min"])
                ratio_max = max(ratio_max, m["ratio_max"])
                for k, v in m.items():
                    if k not in _UNWEIGHTED and math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + v * w
            for p in params:  # rows that skipped (or a rank with none) give a zero gradient
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            if reduce_grads is not None:
                reduce_grads(params)
            norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
            if not math.isfinite(norm):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            grad_norms.append(norm)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    policy.model.eval()
    timings["update_s"] = time.perf_counter() - t0
    metrics = {k: v / max(weight, 1.0) for k, v in sums.items()}
    metrics["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    if weight > 0:
        metrics["ratio_min"], metrics["ratio_max"] = ratio_min, ratio_max
    metrics["optimizer_steps"] = float(len(grad_norms))
    metrics["skipped_steps"] = float(skipped)
    metrics["num_tokens"] = float(mask.sum())
    metrics["skipped_rows"] = float(sum(1 for i, x in enumerate(live) if not x and mask[i].any()))
    metrics.update(drift.metrics())
    return metrics, timings


_UNWEIGHTED = ("num_tokens", "num_seqs", "ratio_min", "ratio_max")
