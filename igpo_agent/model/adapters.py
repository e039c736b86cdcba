"""LoRA adapter helpers: peft configs, and one adapter that holds the sum of two.

A warm start merged into the base weights plus a fresh adapter trained on top (the KL
reference is then the warm start, ALGORITHM "Policy loss") is saved as a single adapter
for the plain base model, so that every consumer (evaluate, vLLM, a later warm start)
loads it like any other adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def lora_config(r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> Any:
    """peft's ``LoraConfig`` for a causal LM adapter without bias."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def stack_lora_states(
    first: dict[str, torch.Tensor],
    first_scale: float,
    second: dict[str, torch.Tensor],
    second_scale: float,
) -> tuple[dict[str, torch.Tensor], int]:
    """One LoRA state whose delta is the sum of two: ``s1 B1 A1 + s2 B2 A2 = s2 B A``.

    ``A = [A1; A2]`` (rows stacked), ``B = [B1 * s1 / s2, B2]`` (columns stacked), so the
    result has rank r1 + r2 and the second adapter's scale (``alpha = s2 * (r1 + r2)``).
    Keys are peft's saved names (``...lora_A.weight`` / ``...lora_B.weight``); both states
    must adapt the same modules. Returns (state, stacked rank).
    """
    if set(first) != set(second):
        raise ValueError("the two adapters adapt different modules; cannot stack them")
    out: dict[str, torch.Tensor] = {}
    rank = 0
    for key, a in first.items():
        b = second[key]
        if ".lora_A." in key:
            out[key] = torch.cat([a.float(), b.float()], 0).to(b.dtype)  # (r1 + r2, in)
            rank = out[key].shape[0]
        elif ".lora_B." in key:
            scaled = a.float() * (first_scale / second_scale)
            out[key] = torch.cat([scaled, b.float()], 1).to(b.dtype)  # (out, r1 + r2)
        else:
            raise ValueError(f"cannot stack adapter entry {key!r} (only lora_A/lora_B)")
    return out, rank
