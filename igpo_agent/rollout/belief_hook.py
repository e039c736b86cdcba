"""The one hook through which the rollout records belief values: :class:`BeliefHook`.

Live IG (``ig_method="live"``) scores the gold answer at the start of every turn from the
KV cache the turn's prefill just built, so it has to run inside the episode loop. The
loop knows nothing of information gain: the caller (the trainer) builds a hook from
``ig/`` (:class:`igpo_agent.ig.live.LiveBeliefHook`) and passes it to
:func:`igpo_agent.rollout.episodes.rollout_batch`; without one no beliefs are recorded.
``rollout/`` never imports ``ig/`` (``tests/igpo_agent/test_layout.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

__all__ = ["BeliefHook"]


class BeliefHook(Protocol):
    """What the episode loop calls to record ``Trajectory.beliefs`` (one value per turn).

    ``gold`` runs once per episode, right after ``env.reset``, and returns what that
    episode is scored against (for live IG a :class:`~igpo_agent.ig.gold.GoldSpec`; the
    loop never looks inside it). ``after_prefill`` is the sampler's
    :data:`~igpo_agent.rollout.sampling.PrefillHook`: after each turn's prefill it gets the
    batch's cache and every row's ``gold`` (None for rows not scored) and returns one value
    per row plus the tokens it fed; it must leave the cache as it found it.
    """

    def gold(self, answers: list[str], info: dict[str, Any]) -> Any:
        """What an episode with these gold ``answers`` and reset ``info`` is scored on."""
        ...

    def after_prefill(
        self,
        model: torch.nn.Module,
        kv: Any,
        mask: torch.Tensor,
        next_pos: torch.Tensor,
        last_logits: torch.Tensor,
        golds: Sequence[Any],
    ) -> tuple[list[float | None], int]:
        """One value per batch row (None where its gold is None) and the tokens fed."""
        ...
