"""The end-of-run summary: paired eval comparison and training windows, by hand."""

from __future__ import annotations

import json

import pytest

from igpo_agent.run import logging_utils as K
from igpo_agent.run.summary import (
    answer_flips,
    eval_comparison,
    flips_line,
    mde_line,
    read_eval_records,
    retrieval_line,
    retrieval_split,
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


def _ans(qid: str, f1: float, answer: str, retrieved: bool = False) -> dict:
    return {**_rec(qid, f1), "answer": answer, "gold_retrieved": retrieved}


def test_retrieval_split_by_hand():
    recs = [_ans("a", 1.0, "x", True), _ans("b", 0.5, "y", True), _ans("c", 0.0, "z")]
    s = retrieval_split(recs)
    assert s["recall"].value == pytest.approx(2 / 3) and s["recall"].n == 3
    assert s["f1_retrieved"].value == pytest.approx(0.75) and s["f1_retrieved"].n == 2
    assert s["f1_not_retrieved"].value == 0.0 and s["f1_not_retrieved"].n == 1
    assert retrieval_split([_ans("a", 1.0, "x")])["f1_retrieved"] is None
    assert "where it was (n=2) 75.0" in retrieval_line(recs)
    with pytest.raises(ValueError, match="at least one"):
        retrieval_split([])


def test_answer_flips_by_hand():
    before = [_ans("a", 0.0, "x"), _ans("b", 1.0, "y"), _ans("c", 0.5, "z"), _ans("d", 0, "w")]
    after = [_ans("a", 1.0, "X"), _ans("b", 0.0, "n"), _ans("c", 0.5, "z2"), _ans("d", 0, "w")]
    f = answer_flips(before, after)
    # a better, b worse, c changed at equal F1, d unchanged
    assert (f["n"], f["changed"], f["better"], f["worse"]) == (4, 3, 1, 1)
    assert f["f1_diff"].value == pytest.approx(0.0)
    # diffs [1, -1, 0, 0]: sd = sqrt(2/3); (1.96 + 0.8416) * sd / 2
    assert f["mde"] == pytest.approx(2.8016 * (2 / 3) ** 0.5 / 2, rel=1e-3)
    assert flips_line(f).startswith("answers changed on 3 of 4 questions")
    assert "+-" in mde_line(f)
    same = answer_flips(before, before)
    assert same["changed"] == 0 and same["mde"] == 0.0 and "no per-question" in mde_line(same)


def test_run_summary_adds_flips_power_and_retrieval(tmp_path):
    write_eval_records(tmp_path, "step-0", [_ans("a", 0.0, "x", True), _ans("b", 1.0, "y")])
    write_eval_records(tmp_path, "step-1", [_ans("a", 1.0, "z", True), _ans("b", 1.0, "y")])
    text = run_summary(tmp_path, 1)
    assert "answers changed on 1 of 2 questions" in text and "better 1, worse 0" in text
    assert "smallest F1 difference these 2 paired questions resolve" in text
    assert "before: gold in a retrieved document 50.0" in text
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["flips"]["better"] == 1 and data["retrieval"]["after"]["recall"]["value"] == 0.5
