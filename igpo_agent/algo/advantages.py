"""Group normalisation, discounted turn returns and the token broadcast (pure math).

ALGORITHM "Advantage". The G rollouts of one question form a group; a batch holds several
groups, named by ``group_ids`` (any labels, one per rollout) or by ``group_size`` (rows
``[k*G, (k+1)*G)`` are group k, i.e. the batch reshapes to (B, G)). Per group:

- ``separate`` (default): one z-normalisation over every IG value of every turn of every
  rollout (pooled over turn positions), another over the G outcome rewards.
- ``joint``: one z-normalisation over IG and outcome values together.
- z = (x - mean) / (std + eps), std the population std, eps = 1e-6. A pool with one value
  has std := 1 and still subtracts its mean, so its only value normalises to 0 (the
  reference code's rule: a lone value carries no group-relative signal). A group whose
  values are all equal normalises to 0 too (std = 0, numerator 0).
- Return R_{i,t} = sum_{k>=t} gamma^(k-t) * rnorm_{i,k} over the rollout's own turns.
- ``algo="grpo"``: IG is off and every turn of a rollout gets the normalised outcome
  (undiscounted: gamma does not apply), as in plain GRPO.

Each token generated in turn t gets R_{i,t} (:func:`token_advantages`); prompt and
observation tokens get 0 and are masked out of the loss by the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from igpo_agent.algo.rewards import ALGOS, Algo, IGMode, TurnRewards, check_choice, turn_rewards
from igpo_agent.choices import NormMode, choices

NORM_MODES = choices(NormMode)
DEFAULT_EPS = 1e-6


def group_index(
    n: int,
    group_ids: Tensor | Sequence[Hashable] | None = None,
    group_size: int | None = None,
    device: torch.device | None = None,
) -> tuple[Tensor, int]:
    """Map each of the N rollouts to a contiguous group number: (index (N,) long, num_groups).

    Give exactly one of ``group_ids`` (labels; groups numbered by first appearance) or
    ``group_size`` (N must be a multiple of it).
    """
    if (group_ids is None) == (group_size is None):
        raise ValueError("give exactly one of group_ids (a label per rollout) or group_size")
    if group_size is not None:
        if group_size < 1 or n % group_size:
            raise ValueError(
                f"batch of {n} rollouts is not a whole number of groups of size {group_size}; "
                "pass group_ids or make the batch size a multiple of the group size"
            )
        idx = torch.arange(n, device=device) // group_size
        return idx, n // group_size
    labels = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if len(labels) != n:
        raise ValueError(f"group_ids has {len(labels)} labels but there are {n} rollouts")
    numbering: dict[Hashable, int] = {}
    idx_list = [numbering.setdefault(g, len(numbering)) for g in labels]
    return torch.tensor(idx_list, dtype=torch.long, device=device), len(numbering)


def normalize_group(
    x: Tensor, mask: Tensor, index: Tensor, num_groups: int, eps: float = DEFAULT_EPS
) -> Tensor:
    """Z-normalise the masked-in entries of ``x`` (N, K) within each group; 0 elsewhere.

    ``index[i]`` is row i's group. All masked-in entries of all rows of a group form one
    pool (one mean, one population std); a pool of <= 1 value uses std 1 (module doc).

    Naive equivalent::

        for g in groups:
            pool = [x[i][k] for i in rows(g) for k in range(K) if mask[i][k]]
            mu = mean(pool); sd = pstdev(pool) if len(pool) > 1 else 1.0
            out[i][k] = (x[i][k] - mu) / (sd + eps) for the same (i, k)
    """
    m = mask.to(x.dtype)  # (N, K)
    zero = torch.zeros(num_groups, dtype=x.dtype, device=x.device)
    xs = torch.where(mask, x, torch.zeros_like(x))
    count = zero.index_add(0, index, m.sum(1))  # (num_groups,)
    mean = zero.index_add(0, index, xs.sum(1)) / count.clamp(min=1)
    dev = torch.where(mask, x - mean[index][:, None], torch.zeros_like(x))  # (N, K)
    var = zero.index_add(0, index, (dev * dev).sum(1)) / count.clamp(min=1)
    std = torch.where(count > 1, var.sqrt(), torch.ones_like(var))
    return dev / (std[index][:, None] + eps)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """R[i, t] = sum_{k >= t, mask[i, k]} gamma^(k-t) * rewards[i, k]; 0 where not mask.

    ``mask`` must be a prefix mask per row (the real turns). Vectorised over rollouts,
    one step per turn index from the end.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return torch.where(mask, out, torch.zeros_like(out))


@dataclass(frozen=True)
class TurnAdvantages:
    """Per-turn advantages of a batch of groups, all (N, T_max) unless said otherwise.

    - ``returns``: R_{i,t}, the advantage of every token of turn t (0 on padding).
    - ``normalized``: the group-normalised rewards rnorm_{i,t} (before the return sum).
    - ``raw``: the raw per-turn rewards (IG on IG turns, outcome on the last turn).
    - ``is_ig``/``is_outcome``/``turn_mask``: bool masks of the slots.
    - ``ig``: raw IG per turn (0 where none), kept for logging even under GRPO.
    - ``group``: (N,) long, the group number of each rollout.
    """

    returns: Tensor
    normalized: Tensor
    raw: Tensor
    is_ig: Tensor
    is_outcome: Tensor
    turn_mask: Tensor
    ig: Tensor
    group: Tensor


def normalize_turn_rewards(
    tr: TurnRewards,
    index: Tensor,
    num_groups: int,
    *,
    norm: NormMode = "separate",
    eps: float = DEFAULT_EPS,
    ig_weight: float = 1.0,
    ig_exclude_zero: bool = False,
) -> Tensor:
    """Group-normalise assembled turn rewards (``separate`` or ``joint``): (N, T_max).

    ``ig_exclude_zero`` (reference code, Feb 2026): IG values that are exactly 0 stay out
    of the normalisation pool and normalise to 0. ``ig_weight`` multiplies the normalised
    IG values (the outcome's weight stays 1), the knob a schedule over training moves.
    """
    check_choice("norm", norm, NORM_MODES)
    is_ig = tr.is_ig & (tr.rewards != 0) if ig_exclude_zero else tr.is_ig
    if norm == "joint":
        normed = normalize_group(tr.rewards, is_ig | tr.is_outcome, index, num_groups, eps)
        ig_n = normed
    else:
        ig_n = normalize_group(tr.rewards, is_ig, index, num_groups, eps)
        normed = normalize_group(tr.rewards, tr.is_outcome, index, num_groups, eps)
    ig_n = torch.where(is_ig, ig_n * ig_weight, torch.zeros_like(ig_n))
    return torch.where(tr.is_ig, ig_n, normed)


def all_equal_group_share(outcome: Tensor, group_size: int, tol: float = 1e-8) -> float:
    """Share of groups whose G outcome rewards are all equal: GRPO gets no signal from them.

    ``outcome`` (N,) holds the raw outcome rewards, rows ``[k*G, (k+1)*G)`` forming group k.
    Naive equivalent: ``mean([max(g) - min(g) <= tol for g in chunks(outcome, G)])``.
    """
    if outcome.dim() != 1 or group_size < 1 or outcome.numel() % group_size:
        raise ValueError(
            f"outcome must be (N,) with N a multiple of group_size={group_size}; "
            f"got {tuple(outcome.shape)}"
        )
    if outcome.numel() == 0:
        return float("nan")
    g = outcome.view(-1, group_size)  # (B, G)
    return float(((g.max(1).values - g.min(1).values) <= tol).float().mean())


def nonzero_token_share(turn_returns: Tensor, turn_tokens: Tensor, tol: float = 1e-8) -> float:
    """Share of trained tokens whose advantage is non-zero (``|R_{i,t}| > tol``).

    ``turn_tokens[i, t]`` is the number of tokens the agent generated in turn t of rollout
    i (0 on padding); every one of them gets ``turn_returns[i, t]``. NaN with no tokens.
    Naive equivalent: the fraction of ``token_advantages(...)[action_mask]`` that is non-zero.
    """
    if turn_returns.shape != turn_tokens.shape:
        raise ValueError(
            f"turn_returns {tuple(turn_returns.shape)} and turn_tokens "
            f"{tuple(turn_tokens.shape)} must have the same (N, T_max) shape"
        )
    total = float(turn_tokens.sum())
    if total == 0:
        return float("nan")
    live = (turn_returns.abs() > tol).to(turn_tokens.dtype)
    return float((live * turn_tokens).sum()) / total


def group_advantages(
    values: Tensor,
    num_turns: Tensor | Sequence[int],
    outcome: Tensor | Sequence[float],
    *,
    group_ids: Tensor | Sequence[Hashable] | None = None,
    group_size: int | None = None,
    algo: Algo = "igpo",
    ig_mode: IGMode = "log_prob_diff",
    norm: NormMode = "separate",
    gamma: float = 1.0,
    eps: float = DEFAULT_EPS,
    ig_turns: Tensor | None = None,
    ig_weight: float = 1.0,
    ig_exclude_zero: bool = False,
) -> TurnAdvantages:
    """Per-turn advantages R_{i,t} for a batch of groups (ALGORITHM "Advantage").

    Args:
        values: (N, T_max) beliefs v_0..v_{T_i-1} per rollout (padding ignored), see
            :mod:`igpo_agent.algo.rewards`.
        num_turns: (N,) T_i >= 1.
        outcome: (N,) raw outcome rewards from :func:`igpo_agent.algo.rewards.outcome_rewards`.
        group_ids / group_size: which rollouts share a question (exactly one of them).
        algo: ``"igpo"`` or ``"grpo"`` (IG off, every turn gets the normalised outcome).
        ig_mode: ``"log_prob_diff"`` or ``"prob_diff"``.
        norm: ``"separate"`` or ``"joint"``.
        gamma: discount over turns, in [0, 1] (ignored by ``grpo``).
        ig_turns: optional bool (N, T_max), the turns eligible for IG (e.g. the searches);
            see :func:`igpo_agent.algo.rewards.turn_rewards`.
        ig_weight, ig_exclude_zero: see :func:`normalize_turn_rewards` (defaults: off).
    """
    check_choice("algo", algo, ALGOS)
    check_choice("norm", norm, NORM_MODES)
    tr = turn_rewards(values, num_turns, outcome, algo=algo, ig_mode=ig_mode, ig_turns=ig_turns)
    index, num_groups = group_index(values.shape[0], group_ids, group_size, values.device)
    normed = normalize_turn_rewards(
        tr,
        index,
        num_groups,
        norm=norm,
        eps=eps,
        ig_weight=ig_weight,
        ig_exclude_zero=ig_exclude_zero,
    )
    if algo == "grpo":
        final = (normed * tr.is_outcome.to(normed.dtype)).sum(1)  # (N,) normalised outcome
        returns = torch.where(tr.turn_mask, final[:, None].expand_as(normed), 0.0)
    else:
        returns = discounted_returns(normed, tr.turn_mask, gamma)
    return TurnAdvantages(
        returns=returns,
        normalized=normed,
        raw=tr.rewards,
        is_ig=tr.is_ig,
        is_outcome=tr.is_outcome,
        turn_mask=tr.turn_mask,
        ig=tr.ig,
        group=index,
    )


def exclusion_groups(
    exclude: Sequence[bool],
    group_ids: Tensor | Sequence[Hashable] | None = None,
    group_size: int | None = None,
) -> list[Hashable]:
    """Group labels (for ``group_advantages(group_ids=...)``) that take the rollouts flagged
    in ``exclude`` out of their groups: each becomes a group of its own, so it neither
    shifts nor scales the others' normalisation; the rest keep the groups given by
    ``group_ids`` or ``group_size``. Zero the excluded rows afterwards (:func:`zero_rows`):
    a lone rollout's pooled IG values would otherwise normalise among themselves."""
    index, _ = group_index(len(exclude), group_ids, group_size)
    labels = index.tolist()
    return [("excluded", i) if x else labels[i] for i, x in enumerate(exclude)]


def zero_rows(adv: TurnAdvantages, exclude: Sequence[bool]) -> TurnAdvantages:
    """``adv`` with the flagged rollouts' ``returns`` and ``normalized`` set to 0 (their raw
    rewards and IG are kept for logging)."""
    keep = torch.tensor([not x for x in exclude], dtype=adv.returns.dtype)[:, None]
    return dataclasses.replace(adv, returns=adv.returns * keep, normalized=adv.normalized * keep)


def token_advantages(turn_returns: Tensor, token_turns: Tensor) -> Tensor:
    """Broadcast each turn's return to that turn's generated tokens: (N, L).

    ``token_turns[i, j]`` is the 0-based turn of token j of rollout i, or -1 for prompt,
    observation and padding tokens (``Trajectory.token_turns()``); those get 0.

    Naive equivalent::

        adv[i][j] = turn_returns[i][token_turns[i][j]] if token_turns[i][j] >= 0 else 0.0
    """
    if turn_returns.dim() != 2 or token_turns.dim() != 2:
        raise ValueError(
            f"need turn_returns (N, T_max) and token_turns (N, L); got "
            f"{tuple(turn_returns.shape)} and {tuple(token_turns.shape)}"
        )
    if token_turns.shape[0] != turn_returns.shape[0]:
        raise ValueError(
            f"token_turns has {token_turns.shape[0]} rows, turn_returns {turn_returns.shape[0]}"
        )
    tt = token_turns.long()
    if tt.numel() and int(tt.max()) >= turn_returns.shape[1]:
        raise ValueError(
            f"token_turns names turn {int(tt.max())} but turn_returns has only "
            f"{turn_returns.shape[1]} turn columns: the rollout's spans and its turn count disagree"
        )
    if tt.numel() and int(tt.min()) < -1:
        raise ValueError("token_turns must be >= -1 (-1 marks prompt/observation tokens)")
    gathered = turn_returns.gather(1, tt.clamp(min=0))  # (N, L)
    return torch.where(tt >= 0, gathered, torch.zeros_like(gathered))
