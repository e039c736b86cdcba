"""The ``Engine`` interface: both rollout engines satisfy it, call for call.

The vLLM class is checked without vLLM: ``VLLMRollouts`` imports vLLM only when built, so
its methods are compared here and the engine itself is tested in ``tests/vllm``.
"""

from __future__ import annotations

import inspect

import pytest

from igpo_agent.rollout.engines import Engine, HFEngine, VLLMRollouts, make_engine

METHODS = ("rollout", "sync_weights")


@pytest.mark.parametrize("cls", [HFEngine, VLLMRollouts])
def test_engines_match_the_protocol_signatures(cls):
    for name in METHODS:
        want = inspect.signature(getattr(Engine, name))
        got = inspect.signature(getattr(cls, name))
        assert got == want, f"{cls.__name__}.{name}{got} != Engine.{name}{want}"
    assert isinstance(cls.name, str) and cls.name in ("hf", "vllm")


@pytest.mark.parametrize("cls", [HFEngine, VLLMRollouts])
def test_instances_are_engines(cls):
    # Built without __init__: the vLLM one would start vLLM.
    engine = object.__new__(cls)
    assert isinstance(engine, Engine)


def test_make_engine_hf_is_an_engine_and_rejects_unknown_names():
    engine = make_engine("hf", policy=object())
    assert isinstance(engine, Engine) and engine.name == "hf"
    assert engine.sync_weights(object()) == 0.0
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("tgi", policy=object())


def test_an_object_without_rollout_is_not_an_engine():
    class NoRollout:
        name = "x"

        def sync_weights(self, policy):
            return 0.0

    assert not isinstance(NoRollout(), Engine)
