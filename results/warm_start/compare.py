"""Paired comparison of two warm starts' evaluations on the same questions.

    python results/warm_start/compare.py results/warm_start/eval-64.jsonl results/warm_start/eval-256.jsonl

Reads the sft evaluations' per-question records (``OUT/eval_after.jsonl``, copied here as
``eval-N.jsonl``) and prints B - A: F1 and format errors with paired 95% bootstrap
intervals, the questions that got better / worse, and the smallest F1 difference this
comparison resolves with 80% power. An unanswered question scores F1 0.
"""

from __future__ import annotations

import json
import sys

from igpo_agent.algo.stats import min_detectable_difference, paired_diff_ci


def load(path: str) -> dict[str, dict]:
    with open(path, encoding="utf-8") as fh:
        return {r["qid"]: r for r in map(json.loads, fh)}


def main(a_path: str, b_path: str) -> None:
    a, b = load(a_path), load(b_path)
    qids = sorted(set(a) & set(b))
    fa = [a[q].get("f1", 0.0) for q in qids]
    fb = [b[q].get("f1", 0.0) for q in qids]
    f1 = paired_diff_ci(fa, fb)
    fmt = paired_diff_ci(
        [float(not a[q]["format_ok"]) for q in qids], [float(not b[q]["format_ok"]) for q in qids]
    )
    d = [y - x for x, y in zip(fa, fb, strict=True)]
    print(
        f"{len(qids)} paired questions, {b_path} - {a_path}: F1 {f1.fmt()} points, "
        f"format errors {fmt.fmt()} points; better {sum(x > 0 for x in d)}, "
        f"worse {sum(x < 0 for x in d)}; resolvable (80% power): "
        f"+-{100 * min_detectable_difference(d):.1f} points"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
