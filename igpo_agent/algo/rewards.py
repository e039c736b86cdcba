"""Raw per-turn rewards of a rollout: information gain and the outcome slot (pure math).

ALGORITHM "Turn reward" and "Outcome reward". A group of N rollouts is held as padded
tensors of shape (N, T_max) plus ``num_turns`` (N,): rollout ``i`` has ``T_i >= 1`` agent
turns, indexed 0..T_i-1 (0-based, as in ``Trajectory.spans``). Padded slots are ignored
and come back as 0.

Conventions (the learner's, see ``igpo_agent/rollout/trajectory.py``):

- ``values[i, t]`` = v_t, the belief (mean gold-answer log-prob) scored at the boundary
  *before* turn t; v_0 is scored after the prompt alone. A rollout of T turns has T values.
- Turn t < T-1 ended in a search (or an invalid action answered by a corrective
  observation) and gets the information gain ``f(v_{t+1}) - f(v_t)`` with f = identity
  (``log_prob_diff``, paper v2 default) or f = exp (``prob_diff``, paper v1).
- The last turn T-1 gets the outcome slot instead (no IG), see :func:`outcome_rewards`.
- A non-finite IG (NaN, or +-inf from a -inf belief) becomes 0 (spec: "A NaN IG becomes
  0"); it still counts as an IG value in the group normalisation pool.

This module imports only torch and typing: no model, env or I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from igpo_agent.choices import DEFAULT_FORMAT_PENALTY, Algo, IGMode, choices

IG_MODES = choices(IGMode)
ALGOS = choices(Algo)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {choices}")


def _as_num_turns(num_turns: Tensor | Sequence[int], device: torch.device | None) -> Tensor:
    n = torch.as_tensor(num_turns, dtype=torch.long, device=device)
    if n.dim() != 1:
        raise ValueError(f"num_turns must be 1-D (N,), got shape {tuple(n.shape)}")
    if n.numel() and int(n.min()) < 1:
        raise ValueError(
            "every rollout needs num_turns >= 1 (a rollout with no agent turn has nothing "
            f"to train on: drop it before computing rewards); got {n.tolist()}"
        )
    return n


def turn_mask(num_turns: Tensor, t_max: int) -> Tensor:
    """Bool (N, T_max): True for the real turns t < T_i of each rollout."""
    idx = torch.arange(t_max, device=num_turns.device)  # (T_max,)
    return idx[None, :] < num_turns[:, None]


def ig_mask(num_turns: Tensor, t_max: int) -> Tensor:
    """Bool (N, T_max): True for turns that get an IG reward (t < T_i - 1)."""
    idx = torch.arange(t_max, device=num_turns.device)
    return idx[None, :] < (num_turns[:, None] - 1)


def outcome_mask(num_turns: Tensor, t_max: int) -> Tensor:
    """Bool (N, T_max): True at the last turn t = T_i - 1, which holds the outcome slot."""
    idx = torch.arange(t_max, device=num_turns.device)
    return idx[None, :] == (num_turns[:, None] - 1)


def pad_turn_values(
    values: Sequence[Sequence[float]], dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Pad per-rollout belief lists ``[[v_0..v_{T_i-1}], ...]`` into (N, T_max) + num_turns (N,).

    The list length is the rollout's number of turns T_i (one belief per turn boundary,
    v_0 before the first turn). Padding is NaN so that a padded slot read by mistake
    poisons the result instead of passing silently (the functions here never read it).
    """
    if len(values) == 0:
        raise ValueError("pad_turn_values needs at least one rollout")
    lengths = [len(v) for v in values]
    num_turns = _as_num_turns(lengths, None)
    t_max = max(lengths)
    out = torch.full((len(values), t_max), float("nan"), dtype=dtype)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.as_tensor(list(v), dtype=dtype)
    return out, num_turns


def info_gain_rewards(
    values: Tensor, num_turns: Tensor | Sequence[int], mode: IGMode = "log_prob_diff"
) -> Tensor:
    """IG turn rewards (N, T_max): ``r[i, t] = f(v[i, t+1]) - f(v[i, t])`` for t < T_i - 1.

    ALGORITHM "Turn reward": f = identity for ``log_prob_diff`` (r^IG_t = v_t - v_{t-1}
    in the paper's 1-based turns), f = exp for ``prob_diff``. Slots that get no IG (the
    last turn, padding) are 0; non-finite gains become 0.

    Naive equivalent::

        for i in range(N):
            for t in range(T_i - 1):
                g = f(values[i][t + 1]) - f(values[i][t])
                r[i][t] = g if math.isfinite(g) else 0.0
    """
    check_choice("ig_mode", mode, IG_MODES)
    if values.dim() != 2:
        raise ValueError(f"values must be (N, T_max), got shape {tuple(values.shape)}")
    n = _as_num_turns(num_turns, values.device)
    if n.shape[0] != values.shape[0]:
        raise ValueError(f"num_turns has {n.shape[0]} rollouts but values has {values.shape[0]}")
    t_max = values.shape[1]
    if n.numel() and int(n.max()) > t_max:
        raise ValueError(f"num_turns max {int(n.max())} exceeds values width T_max={t_max}")
    out = torch.zeros_like(values)
    if t_max < 2:
        return out
    f = values if mode == "log_prob_diff" else torch.exp(values)  # (N, T_max)
    gain = f[:, 1:] - f[:, :-1]  # (N, T_max - 1)
    keep = ig_mask(n, t_max)[:, :-1] & torch.isfinite(gain)
    out[:, :-1] = torch.where(keep, gain, torch.zeros_like(gain))
    return out


def outcome_rewards(
    f1: Tensor | Sequence[float],
    answered: Tensor | Sequence[bool],
    format_ok: Tensor | Sequence[bool],
    truncated: Tensor | Sequence[bool],
    format_penalty: float = DEFAULT_FORMAT_PENALTY,
) -> Tensor:
    """Outcome reward r^O per rollout (N,): answer F1 if answered and well-formed, else lambda_fmt.

    ALGORITHM "Outcome reward": a malformed trajectory gets ``format_penalty`` *instead of*
    F1 (the reference code's rule). A rollout truncated at the turn limit has F1 = 0 and
    gets "F1 = 0 plus the format penalty", i.e. ``0 + format_penalty = format_penalty``;
    so ``truncated`` overrides ``answered`` (the two never both hold for a valid rollout,
    and the penalty is never added on top of a positive F1).

    Naive equivalent::

        r = [f if (a and ok and not tr) else format_penalty
             for f, a, ok, tr in zip(f1, answered, format_ok, truncated)]
    """
    f = torch.as_tensor(f1, dtype=torch.float32) if not isinstance(f1, Tensor) else f1
    if f.dim() != 1:
        raise ValueError(f"f1 must be 1-D (N,), got shape {tuple(f.shape)}")
    flags = []
    for name, x in (("answered", answered), ("format_ok", format_ok), ("truncated", truncated)):
        b = torch.as_tensor(x, dtype=torch.bool, device=f.device)
        if b.shape != f.shape:
            raise ValueError(f"{name} has shape {tuple(b.shape)} but f1 has {tuple(f.shape)}")
        flags.append(b)
    ok = flags[0] & flags[1] & ~flags[2]
    bad_f1 = ok & ~((f >= 0) & (f <= 1))  # also catches NaN
    if bool(bad_f1.any()):
        raise ValueError(
            f"answer F1 must lie in [0, 1] for answered rollouts; got {f[bad_f1].tolist()} "
            "(check the env's answer scorer)"
        )
    return torch.where(ok, f, torch.full_like(f, float(format_penalty)))


@dataclass(frozen=True)
class TurnRewards:
    """Raw per-turn rewards of a group, all (N, T_max).

    ``rewards`` holds the IG value on IG turns and the outcome on the last turn;
    ``is_ig``/``is_outcome`` say which slot is which (disjoint; their union is
    ``turn_mask``). ``ig`` is the raw IG matrix (zeros under ``algo="grpo"`` too, so it
    can still be logged: it is computed either way).
    """

    rewards: Tensor
    is_ig: Tensor
    is_outcome: Tensor
    turn_mask: Tensor
    ig: Tensor


def turn_rewards(
    values: Tensor,
    num_turns: Tensor | Sequence[int],
    outcome: Tensor | Sequence[float],
    *,
    algo: Algo = "igpo",
    ig_mode: IGMode = "log_prob_diff",
    ig_turns: Tensor | None = None,
) -> TurnRewards:
    """Assemble raw per-turn rewards: IG on turns t < T_i - 1, outcome on turn T_i - 1.

    ``ig_turns`` (bool (N, T_max), optional) narrows the IG turns further: docs/ALGORITHM.md gives
    IG to "every turn that ends in a search", so the trainer passes its search turns and a
    malformed (invalid) turn before the last gets neither IG nor outcome: reward 0, outside
    the IG normalisation pool; its return is what the rest of its rollout earns (the
    format penalty included). None: every turn before the last gets IG.

    With ``algo="grpo"`` (the ablation, ALGORITHM "Advantage") IG is switched off: only the
    outcome slots are rewards and ``is_ig`` is all False; ``ig`` still holds the raw gains
    for logging.
    """
    check_choice("algo", algo, ALGOS)
    n = _as_num_turns(num_turns, values.device)
    ig = info_gain_rewards(values, n, ig_mode)  # (N, T_max)
    t_max = values.shape[1]
    out = torch.as_tensor(outcome, dtype=values.dtype, device=values.device)
    if out.shape != (values.shape[0],):
        raise ValueError(f"outcome must be (N,)=({values.shape[0]},), got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"outcome rewards must be finite, got {out.tolist()}")
    tm = turn_mask(n, t_max)
    is_out = outcome_mask(n, t_max)
    is_ig = ig_mask(n, t_max) if algo == "igpo" else torch.zeros_like(tm)
    if ig_turns is not None:
        if ig_turns.shape != is_ig.shape:
            raise ValueError(f"ig_turns must be (N, T_max)={tuple(is_ig.shape)}")
        is_ig = is_ig & ig_turns.to(device=is_ig.device, dtype=torch.bool)
    rewards = torch.where(is_out, out[:, None].expand_as(ig), torch.zeros_like(ig))
    rewards = torch.where(is_ig, ig, rewards)
    return TurnRewards(rewards=rewards, is_ig=is_ig, is_outcome=is_out, turn_mask=tm, ig=ig)


def mean_ig_per_turn(ig: Tensor, num_turns: Tensor | Sequence[int]) -> Tensor:
    """Mean raw IG at each turn index over the rollouts that have an IG there: (T_max,).

    For logging ("does turn 1's search raise the gold answer's probability?"). Indices
    with no IG value (e.g. the last column) are NaN, so a plot shows a gap, not a fake 0.
    """
    n = _as_num_turns(num_turns, ig.device)
    m = ig_mask(n, ig.shape[1]).to(ig.dtype)  # (N, T_max)
    count = m.sum(0)
    total = (ig * m).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
