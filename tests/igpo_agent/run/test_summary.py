"""The end-of-run summary: paired eval comparison and training windows, by hand."""

from __future__ import annotations

import json

import pytest

from igpo_agent.run import logging_utils as K
from igpo_agent.run.summary import (
    eval_comparison,
    read_eval_records,
    run_summary,
    training_windows,
    write_eval_records,
)


def _rec(qid: str, f1: float, ok: bool = True) -> dict:
    return {"qid": qid, "f1": f1, "em": float(f1 == 1.0), "format_ok": ok}


def test_eval_comparison_pairs_by_question():
    before = [_rec("a", 0.0, False), _rec("b", 0.5), _rec("c", 1.0)]
    after = [_rec("c", 1.0), _rec("b", 1.0), _rec("a", 0.0), _rec("z", 1.0)]  # z: unpaired
    c = eval_comparison(before, after)
    assert c["f1_diff"].n == 3 and c["f1_diff"].value == pytest.approx(0.5 / 3)
    assert c["f1_before"].value == pytest.approx(0.5) and c["f1_after"].value == pytest.approx(
        2 / 3
    )
    assert c["format_errors_before"].value == pytest.approx(1 / 3)
    assert c["format_errors_after"].value == 0.0
    with pytest.raises(ValueError, match="share no question"):
        eval_comparison([_rec("a", 1.0)], [_rec("b", 1.0)])


def test_training_windows_pool_rollouts():
    steps = [
        {"step": s, K.ROLLOUTS_SEEN: 8 * s, K.FORMAT_ERROR_RATE: fe, K.REWARD_MEAN: rw}
        for s, fe, rw in [(1, 0.5, -1.0), (2, 0.25, -0.5), (3, 0.0, 0.5), (4, 0.125, 0.25)]
    ]
    w = training_windows([{"step": 0, "eval/f1": 0.1}, *steps], 2)
    assert w["first"]["rollouts"] == 16 and w["last"]["rollouts"] == 16
    assert w["first"]["format_errors"].value == pytest.approx(6 / 16)  # 4 + 2 of 16
    assert w["last"]["format_errors"].value == pytest.approx(1 / 16)
    assert w["first"]["reward_mean"] == pytest.approx(-0.75)
    assert w["last"]["reward_mean"] == pytest.approx(0.375)
    assert training_windows(steps, 3) is None  # fewer than two windows of steps


def test_run_summary_prints_and_writes_json(tmp_path):
    write_eval_records(tmp_path, "step-0", [_rec("a", 0.0), _rec("b", 1.0)])
    write_eval_records(tmp_path, "step-2", [_rec("a", 1.0), _rec("b", 1.0)])
    assert read_eval_records(tmp_path, "step-1") is None
    lines = [{"step": 0, K.EVAL_F1: 0.5}]
    lines += [
        {"step": s, K.ROLLOUTS_SEEN: 4 * s, K.FORMAT_ERROR_RATE: 0.0, K.REWARD_MEAN: 0.1 * s}
        for s in (1, 2)
    ]
    (tmp_path / K.METRICS_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = run_summary(tmp_path, 2)
    assert "after - before 50.0 [0.0, 100.0]" in text
    assert "first vs last 1 steps (4 vs 4 rollouts" in text
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["eval"]["f1_diff"]["value"] == pytest.approx(0.5)
    assert run_summary(tmp_path / "nothing", 2) == ""
