"""Which sampled rollouts train (pure math): dynamic sampling's group filter and RFT's targets.

A batch holds groups of ``group_size`` adjacent rollouts of one question each (group k is
rows ``[k*G, (k+1)*G)``), as everywhere in :mod:`igpo_agent.algo.advantages`.

- **Dynamic sampling** (DAPO, Yu et al. 2025): sample more questions than a step trains on
  and keep the groups that carry a signal. A group whose G outcomes are all equal gives
  GRPO advantage 0 on every token; it costs a forward and a backward and, under a
  token-mean loss, dilutes the groups that do carry one. For IGPO a group with equal
  outcomes can still differ in IG, so "signal" is either the outcome contrast
  (``"outcome"``) or any non-zero advantage (``"advantage"``).
- **RFT** (rejection-sampling fine-tuning, the baseline a user tries before RL): keep the
  rollouts that score ``min_f1`` and take supervised steps on their agent tokens. With
  advantage 1 on every kept turn and the others out of the loss, the learner's first
  optimiser step on a batch is exactly the NLL gradient of the kept tokens (the PPO ratio
  is 1 there).

Only torch and typing: no model, env or I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "group_signal",
    "keep_groups",
    "group_rows",
    "rft_selected",
    "rft_returns",
]


def _groups(n: int, group_size: int) -> int:
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} rollouts do not split into groups of {group_size}")
    return n // group_size


def group_signal(
    outcome: Tensor,
    returns: Tensor,
    group_size: int,
    mode: str = "advantage",
    tol: float = 1e-8,
) -> list[bool]:
    """Whether each group carries a training signal: (num_groups,) bools.

    ``outcome`` (N,) raw outcome rewards; ``returns`` (N, T_max) per-turn advantages
    (0 on padding). ``mode="outcome"``: the group's outcomes are not all equal (max - min
    > ``tol``); ``"advantage"``: some rollout of the group has a turn with ``|R| > tol``.
    Naive equivalent (outcome): ``[max(g) - min(g) > tol for g in chunks(outcome, G)]``.
    """
    k = _groups(outcome.numel(), group_size)
    if returns.shape[0] != outcome.numel():
        raise ValueError(f"returns has {returns.shape[0]} rows, outcome {outcome.numel()}")
    if mode == "outcome":
        g = outcome.reshape(k, group_size)
        return [bool(x) for x in (g.max(1).values - g.min(1).values) > tol]
    if mode == "advantage":
        live = (returns.abs() > tol).reshape(k, -1)
        return [bool(x) for x in live.any(1)]
    raise ValueError(f"mode must be 'outcome' or 'advantage', got {mode!r}")


def keep_groups(signal: Sequence[bool], want: int) -> list[int]:
    """The first ``want`` groups (in sampled order) with a signal; fewer when fewer have one.

    The order is the sampler's, so which groups train is a function of the seed only.
    """
    if want < 0:
        raise ValueError(f"want must be >= 0, got {want}")
    return [k for k, s in enumerate(signal) if s][:want]


def group_rows(groups: Sequence[int], group_size: int) -> list[int]:
    """The row indices of ``groups`` (each ``[k*G, (k+1)*G)``), in order."""
    return [k * group_size + j for k in groups for j in range(group_size)]


def rft_selected(
    f1: Sequence[float], well_formed: Sequence[bool], min_f1: float = 1.0
) -> list[bool]:
    """RFT's rejection rule: a rollout is kept when it is well formed and answered with
    F1 >= ``min_f1`` (``min_f1`` in (0, 1]: an F1 of 0 is never a demonstration)."""
    if not 0.0 < min_f1 <= 1.0:
        raise ValueError(f"min_f1 must lie in (0, 1], got {min_f1}")
    if len(f1) != len(well_formed):
        raise ValueError(f"{len(f1)} F1 values for {len(well_formed)} format flags")
    return [bool(ok) and float(s) >= min_f1 - 1e-12 for s, ok in zip(f1, well_formed, strict=True)]


def rft_returns(turn_mask: Tensor, selected: Sequence[bool]) -> Tensor:
    """(N, T_max) RFT advantages: 1 on every real turn of a kept rollout, 0 elsewhere."""
    if turn_mask.shape[0] != len(selected):
        raise ValueError(f"turn_mask has {turn_mask.shape[0]} rows, selected {len(selected)}")
    keep = torch.tensor([bool(s) for s in selected], dtype=torch.bool)[:, None]
    return (turn_mask.bool() & keep).to(torch.float32)
