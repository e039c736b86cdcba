"""Shared fixtures for the learner tests: tokenizers and tiny random models (fast, offline).

Fixture names (stable; other test files rely on them):

- ``smol_tokenizer`` (session): the SmolLM2-135M-Instruct tokenizer (chat template), from
  the shared model cache (made from the packaged GGUF once, a few seconds).
- ``bpe_tokenizer`` (session): a byte-level BPE trained here on ``BPE_TEXTS``; no chat
  template, so the plain prompt template path runs.
- ``tiny_smol_model_path`` / ``tiny_bpe_model_path`` (session): folders with a 2-layer,
  64-wide random Llama model (init std 0.1: peaked, context-sensitive predictions) saved
  with the matching tokenizer (``Policy.load(path)``).
- ``smol`` / ``bpe`` (module): (model in eval mode, tokenizer, prompt_fn) over the tiny
  models: the SmolLM2 one with its chat template, the BPE one with a plain transcript.
- ``tiny_policy`` (function): a fresh ``Policy`` over the tiny SmolLM2-tokenizer model with a
  rank-4 LoRA adapter on CPU in fp32 (seed 0): each test may train it freely.
- ``tiny_full_policy`` (function): the same model fully fine-tuned, with a frozen reference copy.
"""

from __future__ import annotations

import pytest
import torch

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.model.loading import build_bpe_tokenizer, build_tiny_model, load_tokenizer
from igpo_agent.model.policy import LoraSettings, Policy
from tests.fixtures import chat_prompt_fn, load_model, plain_prompt_fn

torch.set_num_threads(1)

BPE_TEXTS = [
    "Question: who wrote the novel 1984? Answer: <answer>George Orwell</answer>",
    "<search>capital of France</search> <information>Paris is the capital of France."
    "</information> <answer>Paris</answer>",
    "The U.S. is a country. The U.K. too. A naïve café serves crème brûlée.",
    "System: you are a search agent.\n\nUser: when?\n\nAssistant: <answer>1984</answer>",
    '<answer>"quoted"</answer> <answer>>></answer> <answer>?!</answer> <answer>-5</answer>',
] * 20

TINY_LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The SmolLM2 tokenizer (fast, with a chat template)."""
    return load_tokenizer("default")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A locally trained byte-level BPE tokenizer without a chat template."""
    return build_bpe_tokenizer(BPE_TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_smol_model_path(smol_tokenizer, tmp_path_factory):
    """A tiny random Llama over the SmolLM2 vocabulary, saved with its tokenizer."""
    return build_tiny_model(
        smol_tokenizer, tmp_path_factory.mktemp("tiny_smol"), seed=0, init_std=0.1
    )


@pytest.fixture(scope="session")
def tiny_bpe_model_path(bpe_tokenizer, tmp_path_factory):
    """A tiny random Llama over the BPE vocabulary, saved with its tokenizer."""
    return build_tiny_model(
        bpe_tokenizer, tmp_path_factory.mktemp("tiny_bpe"), seed=0, init_std=0.1
    )


@pytest.fixture
def tiny_policy(tiny_smol_model_path):
    """A fresh LoRA policy over the tiny SmolLM2-tokenizer model (CPU, fp32, seed 0)."""
    return Policy.load(
        str(tiny_smol_model_path), lora=TINY_LORA, device="cpu", dtype="float32", seed=0
    )


@pytest.fixture
def tiny_full_policy(tiny_smol_model_path):
    """A fresh fully fine-tuned policy over the tiny model, with a frozen reference copy."""
    return Policy.load(
        str(tiny_smol_model_path), lora=None, device="cpu", dtype="float32", reference_copy=True
    )


@pytest.fixture(scope="module")
def smol(tiny_smol_model_path, smol_tokenizer):
    """(tiny SmolLM2-vocabulary model, its tokenizer, chat-template prompt_fn)."""
    return load_model(tiny_smol_model_path), smol_tokenizer, chat_prompt_fn(smol_tokenizer)


@pytest.fixture(scope="module")
def bpe(tiny_bpe_model_path, bpe_tokenizer):
    """(tiny BPE-vocabulary model, its tokenizer, plain-transcript prompt_fn)."""
    return load_model(tiny_bpe_model_path), bpe_tokenizer, plain_prompt_fn(bpe_tokenizer)
