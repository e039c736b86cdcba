"""benchmarks/learning.py: the IGPO-vs-GRPO comparison runs end to end on a tiny random
model (two real trainer child processes), and its row/summary helpers read metrics right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_learning", BENCH / "learning.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_adapter_exits_2_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _load().main(["--init-adapter", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "python -m igpo_agent.sft --out runs/demo/sft" in err
    assert not (tmp_path / "igpo").exists()  # nothing was launched


def test_collect_rows_and_summary() -> None:
    m = _load()
    records = [
        {"step": 0, "eval/f1": 0.25, "eval/em": 0.0, "eval/format_error_rate": 0.5,
         "charts/rollouts_seen": 0},
        {"step": 1, "charts/rollouts_seen": 8, "charts/outcome_f1": 0.1,
         "charts/format_error_rate": 0.5, "charts/ig_turn_1": -0.2, "charts/ig_turn_0": 0.3,
         "time/step_s": 3.0},
        {"step": 2, "charts/rollouts_seen": 16, "charts/format_error_rate": 0.25,
         "time/step_s": 3.0, "eval/f1": 0.5, "eval/em": 0.5, "eval/format_error_rate": 0.0},
        {"step": 3, "charts/rollouts_seen": 24, "charts/format_error_rate": 0.0,
         "time/step_s": 3.0},
        {"step": 3, "eval/f1": 0.375, "eval/em": 0.25, "eval/format_error_rate": 0.125},
    ]  # fmt: skip
    rows = m.collect_rows("igpo", records)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["step"], r["rollouts_seen"], r["eval_f1"]) for r in evals] == [
        (0, 0, 0.25),
        (2, 16, 0.5),
        (3, 24, 0.375),  # the final eval record has no rollouts count: it takes step 3's
    ]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["rollouts_seen"] for r in train] == [8, 16, 24]
    assert train[0]["ig_turn"] == {"0": 0.3, "1": -0.2} and train[1]["ig_turn"] == {}
    s = m.summarize_arm(rows, wall=12.0)
    assert s["f1_before"] == 0.25 and s["f1_final"] == 0.375 and s["f1_best"] == 0.5
    assert s["rollouts"] == 24 and s["eval_fmt_final"] == 0.125
    assert s["train_fmt_mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="eval-questions"):
        m.summarize_arm([r for r in rows if r["kind"] == "train"], wall=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [False, True])
def test_learning_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str], parallel: bool) -> None:
    out = tmp_path / "learning"
    flags = ["--parallel"] if parallel else []
    assert _load().main(["--quick", "--quiet", "--out", str(out), *flags]) == 0
    if parallel:  # each arm's output went to its own log
        assert all((out / f"{a}.log").read_text() for a in ("igpo", "grpo"))
    text = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "learning.jsonl").read_text().splitlines()]
    for algo in ("igpo", "grpo"):
        evals = [r for r in rows if r["algo"] == algo and r["kind"] == "eval"]
        train = [r for r in rows if r["algo"] == algo and r["kind"] == "train"]
        # tiny_test: 1 question x G=2 per step, 2 steps, eval before, after step 1, after
        assert [r["rollouts_seen"] for r in evals] == [0, 2, 4]
        assert [r["step"] for r in train] == [1, 2]
        assert all(0.0 <= r["eval_f1"] <= 1.0 for r in evals)
        assert all(r["ig_turn"] for r in train) == (algo == "igpo")  # GRPO logs no IG
        assert any(line.startswith(f"{algo}  4 ") for line in text.splitlines())
    assert "IGPO - GRPO, final dev F1:" in text and "over 2 pairs" in text  # 2 questions
    assert "igpo - warm start, dev F1:" in text and "grpo - warm start, dev F1:" in text
    for algo in ("igpo", "grpo"):  # the paired intervals come from per-question records
        assert (out / algo / "eval" / "step-0.jsonl").is_file()
        assert (out / algo / "eval" / "step-2.jsonl").is_file()
    png = out / "learning.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # four drawn panels, not an empty canvas


@pytest.mark.slow
def test_seeds_one_call_at_a_time_with_reuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 0 in one call, then seeds 0 and 1 with --reuse: seed 0's runs are read, not
    rerun (their files untouched), and the comparison pools both seeds."""
    m, out = _load(), tmp_path / "study"
    base = ["--quick", "--quiet", "--out", str(out), "--algos", "igpo", "grpo", "--reuse"]
    assert m.main([*base, "--seeds", "0"]) == 0
    first = {a: (out / f"{a}-seed0" / "metrics.jsonl").stat().st_mtime_ns for a in m.ALGOS}
    assert set(json.loads((out / "walls.json").read_text())) == {"igpo-seed0", "grpo-seed0"}
    capsys.readouterr()
    assert m.main([*base, "--seeds", "0", "1"]) == 0
    text = capsys.readouterr().out
    for algo in m.ALGOS:
        assert f"=== {algo}-seed0: reusing the finished run" in text
        assert (out / f"{algo}-seed0" / "metrics.jsonl").stat().st_mtime_ns == first[algo]
        assert not (out / f"{algo}-seed0" / "metrics.jsonl.prev").exists()
        assert (out / f"{algo}-seed1" / "summary.json").is_file()
    assert "over 4 pairs" in text  # 2 seeds x 2 questions, IGPO - GRPO
    rows = [json.loads(line) for line in (out / "learning.jsonl").read_text().splitlines()]
    assert {(r["algo"], r["seed"]) for r in rows} == {(a, s) for a in m.ALGOS for s in (0, 1)}
    walls = json.loads((out / "walls.json").read_text())
    assert set(walls) == {f"{a}-seed{s}" for a in m.ALGOS for s in (0, 1)}
    assert all(w > 0 for w in walls.values())  # seed 0's recorded wall time was kept


def test_train_command_interpreter() -> None:
    m = _load()
    kw = dict(config="c.yaml", run_dir=Path("r"), steps=2, eval_every=1, eval_questions=4,
              init_adapter=None, seed=3, extra=["--engine", "vllm"])  # fmt: skip
    assert m.train_command("igpo", **kw)[0] == sys.executable
    cmd = m.train_command("grpo", **kw, python=".venv-vllm/bin/python")
    assert cmd[:3] == [".venv-vllm/bin/python", "-m", "igpo_agent.train"]
    assert cmd[-2:] == ["--engine", "vllm"] and cmd[cmd.index("--seed") + 1] == "3"
