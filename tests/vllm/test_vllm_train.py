"""`--engine vllm` end to end: the trainer rolls out, evaluates and syncs through vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")

ROOT = Path(__file__).resolve().parents[2]


def test_train_with_vllm_engine(tiny_vllm_model_path: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        json.dumps({"id": "d1", "contents": '"Paris"\nParis is the capital of France.'}) + "\n"
    )
    qa = tmp_path / "q.jsonl"
    qa.write_text(
        json.dumps({"id": "q1", "question": "Capital of France?", "golden_answers": ["Paris"]})
        + "\n"
    )
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", "configs/tiny_test.yaml"]
    cmd += ["--model", str(tiny_vllm_model_path), "--run_dir", str(run), "--steps", "2"]
    cmd += ["--corpus", str(corpus), "--train_qa", str(qa), "--eval_qa", str(qa)]
    cmd += ["--engine", "vllm", "--vllm_dtype", "float32", "--ig_method", "vllm"]
    env = {**os.environ, "IGPO_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "before training" in res.stdout and "after training" in res.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "losses/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["charts/turns_per_episode"] >= 1 for r in steps)
    assert (run / "final" / "adapter_model.safetensors").is_file()
