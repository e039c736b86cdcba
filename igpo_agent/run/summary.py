"""What a training run changed, with its uncertainty: the summary printed at the end of a run.

Reads what the run wrote: ``RUN_DIR/eval/step-N.jsonl`` (one greedy episode per eval
question, the same questions at every evaluation) and ``RUN_DIR/metrics.jsonl``. Reports

- dev F1 and format errors before and after, each with its 95% interval, and the paired
  difference after - before over the same questions (paired bootstrap): the number that
  says whether training helped, and by how much it may have;
- where the answers went: how many of the same questions changed answer, got better or
  worse, and the smallest difference an evaluation of this size could resolve (80% power
  at the 5% level, from the spread of the per-question changes);
- F1 where a retrieved document held a gold alias and where none did, and the retrieval
  recall, before and after: whether a change came from searching or from reading;
- the fixed probe of training questions at its first and last point (``probe/...``);
- the training rollouts of the first and last windows of steps (format errors with Wilson
  intervals, mean reward): what RL moves first, with the window stated.

The numbers are also written to ``RUN_DIR/summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from igpo_agent.algo.stats import (
    Interval,
    mean_ci,
    min_detectable_difference,
    paired_diff_ci,
    wilson_ci,
)
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
        "gold_retrieved": bool(getattr(traj, "gold_retrieved", False)),
        "stratum": getattr(traj, "article", "") or traj.dataset,
    }


def retrieval_split(records: Sequence[dict]) -> dict[str, Any]:
    """Retrieval recall (Wilson) and F1 on the questions whose retrieved documents held a
    gold alias and on those whose did not (bootstrap; None for an empty subset).

    The F1 a reader can gain by reading better is bounded by the first subset; the second
    is what better searching could add. Records need ``gold_retrieved`` and ``f1``."""
    if not records:
        raise ValueError("retrieval_split needs at least one record")
    hit = [r for r in records if r.get("gold_retrieved")]
    miss = [r for r in records if not r.get("gold_retrieved")]
    return {
        "recall": wilson_ci(len(hit), len(records)),
        "f1_retrieved": mean_ci([r["f1"] for r in hit]) if hit else None,
        "f1_not_retrieved": mean_ci([r["f1"] for r in miss]) if miss else None,
    }


def retrieval_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The logged retrieval split of an evaluation's records (:func:`retrieval_split`)."""
    split = retrieval_split(records)
    out = {K.EVAL_GOLD_RETRIEVED: split["recall"].value}
    for iv, keys in (
        (
            split["f1_retrieved"],
            (K.EVAL_F1_RETRIEVED, K.EVAL_F1_RETRIEVED_CI_LOW, K.EVAL_F1_RETRIEVED_CI_HIGH),
        ),
        (
            split["f1_not_retrieved"],
            (
                K.EVAL_F1_NOT_RETRIEVED,
                K.EVAL_F1_NOT_RETRIEVED_CI_LOW,
                K.EVAL_F1_NOT_RETRIEVED_CI_HIGH,
            ),
        ),
    ):
        if iv is not None:
            out.update(dict(zip(keys, (iv.value, iv.low, iv.high), strict=True)))
    return out


def retrieval_line(records: Sequence[dict]) -> str:
    """The retrieval split in one printed line."""
    s = retrieval_split(records)

    def part(name: str, iv: Interval | None) -> str:
        return f"{name} (n={iv.n}) {iv.fmt()}" if iv is not None else f"{name} (n=0) -"

    return (
        f"gold in a retrieved document {s['recall'].fmt()}%; F1 "
        f"{part('where it was', s['f1_retrieved'])}, {part('where not', s['f1_not_retrieved'])}"
    )


def answer_flips(before: Sequence[dict], after: Sequence[dict]) -> dict[str, Any]:
    """How the answers to the same questions moved between two evaluations.

    ``changed``: the answer text (or its being well-formed) differs; ``better`` / ``worse``:
    F1 went up / down; ``n``: questions in both. ``f1_diff``: the paired bootstrap interval
    of after - before; ``mde``: the smallest true F1 difference this comparison resolves
    with 80% power at the 5% level, from the spread of the per-question differences
    (:func:`igpo_agent.algo.stats.min_detectable_difference`; None below 2 questions)."""
    by_qid = {r["qid"]: r for r in before}
    pairs = [(by_qid[r["qid"]], r) for r in after if r["qid"] in by_qid]
    if not pairs:
        raise ValueError("the two evaluations share no question")
    diffs = [b["f1"] - a["f1"] for a, b in pairs]
    changed = sum(
        a.get("answer") != b.get("answer") or a.get("format_ok") != b.get("format_ok")
        for a, b in pairs
    )
    return {
        "n": len(pairs),
        "changed": changed,
        "better": sum(d > 0 for d in diffs),
        "worse": sum(d < 0 for d in diffs),
        "changed_rate": wilson_ci(changed, len(pairs)),
        "f1_diff": paired_diff_ci([a["f1"] for a, _ in pairs], [b["f1"] for _, b in pairs]),
        "mde": min_detectable_difference(diffs) if len(pairs) > 1 else None,
    }


def flips_line(flips: dict[str, Any]) -> str:
    """The answer flips in one printed line."""
    return (
        f"answers changed on {flips['changed']} of {flips['n']} questions "
        f"({flips['changed_rate'].fmt()}%): better {flips['better']}, worse {flips['worse']}"
    )


def mde_line(flips: dict[str, Any]) -> str:
    """What 'not resolved' means at this size: the power line of a paired comparison."""
    if flips["mde"] is None:
        return "too few questions to say what this comparison could resolve"
    if flips["mde"] == 0:
        return "no per-question F1 changed: no spread to say what this size could resolve"
    return (
        f"smallest F1 difference these {flips['n']} paired questions resolve (80% power, "
        f"5% level): +-{100 * flips['mde']:.1f} points"
    )


def write_records(run_dir: str | Path, subdir: str, name: str, records: Sequence[dict]) -> Path:
    """``RUN_DIR/SUBDIR/NAME.jsonl``, one JSON record a line (eval and probe records)."""
    path = Path(run_dir) / subdir / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_records(run_dir: str | Path, subdir: str, name: str) -> list[dict[str, Any]] | None:
    """The records of :func:`write_records`, or None when that file was never written."""
    path = Path(run_dir) / subdir / f"{name}.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_eval_records(run_dir: str | Path, name: str, records: Sequence[dict]) -> Path:
    """``RUN_DIR/eval/NAME.jsonl``, one record per question."""
    return write_records(run_dir, EVAL_DIR, name, records)


def read_eval_records(run_dir: str | Path, name: str) -> list[dict[str, Any]] | None:
    """The records of ``write_eval_records``, or None when that evaluation did not run."""
    return read_records(run_dir, EVAL_DIR, name)


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
        flips = answer_flips(before, after)
        data["flips"] = {
            k: (v.__dict__ if isinstance(v, Interval) else v) for k, v in flips.items()
        }
        lines += [f"  {flips_line(flips)}", f"  {mde_line(flips)}"]
        if all("gold_retrieved" in r for r in before + after):
            data["retrieval"] = {
                name: {
                    k: (v.__dict__ if isinstance(v, Interval) else v)
                    for k, v in retrieval_split(recs).items()
                }
                for name, recs in (("before", before), ("after", after))
            }
            lines += [
                f"  before: {retrieval_line(before)}",
                f"  after:  {retrieval_line(after)}",
            ]
    metrics = K.read_metrics(run_dir) if (run_dir / K.METRICS_FILE).is_file() else []
    probe = probe_change(metrics)
    if probe is not None:
        data["probe"] = probe
        first, last = probe["first"], probe["last"]
        lines += [
            f"Fixed probe ({first['questions']} training questions x {first['group_size']} "
            f"sampled rollouts, the same seeds each time), step {first['step']} -> "
            f"{last['step']}:",
            f"  mean reward    {_probe_fmt(first)} -> {_probe_fmt(last)}",
            *_probe_diff_lines(run_dir, probe),
            f"  pass@1 {100 * first['pass@1']:.1f} -> {100 * last['pass@1']:.1f}, "
            f"pass@G {100 * first['pass@G']:.1f} -> {100 * last['pass@G']:.1f}, "
            f"format errors {100 * first['format_errors']:.1f} -> "
            f"{100 * last['format_errors']:.1f} (%)",
        ]
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


def probe_change(records: Sequence[dict]) -> dict[str, Any] | None:
    """The first and last fixed-probe points logged in ``metrics.jsonl`` (None with fewer
    than two)."""
    points = [r for r in records if K.PROBE_REWARD in r]
    if len(points) < 2:
        return None

    def point(r: dict) -> dict[str, Any]:
        return {
            "step": int(r["step"]),
            "reward": r[K.PROBE_REWARD],
            "reward_ci": [r.get(K.PROBE_REWARD_CI_LOW), r.get(K.PROBE_REWARD_CI_HIGH)],
            "pass@1": r.get(K.PROBE_PASS_AT_1, float("nan")),
            "pass@G": r.get(K.PROBE_PASS_AT_G, float("nan")),
            "format_errors": r.get(K.PROBE_FORMAT_ERROR_RATE, float("nan")),
            "questions": int(r.get(K.PROBE_QUESTIONS, 0)),
            "group_size": int(r.get(K.PROBE_GROUP_SIZE, 0)),
        }

    return {"first": point(points[0]), "last": point(points[-1])}


def _probe_diff_lines(run_dir: Path, probe: dict[str, Any]) -> list[str]:
    """The paired last - first probe reward over the same questions, when both probes'
    records are on disk (and records it in ``probe``)."""
    from igpo_agent.run.probe import paired_reward_change, read_probe_records

    first = read_probe_records(run_dir, probe["first"]["step"])
    last = read_probe_records(run_dir, probe["last"]["step"])
    if not first or not last:
        return []
    diff = paired_reward_change(first, last)
    probe["reward_diff"] = diff.__dict__
    verdict = "resolved" if diff.excludes_zero() else "not resolved at this size"
    return [f"                 last - first {diff.fmt(1.0, 3)}  (paired, {verdict})"]


def _probe_fmt(p: dict[str, Any]) -> str:
    lo, hi = p["reward_ci"]
    if lo is None or hi is None:
        return f"{p['reward']:.3f}"
    return f"{p['reward']:.3f} [{lo:.3f}, {hi:.3f}]"
