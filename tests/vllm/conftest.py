"""Fixtures for the vLLM engine tests: one tiny model on disk, one engine per session.

The model is a 2-layer random Llama over the SmolLM2 tokenizer sized for vLLM's CPU
kernels (hidden 128, 2 heads of 64, 1 KV head). Its init std (0.5) makes predictions
peaked, so greedy decoding has no near-ties and the HF and vLLM engines pick the same
tokens. The engine runs in fp32, where vLLM matches HF within ~1e-5.

Tests that push other weights into the shared engine restore the base weights after.
"""

from __future__ import annotations

import pytest

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

TINY_SIZES = {"layers": 2, "hidden": 128, "heads": 2, "kv_heads": 1, "intermediate": 256}


@pytest.fixture(scope="session")
def smol_tokenizer():
    from igpo_agent.model.loading import load_tokenizer

    return load_tokenizer("default")


@pytest.fixture(scope="session")
def tiny_vllm_model_path(smol_tokenizer, tmp_path_factory):
    from igpo_agent.model.loading import build_tiny_model

    return build_tiny_model(
        smol_tokenizer, tmp_path_factory.mktemp("tiny_vllm"), seed=0, init_std=0.5, **TINY_SIZES
    )


@pytest.fixture(scope="session")
def engine(tiny_vllm_model_path):
    from igpo_agent.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(
        str(tiny_vllm_model_path), dtype="float32", max_model_len=1024, seed=0, kv_cache_gb=1
    )
