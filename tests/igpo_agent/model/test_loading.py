"""Model sources: the SmolLM2 GGUF conversion, tiny random models, the local BPE tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from igpo_agent.model import loading as models
from igpo_agent.model.loading import (
    build_tiny_model,
    is_default_alias,
    load_tokenizer,
    resolve_model,
    save_converted,
    smollm2_gguf_path,
)


def test_aliases_and_pass_through(tmp_path):
    assert is_default_alias("default") and is_default_alias("SmolLM2-135M-Instruct")
    assert not is_default_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    assert smollm2_gguf_path().stat().st_size > 50_000_000


def test_atomic_write_keeps_a_concurrent_winner(tmp_path):
    final = tmp_path / "models" / "m"
    calls = []

    def loser(tmp):
        calls.append(tmp)
        (tmp / "mine.txt").write_text("loser")
        final.mkdir(parents=True)  # another process finished first
        (final / "theirs.txt").write_text("winner")

    assert models._atomic_write_dir(final, loser) == final
    assert (final / "theirs.txt").is_file() and not (final / "mine.txt").exists()
    assert not calls[0].exists()  # the temporary folder is cleaned up
    assert models._atomic_write_dir(final, lambda d: pytest.fail("rewrote")) == final


def test_atomic_write_failure_leaves_nothing(tmp_path):
    final = tmp_path / "m"

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        models._atomic_write_dir(final, broken)
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_smol_tokenizer(smol_tokenizer):
    assert smol_tokenizer.chat_template and smol_tokenizer.pad_token is not None
    ids = smol_tokenizer("naïve café", add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(ids) == "naïve café"
    assert len(smol_tokenizer) == 49152


def test_bpe_tokenizer_round_trips_any_text(bpe_tokenizer):
    assert not getattr(bpe_tokenizer, "chat_template", None)
    assert bpe_tokenizer.eos_token == "<|endoftext|>" and bpe_tokenizer.pad_token == "<pad>"
    assert bpe_tokenizer.eos_token_id != bpe_tokenizer.pad_token_id
    for text in ["<answer>George Orwell</answer>", "naïve café ☕ 東京", " leading  spaces "]:
        ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert bpe_tokenizer.decode(ids) == text
    # the trained merges compress the training text well below one token per byte
    text = "<answer>Paris</answer>"
    assert len(bpe_tokenizer(text)["input_ids"]) < len(text.encode()) / 2
    assert 300 < len(bpe_tokenizer) <= 400


def test_tiny_model_is_deterministic_and_loadable(bpe_tokenizer, tmp_path):
    a = build_tiny_model(bpe_tokenizer, tmp_path / "a", seed=3)
    b = build_tiny_model(bpe_tokenizer, tmp_path / "b", seed=3)
    c = build_tiny_model(bpe_tokenizer, tmp_path / "c", seed=4, layers=1, hidden=32, heads=2)
    ma, mb, mc = (AutoModelForCausalLM.from_pretrained(p) for p in (a, b, c))
    assert ma.config.vocab_size == len(bpe_tokenizer) and ma.config.num_hidden_layers == 2
    assert mc.config.hidden_size == 32
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(ma.lm_head.weight[:, :32], mc.lm_head.weight)
    assert load_tokenizer(str(a)).get_vocab() == bpe_tokenizer.get_vocab()
    with pytest.raises(ValueError, match="divide"):
        build_tiny_model(bpe_tokenizer, tmp_path / "d", hidden=30, heads=4)


def test_tiny_model_does_not_disturb_the_global_rng(bpe_tokenizer, tmp_path):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(bpe_tokenizer, tmp_path / "m", layers=1)
    assert torch.equal(torch.rand(3), want)


@pytest.mark.slow
def test_gguf_conversion_keeps_logits_identical(tmp_path, smol_tokenizer):
    """The real SmolLM2: converted safetensors == GGUF-loaded weights, bit for bit."""
    gguf = smollm2_gguf_path()
    from_gguf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    ids = torch.tensor([smol_tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        want = from_gguf(ids).logits
    out = save_converted(from_gguf, smol_tokenizer, tmp_path / "smol")
    converted = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.no_grad():
        got = converted(ids).logits
    assert torch.equal(got, want)
    assert not hasattr(converted.config, "quantization_config")
    assert load_tokenizer(str(out)).chat_template == smol_tokenizer.chat_template


@pytest.mark.slow
def test_default_alias_resolves_to_cached_checkpoint():
    """The shared cache is filled once (atomically) and then loads as a plain checkpoint."""
    path = resolve_model("default")
    assert resolve_model("smollm2-135m-instruct") == path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
