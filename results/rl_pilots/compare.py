"""One table of the RL pilots: each arm against its warm start, on the same dev questions.

    python results/rl_pilots/compare.py results/rl_pilots/ARM1 results/rl_pilots/ARM2 ...

Each ARM folder holds what ``run.sh`` copied: ``metrics.jsonl``, ``eval/step-0.jsonl`` (the
warm start, before RL) and ``eval/step-N.jsonl`` (after), ``probe/step-K.jsonl``. Printed
per arm: sampled rollouts, dev F1 before -> after with the paired 95% bootstrap interval of
after - before, answer flips, F1 where the gold was retrieved, format errors, the probe's
reward first -> last with its paired interval, the share of sampled groups with all-equal
outcomes, the share of trained tokens with a non-zero advantage, and wall time; from the
second arm on, its final dev F1 minus the first arm's on the same questions (paired). With
--markdown, a Markdown table instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from igpo_agent.algo.stats import paired_diff_ci
from igpo_agent.run.probe import paired_reward_change
from igpo_agent.run.summary import answer_flips


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _steps(folder: Path, sub: str) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (folder / sub).glob("step-*.jsonl"))


def _final_eval(folder: Path) -> list[dict]:
    return _jsonl(folder / "eval" / f"step-{_steps(folder, 'eval')[-1]}.jsonl")


def arm_row(folder: Path, base: Path | None = None) -> dict[str, str]:
    """The comparison figures of one pilot arm, formatted (``base``: the arm to compare with)."""
    steps = _steps(folder, "eval")
    before = _jsonl(folder / "eval" / f"step-{steps[0]}.jsonl")
    after = _jsonl(folder / "eval" / f"step-{steps[-1]}.jsonl")
    b = {r["qid"]: r for r in before}
    a = {r["qid"]: r for r in after}
    qids = sorted(set(a) & set(b))
    diff = paired_diff_ci([b[q]["f1"] for q in qids], [a[q]["f1"] for q in qids])
    f1_b = sum(b[q]["f1"] for q in qids) / len(qids)
    f1_a = sum(a[q]["f1"] for q in qids) / len(qids)
    flips = answer_flips(before, after)
    retrieved = [q for q in qids if b[q].get("gold_retrieved")]
    ret_a = [a[q] for q in retrieved if a[q].get("gold_retrieved")]
    metrics = _jsonl(folder / "metrics.jsonl")
    train = [m for m in metrics if "charts/all_equal_outcome_groups" in m]
    probes = _steps(folder, "probe")
    probe = "-"
    if len(probes) >= 2:
        first = _jsonl(folder / "probe" / f"step-{probes[0]}.jsonl")
        last = _jsonl(folder / "probe" / f"step-{probes[-1]}.jsonl")
        change = paired_reward_change(first, last)
        mean = [sum(r["reward"] for r in x) / len(x) for x in (first, last)]
        probe = f"{mean[0]:.3f} -> {mean[1]:.3f} ({change.fmt(scale=1.0, digits=3)})"
    seen = max((m.get("charts/rollouts_seen", 0) for m in metrics), default=0)
    wall = max((m.get("wall_s", 0) for m in metrics), default=0)
    equal = sum(m["charts/all_equal_outcome_groups"] for m in train) / max(len(train), 1)
    nonzero = sum(m.get("charts/nonzero_advantage_tokens", 0) for m in train) / max(len(train), 1)
    versus = "-"
    if base is not None and base != folder:
        other = {r["qid"]: r for r in _final_eval(base)}
        shared = [q for q in qids if q in other]
        versus = paired_diff_ci(
            [other[q]["f1"] for q in shared], [a[q]["f1"] for q in shared]
        ).fmt()
    fmt = sum(not r["format_ok"] for r in after) / len(after)
    f1_ret = sum(r["f1"] for r in ret_a) / max(len(ret_a), 1)
    return {
        "arm": folder.name,
        "rollouts": f"{int(seen)}",
        "dev F1": f"{100 * f1_b:.1f} -> {100 * f1_a:.1f}",
        "after - before": diff.fmt(),
        "changed / better / worse": f"{flips['changed']} / {flips['better']} / {flips['worse']}",
        "F1 retrieved (after)": f"{100 * f1_ret:.1f} (n={len(ret_a)})",
        "format errors": f"{100 * fmt:.1f}%",
        "probe reward": probe,
        "all-equal groups": f"{100 * equal:.0f}%",
        "non-zero adv. tokens": f"{100 * nonzero:.0f}%",
        "after vs first arm": versus,
        "wall": f"{wall / 60:.0f} min",
    }


def main(argv: list[str]) -> None:
    markdown = "--markdown" in argv
    folders = [Path(p) for p in argv if p != "--markdown"]
    rows = [arm_row(f, folders[0]) for f in folders]
    if not rows:
        raise SystemExit(__doc__)
    keys = list(rows[0])
    if markdown:
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rows:
            print("| " + " | ".join(r[k] for k in keys) + " |")
        return
    for r in rows:
        print("; ".join(f"{k}: {r[k]}" for k in keys))


if __name__ == "__main__":
    main(sys.argv[1:])
