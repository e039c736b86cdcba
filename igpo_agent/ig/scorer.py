"""One choice of belief scorer per run: the function train's loop calls for v_t.

``make_belief_scorer`` maps the resolved ``ig_method`` to a ``BeliefScorer``
``(trajectories, answer_prefix, answer_suffix) -> one list of T values per trajectory``,
the ``scorer`` :func:`igpo_agent.learn.learner.belief_matrix` takes:

- ``live``: the v_t each trajectory recorded during its rollout (the HF engine scored
  them from its KV cache through the :class:`~igpo_agent.ig.live.LiveBeliefHook` the
  trainer passed it);
- ``packed`` / ``naive``: re-encode the trajectories under the policy
  (:func:`igpo_agent.ig.beliefs.reencoded_trajectory_beliefs`);
- ``vllm``: the vLLM engine's ``prompt_logprobs``
  (:func:`igpo_agent.ig.vllm_beliefs.vllm_trajectory_beliefs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from igpo_agent.ig.beliefs import reencoded_trajectory_beliefs
from igpo_agent.ig.live import recorded_beliefs
from igpo_agent.ig.vllm_beliefs import vllm_trajectory_beliefs
from igpo_agent.rollout.engines import VLLMRollouts

__all__ = ["BeliefScorer", "make_belief_scorer"]

BeliefScorer = Callable[[Sequence[Any], str, str], list[list[float]]]


def make_belief_scorer(method: str, policy: Any, engine: Any = None) -> BeliefScorer:
    """The scorer of ``method`` (``live``, ``packed``, ``naive`` or ``vllm``).

    ``live`` needs rollouts made with a :class:`~igpo_agent.ig.live.LiveBeliefHook`; ``vllm`` needs ``engine`` to be
    the vLLM engine (:class:`~igpo_agent.rollout.engines.VLLMRollouts`).
    """
    if method == "live":
        return recorded_beliefs
    if method in ("packed", "naive"):
        return partial(_reencoded, policy, method)
    if method == "vllm":
        if not isinstance(engine, VLLMRollouts):
            raise ValueError("ig_method=vllm scores through the vLLM engine: set engine=vllm too")
        return partial(_through_vllm, engine)
    raise ValueError(f"unknown ig_method {method!r}; choose live, packed, naive or vllm")


def _reencoded(
    policy: Any, method: str, trajs: Sequence[Any], answer_prefix: str, answer_suffix: str
) -> list[list[float]]:
    return reencoded_trajectory_beliefs(policy, trajs, answer_prefix, answer_suffix, method=method)


def _through_vllm(
    rollouts: VLLMRollouts, trajs: Sequence[Any], answer_prefix: str, answer_suffix: str
) -> list[list[float]]:
    return vllm_trajectory_beliefs(rollouts.engine, trajs, answer_prefix, answer_suffix)
