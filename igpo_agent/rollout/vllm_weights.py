"""The weights an inference engine needs to serve the current policy: LoRA merged in.

A rollout engine (vLLM) runs the plain base architecture. After each optimiser step it gets
the policy's current weights as one flat state dict with the base model's own parameter
names (``model.layers.0.self_attn.q_proj.weight``, ...):

- LoRA (a peft ``PeftModel``): every adapted linear layer's weight is
  ``W + sum_a delta_a`` over the active adapters (``delta = B @ A * alpha / r``, computed by
  peft's ``get_delta_weight`` so fan-in/fan-out layouts and scalings are peft's own). The
  training model is not touched: no ``merge_and_unload``, no copy of the network.
- Full fine-tuning (a plain transformers model): its state dict as is.

Naive equivalent: ``copy.deepcopy(peft_model).merge_and_unload().state_dict()``, which
costs a second copy of every weight; here only the adapted layers are materialised.
Torch only (no vLLM), so it is tested in the main environment too.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["merged_state_dict"]

_BASE = ".base_layer."


def _lora_layers(model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


def _merged_weight(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` plus the deltas of the layer's active, unmerged adapters (fp32 sum)."""
    if layer.disable_adapters or layer.merged:
        return weight  # adapters off, or their deltas are already inside the base weight
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if not active:
        return weight
    for a in active:
        if getattr(layer, "use_dora", {}).get(a, False):
            raise NotImplementedError(
                f"adapter {a!r} uses DoRA, whose merge is not a plain weight delta; "
                "train with plain LoRA (use_dora=False) to push weights into the engine"
            )
    total = weight.float()
    for a in active:
        total = total + layer.get_delta_weight(a).float()
    return total.to(weight.dtype)


@torch.no_grad()
def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The base architecture's state dict with the active LoRA adapters merged in.

    ``model`` is a peft ``PeftModel`` (LoRA) or a plain transformers model (full fine
    tuning). Keys are the base model's (no ``base_model.model.`` prefix, no
    ``base_layer``, no ``lora_*`` entries); tensors are detached, in the model's dtype and
    device. Tied weights appear under both names, as in ``state_dict()``.
    """
    if not hasattr(model, "get_base_model"):
        return {k: v.detach() for k, v in model.state_dict().items()}
    base = model.get_base_model()
    layers = _lora_layers(base)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        if _BASE not in key:
            out[key] = tensor.detach()
            continue
        owner, tail = key.split(_BASE, 1)
        name = f"{owner}.{tail}"
        layer = layers.get(owner)
        if tail == "weight" and layer is not None:
            out[name] = _merged_weight(layer, tensor.detach())
        else:
            out[name] = tensor.detach()
    return out
