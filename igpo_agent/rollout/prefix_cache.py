"""Prefill a group's shared prompt once and give every episode of the group its KV cache.

GRPO/IGPO roll out G episodes of the same question, so the G prompts are identical token
for token. Prefilling each of them is G times the work of prefilling one: with ~200-token
prompts and short turns, prompts were most of the tokens a rollout fed through the model.
:func:`shared_prefill` runs one batched forward over the distinct prompts (all but their
last token) and returns one :class:`~igpo_agent.rollout.sampling.EpisodeCache` per distinct
prompt; episodes then start their first turn from that cache with only the prompt's last
token to feed (sampling needs its logits). The cache tensors are shared read-only: the
sampler copies them into its own batch tensors (``_pad_past``) and never writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache

from igpo_agent.model.kv_cache import cache_is_reusable
from igpo_agent.model.loading import returned_cache, with_cache
from igpo_agent.rollout.sampling import EpisodeCache, RolloutStats, extract_row

__all__ = ["shared_prefill"]


@torch.no_grad()
def shared_prefill(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    stats: RolloutStats | None = None,
) -> list[EpisodeCache] | None:
    """KV caches of ``prompt[:-1]`` for each prompt (one batched forward, left-padded).

    Returns None when the model's cache cannot be split per row (not a plain full-attention
    DynamicCache): the caller then prefills as usual. Every prompt needs >= 2 tokens.
    """
    if any(len(p) < 2 for p in prompts):
        raise ValueError("shared_prefill needs prompts of at least 2 tokens")
    if not prompts:
        return []
    device = next(model.parameters()).device
    width = max(len(p) - 1 for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    pos = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p) - 1
        ids[i, width - n :] = torch.tensor(list(p[:-1]), dtype=torch.long)
        mask[i, width - n :] = 1
        pos[i, width - n :] = torch.arange(n)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        **with_cache(DynamicCache()),
        use_cache=True,
        logits_to_keep=1,
    )
    kv = returned_cache(out)
    if stats is not None:
        stats.forward_calls += 1
        stats.prefill_tokens += int(mask.sum())
        stats.batch_sizes.append(len(prompts))
    if not cache_is_reusable(kv):
        return None
    mask = mask.to(device).bool()
    return [extract_row(kv, i, mask[i]) for i in range(len(prompts))]
