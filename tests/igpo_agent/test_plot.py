"""Plots from a synthetic metrics.jsonl written through the real MetricsLogger."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from igpo_agent.plot import eval_curve, main, plot_comparison, plot_run
from igpo_agent.run import logging_utils as lu
from igpo_agent.run.logging_utils import MetricsLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _small_run(run_dir: Path, steps: int = 4) -> None:
    """A run with only the outcome and eval curves (cheap to render)."""
    with MetricsLogger(run_dir, tensorboard=False, total_steps=steps, progress=False) as log:
        for s in range(steps + 1):
            log.log(s, {lu.OUTCOME_F1: 0.1 * s, lu.EVAL_F1: 0.05 * s, lu.ROLLOUTS_SEEN: 8 * s})


def _fake_run(run_dir: Path, steps: int = 12, lift: float = 0.02, eval_every: int = 4) -> None:
    """A run as the trainer logs it: train records per step, eval records separately."""
    with MetricsLogger(run_dir, tensorboard=False, total_steps=steps, progress=False) as log:
        log.log(0, {lu.EVAL_F1: 0.1, lu.EVAL_EM: 0.05, lu.EVAL_COVER_EM: 0.08})
        for s in range(1, steps + 1):
            log.log(
                s,
                {
                    lu.OUTCOME_F1: 0.1 + lift * s,
                    lu.FORMAT_ERROR_RATE: max(0.0, 0.5 - 0.04 * s),
                    lu.TURNS_PER_EPISODE: 1.5 + 0.05 * s,
                    lu.ig_turn_key(0): 0.2 * math.sin(s),
                    lu.ig_turn_key(1): 0.1 * math.cos(s),
                    lu.ig_turn_key(10): 0.05,
                    lu.KL: 0.001 * s,
                    lu.APPROX_KL: float("nan") if s == 3 else 0.0005 * s,
                    lu.ENTROPY: 1.2 - 0.01 * s,
                    lu.CLIPFRAC: 0.02,
                    lu.POLICY_LOSS: -0.01 * s,
                    lu.ROLLOUTS_SEEN: 8 * s,
                    lu.GENERATION_S: 10.0,
                    lu.RETRIEVAL_S: 0.5,
                    lu.INFO_GAIN_S: 1.0,
                    lu.UPDATE_S: 3.0 + (s % 2),  # old_logprobs_s absent: skipped
                },
            )
            if s % eval_every == 0:
                log.log(s, {lu.EVAL_F1: 0.1 + lift * s, lu.EVAL_EM: 0.05 + lift * s})


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5_000


def test_plot_run_writes_valid_pngs(tmp_path):
    _fake_run(tmp_path / "run")
    paths = plot_run(tmp_path / "run")
    names = {p.name for p in paths}
    assert names == {
        "overview.png",
        "reward.png",
        "eval.png",
        "format.png",
        "turns.png",
        "ig.png",
        "kl.png",
        "entropy.png",
        "clipfrac.png",
        "loss.png",
        "time.png",
    }
    assert all(p.parent == tmp_path / "run" / "plots" and _is_png(p) for p in paths)


def test_absent_series_are_skipped(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False, total_steps=2, progress=False) as log:
        log.log(1, {lu.OUTCOME_F1: 0.2, lu.KL: float("nan")})
        log.log(2, {lu.OUTCOME_F1: 0.3})
    paths = plot_run(tmp_path, tmp_path / "out")
    assert [p.name for p in paths] == ["overview.png", "reward.png"]
    assert all(_is_png(p) for p in paths)


def test_missing_or_empty_metrics_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no numeric metrics"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "custom/x": 2.0}\n')
    with pytest.raises(ValueError, match="none of the known metrics"):
        plot_run(tmp_path)
    assert main([str(tmp_path / "missing")]) == 1


def test_eval_curve_maps_eval_steps_to_rollouts_seen(tmp_path):
    _fake_run(tmp_path, steps=8, eval_every=4)
    xs, ys = eval_curve(lu.read_metrics(tmp_path))
    assert xs == [0.0, 32.0, 64.0]  # before training, after step 4 and step 8 (8 per step)
    assert ys == pytest.approx([0.1, 0.18, 0.26])


def test_plot_comparison(tmp_path):
    _fake_run(tmp_path / "igpo", lift=0.03)
    _fake_run(tmp_path / "grpo", lift=0.01)
    out = plot_comparison(
        {"IGPO": tmp_path / "igpo", "GRPO": tmp_path / "grpo"}, tmp_path / "cmp" / "f1.png"
    )
    assert _is_png(out)
    with pytest.raises(ValueError, match="at least one"):
        plot_comparison({}, tmp_path / "x.png")
    with MetricsLogger(tmp_path / "noeval", tensorboard=False, total_steps=1, progress=False) as g:
        g.log(1, {lu.OUTCOME_F1: 0.1})
    with pytest.raises(ValueError, match="no run has 'eval/f1' records"):
        plot_comparison({"a": tmp_path / "noeval"}, tmp_path / "y.png")


def test_cli_module(tmp_path):
    _small_run(tmp_path / "run")
    _small_run(tmp_path / "run2", steps=2)
    res = subprocess.run(
        [sys.executable, "-m", "igpo_agent.plot", str(tmp_path / "run"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert _is_png(tmp_path / "overview.png")
    cmp_png = tmp_path / "cmp.png"
    assert (
        main(
            ["--compare", f"a={tmp_path / 'run'}", f"b={tmp_path / 'run2'}", "--out", str(cmp_png)]
        )
        == 0
    )
    assert _is_png(cmp_png)
    with pytest.raises(SystemExit):
        main(["--compare", "no-equals-sign"])
    res = subprocess.run(
        [sys.executable, "-m", "igpo_agent.plot", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "no metrics file" in res.stderr


def test_rolling_mean_and_window():
    from igpo_agent.plot import rolling_mean, smoothing_window

    ys = [1.0, 3.0, 2.0, 6.0]
    naive = [sum(ys[max(0, i - 1) : i + 1]) / len(ys[max(0, i - 1) : i + 1]) for i in range(4)]
    assert rolling_mean(ys, 2) == naive == [1.0, 2.0, 2.5, 4.0]
    assert rolling_mean(ys, 1) == ys
    assert [smoothing_window(n) for n in (3, 4, 8, 20, 100)] == [1, 2, 2, 5, 10]
