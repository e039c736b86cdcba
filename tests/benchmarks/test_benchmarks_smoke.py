"""Smoke tests: each benchmark's ``main(["--quick"])`` runs on the tiny model and its
printed correctness checks hold. No timing is asserted (ratios are the scripts' output)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_info_gain_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("info_gain").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "packed" in out and "live" in out
    assert "(<= 1e-4: yes)" in out  # packed and naive agree on the recorded trajectories


def test_rollout_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("rollout").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "hf_generate" in out
    assert "identical trajectories 4/4" in out  # same greedy episodes as HF generate
    assert "(<= 1e-4: yes)" in out
    rows = [line for line in out.splitlines() if line.startswith("project (reuse_cache")]
    assert len(rows) == 2 and all(" 4/4 " in row for row in rows)


@pytest.mark.slow
def test_step_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("step").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "share of step time: generation" in out
    assert "peak RSS (ru_maxrss)" in out
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(rows) == 1  # one logged training step with its time split


def test_baselines_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "baselines"
    assert _load("baselines").main(["--quick", "--out", str(out), "--jobs", "2"]) == 0
    rows = [json.loads(x) for x in (out / "baselines.jsonl").read_text().splitlines()]
    assert [(r["policy"], r["retriever"], r["n"]) for r in rows] == [("tiny", "bm25", 2)]
    assert "-m igpo_agent.evaluate" in rows[0]["command"]
    assert (out / "cells" / "tiny-bm25" / "results.json").is_file()
    assert "| tiny | bm25 |" in (out / "baselines.md").read_text()
    # --append keeps the earlier cells and adds the new ones
    argv = ["--quick", "--out", str(out), "--append", "--policy", "again=none"]
    assert _load("baselines").main(argv) == 0
    rows = [json.loads(x) for x in (out / "baselines.jsonl").read_text().splitlines()]
    assert [r["policy"] for r in rows] == ["tiny", "again"]


def test_baselines_rejects_a_missing_adapter(tmp_path: Path) -> None:
    assert _load("baselines").main(["--policy", f"x={tmp_path}", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_dense_ready_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("dense_ready").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "vs goal < 30 s" in out and "vs goal < 60 s" in out
    # the fresh process built its index from the shipped embeddings
    assert any(line.rstrip().endswith(" shipped") for line in out.splitlines())
    for env_id in ("SearchQA-v0", "SearchQA-Dense-v0", "SearchQA-HTTP-v0", "SearchQA-Web-v0"):
        assert any(line.startswith(env_id + " ") for line in out.splitlines())
    assert "dense/bm25" in out and "new vs old" in out


def test_dense_ready_rejects_unknown_parts() -> None:
    with pytest.raises(SystemExit, match="unknown part"):
        _load("dense_ready").main(["--parts", "ready,warp"])


@pytest.mark.slow
def test_vs_trl_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert _load("vs_trl").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("trl ", "igpo "))]
    # arm, dtype, runs, timed steps (the warm-up step left out)
    assert [r[:4] for r in rows] == [["trl", "fp32", "1", "1"], ["igpo", "fp32", "1", "1"]]
    assert rows[0][-1] == "1.00x" and rows[1][-1].endswith("x")  # s/1k tok TRL / arm
    assert rows[0][-3] == "1.00"  # TRL's sampled tokens over its own
    records = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert "command" in records[0]
    for rec in records[1:]:  # a warm-up and a measured step each, with tokens and a peak RSS
        assert len(rec["step_s"]) == 2 and rec["warmup_steps"] == 1
        assert rec["generated_tokens"][1] > 0 and rec["trained_tokens"] == rec["generated_tokens"]
        assert rec["max_new_tokens"] == 32 and rec["peak_rss_mb"] > 100
    # --reuse keeps the finished runs (same settings) instead of measuring them again
    assert _load("vs_trl").main(["--quick", "--out", str(tmp_path), "--reuse"]) == 0
    out = capsys.readouterr().out
    assert out.count(": reused ") == 2 and "1.00x" in out


def test_decode_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("decode").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "matmul" in out and "ceilings here" in out and "GFLOP/s" in out
    assert "grow in place" in out and "same logits bit for bit: True" in out


def test_eval_speed_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("eval_speed").main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "s/question" in out and "1.00x" in out
    assert (tmp_path / "hf-rep0" / "results.json").is_file()
