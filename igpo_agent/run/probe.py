"""The fixed probe: the same training questions, sampled the same way, at every probe point.

A step's training reward says which questions were drawn (each step trains on new ones),
not how good the policy is. The probe holds that draw fixed: ``probe_questions`` training
questions (a stratified seeded sample, :mod:`igpo_agent.run.subsets`), ``G`` rollouts each
at the training temperature, with a generator and env seeds reset to the same values every
time. Between two probe points only the policy differs, so the probe's curve is the
learning curve of the training distribution, and two points can be compared question by
question (:func:`paired_reward_change`).

Reported (``probe/...`` in metrics.jsonl): mean outcome reward (the trainer's: F1 of a
well-formed answer, else the format penalty) with a 95% bootstrap interval over questions,
mean F1, pass@1 (share of rollouts whose answer is an exact match), pass@G (share of
questions with an exact match among their G rollouts) and the format-error rate. The
rollouts go to ``RUN_DIR/probe/step-N.jsonl``. The probe uses its own generator and seeds,
so it never changes what training samples: a run with the probe trains the same adapter as
one without.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from igpo_agent.algo.rewards import outcome_rewards
from igpo_agent.algo.stats import Interval, mean_ci, paired_diff_ci
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Trajectory
from igpo_agent.run import logging_utils as K
from igpo_agent.run.summary import read_records, write_records

PROBE_DIR = "probe"
_ENV_SEED_BASE = 7_919  # keeps the probe's env seeds apart from the training seeds


def run_probe(
    engine: Any,
    envs: Sequence[Any],
    indices: Sequence[int],
    *,
    group_size: int,
    settings: GenerationSettings,
    protocol: str,
    seed: int,
) -> list[Trajectory]:
    """``group_size`` sampled rollouts of each question index, generated in env-sized chunks
    with a generator seeded by ``seed`` and env seeds fixed by ``seed``: the same draw at
    every call, so two calls differ only by the policy."""
    per_chunk = len(envs) // group_size
    if per_chunk < 1:
        raise ValueError(f"the probe needs at least group_size={group_size} envs, got {len(envs)}")
    gen = torch.Generator().manual_seed(int(seed))
    out: list[Trajectory] = []
    for start in range(0, len(indices), per_chunk):
        chunk = indices[start : start + per_chunk]
        out += engine.rollout(
            envs[: len(chunk) * group_size],
            [{"index": int(i)} for i in chunk],
            protocol=protocol,
            group_size=group_size,
            settings=settings,
            generator=gen,
            seed=_ENV_SEED_BASE * (int(seed) + 1) + start * group_size,
        )
    return out


def probe_records(
    trajs: Sequence[Trajectory], indices: Sequence[int], group_size: int, format_penalty: float
) -> list[dict[str, Any]]:
    """One record per probe rollout: question index and qid, rollout number, outcome reward,
    F1, EM, well-formedness, the answer and whether the gold was retrieved."""
    if len(trajs) != len(indices) * group_size:
        raise ValueError(
            f"{len(trajs)} probe rollouts for {len(indices)} questions x G={group_size}"
        )
    rewards = outcome_rewards(
        [t.outcome_f1 for t in trajs],
        [t.answered for t in trajs],
        [t.format_ok for t in trajs],
        [t.truncated for t in trajs],
        format_penalty,
    ).tolist()
    return [
        {
            "index": int(indices[i // group_size]),
            "qid": t.qid,
            "rollout": i % group_size,
            "reward": float(r),
            "f1": float(t.answer_metrics.get("f1", 0.0)),
            "em": float(t.answer_metrics.get("em", 0.0)),
            "format_ok": bool(t.format_ok and t.answered),
            "answer": t.answer_text,
            "gold_retrieved": bool(t.gold_retrieved),
        }
        for i, (t, r) in enumerate(zip(trajs, rewards, strict=True))
    ]


def _per_question(records: Sequence[dict], key: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in records:
        out.setdefault(int(r["index"]), []).append(float(r[key]))
    return out


def probe_metrics(records: Sequence[dict], group_size: int) -> dict[str, float]:
    """The logged ``probe/...`` metrics of one probe's records (see the module docstring)."""
    if not records:
        raise ValueError("the probe has no rollouts")
    rewards = _per_question(records, "reward")
    q_means = [sum(v) / len(v) for v in rewards.values()]
    ci = mean_ci(q_means)
    ems = _per_question(records, "em")
    n = len(records)
    return {
        K.PROBE_REWARD: ci.value,
        K.PROBE_REWARD_CI_LOW: ci.low,
        K.PROBE_REWARD_CI_HIGH: ci.high,
        K.PROBE_F1: sum(r["f1"] for r in records) / n,
        K.PROBE_PASS_AT_1: sum(r["em"] >= 1.0 for r in records) / n,
        K.PROBE_PASS_AT_G: sum(any(e >= 1.0 for e in v) for v in ems.values()) / len(ems),
        K.PROBE_FORMAT_ERROR_RATE: sum(not r["format_ok"] for r in records) / n,
        K.PROBE_QUESTIONS: float(len(rewards)),
        K.PROBE_GROUP_SIZE: float(group_size),
    }


def write_probe_records(run_dir: str | Path, step: int, records: Sequence[dict]) -> Path:
    """``RUN_DIR/probe/step-STEP.jsonl``."""
    return write_records(run_dir, PROBE_DIR, f"step-{step}", records)


def read_probe_records(run_dir: str | Path, step: int) -> list[dict[str, Any]] | None:
    """The records of :func:`write_probe_records`, or None when that probe did not run."""
    return read_records(run_dir, PROBE_DIR, f"step-{step}")


def paired_reward_change(first: Sequence[dict], last: Sequence[dict]) -> Interval:
    """last - first of the per-question mean probe reward, paired over the same questions
    (bootstrap over questions): whether the policy got better on the probe."""
    a, b = _per_question(first, "reward"), _per_question(last, "reward")
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two probes share no question")
    mean = [sum(v) / len(v) for v in (a[i] for i in common)]
    mean_b = [sum(v) / len(v) for v in (b[i] for i in common)]
    return paired_diff_ci(mean, mean_b)
