"""Belief values v_t through a vLLM engine's ``prompt_logprobs`` (``ig_method="vllm"``).

The same quantity as :func:`igpo_agent.ig.beliefs.reencoded_beliefs` (mean log-prob of the
gold's tokens after ``token_ids[:b_t]`` and the answer wrapper's prefix), read from the
prompt log-probs of :class:`igpo_agent.rollout.vllm_engine.VLLMEngine`, which only
samples and scores tokens and knows nothing of IG. This module never imports ``vllm``:
any object with that ``prompt_logprobs`` (and, for the trajectory form, a ``tokenizer``)
is scored the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from igpo_agent.ig.beliefs import validate_inputs
from igpo_agent.ig.gold import GoldSpec, trajectory_gold_specs

__all__ = ["PromptScorer", "vllm_beliefs", "vllm_trajectory_beliefs"]


class PromptScorer(Protocol):
    """What these functions call on the engine (``VLLMEngine`` has both)."""

    tokenizer: Any

    def prompt_logprobs(
        self, seqs: Sequence[Sequence[int]], *, read_prefix_cache: bool = False
    ) -> list[list[float]]: ...


def vllm_beliefs(
    engine: PromptScorer,
    seqs: Sequence[Sequence[int]],
    boundaries: Sequence[Sequence[int]],
    golds: Sequence[GoldSpec],
) -> list[list[float]]:
    """v_t for every boundary, as :func:`igpo_agent.ig.beliefs.reencoded_beliefs` defines it.

    One scoring prompt per (trajectory, boundary): ``seq[:b_t] + wrapper[:last scored + 1]``;
    ``v_t`` is the mean prompt log-prob of the gold's tokens. Identical prompts (the G
    rollouts of a question share b_0) are scored once; all go in one ``generate`` call.
    The prefix cache is read (the history is shared across boundaries); a value whose gold
    position fell inside the cached part (vLLM leaves those unset) is rescored without it.
    """
    validate_inputs(seqs, boundaries, golds)
    prompts: dict[tuple[int, ...], int] = {}
    where: list[list[tuple[int, list[int]]]] = []
    for seq, bounds, gold in zip(seqs, boundaries, golds, strict=True):
        row = []
        for b in bounds:
            prompt = tuple(int(t) for t in seq[:b]) + gold.ids[: gold.scored[-1] + 1]
            idx = prompts.setdefault(prompt, len(prompts))
            row.append((idx, [b + j for j in gold.scored]))
        where.append(row)
    unique = [list(p) for p in prompts]
    scored = engine.prompt_logprobs(unique, read_prefix_cache=True) if unique else []
    redo = sorted(
        {
            idx
            for row in where
            for idx, pos in row
            if any(scored[idx][p] != scored[idx][p] for p in pos)
        }
    )
    if redo:
        fresh = engine.prompt_logprobs([unique[i] for i in redo], read_prefix_cache=False)
        for i, values in zip(redo, fresh, strict=True):
            scored[i] = values
    return [[sum(scored[idx][p] for p in pos) / len(pos) for idx, pos in row] for row in where]


def vllm_trajectory_beliefs(
    engine: PromptScorer, trajectories: Sequence[Any], answer_prefix: str, answer_suffix: str
) -> list[list[float]]:
    """:func:`igpo_agent.ig.beliefs.reencoded_trajectory_beliefs`'s contract through
    ``engine``: each trajectory's first gold alias at its ``boundaries()``, tokenised with
    the engine's (HF) tokenizer."""
    return vllm_beliefs(
        engine,
        [tr.token_ids for tr in trajectories],
        [tr.boundaries() for tr in trajectories],
        trajectory_gold_specs(engine.tokenizer, trajectories, answer_prefix, answer_suffix),
    )
