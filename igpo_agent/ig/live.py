"""Belief values v_t scored from the rollout's live KV cache (``ig_method="live"``).

At the start of turn t the rollout has just prefilled everything before the turn, so its
KV cache holds exactly the prefix ``token_ids[:b_t]`` of ALGORITHM "Turn reward". Scoring
the gold answer there costs only the answer wrapper's few tokens:

1. the prefill's last-position logits (already computed, they are also the ones the first
   action token is sampled from) predict the wrapper's first token;
2. one extra forward feeds ``answer_prefix + gold[:-1]`` (``GoldSpec.ids[:context_len]``)
   on top of the cache, with position ids continuing from b_t;
3. the cache is cropped back, so the turn's sampling sees exactly what it would have seen
   without scoring.

:class:`LiveBeliefHook` is what the trainer hands the rollout
(:class:`igpo_agent.rollout.belief_hook.BeliefHook`): its ``gold`` builds each episode's
:class:`~igpo_agent.ig.gold.GoldSpec` from the env's answer wrapper, its ``after_prefill``
is :func:`score_after_prefill`, which the sampler calls after each prefill. The rollout
never imports this module: ``ig/`` imports ``rollout/`` and ``model/``, not the reverse.

This is the same quantity as :func:`igpo_agent.ig.beliefs.reencoded_beliefs` (mean log-prob of
the gold tokens after the prefix and the wrapper, under the rollout policy pi_old, no
gradient), tested equal to its naive and packed paths. The model reads ~10 extra tokens
per episode per turn instead of re-encoding the trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from igpo_agent.ig.gold import GoldSpec, gold_logprob_mean, gold_spec
from igpo_agent.model.kv_cache import cache_is_reusable
from igpo_agent.model.loading import with_cache

__all__ = ["LiveBeliefHook", "recorded_beliefs", "score_after_prefill", "score_on_cache"]


@torch.no_grad()
def score_on_cache(
    model: torch.nn.Module,
    kv: Any,
    mask: torch.Tensor,
    next_pos: torch.Tensor,
    last_logits: torch.Tensor,
    golds: Sequence[GoldSpec | None],
) -> list[float | None]:
    """v_t of every batch row whose ``golds`` entry is set; the cache is left as it was.

    Args:
        model: the causal LM that built ``kv`` (eval mode).
        kv: the batch's ``DynamicCache`` right after the prefill (B rows, S columns).
        mask: the (B, S) 0/1 attention mask of those columns (pads are 0).
        next_pos: (B,) the position id of each row's next token, i.e. b_t.
        last_logits: (B, V) logits at each row's last prefilled token.
        golds: one ``GoldSpec`` (or None: not scored) per row.

    Returns:
        One value per row: the mean log-prob of the gold's scored tokens, None where
        ``golds`` is None.
    """
    bsz = len(golds)
    if bsz != mask.shape[0] or bsz != last_logits.shape[0]:
        raise ValueError(f"{bsz} golds for a batch of {mask.shape[0]} rows")
    width = max((g.context_len for g in golds if g is not None), default=0)
    wrap_logits = None
    if width:
        device = mask.device
        ids = torch.zeros((bsz, width), dtype=torch.long)
        wmask = torch.zeros((bsz, width), dtype=mask.dtype)
        pos = next_pos.cpu()[:, None] + torch.arange(width)[None, :]
        for i, g in enumerate(golds):
            if g is not None and g.context_len:
                ids[i, : g.context_len] = torch.tensor(g.ids[: g.context_len])
                wmask[i, : g.context_len] = 1
        # right padding: pad queries come after every real token and still see their own
        # row's cache, so no row is fully masked; their outputs are never read
        out = model(
            input_ids=ids.to(device),
            attention_mask=torch.cat([mask, wmask.to(device)], dim=1),
            position_ids=pos.to(device),
            **with_cache(kv),
            use_cache=True,
        )
        wrap_logits = out.logits  # (B, width, V)
        kv.crop(-width)  # drop the wrapper's keys/values: sampling continues from b_t
    values: list[float | None] = []
    for i, g in enumerate(golds):
        if g is None:
            values.append(None)
            continue
        # gold token at wrapper index s is predicted by wrapper token s - 1, or by the
        # last prefix token when s == 0
        rows = [last_logits[i] if s == 0 else wrap_logits[i, s - 1] for s in g.scored]
        targets = torch.tensor([g.ids[s] for s in g.scored], dtype=torch.long)
        values.append(gold_logprob_mean(torch.stack(rows), targets.to(last_logits.device)))
    return values


def score_after_prefill(
    model: torch.nn.Module,
    kv: Any,
    mask: torch.Tensor,
    next_pos: torch.Tensor,
    last_logits: torch.Tensor,
    golds: Sequence[GoldSpec | None],
) -> tuple[list[float | None], int]:
    """The sampler's ``after_prefill`` hook (:data:`igpo_agent.rollout.sampling.PrefillHook`):
    :func:`score_on_cache`'s values and the wrapper tokens it fed."""
    if not cache_is_reusable(kv):
        raise ValueError(
            "scoring beliefs from the live cache needs a plain full-attention "
            "DynamicCache: use ig_method='packed' for this model"
        )
    values = score_on_cache(model, kv, mask, next_pos, last_logits, golds)
    return values, sum(g.context_len for g in golds if g is not None)


class LiveBeliefHook:
    """The rollout's belief hook for ``ig_method="live"``: v_t of each episode's first gold
    alias inside the env's answer wrapper, scored from the live KV cache.

    Pass one to :func:`igpo_agent.rollout.episodes.rollout_batch` (or ``Engine.rollout``)
    as ``belief_hook``. It memoises a :class:`GoldSpec` per (gold, wrapper) for its
    lifetime; the trainer builds one per rollout.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._specs: dict[tuple[str, str, str], GoldSpec] = {}

    def gold(self, answers: list[str], info: dict[str, Any]) -> GoldSpec:
        """The GoldSpec of ``answers[0]`` inside ``info["protocol"]``'s answer wrapper."""
        protocol = info.get("protocol") or {}
        if not answers or "answer_prefix" not in protocol:
            raise ValueError(
                "live belief scoring needs the gold answers and the env's answer wrapper "
                "(info['answers'], info['protocol']['answer_prefix'/'answer_suffix'])"
            )
        key = (answers[0], protocol["answer_prefix"], protocol.get("answer_suffix", ""))
        if key not in self._specs:
            self._specs[key] = gold_spec(self.tokenizer, *key)
        return self._specs[key]

    # the sampler's ``after_prefill`` hook: :func:`score_after_prefill` itself
    after_prefill = staticmethod(score_after_prefill)


def recorded_beliefs(trajs: Sequence[Any], *_: Any) -> list[list[float]]:
    """The v_t each trajectory recorded during its rollout (with a :class:`LiveBeliefHook`).

    A drop-in ``scorer`` for :func:`igpo_agent.learn.learner.belief_matrix` (the wrapper strings
    are ignored: the rollout used the env's own). Raises if a trajectory lacks a value for
    one of its turns, i.e. it was rolled out without scoring.
    """
    out = []
    for t in trajs:
        if len(t.beliefs) != t.num_turns:
            raise ValueError(
                f"trajectory {t.qid!r} recorded {len(t.beliefs)} beliefs for {t.num_turns} "
                "turns: roll out with a LiveBeliefHook (ig_method=live) or use packed"
            )
        out.append(list(t.beliefs))
    return out
