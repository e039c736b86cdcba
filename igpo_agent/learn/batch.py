"""The rows of a step's rollouts that train, and their advantages: dynamic sampling and RFT.

The loop samples ``questions_per_step`` questions (``x oversample`` with dynamic sampling),
rolls out G episodes of each and computes the advantages of the whole batch
(:func:`igpo_agent.learn.learner.compute_advantages`; group-local, so a group's
advantages do not depend on which other groups train). :func:`training_rows` then says
which rollouts go into the update:

- ``algo="rft"``: every real turn of a rollout that scores ``rft_min_f1`` gets advantage 1;
  the others leave the loss (and its token count), so the step is the supervised step on
  the kept tokens (:func:`igpo_agent.algo.selection.rft_returns`).
- ``dynamic="outcome"|"advantage"``: the first ``want`` groups with a signal are kept
  (:func:`igpo_agent.algo.selection.group_signal`); the rest are dropped from the batch.
- rollouts flagged in ``exclude`` (a failed search) stay out of the loss, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from igpo_agent.algo.selection import (
    group_rows,
    group_signal,
    keep_groups,
    rft_returns,
    rft_selected,
)
from igpo_agent.rollout.trajectory import Trajectory


@dataclass
class TrainingRows:
    """What the update gets: ``rows`` of the sampled batch, their ``returns`` (len(rows),
    T_max) and ``exclude`` flags, and counts for the step's metrics."""

    rows: list[int]
    returns: Tensor
    exclude: list[bool]
    signal_groups: int  # sampled groups with a signal (all groups without dynamic sampling)
    kept_groups: int  # groups in the update
    rft_kept: int  # rollouts RFT imitates (0 unless algo="rft")


def well_formed(t: Trajectory) -> bool:
    """An episode that ended in a parsed answer, within its token and turn budgets."""
    return bool(t.format_ok and t.answered and not (t.truncated or t.context_truncated))


def training_rows(
    trajs: Sequence[Trajectory],
    returns: Tensor,
    outcome: Tensor,
    *,
    group_size: int,
    algo: str,
    dynamic: str = "off",
    want: int | None = None,
    rft_min_f1: float = 1.0,
    exclude: Sequence[bool] | None = None,
) -> TrainingRows:
    """Select the rows that train (see the module docstring); ``want`` groups at most
    (``None``: all of them)."""
    n = len(trajs)
    if returns.shape[0] != n or outcome.numel() != n:
        raise ValueError(
            f"{n} rollouts, {returns.shape[0]} return rows, {outcome.numel()} outcomes"
        )
    flags = [False] * n if exclude is None else [bool(x) for x in exclude]
    if algo == "rft":
        chosen = rft_selected(
            [t.answer_metrics.get("f1", 0.0) for t in trajs],
            [well_formed(t) for t in trajs],
            rft_min_f1,
        )
        chosen = [c and not x for c, x in zip(chosen, flags, strict=True)]
        returns = _rft(returns, trajs, chosen)
        flags = [x or not c for c, x in zip(chosen, flags, strict=True)]
    groups = n // group_size
    want = groups if want is None else want
    if dynamic == "off":
        signal = [True] * groups
    else:
        signal = group_signal(outcome, returns, group_size, dynamic)
    kept = keep_groups(signal, want)
    rows = group_rows(kept, group_size)
    return TrainingRows(
        rows=rows,
        returns=returns[rows],
        exclude=[flags[i] for i in rows],
        signal_groups=sum(signal),
        kept_groups=len(kept),
        rft_kept=sum(not flags[i] for i in rows) if algo == "rft" else 0,
    )


def _rft(returns: Tensor, trajs: Sequence[Trajectory], chosen: Sequence[bool]) -> Tensor:
    """RFT advantages on the batch's (N, T_max) grid: 1 on each real turn of a kept rollout."""
    t_max = returns.shape[1]
    turns = torch.tensor([max(t.num_turns, 1) for t in trajs])
    mask = torch.arange(t_max)[None, :] < turns[:, None]
    return rft_returns(mask, chosen).to(returns.dtype)
