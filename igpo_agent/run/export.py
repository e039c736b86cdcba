"""IGPO-scored batches in a trainer-neutral format, for verl-, OpenRLHF- or TRL-style trainers.

``python -m igpo_agent.train --export_batches_every N`` writes every N-th step's batch to
``RUN_DIR/batches/step-N.jsonl``: one JSON object per rollout with the exact token ids the
policy saw and sampled, which of them it generated (the action mask), the per-token
advantage IGPO's loss reads, the turn spans, and the per-turn beliefs, information gains,
rewards and returns. A trainer that cannot run this project's rollouts can still train on
its advantages: read the file with :func:`read_batch` and pad it with :func:`to_tensors`
(verl's ``DataProto`` layout: left-padded prompts, right-padded responses). The format is
documented field by field in docs/EXPORT.md; ``SCHEMA`` names its version.

Why JSONL: one line per rollout streams, diffs and survives a crash mid-file (the file is
written atomically anyway); ids and float32 values round-trip exactly through JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from igpo_agent.algo.advantages import TurnAdvantages, token_advantages
from igpo_agent.rollout.trajectory import Trajectory

SCHEMA = "igpo-batch/1"
_PER_TOKEN = ("input_ids", "action_mask", "advantages", "sample_logprobs")
_PER_TURN = ("kinds", "beliefs", "ig", "rewards", "returns")


def batch_records(
    trajs: Sequence[Trajectory],
    adv: TurnAdvantages,
    values: torch.Tensor,
    outcome: torch.Tensor,
    *,
    step: int,
    algo: str,
    temperature: float,
    rank: int = 0,
) -> list[dict[str, Any]]:
    """One export record per trajectory of a scored batch (see docs/EXPORT.md).

    ``adv`` and ``outcome`` are :func:`igpo_agent.learn.learner.compute_advantages`'s results and
    ``values`` the beliefs v_t it was given; the per-token ``advantages`` are
    :func:`igpo_agent.algo.advantages.token_advantages` of ``adv.returns``, the tensor
    :func:`igpo_agent.learn.learner.policy_update` trains on.
    """
    if not len(trajs) == adv.returns.shape[0] == values.shape[0] == outcome.shape[0]:
        raise ValueError(
            f"{len(trajs)} trajectories but advantages for {adv.returns.shape[0]}, beliefs "
            f"for {values.shape[0]} and outcomes for {outcome.shape[0]}: pass one batch"
        )
    out = []
    for i, t in enumerate(trajs):
        n = t.num_turns
        turns = torch.tensor([t.token_turns()], dtype=torch.long)
        per_token = token_advantages(adv.returns[i : i + 1].detach().float(), turns)[0]
        out.append(
            {
                "schema": SCHEMA,
                "step": int(step),
                "rank": int(rank),
                "group": int(t.group),
                "qid": t.qid,
                "question": t.question,
                "answers": list(t.answers),
                "algo": algo,
                "temperature": float(temperature),
                "input_ids": list(t.token_ids),
                "prompt_len": t.prompt_len,
                "action_mask": t.action_mask(),
                "advantages": per_token.tolist(),
                "sample_logprobs": [float(x) for x in t.sample_logprobs],
                "spans": [[s.kind, s.start, s.end, s.turn] for s in t.spans],
                "turns": {
                    "kinds": list(t.turn_kinds[:n]),
                    "beliefs": values[i, :n].tolist(),
                    "ig": adv.ig[i, :n].tolist(),
                    "rewards": adv.raw[i, :n].tolist(),
                    "returns": adv.returns[i, :n].tolist(),
                },
                "outcome_reward": float(outcome[i]),
                "outcome_f1": float(t.outcome_f1),
                "answered": bool(t.answered),
                "format_ok": bool(t.format_ok),
                "truncated": bool(t.truncated or t.context_truncated),
                "search_failures": int(t.search_failures),
            }
        )
    return out


def check_record(rec: Mapping[str, Any], where: str = "record") -> None:
    """Raise ``ValueError`` naming the field when ``rec`` is not a valid export record."""
    if rec.get("schema") != SCHEMA:
        raise ValueError(f"{where}: schema {rec.get('schema')!r}, this reader knows {SCHEMA!r}")
    missing = [k for k in (*_PER_TOKEN, "prompt_len", "spans", "turns") if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    n = len(rec["input_ids"])
    bad = [k for k in _PER_TOKEN[1:] if len(rec[k]) != n]
    if bad:
        raise ValueError(f"{where}: {', '.join(bad)} must have one entry per token ({n} input_ids)")
    if not 0 <= rec["prompt_len"] <= n or any(rec["action_mask"][: rec["prompt_len"]]):
        raise ValueError(f"{where}: prompt_len {rec['prompt_len']} disagrees with the action mask")
    if any(a != 0 and m == 0 for a, m in zip(rec["advantages"], rec["action_mask"], strict=True)):
        raise ValueError(f"{where}: a non-zero advantage on a token outside the action mask")
    turns = rec["turns"]
    lengths = {k: len(turns.get(k, ())) for k in _PER_TURN}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{where}: per-turn fields differ in length: {lengths}")


def read_batch(path: str | Path) -> list[dict[str, Any]]:
    """The records of one exported ``step-N.jsonl``, each checked (:func:`check_record`)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for k, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{k}: not JSON ({e.msg})") from e
            check_record(rec, f"{path}:{k}")
            out.append(rec)
    return out


def exported_steps(run_dir: str | Path) -> dict[int, Path]:
    """``{step: path}`` of the batches a run exported (``RUN_DIR/batches/step-N.jsonl``)."""
    folder = Path(run_dir) / "batches"
    out = {}
    for p in folder.glob("step-*.jsonl"):
        suffix = p.stem.removeprefix("step-")
        if suffix.isdigit():
            out[int(suffix)] = p
    return dict(sorted(out.items()))


def to_tensors(records: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad records into verl's ``DataProto`` layout (all rows of one batch).

    - ``prompts`` (N, P): prompt tokens, left-padded; ``responses`` (N, R): everything
      after the prompt (actions and observations), right-padded.
    - ``input_ids``/``attention_mask``/``position_ids`` (N, P + R): the two side by side.
    - ``response_mask`` (N, R): 1 on tokens the agent generated (train on these only).
    - ``advantages`` (N, R) float32: IGPO's per-token advantage (0 off the mask).
    - ``old_log_probs`` (N, R) float32: the sampler's log-probs (temperature-scaled).
    """
    if not records:
        raise ValueError("no records to pad")
    for k, rec in enumerate(records):
        check_record(rec, f"record {k}")
    n = len(records)
    p_len = max(r["prompt_len"] for r in records)
    r_len = max(len(r["input_ids"]) - r["prompt_len"] for r in records)
    prompts = torch.full((n, p_len), pad_id, dtype=torch.long)
    responses = torch.full((n, r_len), pad_id, dtype=torch.long)
    p_mask = torch.zeros(n, p_len, dtype=torch.long)
    r_mask = torch.zeros(n, r_len, dtype=torch.long)
    out_f = {k: torch.zeros(n, r_len, dtype=torch.float32) for k in ("advantages", "lp")}
    resp_mask = torch.zeros(n, r_len, dtype=torch.long)
    for i, rec in enumerate(records):
        pl, ids = rec["prompt_len"], rec["input_ids"]
        rl = len(ids) - pl
        if pl:
            prompts[i, p_len - pl :] = torch.tensor(ids[:pl])
            p_mask[i, p_len - pl :] = 1
        if rl:
            responses[i, :rl] = torch.tensor(ids[pl:])
            r_mask[i, :rl] = 1
            resp_mask[i, :rl] = torch.tensor(rec["action_mask"][pl:])
            out_f["advantages"][i, :rl] = torch.tensor(rec["advantages"][pl:])
            out_f["lp"][i, :rl] = torch.tensor(rec["sample_logprobs"][pl:])
    attention = torch.cat([p_mask, r_mask], dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention,
        "position_ids": (attention.cumsum(1) - 1).clamp(min=0),
        "response_mask": resp_mask,
        "advantages": out_f["advantages"],
        "old_log_probs": out_f["lp"],
    }
