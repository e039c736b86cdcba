# Over 400 lines: the Policy class (load, reference, log-probs, save) plus the device/dtype/thread choices it is loaded with.
"""The policy: a causal LM, its tokenizer, a LoRA adapter, and per-token log-probs.

The reference policy for the KL term is the same network with the adapter switched off
(``with policy.reference(): ...``, peft's ``disable_adapter``): no second copy of the
weights. With full fine-tuning (``lora=None``) there is no adapter to switch off, so a
reference needs a frozen copy of the initial weights: ``Policy.load(..., lora=None,
reference_copy=True)`` keeps one (twice the weight memory); without it ``reference()``
raises and the KL term must be turned off (coefficient 0). After a warm start loaded with
``merge_init_adapter=True`` the base weights hold the warm start, so the adapter-off
network is the warm-started policy: the KL anchors to where training began.

``prompt_ids`` is the only place a prompt is templated. Turn boundaries are never found by
scanning the template: the rollout records token spans as it appends ids (see
``trajectory.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from igpo_agent.model.adapters import lora_config, stack_lora_states
from igpo_agent.model.loading import ensure_pad_token, load_tokenizer, resolve_model

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_META_FILE = "igpo_policy.json"
_PLAIN_TEMPLATE = "System: {system}\n\nUser: {user}\n\nAssistant:"
_PLAIN_TEMPLATE_NO_SYSTEM = "User: {user}\n\nAssistant:"


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    ``None`` picks 1 on CPU: on the 2-core reference machine a single thread is the fastest
    for small-batch generation and log-prob passes of small models (measured: see the
    README/report), and leaves the other core to the retriever. On CUDA the CPU threads
    barely matter, so ``None`` keeps torch's choice there.
    """
    if n is None:
        if torch.cuda.is_available():
            return torch.get_num_threads()
        n = 1
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; other values go to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on a CUDA device that supports it, else fp32; or a named dtype."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_autocast(
    choice: str, device: torch.device, param_dtype: torch.dtype
) -> torch.dtype | None:
    """The autocast dtype of the learner's forward passes, or None for none.

    ``"auto"``: bf16 when the weights are fp32 and the device computes bf16 natively (a CUDA
    GPU with bf16, or a CPU with AVX-512 BF16/AMX: forward+backward of SmolLM2 about 2x
    faster here), else none. ``"bfloat16"`` forces it, ``"float32"`` switches it off.
    Log-softmax, the loss and its reductions stay fp32 either way (``selective_log_softmax``
    upcasts), and the rollout and the IG scorer never autocast.
    """
    if choice == "float32" or param_dtype != torch.float32:
        return None
    if choice == "bfloat16":
        return torch.bfloat16
    if choice != "auto":
        raise ValueError(f"autocast must be auto, float32 or bfloat16, got {choice!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft ``LoraConfig``)."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator: the update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input (0 keeps log-probs deterministic in train mode)."""
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    )
    """Names of the linear layers that get an adapter."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty; name at least one linear layer")


def selective_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, *, with_entropy: bool = False, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(logits)[..., targets]`` (and the entropy) without a full-size copy.

    Naive equivalent: ``torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])``
    and ``-(p * log p).sum(-1)``; here positions are processed ``chunk`` rows at a time in
    fp32, so the extra memory is ``chunk x V`` floats instead of ``B x L x V``.
    logits (..., V), targets (...) -> (...), (...) or None.
    """
    shape = targets.shape
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_t = targets.reshape(-1)
    lps, ents = [], []
    for s in range(0, flat.shape[0], chunk):
        x = flat[s : s + chunk].float()  # (n, V)
        lse = torch.logsumexp(x, dim=-1)  # (n,)
        lps.append(x.gather(-1, flat_t[s : s + chunk, None]).squeeze(-1) - lse)
        if with_entropy:
            ents.append(lse - (torch.softmax(x, dim=-1) * x).sum(-1))
    empty = flat.new_zeros(0, dtype=torch.float32)
    lp = (torch.cat(lps) if lps else empty).reshape(shape)
    ent = (torch.cat(ents) if ents else empty).reshape(shape) if with_entropy else None
    return lp, ent


_ADAPTER_FILE = "adapter_model.safetensors"


def _lora_config(lora: LoraSettings) -> Any:
    """peft's ``LoraConfig`` for these settings (causal LM, no bias)."""
    return lora_config(lora.r, lora.alpha, lora.dropout, lora.target_modules)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only (left or right padding); pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class Policy:
    """A causal LM + tokenizer (+ optional LoRA adapter) on one device.

    Build with ``Policy.load``. Attributes: ``model`` (a peft ``PeftModel`` with LoRA, else
    the transformers model), ``tokenizer`` (always has a pad token), ``device``, ``dtype``,
    ``max_context`` (the model's maximum positions), ``name`` (what was loaded),
    ``lora`` (the settings, or None for full fine-tuning).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        lora: LoraSettings | None,
        reference_model: Any | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = ensure_pad_token(tokenizer)
        self.name = name
        self.lora = lora
        self._reference_model = reference_model
        self._in_reference = False
        self.merged_init: dict[str, Any] | None = None  # set by load(merge_init_adapter=True)
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype
        config = model.config
        self.max_context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(self.tokenizer, "model_max_length", 2048)
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        model: str,
        *,
        lora: LoraSettings | None = None,
        device: str = "auto",
        dtype: str = "auto",
        init_adapter: str | Path | None = None,
        seed: int | None = None,
        reference_copy: bool = False,
        attn_implementation: str | None = "sdpa",
        merge_init_adapter: bool = False,
    ) -> Policy:
        """Load a model (alias, folder or hub id) and wrap it.

        ``lora`` adds a fresh trainable adapter; ``init_adapter`` instead loads a saved one
        (its own config wins) and trains it on; neither means full fine-tuning, where
        ``reference_copy=True`` keeps a frozen copy for the KL reference. ``seed`` fixes the
        adapter's random init. ``attn_implementation`` is ``"sdpa"`` or ``"eager"`` (the
        information-gain scorer's packed path needs one of the two).

        ``merge_init_adapter=True`` (with ``init_adapter``) merges the saved adapter into
        the base weights and trains a fresh adapter of the same shape on top (LoRA's B
        starts at 0, so the policy is unchanged at step 0). ``reference()`` then runs the
        warm-started policy, the one training starts from (ALGORITHM "Policy loss"), with
        no second copy of the weights; ``save`` writes one adapter for the plain base model
        that holds both (see :func:`stack_lora_states`).
        """
        from peft import PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = resolve_model(model)
        tokenizer = load_tokenizer(model)
        kwargs: dict[str, Any] = {"dtype": dt}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(dev)
        if seed is not None:
            torch.manual_seed(seed)
        reference = None
        merged_init: dict[str, Any] | None = None
        if merge_init_adapter and init_adapter is None:
            raise ValueError("merge_init_adapter needs an init_adapter to merge")
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing")
            if init_adapter is not None:
                net = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
                cfg = net.peft_config["default"]
                lora = LoraSettings(
                    r=cfg.r,
                    alpha=int(cfg.lora_alpha),
                    dropout=cfg.lora_dropout,
                    target_modules=tuple(sorted(cfg.target_modules)),
                )
                if merge_init_adapter:
                    from peft import get_peft_model_state_dict

                    state = {
                        k: v.detach().clone() for k, v in get_peft_model_state_dict(net).items()
                    }
                    merged_init = {"state": state, "lora": lora, "path": str(init_adapter)}
                    net = get_peft_model(net.merge_and_unload(), _lora_config(lora))
            elif lora is not None:
                net = get_peft_model(base, _lora_config(lora))
            else:
                net = base
                if reference_copy:
                    reference = copy.deepcopy(base).eval().requires_grad_(False)
        out = cls(net, tokenizer, name=str(model), lora=lora, reference_model=reference)
        out.merged_init = merged_init
        return out

    # ------------------------------------------------------------------ reference policy
    @property
    def has_reference(self) -> bool:
        """Whether ``reference()`` can run (LoRA, or full fine-tuning with a frozen copy)."""
        return self.lora is not None or self._reference_model is not None

    @contextlib.contextmanager
    def reference(self) -> Iterator[Policy]:
        """Within the block, ``sequence_logprobs`` and ``forward_model`` use the reference policy.

        LoRA: the adapter is disabled (the base model). Full fine-tuning: the frozen copy
        kept by ``reference_copy=True``; without one this raises.
        """
        if not self.has_reference:
            raise RuntimeError(
                "full fine-tuning has no reference policy: load with reference_copy=True "
                "(keeps a frozen copy of the weights) or set the KL coefficient to 0"
            )
        if self._in_reference:
            yield self
            return
        self._in_reference = True
        try:
            if self.lora is not None:
                with self.model.disable_adapter():
                    yield self
            else:
                yield self
        finally:
            self._in_reference = False

    @property
    def forward_model(self) -> Any:
        """The network to call now: the frozen copy inside ``reference()`` (full FT), else ``model``."""
        if self._in_reference and self._reference_model is not None:
            return self._reference_model
        return self.model

    # ------------------------------------------------------------------ log-probs
    def sequence_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the given sequences under the policy.

        input_ids, attention_mask (B, L) -> logprobs (B, L), entropy (B, L) or None.
        Position i holds ``log p(token_i | tokens_<i)``; position 0 and padding hold 0.
        Entropy at i is that of the distribution that predicted token i. Left or right
        padding both work (position ids come from the mask). Gradients flow unless the
        caller wraps this in ``torch.no_grad()``.
        """
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be (B, L)"
            )
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        out = self.forward_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # (B, L-1, V): position j predicts token j+1
        lp, ent = selective_log_softmax(logits, input_ids[:, 1:], with_entropy=with_entropy)
        valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        zero = lp.new_zeros(lp.shape[0], 1)
        lp = torch.cat([zero, torch.where(valid, lp, torch.zeros_like(lp))], dim=1)
        if ent is not None:
            ent = torch.cat([zero, torch.where(valid, ent, torch.zeros_like(ent))], dim=1)
        return lp, ent

    def action_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        action_mask: torch.Tensor,
        *,
        with_entropy: bool = False,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sequence_logprobs`` restricted to the tokens in ``action_mask`` (others hold 0).

        ``temperature`` divides the logits first, as the sampler did (ALGORITHM "Policy
        loss": the learner's log-probs use the sampling temperature), so at T != 1 the
        update differentiates the distribution the tokens were drawn from; entropies are
        those of the same tempered distribution.

        Naive equivalent: ``lp, ent = sequence_logprobs(ids, attn, with_entropy=...)`` then
        ``lp * action_mask`` (and ``ent * action_mask``). Here the LM head and the softmax
        run only at the columns where some row predicts an action token (the model's
        ``logits_to_keep``): the prompt and observation spans, most of a search trajectory,
        never materialise (L, V) logits, which bounds the update's memory and time.
        input_ids, attention_mask, action_mask (B, L) -> (B, L), (B, L) or None.
        """
        ids = input_ids.to(self.device)
        attn = attention_mask.to(self.device)
        act = action_mask.to(self.device).bool() & attn.bool()
        act[:, 0] = False  # position 0 has no predecessor
        pred = torch.zeros_like(act)
        pred[:, :-1] = act[:, 1:]  # position j predicts token j + 1
        lp_full = torch.zeros(ids.shape, dtype=torch.float32, device=self.device)
        ent_full = torch.zeros_like(lp_full) if with_entropy else None
        if not bool(act.any()):
            return lp_full, ent_full
        cols = pred.any(0).nonzero().squeeze(1)  # (K,) columns where some row predicts
        out = self.forward_model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=position_ids_from_mask(attn),
            use_cache=False,
            logits_to_keep=cols,  # 1-D indices: the documented form across transformers 5.x
        )
        logits = out.logits[pred[:, cols]]  # (N, V), row-major over (B, L) like ids[act]
        if temperature != 1.0:
            if not temperature > 0:
                raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
            logits = logits / temperature
        lp, ent = selective_log_softmax(logits, ids[act], with_entropy=with_entropy)
        lp_full = lp_full.masked_scatter(act, lp)
        if ent_full is not None and ent is not None:
            ent_full = ent_full.masked_scatter(act, ent)
        return lp_full, ent_full

    # ------------------------------------------------------------------ parameters, I/O
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (the adapter's with LoRA, all without)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self, path: str | Path) -> Path:
        """Save the adapter (LoRA) or the full weights (full FT), the tokenizer and a note.

        Reload a LoRA save with ``Policy.load(base, init_adapter=path)`` or into a live
        policy with ``load_adapter(path)``; a full save loads as ``Policy.load(path)``.
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        lora = self.lora
        if self.merged_init is None:
            self.model.save_pretrained(out)
        else:  # warm start merged into the base: save warm start + fresh adapter as one
            lora = self._save_stacked(out)
        self.tokenizer.save_pretrained(out)
        meta = {
            "base_model": self.name,
            "lora": asdict(lora) if lora is not None else None,
            "dtype": str(self.dtype).removeprefix("torch."),
        }
        if self.merged_init is not None:
            meta["stacked_on"] = self.merged_init["path"]
        (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    def _save_stacked(self, out: Path) -> LoraSettings:
        """Write the merged warm start plus the trained adapter as one adapter (rank r1+r2)
        that loads onto the plain base model; returns its settings."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        assert self.merged_init is not None and self.lora is not None
        init: LoraSettings = self.merged_init["lora"]
        trained = {k: v.detach() for k, v in get_peft_model_state_dict(self.model).items()}
        state, stacked = stack_lora_states(
            self.merged_init["state"], init.alpha / init.r, trained, self.lora.alpha / self.lora.r
        )
        settings = LoraSettings(
            r=init.r + self.lora.r,
            alpha=self.lora.alpha * (init.r + self.lora.r) / self.lora.r,  # keeps scale s2
            dropout=self.lora.dropout,
            target_modules=self.lora.target_modules,
        )
        assert stacked == settings.r
        config = _lora_config(settings)
        config.base_model_name_or_path = self.name
        config.save_pretrained(str(out))
        save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(out / _ADAPTER_FILE))
        return settings

    def load_adapter(self, path: str | Path) -> None:
        """Overwrite the live adapter's weights with a saved one (e.g. to resume training)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self.lora is None:
            raise RuntimeError(
                "this policy is fully fine-tuned and has no adapter; "
                "load saved full weights with Policy.load(path) instead"
            )
        file = Path(path) / "adapter_model.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found; save one with Policy.save(path)")
        state = load_file(str(file), device=str(self.device))
        result = set_peft_model_state_dict(self.model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(
                f"adapter at {path} does not fit this model ({len(unexpected)} unexpected "
                f"keys, e.g. {unexpected[0]}); was it saved with other LoRA target_modules?"
            )

    # ------------------------------------------------------------------ prompts
    @property
    def has_chat_template(self) -> bool:
        """Whether prompts go through the tokenizer's chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_ids(self, user_text: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of a prompt that ends where the assistant's first turn begins.

        With a chat template: ``apply_chat_template(..., add_generation_prompt=True)``,
        tokenised directly to ids (no decode/re-encode). Without one: the plain template
        ``"System: ...\\n\\nUser: ...\\n\\nAssistant:"`` (the system part only when given).
        This is the only place prompts are templated.
        """
        if self.has_chat_template:
            messages = []
            if system_prompt is not None:
                messages.append({"role": "system", "content": system_prompt})
            messages.append({"role": "user", "content": user_text})
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
            if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        if system_prompt is None:
            text = _PLAIN_TEMPLATE_NO_SYSTEM.format(user=user_text)
        else:
            text = _PLAIN_TEMPLATE.format(system=system_prompt, user=user_text)
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
