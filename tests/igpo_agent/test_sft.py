"""The supervised warm start on a tiny random model and the fixture corpus.

- the masked loss equals the naive one (full log-probs times the action mask);
- a few steps lower the loss and change every LoRA parameter and no base weight;
- the CLI builds demonstrations, trains, evaluates and saves an adapter that
  ``Policy.load(init_adapter=...)`` loads and ``python -m igpo_agent.train --init_adapter``
  trains on.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from safetensors.torch import load_file

from igpo_agent.learn.demonstrations import build_demonstration
from igpo_agent.learn.learner import pad_batch
from igpo_agent.model.policy import Policy
from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.sft import action_nll, lr_factor, sft_loss, train_step
from tests.igpo_agent.learn.test_demonstrations import write_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    return write_data(tmp_path_factory.mktemp("sft_data"))


@pytest.fixture
def demos(data, tiny_policy):
    env = gym.make(
        "igpo_env:SearchQA-v0",
        qa=data["qa"],
        corpus=data["corpus"],
        top_k=1,
        doc_max_words=16,
        max_episode_steps=3,
    )
    pf = policy_prompt_fn(tiny_policy)
    out = [
        build_demonstration(env, i, pf, tiny_policy.tokenizer, random.Random(i)) for i in (0, 1, 3)
    ]
    env.close()
    assert all(t is not None for t in out)
    return out


def test_action_nll_matches_the_naive_masked_sum(tiny_policy, demos) -> None:
    batch = pad_batch(demos, tiny_policy.tokenizer.pad_token_id)  # right-padded, 3 lengths
    nll, count = action_nll(tiny_policy, batch)
    lp, _ = tiny_policy.sequence_logprobs(batch["input_ids"], batch["attention_mask"])
    naive = -(lp * batch["action_mask"]).sum()
    torch.testing.assert_close(nll, naive, rtol=1e-5, atol=1e-4)
    assert count == sum(sum(t.action_mask()) for t in demos) == int(batch["action_mask"].sum())
    # the batch is not modified and the token mean over micro-batches adds up
    assert bool(batch["action_mask"][:, 0].logical_not().all())
    parts = [pad_batch([t], tiny_policy.tokenizer.pad_token_id) for t in demos]
    summed = sum(sft_loss(tiny_policy, p, float(count)) for p in parts)
    torch.testing.assert_close(summed, naive / count, rtol=1e-5, atol=1e-5)


def test_steps_lower_the_loss_and_change_only_lora(tiny_policy, demos) -> None:
    before = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters()}
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=3e-2)
    tiny_policy.model.train()
    losses = [
        train_step(tiny_policy, opt, demos, micro_batch=2, max_grad_norm=1.0)["losses/sft_nll"]
        for _ in range(6)
    ]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.8 * losses[0], losses
    lora = [n for n in before if "lora_" in n]
    assert lora
    for n, p in tiny_policy.model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == ("lora_" in n), f"{n}: changed={changed}"


def test_lr_factor() -> None:
    assert lr_factor(0, 10, 2) == pytest.approx(1 / 3)
    assert lr_factor(1, 10, 2) == pytest.approx(2 / 3)
    assert lr_factor(2, 10, 2) == pytest.approx(1.0)
    assert lr_factor(9, 10, 2) == pytest.approx(0.1)
    assert lr_factor(0, 1, 0) == pytest.approx(1.0)


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "IGPO_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_then_rl_from_the_adapter(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "sft"
    args = ["igpo_agent.sft", "--model", str(tiny_smol_model_path), "--out", str(out)]
    args += ["--train-qa", data["qa"], "--eval-qa", data["qa"], "--corpus", data["corpus"]]
    args += ["--examples", "3", "--epochs", "2", "--batch", "2", "--micro-batch", "1"]
    args += ["--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj"]
    args += ["--top-k", "1", "--doc-max-words", "16", "--max-new-tokens", "48"]
    args += ["--eval-questions", "2", "--eval-before", "--threads", "1", "--dtype", "float32"]
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "before SFT" in res.stdout and "after SFT" in res.stdout
    assert "--init_adapter" in res.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "losses/sft_nll" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 2 epochs x ceil(3 / 2)
    assert all(r["losses/sft_nll"] > 0 for r in steps)
    assert rows[0]["sft/demos_kept"] == 3
    assert sum("eval/format_error_rate" in r for r in rows) == 2
    evals = [json.loads(x) for x in (out / "eval_after.jsonl").read_text().splitlines()]
    assert len(evals) == 2 and all("format_ok" in e and e["turns"] for e in evals)
    assert (out / "eval_before.jsonl").is_file()
    demos = [json.loads(x) for x in (out / "demonstrations.jsonl").read_text().splitlines()]
    assert len(demos) == 3 and all(d["kinds"][-1] == "answer" for d in demos)

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    policy = Policy.load(str(tiny_smol_model_path), init_adapter=out, device="cpu")
    assert policy.lora is not None and policy.lora.r == 4
    live = {n.replace(".default", ""): p for n, p in policy.model.named_parameters()}
    for k, v in saved.items():
        torch.testing.assert_close(live[k].detach(), v, rtol=0, atol=0)
    assert any(p.requires_grad for p in policy.trainable_parameters())

    run = tmp_path / "rl"
    args = ["igpo_agent.train", "--config", "configs/tiny_test.yaml", "--init_adapter", str(out)]
    args += ["--model", str(tiny_smol_model_path), "--run_dir", str(run), "--steps", "1"]
    args += ["--corpus", data["corpus"], "--train_qa", data["qa"], "--eval_questions", "0"]
    args += ["--lr", "1e-2"]
    res = _run(args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    after = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert after.keys() == saved.keys()  # the SFT adapter (q_proj,v_proj, r=4) trained on
    assert any(not torch.equal(after[k], saved[k]) for k in saved)


def test_bad_flags_name_the_fix(tmp_path: Path) -> None:
    res = _run(["igpo_agent.sft", "--batch", "3", "--micro-batch", "2"], tmp_path)
    assert res.returncode != 0 and "batch=3 must be a multiple of micro_batch=2" in res.stderr
    res = _run(["igpo_agent.sft", "--protocol", "tool_call", "--examples", "0"], tmp_path)
    assert res.returncode != 0
    assert "examples=0: use a value >= 1" in res.stderr and "'tags' only" in res.stderr
