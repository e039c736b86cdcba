"""Rollout engines behind one small interface, :class:`Engine`: ``hf`` (transformers,
default) or ``vllm``.

Both record the same :class:`~igpo_agent.rollout.trajectory.Trajectory` (same spans, same fields);
the learner always computes the training log-probs with the HF model, as verl does. The
vLLM engine needs the separate environment of ``docs/VLLM.md`` and is imported only when
asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.rollout.belief_hook import BeliefHook
from igpo_agent.rollout.episodes import RolloutStats, rollout_batch
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Trajectory


@runtime_checkable
class Engine(Protocol):
    """What train, sft and evaluate call on a rollout engine (the one place it is written).

    ``rollout`` plays ``group_size`` episodes per task and returns their
    :class:`~igpo_agent.rollout.trajectory.Trajectory` records (task-major); ``stats``, when
    given, accumulates the rollout's counters. ``belief_hook`` (built by the caller from
    ``ig/``, :class:`igpo_agent.ig.live.LiveBeliefHook`) asks for v_t recorded from the live
    KV cache (``ig_method="live"``); an engine that cannot do that raises.
    ``sync_weights`` makes the engine generate with ``policy``'s current weights and returns
    the seconds it took. ``ig_method="vllm"`` scores beliefs through the vLLM engine's
    ``prompt_logprobs`` (:mod:`igpo_agent.ig.vllm_beliefs`); that is not part of this
    interface.
    """

    name: str

    def sync_weights(self, policy: Any) -> float: ...

    def rollout(
        self,
        envs: Sequence[Any],
        tasks: Sequence[dict[str, Any]],
        *,
        protocol: str,
        group_size: int,
        settings: GenerationSettings,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        stats: RolloutStats | None = None,
        belief_hook: BeliefHook | None = None,
    ) -> list[Trajectory]: ...


class HFEngine(Engine):
    """Generation with the policy's own transformers model (batched, KV cache across turns)."""

    name = "hf"

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def sync_weights(self, policy: Any) -> float:
        """Nothing to do: the engine is the policy itself."""
        return 0.0

    def rollout(
        self,
        envs: Sequence[Any],
        tasks: Sequence[dict[str, Any]],
        *,
        protocol: str,
        group_size: int,
        settings: GenerationSettings,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        stats: RolloutStats | None = None,
        belief_hook: BeliefHook | None = None,
    ) -> list[Trajectory]:
        """``rollout_batch`` over the policy's model (see :mod:`igpo_agent.rollout.episodes`);
        ``belief_hook`` records v_t from the live KV cache (``ig_method="live"``)."""
        return rollout_batch(
            self.policy.model,
            self.policy.tokenizer,
            policy_prompt_fn(self.policy, protocol),
            envs,
            tasks,
            group_size=group_size,
            settings=settings,
            generator=generator,
            seed=seed,
            stats=stats,
            belief_hook=belief_hook,
        )


class VLLMRollouts(Engine):
    """The vLLM engine (:class:`igpo_agent.rollout.vllm_engine.VLLMEngine`) behind the same calls.

    Sampling randomness is the engine's own (its seed), so ``generator`` is unused; the
    policy's weights reach the engine through :meth:`sync_weights` after every update.
    """

    name = "vllm"

    def __init__(self, policy: Any, *, dtype: str, threads: int | None, seed: int, **kw: Any):
        from igpo_agent.rollout.vllm_engine import VLLMEngine

        self.policy = policy
        self.engine = VLLMEngine(policy.name, dtype=dtype, threads=threads, seed=seed, **kw)

    def sync_weights(self, policy: Any) -> float:
        """Push the policy's current weights (LoRA merged) into the engine; seconds taken."""
        return self.engine.sync_weights(policy)

    def rollout(
        self,
        envs: Sequence[Any],
        tasks: Sequence[dict[str, Any]],
        *,
        protocol: str,
        group_size: int,
        settings: GenerationSettings,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        stats: RolloutStats | None = None,
        belief_hook: BeliefHook | None = None,
    ) -> list[Trajectory]:
        """``VLLMEngine.rollout_batch`` with the policy's prompt template."""
        if belief_hook is not None:
            raise ValueError(
                "the vLLM engine does not score beliefs during the rollout: "
                "use ig_method=vllm or packed"
            )
        return self.engine.rollout_batch(
            policy_prompt_fn(self.policy, protocol),
            envs,
            tasks,
            group_size=group_size,
            settings=settings,
            seed=seed,
            stats=stats,
        )


def make_engine(
    name: str, policy: Any, *, seed: int = 0, dtype: str = "bfloat16", threads: int | None = None
) -> Engine:
    """``"hf"`` or ``"vllm"``; the vLLM one is synced with the policy before it is returned."""
    if name == "hf":
        return HFEngine(policy)
    if name == "vllm":
        engine = VLLMRollouts(policy, dtype=dtype, threads=threads, seed=seed)
        engine.sync_weights(policy)
        return engine
    raise ValueError(f"unknown engine {name!r}; choose 'hf' or 'vllm'")
