"""The grow-in-place KV cache: the concatenating cache's logits bit for bit, fewer copies."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from igpo_agent.model import kv_cache
from igpo_agent.model.kv_cache import GrowingLayer, cache_is_reusable, new_cache
from igpo_agent.model.loading import returned_cache, with_cache


@torch.no_grad()
def _run(model: torch.nn.Module, cache: DynamicCache) -> tuple[torch.Tensor, DynamicCache]:
    """Prefill 4 rows (one left-padded), decode 6 steps, crop 2 (as live IG does), drop a row
    (as a finished episode does), decode 3 more; every step's logits stacked."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (4, 12), generator=g)
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[0, :5] = 0
    out = model(input_ids=ids, attention_mask=mask, **with_cache(cache), use_cache=True)
    kv, logits = returned_cache(out), [out.logits[:, -1]]

    def step(tok: torch.Tensor) -> torch.Tensor:
        nonlocal kv, mask
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], tok.shape[1])], dim=1)
        o = model(input_ids=tok, attention_mask=mask, **with_cache(kv), use_cache=True)
        kv = returned_cache(o)
        return o.logits[:, -1]

    tok = logits[-1].argmax(-1, keepdim=True)
    for _ in range(6):
        logits.append(step(tok))
        tok = logits[-1].argmax(-1, keepdim=True)
    wrap = torch.randint(5, 1000, (4, 2), generator=g)  # a 2-token scoring pass, then cropped
    logits.append(step(wrap))
    kv.crop(-2)
    mask = mask[:, :-2]
    keep = torch.tensor([0, 2, 3])
    kv.batch_select_indices(keep)
    mask, tok = mask[keep], tok[keep]
    rows = list(logits)
    for _ in range(3):
        rows.append(step(tok))
        tok = rows[-1].argmax(-1, keepdim=True)
    return torch.cat([r.reshape(-1) for r in rows]), kv


def test_same_logits_bit_for_bit_through_crop_and_row_drops(smol) -> None:
    model = smol[0].eval()
    want, plain = _run(model, DynamicCache())
    got, grown = _run(model, new_cache())
    assert all(type(layer) is GrowingLayer for layer in grown.layers)
    assert torch.equal(got, want)
    for a, b in zip(plain.layers, grown.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert cache_is_reusable(grown)


def test_decode_steps_write_in_place(smol) -> None:
    model = smol[0].eval()
    cache = new_cache()
    ids = torch.randint(5, 1000, (2, 8))
    with torch.no_grad():
        out = model(input_ids=ids, **with_cache(cache), use_cache=True)
        kv = returned_cache(out)
        layer = kv.layers[0]
        buf = layer._kbuf
        assert buf.shape[-2] == 8 + kv_cache.SPARE  # room for a turn of decoding
        for _ in range(5):
            out = model(input_ids=ids[:, :1], **with_cache(kv), use_cache=True)
            kv = returned_cache(out)
    assert layer._kbuf is buf  # no reallocation: five columns written into the spare room
    assert layer.keys.shape[-2] == 13 and layer.keys.data_ptr() == buf.data_ptr()


def test_new_cache_filled_from_data_matches_dynamic_cache() -> None:
    data = [(torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)) for _ in range(3)]
    grown, plain = new_cache(data), DynamicCache(ddp_cache_data=data)
    assert grown.get_seq_length() == plain.get_seq_length() == 5
    for a, b in zip(plain.layers, grown.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
