"""`--engine vllm` end to end: train, evaluate and the warm start's evaluation through vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import write_corpus, write_qa

pytest.importorskip("vllm")

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ("d1", "Paris", "Paris is the capital of France."),
    ("d2", "Nile", "The Nile is a long river in Africa."),
]
QA = [("q1", "Capital of France?", ["Paris"]), ("q2", "Which long river is in Africa?", ["Nile"])]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("vllm_data")
    return {"corpus": write_corpus(d / "c.jsonl", DOCS), "qa": write_qa(d / "q.jsonl", QA)}


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "IGPO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_train_with_vllm_engine(tiny_vllm_model_path: Path, data, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["igpo_agent.train", "--config", "configs/tiny_test.yaml", "--steps", "2"]
    args += ["--model", str(tiny_vllm_model_path), "--run_dir", str(run)]
    args += ["--corpus", data["corpus"], "--train_qa", data["qa"], "--eval_qa", data["qa"]]
    args += ["--engine", "vllm", "--vllm_dtype", "float32", "--ig_method", "vllm"]
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "before training" in res.stdout and "after training" in res.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "losses/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["charts/turns_per_episode"] >= 1 for r in steps)
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_sft_then_evaluate_with_vllm_engine(
    tiny_vllm_model_path: Path, data, tmp_path: Path
) -> None:
    out = tmp_path / "sft"
    args = ["igpo_agent.sft", "--model", str(tiny_vllm_model_path), "--out", str(out)]
    args += ["--train-qa", data["qa"], "--eval-qa", data["qa"], "--corpus", data["corpus"]]
    args += ["--examples", "2", "--batch", "2", "--lora-r", "4", "--lora-alpha", "8"]
    args += ["--top-k", "1", "--max-new-tokens", "48", "--eval-questions", "2"]
    args += ["--engine", "vllm", "--vllm-dtype", "float32", "--dtype", "float32"]
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "after SFT" in res.stdout
    assert (out / "adapter_model.safetensors").is_file()

    res = _run(
        ["igpo_agent.evaluate", "--model", str(tiny_vllm_model_path), "--adapter", str(out)]
        + ["--qa", f"fixture={data['qa']}", "--corpus", data["corpus"], "--questions", "2"]
        + ["--engine", "vllm", "--vllm-dtype", "float32", "--dtype", "float32"]
        + ["--max-new-tokens", "16", "--out", str(tmp_path / "eval")],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    table = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert table[0]["name"] == "fixture" and table[0]["n"] == 2
