"""MetricsLogger (JSONL, TensorBoard, progress bar) and RolloutDumper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from igpo_agent.rollout.trajectory import Span, Trajectory
from igpo_agent.run import logging_utils as lu
from igpo_agent.run.logging_utils import MetricsLogger, RolloutDumper, read_metrics, rollout_record


def test_jsonl_lines_numbers_and_nan(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, total_steps=3, progress=False) as log:
        log.log(1, {lu.OUTCOME_F1: 0.5, lu.KL: float("nan"), lu.TOKENS_PER_S: np.float32(12.5)})
        log.log(2, {lu.POLICY_LOSS: torch.tensor(-0.25), lu.ig_turn_key(0): math.inf, "x": True})
        # the file is flushed line by line: readable before close
        assert len(read_metrics(tmp_path)) == 2
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    first, second = [json.loads(line) for line in text.splitlines()]
    assert first["step"] == 1 and first[lu.OUTCOME_F1] == 0.5 and first[lu.KL] is None
    assert first[lu.TOKENS_PER_S] == 12.5 and first["wall_s"] >= 0
    assert second[lu.POLICY_LOSS] == -0.25 and second["charts/ig_turn_0"] is None
    assert second["x"] == 1


def test_bad_metric_values_are_clear(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, total_steps=1, progress=False) as log:
        with pytest.raises(TypeError, match="'charts/outcome_f1' must be a number"):
            log.log(1, {lu.OUTCOME_F1: "high"})
        with pytest.raises(TypeError, match="not a scalar"):
            log.log(1, {lu.KL: torch.ones(3)})
        with pytest.raises(ValueError, match="reserved"):
            log.log(1, {"step": 3})
    with pytest.raises(RuntimeError, match="closed"):
        log.log(2, {lu.KL: 0.1})
    with pytest.raises(ValueError, match="turn indices start at 0"):
        lu.ig_turn_key(-1)


def test_metric_keys_are_documented():
    keys = [v for k, v in vars(lu).items() if k.isupper() and isinstance(v, str) and "/" in v]
    for key in keys:
        if key == lu.IG_TURN_PREFIX:
            assert key + "{k}" in lu.METRICS
        else:
            assert key in lu.METRICS, key
    assert set(lu.TIME_SPLIT_KEYS) <= set(lu.METRICS)


def test_resume_truncates_records_past_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, total_steps=5, progress=False) as log:
        for step in range(0, 5):
            log.log(step, {lu.OUTCOME_F1: step / 10})
    with MetricsLogger(
        tmp_path, tensorboard=False, total_steps=5, resume_step=2, progress=False
    ) as log:
        log.log(3, {lu.OUTCOME_F1: 0.9})
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    # a fresh run in the same folder starts a new log and keeps the old one aside
    with MetricsLogger(tmp_path, tensorboard=False, total_steps=5, progress=False) as log:
        log.log(1, {lu.OUTCOME_F1: 0.1})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert len(read_metrics(tmp_path / "metrics.jsonl.prev")) == 4


def test_read_metrics_skips_torn_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "a": 1}\n{"step": 2, "a"')
    with pytest.warns(UserWarning, match="unreadable line"):
        assert read_metrics(tmp_path) == [{"step": 1, "a": 1}]
    with pytest.raises(FileNotFoundError, match="train a run first"):
        read_metrics(tmp_path / "nothing")


def test_progress_bar_moves_and_shows_postfix(tmp_path, capsys):
    log = MetricsLogger(tmp_path, tensorboard=False, total_steps=4)
    log.log(0, {lu.EVAL_F1: 0.1})  # the "before" evaluation does not move the bar
    assert log._bar.n == 0
    log.log(1, {lu.OUTCOME_F1: 0.25, lu.KL: 0.001})
    log.log(2, {lu.OUTCOME_F1: 0.5})
    log.write("hello from the trainer")
    assert log._bar.n == 2
    log.close()
    err = capsys.readouterr().err
    assert "f1=0.5" in err and "kl=0.001" in err and "eval_f1=0.1" in err
    assert "2/4" in err and "hello from the trainer" in err


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "r", tensorboard=True, total_steps=2, enabled=False)
    assert log.log(1, {lu.KL: 1.0}) == {}
    log.close()
    assert not (tmp_path / "r").exists()


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, tensorboard=True, total_steps=2, progress=False) as log:
        log.log(1, {lu.OUTCOME_F1: 0.25, lu.KL: float("nan")})
        log.log(2, {lu.OUTCOME_F1: 0.75})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert lu.KL not in acc.Tags()["scalars"]  # NaN skipped, not written as a point
    values = [(e.step, e.value) for e in acc.Scalars(lu.OUTCOME_F1)]
    assert values == [(1, 0.25), (2, 0.75)]


def test_missing_tensorboard_notice_once(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(lu, "_TB_NOTICE_SHOWN", False)
    for i in range(2):
        with MetricsLogger(tmp_path / str(i), tensorboard=True, total_steps=1, progress=False) as g:
            g.log(1, {lu.KL: 0.5})
    assert capsys.readouterr().err.count("tensorboard is not installed") == 1
    assert read_metrics(tmp_path / "1")[0][lu.KL] == 0.5


def _traj() -> Trajectory:
    return Trajectory(
        question="Who wrote Hamlet?",
        answers=["William Shakespeare", "Shakespeare"],
        token_ids=list(range(12)),
        spans=[
            Span("prompt", 0, 3, -1),
            Span("action", 3, 6, 0),
            Span("observation", 6, 9, 0),
            Span("action", 9, 12, 1),
        ],
        turn_texts=["<search>hamlet author</search>", "<answer>Shakespeare</answer>"],
        turn_kinds=["search", "answer"],
        observations=["<information>Hamlet ... Shakespeare</information>"],
        outcome_f1=1.0,
        answered=True,
        qid="q7",
        group=1,
    )


def test_rollout_dump(tmp_path):
    traj = _traj()
    rec = rollout_record(traj, [0.3, 1.0], torch.tensor([1.2, float("nan")]).tolist(), ig=[0.3])
    path = RolloutDumper(tmp_path).dump(5, [rec, rec])
    assert path == tmp_path / "rollouts" / "step-5.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["question"] == "Who wrote Hamlet?" and first["answers"][1] == "Shakespeare"
    assert [t["kind"] for t in first["turns"]] == ["search", "answer"]
    assert first["turns"][0]["observation"].startswith("<information>")
    assert first["turns"][1]["observation"] is None
    assert [t["reward"] for t in first["turns"]] == [0.3, 1.0]
    assert first["turns"][0]["advantage"] == pytest.approx(1.2)
    assert first["turns"][1]["advantage"] is None  # NaN -> null
    assert first["ig"] == [0.3] and first["qid"] == "q7" and first["num_tokens"] == 12
    assert not list((tmp_path / "rollouts").glob("*.tmp"))


def test_rollout_record_checks_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 turns but 1 rewards"):
        rollout_record(_traj(), [0.1], [0.1, 0.2])
    with pytest.raises(TypeError, match="must be dicts"):
        RolloutDumper(tmp_path).dump(1, ["not a dict"])
    assert RolloutDumper(tmp_path, enabled=False).dump(1, [{}]) is None
