"""What a training run changed, with its uncertainty: the summary printed at the end of a run.

Reads what the run wrote: ``RUN_DIR/eval/step-N.jsonl`` (one greedy episode per eval
question, the same questions at every evaluation) and ``RUN_DIR/metrics.jsonl``. Reports

- dev F1 and format errors before and after, each with its 95% interval, and the paired
  difference after - before over the same questions (paired bootstrap): the number that
  says whether training helped, and by how much it may have;
- the training rollouts of the first and last windows of steps (format errors with Wilson
  intervals, mean reward): what RL moves first, with the window stated.

The numbers are also written to ``RUN_DIR/summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from igpo_agent.algo.stats import Interval, mean_ci, paired_diff_ci, wilson_ci
from igpo_agent.run import logging_utils as K

EVAL_DIR = "eval"
SUMMARY_FILE = "summary.json"


def episode_record(traj: Any) -> dict[str, Any]:
    """One evaluation episode as a flat record (scores in [0, 1])."""
    m = traj.answer_metrics
    return {
        "qid": traj.qid,
        "f1": float(m.get("f1", 0.0)),
        "em": float(m.get("em", 0.0)),
        "format_ok": bool(traj.format_ok and traj.answered),
        "searches": sum(k == "search" for k in traj.turn_kinds),
        "turns": traj.num_turns,
        "answer": traj.answer_text,
    }


def write_eval_records(run_dir: str | Path, name: str, records: Sequence[dict]) -> Path:
    """``RUN_DIR/eval/NAME.jsonl``, one record per question."""
    path = Path(run_dir) / EVAL_DIR / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_eval_records(run_dir: str | Path, name: str) -> list[dict[str, Any]] | None:
    """The records of ``write_eval_records``, or None when that evaluation did not run."""
    path = Path(run_dir) / EVAL_DIR / f"{name}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_comparison(before: Sequence[dict], after: Sequence[dict]) -> dict[str, Interval]:
    """F1 / format errors before and after, and their paired differences (same questions)."""
    by_qid = {r["qid"]: r for r in before}
    pairs = [(by_qid[r["qid"]], r) for r in after if r["qid"] in by_qid]
    if not pairs:
        raise ValueError("the two evaluations share no question")
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]

    def err(rs: Sequence[dict]) -> list[float]:
        return [float(not r["format_ok"]) for r in rs]

    return {
        "f1_before": mean_ci([r["f1"] for r in a]),
        "f1_after": mean_ci([r["f1"] for r in b]),
        "f1_diff": paired_diff_ci([r["f1"] for r in a], [r["f1"] for r in b]),
        "format_errors_before": wilson_ci(int(sum(err(a))), len(a)),
        "format_errors_after": wilson_ci(int(sum(err(b))), len(b)),
        "format_errors_diff": paired_diff_ci(err(a), err(b)),
    }


def training_windows(records: Sequence[dict], window: int) -> dict[str, Any] | None:
    """Format errors (Wilson) and mean reward of the rollouts of the first and last
    ``window`` training steps; None with fewer than two windows' worth of steps."""
    steps = [r for r in records if K.FORMAT_ERROR_RATE in r and r.get("step", 0) > 0]
    if window < 1 or len(steps) < 2 * window:
        return None
    seen = [0] + [int(r[K.ROLLOUTS_SEEN]) for r in steps]
    sizes = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    out: dict[str, Any] = {"window_steps": window}
    for name, part, n in (
        ("first", steps[:window], sizes[:window]),
        ("last", steps[-window:], sizes[-window:]),
    ):
        total = sum(n)
        errors = round(sum(r[K.FORMAT_ERROR_RATE] * k for r, k in zip(part, n, strict=True)))
        reward = sum(r[K.REWARD_MEAN] * k for r, k in zip(part, n, strict=True)) / total
        out[name] = {
            "rollouts": total,
            "format_errors": wilson_ci(errors, total),
            "reward_mean": reward,
            "steps": [int(r["step"]) for r in part],
        }
    return out


def run_summary(run_dir: str | Path, steps: int) -> str:
    """The printed summary of a finished run ("" when it has nothing to compare)."""
    run_dir = Path(run_dir)
    lines: list[str] = []
    data: dict[str, Any] = {}
    before = read_eval_records(run_dir, "step-0")
    after = read_eval_records(run_dir, f"step-{steps}")
    if before and after and steps > 0:
        c = eval_comparison(before, after)
        data["eval"] = {k: v.__dict__ for k, v in c.items()}
        n = c["f1_diff"].n
        verdict = "resolved" if c["f1_diff"].excludes_zero() else "not resolved at this size"
        lines += [
            f"Greedy eval, {n} questions (95% intervals; paired = same questions):",
            f"  F1             before {c['f1_before'].fmt()}  after {c['f1_after'].fmt()}",
            f"                 after - before {c['f1_diff'].fmt()}  ({verdict})",
            f"  format errors  before {c['format_errors_before'].fmt()}  "
            f"after {c['format_errors_after'].fmt()}  "
            f"after - before {c['format_errors_diff'].fmt()}",
        ]
    metrics = K.read_metrics(run_dir) if (run_dir / K.METRICS_FILE).is_file() else []
    win = training_windows(metrics, max(1, steps // 3))
    if win is not None:
        data["training"] = {
            k: ({**v, "format_errors": v["format_errors"].__dict__} if isinstance(v, dict) else v)
            for k, v in win.items()
        }
        f, last = win["first"], win["last"]
        lines += [
            f"Training rollouts, first vs last {win['window_steps']} steps "
            f"({f['rollouts']} vs {last['rollouts']} rollouts, sampled):",
            f"  format errors  {f['format_errors'].fmt()} -> {last['format_errors'].fmt()}",
            f"  mean reward    {f['reward_mean']:.3f} -> {last['reward_mean']:.3f}",
        ]
    if not lines:
        return ""
    (run_dir / SUMMARY_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return "\n".join(["", "=== what training changed ===", *lines, ""])
