"""Every fixed set of option values, defined once as a ``Literal`` (no imports beyond typing).

The math modules annotate their arguments with these, the front doors' configs type their
fields with them (the command line lists them as choices and refuses anything else), and
:func:`choices` turns one into the tuple a runtime check needs. Adding a value here is the
one edit that makes it legal everywhere; the code that acts on it still has to handle it.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

Algo = Literal["igpo", "grpo"]
"""The advantage rule: igpo: IG turn rewards + outcome; grpo: outcome only
(docs/ALGORITHM.md "Options")."""
TrainAlgo = Literal["igpo", "grpo", "rft"]
"""What the trainer optimises: an :data:`Algo` advantage, or rft (rejection-sampling
fine-tuning: supervised steps on the policy's own rollouts that score ``rft_min_f1``)."""
DynamicSampling = Literal["off", "outcome", "advantage"]
"""Which sampled groups train: all (off), those whose outcomes differ (outcome, DAPO), or
those with any non-zero advantage (advantage: for IGPO, IG contrast counts too)."""
IGMode = Literal["log_prob_diff", "prob_diff"]
"""IG as the change in log p(gold) (v2, default) or in p(gold) (v1)."""
NormMode = Literal["separate", "joint"]
"""Group z-normalisation of IG and outcome rewards apart (default) or pooled."""
IGTurns = Literal["search", "all"]
"""Turns that get an IG reward: those ending in a search (default), or every turn but the last."""
IGMethod = Literal["auto", "live", "packed", "naive", "vllm"]
"""How belief values are scored; auto = live on the hf engine, packed on vllm."""
Engine = Literal["hf", "vllm"]
"""Rollout engine: transformers (default) or vLLM (docs/VLLM.md)."""
VllmDtype = Literal["bfloat16", "float32"]
"""Weights dtype inside the vLLM engine."""
LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
"""How per-token losses reduce to one number (docs/ALGORITHM.md "Loss")."""
LRSchedule = Literal["constant", "cosine", "linear"]
"""Learning-rate schedule after warmup."""
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
"""Weights dtype of the policy; auto = bf16 on CUDA, fp32 on CPU."""
Autocast = Literal["auto", "float32", "bfloat16"]
"""Autocast of the update's forwards; auto = bf16 where the device computes it natively."""
OldLogprobs = Literal["auto", "recompute", "sampler"]
"""pi_old before several optimiser steps: a no-grad forward (recompute) or the sampler's
records (sampler); auto = sampler where its numerics are the learner's (hf engine, fp32
weights, autocast off), else recompute."""
TISMode = Literal["auto", "on", "off"]
"""Truncated importance sampling against the sampler's records; auto = on with engine vllm."""
KLReference = Literal["init", "base"]
"""KL anchor with a warm start: the warm-started policy (init) or the base model."""

DEFAULT_FORMAT_PENALTY = -2.0
"""lambda_fmt, the outcome reward of a malformed trajectory (reference code; igpo_env's
``DEFAULT_FORMAT_PENALTY`` holds the same value on the environment side, a test ties them)."""


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type as a tuple, e.g. ``choices(Algo) == ("igpo", "grpo")``."""
    if typing.get_origin(literal) is not Literal:
        raise TypeError(f"{literal!r} is not a Literal type")
    return typing.get_args(literal)
