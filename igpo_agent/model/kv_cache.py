"""A KV cache that grows in place: transformers' ``DynamicCache`` without a copy per token.

``DynamicLayer.update`` appends a decode step's keys and values with ``torch.cat``, which
copies the whole cache on every step: 13% of a batch-16 SmolLM2 decode step on one CPU
thread (``benchmarks/decode.py``). :class:`GrowingLayer` keeps each layer's keys and values
in a buffer with spare room at the end, writes new columns into it and exposes the filled
part as a view, so a step copies only its own column; when the room runs out the buffer is
reallocated 1.5x larger (at least :data:`SPARE` columns more, one turn's decode budget).
Attention reads the same values in the same order, so logits are bit for bit those of the
concatenating cache (tested), at ~1.1x the decode speed.

Everything else is ``DynamicLayer``'s: ``crop`` and ``batch_select_indices`` replace
``keys``/``values`` with a view or a new tensor, and the next ``update`` notices (the
tensor no longer starts the buffer) and re-seeds a buffer from it.

:func:`cache_is_reusable` says whether a cache the model returned is made only of such
plain full-attention layers, which is what the rollout's per-row cache reuse
(:mod:`igpo_agent.rollout.sampling`) and live IG scoring (:mod:`igpo_agent.ig.live`) need.
It lives here, with the model's cache, so that both import it from ``model/`` and
neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

__all__ = ["SPARE", "GrowingLayer", "cache_is_reusable", "new_cache"]

SPARE = 128
"""Columns of room a new buffer gets at least: a turn of decoding without reallocation."""


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``update`` writes into a preallocated buffer."""

    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key_states``/``value_states`` (B, H, n, D) along the sequence; returns the
        layer's keys and values so far (views of the buffer)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        add = key_states.shape[-2]
        buf = self._kbuf
        reuse = (
            buf is not None
            and n > 0
            and self.keys.data_ptr() == buf.data_ptr()
            and self.values.data_ptr() == self._vbuf.data_ptr()
            and buf.shape[:2] == key_states.shape[:2]
            and n + add <= buf.shape[-2]
        )
        if not reuse:
            cap = n + add + max(SPARE, (n + add) // 2)
            k = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[-1]))
            v = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[-1]))
            if n:
                k[..., :n, :] = self.keys
                v[..., :n, :] = self.values
            self._kbuf, self._vbuf = k, v
        self._kbuf[..., n : n + add, :] = key_states
        self._vbuf[..., n : n + add, :] = value_states
        self.keys = self._kbuf[..., : n + add, :]
        self.values = self._vbuf[..., : n + add, :]
        return self.keys, self.values


def new_cache(data: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> DynamicCache:
    """A ``DynamicCache`` of :class:`GrowingLayer` s, optionally filled with per-layer
    (keys, values) of shape (B, H, S, D); falls back to a plain ``DynamicCache`` where this
    transformers version builds its layers differently."""
    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is not DynamicLayer:
        return DynamicCache(ddp_cache_data=data) if data is not None else cache
    cache.layer_class_to_replicate = GrowingLayer
    for i, (k, v) in enumerate(data or ()):
        cache.update(k, v, i)
    return cache


def cache_is_reusable(cache: object) -> bool:
    """Whether ``cache`` is made only of plain full-attention layers (``DynamicLayer`` or
    :class:`GrowingLayer`, exactly: sliding-window and other subclasses are not), the
    only ones whose rows can be split out, cropped and stitched back together."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, GrowingLayer) for layer in layers)
