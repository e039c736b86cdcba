"""TRL rollouts as IGPO turns: spans, belief values and per-token advantages (no TRL import).

TRL's ``GRPOTrainer`` records a multi-turn rollout as ``prompt_ids`` + ``completion_ids``
with a ``tool_mask`` over the completion: 1 for tokens the model generated, 0 for the tool
responses (and the chat-template tokens around them) that TRL appended. IGPO needs the same
rollout as turns (ALGORITHM "The episode"): turn t is the t-th maximal run of model tokens,
the belief v_t is scored at the prefix that ends where turn t starts, and every token of
turn t gets the turn's return R_{i,t}.

This module maps one onto the other and then calls the learner's own math
(:func:`igpo_agent.algo.advantages.group_advantages`, :func:`token_advantages`,
:func:`igpo_agent.ig.beliefs.reencoded_beliefs`); it computes no reward or advantage itself.

Rules (the learner's, ``igpo_agent.learn.learner.compute_advantages``, expressed in TRL terms):

- A turn before the last is always a tool-calling turn (TRL only continues after one). It is
  a ``"search"`` turn, or ``"invalid"`` when every tool result TRL appended for it is TRL's
  error record (``str({"error": ...})``: unknown tool, bad arguments, a raising tool).
- A rollout is *truncated* when it ends without a final answer turn: its last assistant
  message still calls a tool or is followed by tool output (TRL's ``max_tool_calling_iterations``
  or the completion budget cut it), or its ids do not end in an end-of-turn/pad token.
- Outcome: the reward functions' weighted sum; with ``format_penalty`` set, a truncated
  rollout or one with an invalid turn gets the penalty instead (ALGORITHM "Outcome reward":
  a malformed trajectory gets lambda_fmt instead of F1).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from igpo_agent.algo.advantages import (
    TurnAdvantages,
    exclusion_groups,
    group_advantages,
    token_advantages,
    zero_rows,
)
from igpo_agent.algo.rewards import DEFAULT_FORMAT_PENALTY
from igpo_agent.choices import IGTurns, choices
from igpo_agent.ig.beliefs import reencoded_beliefs
from igpo_agent.ig.gold import GoldSpec, gold_spec

TOOL_ERROR_PREFIX = "{'error': "  # TRL's tool failure record, ``str({"error": msg})``
IG_TURNS = choices(IGTurns)

Span = tuple[int, int]


@dataclass(frozen=True)
class RolloutTurns:
    """One TRL rollout as IGPO turns.

    ``spans[t] = (start, end)``: turn t's model tokens, as indices into ``completion_ids``.
    ``kinds[t]``: ``"search"`` / ``"invalid"`` for turns before the last, ``"final"`` for the
    last. ``truncated``: the rollout ended without a final answer turn (module doc).
    """

    spans: tuple[Span, ...]
    kinds: tuple[str, ...]
    truncated: bool

    @property
    def num_turns(self) -> int:
        """Number of model turns T (0 when the completion holds no model token)."""
        return len(self.spans)

    @property
    def malformed(self) -> bool:
        """Truncated or with an invalid turn: the format penalty applies."""
        return self.truncated or "invalid" in self.kinds

    def boundaries(self, prompt_len: int) -> list[int]:
        """Prefix lengths b_t in ``prompt_ids + completion_ids`` at which v_t is scored."""
        return [prompt_len + start for start, _ in self.spans]


def model_turn_spans(tool_mask: Sequence[int]) -> list[Span]:
    """The maximal runs of 1s in a (unpadded) tool mask: ``[(start, end), ...]``.

    >>> model_turn_spans([1, 1, 0, 0, 1, 0, 1, 1])
    [(0, 2), (4, 5), (6, 8)]
    """
    spans: list[Span] = []
    start = None
    for j, m in enumerate(tool_mask):
        if m not in (0, 1):
            raise ValueError(f"tool_mask must hold 0/1 values, got {m!r} at position {j}")
        if m and start is None:
            start = j
        elif not m and start is not None:
            spans.append((start, j))
            start = None
    if start is not None:
        spans.append((start, len(tool_mask)))
    return spans


def _tool_groups(messages: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Consecutive runs of ``role == "tool"`` messages, in order."""
    groups: list[list[Mapping[str, Any]]] = []
    previous_tool = False
    for m in messages:
        is_tool = m.get("role") == "tool"
        if is_tool and not previous_tool:
            groups.append([])
        if is_tool:
            groups[-1].append(m)
        previous_tool = is_tool
    return groups


def _is_error(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, str) and content.startswith(TOOL_ERROR_PREFIX)


def rollout_turns(
    completion_ids: Sequence[int],
    tool_mask: Sequence[int] | None,
    completion: Any,
    stop_ids: Sequence[int],
) -> RolloutTurns:
    """Turns, turn kinds and truncation of one TRL rollout.

    Args:
        completion_ids: the rollout's completion token ids, unpadded.
        tool_mask: TRL's tool mask for exactly those ids (None: no tools, one turn).
        completion: TRL's decoded completion: a list of chat messages (assistant and tool
            messages, as the tool loop builds it) or a plain string.
        stop_ids: ids that end a finished completion (TRL's eos ids and the pad id).
    """
    n = len(completion_ids)
    if tool_mask is None:
        spans = [(0, n)] if n else []
    else:
        if len(tool_mask) != n:
            raise ValueError(f"tool_mask has {len(tool_mask)} entries for {n} completion ids")
        spans = model_turn_spans(tool_mask)
    no_stop = n == 0 or completion_ids[-1] not in set(stop_ids)
    kinds = ["search"] * max(len(spans) - 1, 0) + (["final"] if spans else [])
    ended_on_call = False
    if isinstance(completion, list) and completion:
        last = completion[-1]
        ended_on_call = last.get("role") == "tool" or bool(last.get("tool_calls"))
        groups = _tool_groups(completion)
        # every tool run in the ids is one group of tool messages
        tool_runs = 0 if tool_mask is None else len(model_turn_spans([1 - m for m in tool_mask]))
        if spans and tool_runs and len(groups) != tool_runs:
            raise ValueError(
                f"the completion has {len(groups)} groups of tool messages but its tool mask "
                f"{tool_runs} tool-output runs: the messages and the ids do not describe the "
                "same rollout"
            )
        for t in range(len(spans) - 1):
            if groups[t] and all(_is_error(m) for m in groups[t]):
                kinds[t] = "invalid"
    return RolloutTurns(tuple(spans), tuple(kinds), truncated=ended_on_call or no_stop)


def turn_token_advantages(
    spans: Sequence[Sequence[Span]], turn_returns: Tensor, width: int
) -> Tensor:
    """Per-token advantages (N, width): every token of turn t of rollout i gets R[i, t].

    ``spans[i]`` are rollout i's turn spans in completion coordinates (ascending,
    non-overlapping, within ``width``); tokens outside every span (tool output, padding)
    get 0. The broadcast itself is :func:`igpo_agent.algo.advantages.token_advantages`.
    """
    if turn_returns.dim() != 2 or turn_returns.shape[0] != len(spans):
        raise ValueError(
            f"turn_returns must be (N, T_max) with N = {len(spans)} rollouts, got "
            f"{tuple(turn_returns.shape)}"
        )
    token_turns = torch.full((len(spans), width), -1, dtype=torch.long)
    for i, row in enumerate(spans):
        if len(row) > turn_returns.shape[1]:
            raise ValueError(
                f"rollout {i} has {len(row)} turns but turn_returns only "
                f"{turn_returns.shape[1]} columns"
            )
        last = 0
        for t, (start, end) in enumerate(row):
            if not last <= start < end <= width:
                raise ValueError(
                    f"rollout {i}: span {t} = ({start}, {end}) must be non-empty, after the "
                    f"previous span and within the {width} completion columns"
                )
            token_turns[i, start:end] = t
            last = end
    return token_advantages(turn_returns.detach().cpu().float(), token_turns)


def outcome_with_penalty(
    rewards: Tensor | Sequence[float],
    rollouts: Sequence[RolloutTurns],
    format_penalty: float | None,
) -> Tensor:
    """Outcome r^O (N,): the reward functions' value, or ``format_penalty`` when malformed.

    ``format_penalty=None`` keeps the reward functions' value for every rollout. Every
    outcome must be finite (a rollout no reward function scored has no IGPO outcome).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32).detach().cpu()
    if r.shape != (len(rollouts),):
        raise ValueError(f"rewards must be ({len(rollouts)},), got {tuple(r.shape)}")
    if format_penalty is not None:
        bad = torch.tensor([ro.malformed for ro in rollouts], dtype=torch.bool)
        r = torch.where(bad, torch.full_like(r, float(format_penalty)), r)
    if not bool(torch.isfinite(r).all()):
        raise ValueError(
            f"every rollout needs a finite outcome reward, got {r.tolist()}: a reward function "
            "returned None/NaN for a rollout (IGPO has no outcome for it)"
        )
    return r


def trl_turn_advantages(
    values: Sequence[Sequence[float]],
    rollouts: Sequence[RolloutTurns],
    rewards: Tensor | Sequence[float],
    *,
    group_size: int | None = None,
    group_ids: Sequence[Hashable] | None = None,
    algo: str = "igpo",
    ig_mode: str = "log_prob_diff",
    norm: str = "separate",
    gamma: float = 1.0,
    ig_turns: str = "search",
    ig_weight: float = 1.0,
    ig_exclude_zero: bool = False,
    format_penalty: float | None = DEFAULT_FORMAT_PENALTY,
    exclude: Sequence[bool] | None = None,
) -> tuple[TurnAdvantages, Tensor]:
    """Per-turn IGPO advantages of a batch of TRL rollouts and their outcomes (N,).

    ``values[i]`` are rollout i's beliefs v_0..v_{T_i-1} (:func:`score_turn_beliefs`);
    ``rewards`` the reward functions' weighted sum per rollout. A rollout without a model
    token counts as one turn holding only its outcome (as in the learner). The knobs are
    ``TrainConfig``'s (see docs/ALGORITHM.md); the callers pass its defaults.

    ``exclude[i]`` leaves rollout i out, as the learner's ``compute_advantages(exclude=)``
    does: out of its group's normalisation, advantages 0; its reward may be NaN (a rollout
    no reward function scored, e.g. ``answer_reward``'s None after a failed backend search)
    and its outcome is reported as 0.
    """
    if ig_turns not in IG_TURNS:
        raise ValueError(f"ig_turns must be one of {IG_TURNS}, got {ig_turns!r}")
    if len(values) != len(rollouts):
        raise ValueError(f"{len(values)} value rows for {len(rollouts)} rollouts")
    for i, (v, ro) in enumerate(zip(values, rollouts, strict=True)):
        if len(v) != ro.num_turns:
            raise ValueError(f"rollout {i}: {len(v)} belief values for {ro.num_turns} turns")
    flags = [False] * len(rollouts) if exclude is None else [bool(x) for x in exclude]
    if len(flags) != len(rollouts):
        raise ValueError(f"exclude has {len(flags)} entries for {len(rollouts)} rollouts")
    r = torch.as_tensor(rewards, dtype=torch.float32).detach().cpu()
    if any(flags) and r.shape == (len(flags),):  # placeholders; zeroed below
        r = torch.where(torch.tensor(flags), torch.zeros_like(r), r)
    outcome = outcome_with_penalty(r, rollouts, format_penalty)
    if any(flags):
        outcome = torch.where(torch.tensor(flags), torch.zeros_like(outcome), outcome)
        group_ids, group_size = exclusion_groups(flags, group_ids, group_size), None
    t_max = max([max(ro.num_turns, 1) for ro in rollouts], default=1)
    matrix = torch.zeros(len(rollouts), t_max)
    eligible = torch.zeros(len(rollouts), t_max, dtype=torch.bool)
    for i, (v, ro) in enumerate(zip(values, rollouts, strict=True)):
        matrix[i, : len(v)] = torch.tensor([float(x) for x in v])
        for t, kind in enumerate(ro.kinds):
            eligible[i, t] = kind == "search"
    adv = group_advantages(
        matrix,
        [max(ro.num_turns, 1) for ro in rollouts],
        outcome,
        group_ids=group_ids,
        group_size=group_size,
        algo=algo,  # type: ignore[arg-type]
        ig_mode=ig_mode,  # type: ignore[arg-type]
        norm=norm,  # type: ignore[arg-type]
        gamma=gamma,
        ig_turns=eligible if ig_turns == "search" else None,
        ig_weight=ig_weight,
        ig_exclude_zero=ig_exclude_zero,
    )
    return (zero_rows(adv, flags) if any(flags) else adv), outcome


def score_turn_beliefs(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    rollouts: Sequence[RolloutTurns],
    golds: Sequence[str],
    *,
    answer_prefix: str,
    answer_suffix: str,
    method: str = "packed",
) -> list[list[float]]:
    """Belief values v_t (ALGORITHM "Turn reward") of each TRL rollout under ``model``.

    v_t is the mean log-prob of ``golds[i]`` teacher-forced inside
    ``answer_prefix``/``answer_suffix`` after ``prompt_ids[i] + completion_ids[i]`` cut at
    turn t's start; scored with :func:`igpo_agent.ig.beliefs.reencoded_beliefs` (no gradient,
    eval mode, the training flag restored). Rollouts without a model turn get ``[]``.
    """
    n = len(rollouts)
    if not len(prompt_ids) == len(completion_ids) == len(golds) == n:
        raise ValueError(
            f"prompt_ids ({len(prompt_ids)}), completion_ids ({len(completion_ids)}), golds "
            f"({len(golds)}) and rollouts ({n}) must have one entry per rollout"
        )
    specs: dict[str, GoldSpec] = {}
    live = [i for i, ro in enumerate(rollouts) if ro.num_turns]
    for i in live:
        if not isinstance(golds[i], str) or not golds[i].strip():
            raise ValueError(f"rollout {i} needs a non-empty gold answer, got {golds[i]!r}")
        if golds[i] not in specs:
            specs[golds[i]] = gold_spec(tokenizer, golds[i], answer_prefix, answer_suffix)
    seqs = [list(prompt_ids[i]) + list(completion_ids[i]) for i in live]
    bounds = [rollouts[i].boundaries(len(prompt_ids[i])) for i in live]
    scored = reencoded_beliefs(
        model,
        seqs,
        bounds,
        [specs[golds[i]] for i in live],
        method=method,  # type: ignore[arg-type]
    )
    out: list[list[float]] = [[] for _ in rollouts]
    for i, row in zip(live, scored, strict=True):
        out[i] = [float(x) for x in row]
    return out
