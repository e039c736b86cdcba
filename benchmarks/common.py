"""Shared helpers for the learner benchmarks (info_gain.py, rollout.py, step.py).

Loading the two benchmark models (SmolLM2-135M from the packaged GGUF, a tiny random
Llama over the same tokenizer), describing the machine and its load, timing a callable,
printing a compact table, and recording reproducible scripted trajectories on the real
``igpo_env:SearchQA-v0`` environment, tokenised exactly as ``igpo_agent.rollout.episodes`` does.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import igpo_agent  # noqa: E402, F401  (threading policy before torch loads)

MODELS = ("tiny", "smollm2")
VLLM_PYTHON = str(Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python")
"""The interpreter of the separate vLLM environment (``make test`` / docs/VLLM.md build it)."""
TAGS_STOP = ("</search>", "</answer>")


def machine_line(threads: int) -> str:
    """One line naming the CPU count, torch threads and the load average (shared machine)."""
    import torch

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"{threads} torch thread(s), load average (1/5/15 min) {load}"
    )


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory (ru_maxrss, KiB on Linux) of this process or its children, MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def time_call(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> tuple[float, Any]:
    """Median wall seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones, and the
    last call's result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table (floats with 4 significant digits)."""

    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    cells = [[cell(x) for x in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def load_policy(kind: str, *, lora: bool = False, tmp: str | None = None) -> Any:
    """A CPU fp32 Policy: ``"smollm2"`` (the packaged SmolLM2-135M-Instruct) or ``"tiny"``
    (a 2-layer, 64-wide random Llama over the SmolLM2 tokenizer, built into ``tmp``)."""
    from transformers.utils import logging as hf_logging

    from igpo_agent.model.loading import build_tiny_model, load_tokenizer
    from igpo_agent.model.policy import LoraSettings, Policy

    hf_logging.disable_progress_bar()

    settings = LoraSettings(r=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    if kind == "smollm2":
        name = "smollm2-135m-instruct"
    elif kind == "tiny":
        folder = Path(tmp or tempfile.mkdtemp(prefix="igpo-bench-")) / "tiny"
        if not folder.is_dir():
            build_tiny_model(load_tokenizer("default"), folder, seed=0, init_std=0.1)
        name = str(folder)
    else:
        raise ValueError(f"unknown model {kind!r}; choose one of {MODELS}")
    return Policy.load(name, lora=settings if lora else None, device="cpu", dtype="float32", seed=0)


def make_env(top_k: int, doc_max_words: int, max_turns: int) -> Any:
    """The real search env over the default corpus and QA set (BM25, tags protocol)."""
    import gymnasium as gym

    return gym.make(
        "igpo_env:SearchQA-v0",
        max_episode_steps=max_turns,
        top_k=top_k,
        doc_max_words=doc_max_words,
    )


def scripted_trajectories(
    policy: Any,
    *,
    group: int,
    turns: int,
    question: int = 0,
    top_k: int = 3,
    doc_max_words: int = 100,
    seed: int = 0,
) -> list[Any]:
    """``group`` recorded episodes of one question on the real env with scripted agent turns.

    Turns 0..turns-2 search (episode g queries a seeded shuffle of the question's words, so
    the episodes retrieve different documents); the last turn answers (the gold for even g,
    a wrong guess for odd g). Token ids are recorded as ``igpo_agent.rollout.episodes`` records them:
    the prompt through ``policy_prompt_fn``, each action ``encode(text)``, each observation
    ``encode(obs)`` (no special tokens), with prompt/action/observation spans.
    """
    import random

    from igpo_agent.model.prompts import policy_prompt_fn
    from igpo_agent.rollout.trajectory import Span, Trajectory

    env = make_env(top_k, doc_max_words, turns)
    prompt_fn = policy_prompt_fn(policy, "tags")
    tok = policy.tokenizer
    out = []
    for g in range(group):
        obs, info = env.reset(seed=seed + g, options={"index": question})
        prompt = prompt_fn(obs)
        traj = Trajectory(
            question=info["question"],
            answers=list(info["answers"]),
            token_ids=list(prompt),
            spans=[Span("prompt", 0, len(prompt), -1)],
            sample_logprobs=[0.0] * len(prompt),
            qid=str(info.get("qid", "")),
        )
        words = info["question"].rstrip("?").split()
        rng = random.Random(seed * 1000 + g)
        for t in range(turns):
            if t < turns - 1:
                query = " ".join(rng.sample(words, k=max(1, len(words) - rng.randint(0, 2))))
                text = f"<think>I should look up part {t + 1}.</think>\n<search>{query}</search>"
            else:
                guess = info["answers"][0] if g % 2 == 0 else "I do not know"
                text = f"<think>The documents answer it.</think>\n<answer>{guess}</answer>"
            ids = tok.encode(text, add_special_tokens=False)
            start = len(traj.token_ids)
            traj.token_ids += ids
            traj.sample_logprobs += [0.0] * len(ids)
            traj.spans.append(Span("action", start, len(traj.token_ids), t))
            traj.turn_texts.append(text)
            obs, reward, terminated, truncated, step_info = env.step(text)
            traj.turn_kinds.append(str(step_info.get("action")))
            if terminated or truncated:
                traj.answered = bool(terminated)
                traj.outcome_f1 = float(reward)
                break
            obs_ids = tok.encode(obs, add_special_tokens=False)
            start = len(traj.token_ids)
            traj.token_ids += obs_ids
            traj.sample_logprobs += [0.0] * len(obs_ids)
            traj.spans.append(Span("observation", start, len(traj.token_ids), t))
            traj.observations.append(obs)
        out.append(traj)
    env.close()
    return out
