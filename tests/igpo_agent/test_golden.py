"""Golden run: a seeded tiny IGPO training run reproduces the recorded adapter and metrics.

Guards refactors that must not change behaviour (moving modules, merging helpers, a new
config system): two steps of ``igpo_agent.train.train`` on a tiny random model and a fixture
corpus give exactly the LoRA weights and the per-step metrics recorded in
``tests/golden/``. Bit-identical (``atol=0``) when the torch and transformers versions, the
CPU model and its bf16 support match the recording; elsewhere kernels may round
differently (two machines with the same versions and flags, different CPU models, gave
adapters up to 6e-3 apart), and two lr-1e-2 steps amplify that: transformers 5.25 against 5.24 moved
the per-step losses by ~1e-6 relative and the adapter by up to 6e-3 (of weights ~0.15), with
the same sampled tokens. So off the recorded platform a 1e-2 tolerance applies (a broken
learner moves the adapter by more) and the test says so.

Regenerate only when a change is *meant* to alter training, and say why in the commit:
``IGPO_UPDATE_GOLDEN=1 python -m pytest tests/igpo_agent/test_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from igpo_agent.config import TrainConfig
from igpo_agent.train import train
from tests.fixtures import write_corpus, write_qa

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ADAPTER, METRICS = GOLDEN / "tiny_igpo_adapter.safetensors", GOLDEN / "tiny_igpo_metrics.json"
DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("d3", "Nile", "The Nile is a major river in northeastern Africa."),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "What is the capital of Germany?", ["Berlin"]),
    ("q3", "Which river is in northeastern Africa?", ["the Nile", "Nile"]),
]
VOLATILE = ("time/", "perf/", "wall_s")  # timings: not part of the behaviour


def _platform() -> dict[str, str]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_bf16": str("avx512_bf16" in flags),
        # kernels differ between CPU models with the same flags (an AMD EPYC and the machine
        # of the earlier recording gave adapters 6e-3 apart): bit-exact on the recorded model
        "cpu_model": _cpu_model(flags),
    }


def _cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of /proc/cpuinfo ("" where there is none)."""
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def _run(model: Path, tmp: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    corpus = write_corpus(tmp / "corpus.jsonl", DOCS)
    qa = write_qa(tmp / "qa.jsonl", QA, dataset="fixture")
    cfg = TrainConfig(
        model=str(model),
        run_dir=str(tmp / "run"),
        corpus=corpus,
        train_qa=qa,
        eval_qa=qa,
        device="cpu",
        dtype="float32",
        threads=1,
        seed=0,
        lora_r=4,
        lora_alpha=8,
        lora_targets="q_proj,v_proj",
        top_k=2,
        doc_max_words=16,
        max_turns=2,
        group_size=2,
        questions_per_step=2,
        max_new_tokens=12,
        micro_batch_size=2,
        ppo_mini_batch_size=2,  # two optimiser steps a batch: pi_old, ratio and clip act
        ig_turns="all",  # the random model never searches: IG on every turn but the last
        lr=1e-2,
        steps=2,
        eval_questions=0,
        save_every=0,
        dump_rollouts_every=0,
        probe_every=0,  # recorded before the probe existed; the probe never changes training
        tensorboard=False,
    )
    train(cfg)
    adapter = load_file(str(tmp / "run" / "final" / "adapter_model.safetensors"))
    rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]
    return adapter, rows


def test_tiny_run_matches_the_recording(tiny_smol_model_path: Path, tmp_path: Path) -> None:
    adapter, rows = _run(tiny_smol_model_path, tmp_path)
    if os.environ.get("IGPO_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in adapter.items()}, str(ADAPTER))
        METRICS.write_text(json.dumps({"platform": _platform(), "rows": rows}, indent=1) + "\n")
        pytest.skip("golden files rewritten: review and commit them")
    golden = json.loads(METRICS.read_text())
    exact = golden["platform"] == _platform()
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 1e-2, "atol": 1e-2}
    want = load_file(str(ADAPTER))
    assert adapter.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(adapter[k], want[k], **tol, msg=f"{k} (exact={exact})")
    assert [sorted(r) for r in rows] == [sorted(r) for r in golden["rows"]]
    for got, ref in zip(rows, golden["rows"], strict=True):
        for k, v in ref.items():
            if isinstance(v, float):
                assert got[k] == pytest.approx(v, rel=tol["rtol"], abs=tol["atol"]), k
            else:
                assert got[k] == v, k
