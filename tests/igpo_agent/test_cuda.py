"""CUDA-only checks, skipped without a GPU (CI has none; ``benchmarks/gpu_check.sh`` runs them
on one): the policy's log-probs on CUDA against the CPU fp32 reference, a learner step on
CUDA, and the trainer's front door with ``--device cuda --dtype bfloat16``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from igpo_agent.model.policy import LoraSettings, Policy

ROOT = Path(__file__).resolve().parents[2]
ROWS = [[5, 900, 41, 7000, 12, 3], [77, 1500, 8], [31, 32, 33, 34, 35, 36, 37, 38, 39]]
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ROWS))
    ids = torch.full((len(ROWS), width), pad)
    mask = torch.zeros((len(ROWS), width), dtype=torch.long)
    for i, row in enumerate(ROWS):  # left padding, as the rollout batches are
        ids[i, width - len(row) :], mask[i, width - len(row) :] = torch.tensor(row), 1
    return ids, mask


def _load(path: Path, device: str, dtype: str) -> Policy:
    policy = Policy.load(str(path), lora=LORA, device=device, dtype=dtype, seed=0)
    gen = torch.Generator().manual_seed(1)  # LoRA B starts at 0: give the adapter weights
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_((torch.randn(p.shape, generator=gen) * 0.2).to(p.device, p.dtype))
    return policy


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-3), ("bfloat16", 0.3)])
def test_logprobs_on_cuda_match_cpu_fp32(tiny_smol_model_path: Path, dtype: str, atol: float):
    cpu = _load(tiny_smol_model_path, "cpu", "float32")
    gpu = _load(tiny_smol_model_path, "cuda", dtype)
    assert gpu.device.type == "cuda" and gpu.dtype == getattr(torch, dtype)
    ids, mask = _batch(cpu.tokenizer.pad_token_id)
    with torch.no_grad():
        want, _ = cpu.sequence_logprobs(ids, mask)
        got = gpu.sequence_logprobs(ids, mask)[0].float().cpu()
    real = mask.bool()
    diff = (got - want)[real].abs()
    assert diff.max() < atol, f"max |cuda {dtype} - cpu fp32| = {diff.max():.4g}"
    assert diff.mean() < atol / 4


def test_learner_step_on_cuda_moves_the_adapter(tiny_smol_model_path: Path) -> None:
    policy = _load(tiny_smol_model_path, "cuda", "bfloat16")
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    ids, mask = _batch(policy.tokenizer.pad_token_id)
    lp, _ = policy.sequence_logprobs(ids, mask)
    loss = -(lp * mask.to(lp.device)).sum() / mask.sum()
    loss.backward()
    grads = [p.grad for p in policy.trainable_parameters()]
    assert all(g is not None and g.device.type == "cuda" and torch.isfinite(g).all() for g in grads)
    opt.step()
    moved = [
        not torch.equal(b, p) for b, p in zip(before, policy.trainable_parameters(), strict=True)
    ]
    assert any(moved) and math.isfinite(float(loss.detach()))


@pytest.mark.parametrize("algo", ["igpo", "grpo"])
def test_train_front_door_on_cuda_bf16(tiny_smol_model_path: Path, tmp_path: Path, algo: str):
    run = tmp_path / algo
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", "configs/tiny_test.yaml"]
    cmd += ["--model", str(tiny_smol_model_path), "--run_dir", str(run), "--algo", algo]
    cmd += ["--device", "cuda", "--dtype", "bfloat16", "--group_size", "4", "--steps", "2"]
    env = {**os.environ, "IGPO_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "losses/policy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["losses/policy"]) for r in steps)
    assert (run / "final" / "adapter_model.safetensors").is_file()
