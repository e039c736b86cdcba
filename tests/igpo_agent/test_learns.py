"""The trainer learns at all (not a timed test): RL raises the reward on a tiny task.

The task is a bandit a tiny model can solve: three questions, and a warm start fitted to
answer each one half of the time with its gold answer and half of the time with another
question's answer (a fully fine-tuned tiny random model, so its distribution is peaked on
those two). Sampling at T = 1 it then scores about 0.45 F1. Twelve seeded IGPO steps of a
fresh LoRA adapter (``igpo_agent.train.train``, 24 rollouts a step, PPO mini-batches) must
raise the mean training reward of the last four steps over the first four, and the
sampled reward measured before and after on the same questions with the same seeds, each
by a stated margin. Measured when written: training reward 0.41 -> 0.79 (first vs last
four steps), sampled reward 0.44 -> 0.75, in ~20 s on one thread.
"""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.algo.rewards import outcome_rewards
from igpo_agent.config import TrainConfig
from igpo_agent.model.policy import Policy
from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.rollout.episodes import rollout_batch
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Span, Trajectory
from igpo_agent.sft import train_step
from tests.fixtures import write_corpus, write_qa
from tests.igpo_agent.learn.test_demonstrations import DOCS

QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "What is the capital of Germany?", ["Berlin"]),
    ("q3", "Which planet is the largest?", ["Jupiter"]),
]
WRONG = ["Berlin", "Jupiter", "Paris"]  # the warm start's other answer to each question
STEPS = 12
TRAIN_MARGIN = 0.2  # mean outcome reward, last 4 steps minus first 4
SAMPLED_MARGIN = 0.15  # sampled reward after minus before
SAMPLES = 16  # rollouts per question for the before/after measurement
ENV_KW = dict(top_k=1, doc_max_words=16, max_episode_steps=2)


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_smol_model_path):
    """The fixture data and the 50/50 warm start, saved as a full model folder."""
    d = tmp_path_factory.mktemp("learns")
    corpus = write_corpus(d / "c.jsonl", DOCS)
    qa = write_qa(d / "q.jsonl", QA, dataset="fixture")
    policy = Policy.load(str(tiny_smol_model_path), device="cpu", dtype="float32", seed=0)
    env = gym.make("igpo_env:SearchQA-v0", qa=qa, corpus=corpus, **ENV_KW)
    prompt_fn = policy_prompt_fn(policy, "tags")
    demos = []
    for i, (_, question, (gold,)) in enumerate(QA):
        obs, _ = env.reset(options={"index": i})
        prompt = prompt_fn(obs)
        for answer in (gold, WRONG[i]):
            text = f"<answer>{answer}</answer>"
            action = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
            spans = [Span("prompt", 0, len(prompt), -1)]
            spans.append(Span("action", len(prompt), len(prompt) + len(action), 0))
            demos.append(Trajectory(question, [gold], token_ids=prompt + action, spans=spans))
    env.close()
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=3e-3)
    for _ in range(60):
        train_step(policy, opt, demos, micro_batch=len(demos), max_grad_norm=1.0)
    warm = policy.save(d / "warm")
    return {"model": str(warm), "corpus": corpus, "qa": qa, "dir": d}


def sampled_reward(policy: Policy, task: dict, seed: int = 123) -> float:
    """Mean outcome reward of SAMPLES seeded rollouts (T = 1) of each question."""
    envs = [
        gym.make("igpo_env:SearchQA-v0", qa=task["qa"], corpus=task["corpus"], **ENV_KW)
        for _ in range(len(QA) * SAMPLES)
    ]
    try:
        trajs = rollout_batch(
            policy.model,
            policy.tokenizer,
            policy_prompt_fn(policy, "tags"),
            envs,
            [{"index": i} for i in range(len(QA))],
            group_size=SAMPLES,
            settings=GenerationSettings(max_new_tokens=16, temperature=1.0),
            generator=torch.Generator().manual_seed(seed),
            seed=seed,
        )
    finally:
        for e in envs:
            e.close()
    r = outcome_rewards(
        [t.outcome_f1 for t in trajs],
        [t.answered for t in trajs],
        [t.format_ok for t in trajs],
        [t.truncated or t.context_truncated for t in trajs],
    )
    return float(r.mean())


def test_igpo_steps_raise_the_reward(task):
    from igpo_agent.train import train

    run = task["dir"] / "rl"
    cfg = TrainConfig(
        run_dir=str(run),
        seed=0,
        device="cpu",
        dtype="float32",
        threads=1,
        model=task["model"],
        lora_r=8,
        lora_alpha=16,
        train_qa=task["qa"],
        corpus=task["corpus"],
        top_k=1,
        doc_max_words=16,
        max_turns=2,
        group_size=8,
        questions_per_step=3,
        max_new_tokens=16,
        temperature=1.0,
        ppo_mini_batch_size=8,
        micro_batch_size=8,
        lr=1e-3,
        steps=STEPS,
        eval_questions=0,
        save_every=0,
        dump_rollouts_every=0,
        tensorboard=False,
    )
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["charts/reward_mean"] for r in rows if "charts/reward_mean" in r]
    assert len(rewards) == STEPS
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last >= first + TRAIN_MARGIN, f"training reward {first:.3f} -> {last:.3f}"
    before = sampled_reward(Policy.load(task["model"], device="cpu"), task)
    after = sampled_reward(
        Policy.load(task["model"], init_adapter=run / "final", device="cpu"), task
    )
    print(f"training reward {first:.3f} -> {last:.3f}; sampled {before:.3f} -> {after:.3f}")
    assert 0.2 < before < 0.7, "the warm start should answer right about half of the time"
    assert after >= before + SAMPLED_MARGIN, f"sampled reward {before:.3f} -> {after:.3f}"
