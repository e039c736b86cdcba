"""``python -m igpo_agent.sft``: the supervised warm start of the LoRA adapter, top to bottom.

A 135M instruct model does not follow the search protocol zero-shot, so RL would spend its
first steps on format errors. This front door:

1. builds demonstration episodes on the train split with the real environment
   (:mod:`igpo_agent.learn.demonstrations`: search with the question, or a derived query, and
   answer with the gold alias once a retrieved document holds it), in the exact token
   format of RL rollouts (prompt | action | observation | ... spans);
2. fine-tunes a fresh LoRA adapter on them: token-mean cross-entropy over the agent's
   tokens only (prompt and observation tokens masked), micro-batches with gradient
   accumulation, AdamW, linear warmup then linear decay;
3. evaluates greedily on a fixed dev subset (optionally before, always after) and prints
   the results table, F1 and format-error rate;
4. saves the adapter to ``--out`` so that ``python -m igpo_agent.train --init_adapter OUT``
   continues from it (``Policy.load(base, init_adapter=OUT)``).

Metrics go to ``OUT/metrics.jsonl`` (``losses/sft_nll`` per optimiser step), the
demonstrations to ``OUT/demonstrations.jsonl``, the greedy eval episodes to
``OUT/eval_before.jsonl`` / ``OUT/eval_after.jsonl``, the options to ``OUT/sft_args.json``.

Example::

    python -m igpo_agent.sft --out runs/sft
    python -m igpo_agent.train --config configs/cpu_demo.yaml --init_adapter runs/sft
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

import igpo_agent  # noqa: F401  (threading policy before torch loads)
from igpo_agent.cli import parse_options
from igpo_agent.evaluate import eval_metrics, greedy_eval, results_table
from igpo_agent.learn.demonstrations import DemoStats, build_demonstrations
from igpo_agent.learn.learner import pad_batch
from igpo_agent.model.policy import (
    LoraSettings,
    Policy,
    configure_torch_threads,
)
from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.options import (
    EnvOptions,
    EvalOptions,
    GenerationOptions,
    LoraOptions,
    ModelOptions,
    opt,
)
from igpo_agent.rollout.engines import Engine, make_engine
from igpo_agent.rollout.trajectory import Trajectory
from igpo_agent.run import logging_utils as K
from igpo_agent.run.checkpoint import seed_everything
from igpo_agent.run.envs import env_kwargs_from, make_envs, question_count
from igpo_agent.run.summary import episode_record, retrieval_line

SFT_NLL = "losses/sft_nll"
"""Token-mean negative log-likelihood of the agent's tokens in one optimiser step."""
SFT_TOKENS = "charts/sft_tokens"
"""Agent (trained) tokens in one optimiser step."""


@dataclass
class SFTConfig(GenerationOptions, EnvOptions, EvalOptions, LoraOptions, ModelOptions):
    """The warm start's options: the shared model, LoRA, env, evaluation and generation
    groups (:mod:`igpo_agent.options`, the trainer's too) plus the supervised loop's own.

    ``make demo`` runs it with ``--max_turns 3 --max_new_tokens 64`` to match
    ``configs/cpu_demo.yaml``; demonstrations take at most 3 turns (a retry included)."""

    kind: ClassVar[str] = "SFT config"
    out: str = opt("runs/sft", "run", "Run folder; the adapter is saved here.")
    seed: int = opt(
        0, "run", "Seed for python, numpy and torch; rollouts and data order follow it."
    )
    train_qa: str = opt(
        "default:train", "env", "Training questions: default:SPLIT or a JSONL path."
    )
    examples: int = opt(64, "sft", "Demonstrations to build.")
    unfound_rate: float = opt(0.0, "sft", "Share of cases whose answer was not retrieved, kept.")
    epochs: int = opt(1, "sft", "Passes over the demonstrations.")
    lr: float = opt(2e-3, "sft", "Peak AdamW learning rate of the adapter.")
    warmup: int = opt(1, "sft", "Optimiser steps of linear warmup.")
    weight_decay: float = opt(0.0, "sft", "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "sft", "Gradient clipping norm (> 0).")
    micro_batch: int = opt(1, "sft", "Sequences per forward/backward.")
    batch: int = opt(4, "sft", "Sequences per optimiser step (a multiple of micro_batch).")
    eval_before: bool = opt(False, "eval", "Also evaluate the untrained policy.")

    def _check(self, e: list[str]) -> None:
        for name in ("examples", "epochs", "micro_batch", "batch"):
            if getattr(self, name) < 1:
                e.append(f"{name}={getattr(self, name)}: use a value >= 1")
        if self.micro_batch >= 1 and self.batch % self.micro_batch:
            e.append(f"batch={self.batch} must be a multiple of micro_batch={self.micro_batch}")
        if not self.lr > 0:
            e.append(f"lr={self.lr}: use a positive learning rate")
        if not self.max_grad_norm > 0:
            e.append(f"max_grad_norm={self.max_grad_norm}: use a positive norm")
        if self.warmup < 0 or self.weight_decay < 0:
            e.append("warmup and weight_decay must be >= 0")
        if not 0.0 <= self.unfound_rate <= 1.0:
            e.append(f"unfound_rate={self.unfound_rate}: use a share in [0, 1]")
        if self.protocol != "tags":
            e.append(f"protocol={self.protocol!r}: demonstrations are scripted for 'tags' only")


def parse_config(argv: list[str] | None = None) -> SFTConfig:
    """``--config FILE.yaml`` then ``--field value`` overrides (:func:`igpo_agent.cli.parse_options`)."""
    return parse_options(
        SFTConfig,
        argv,
        prog="python -m igpo_agent.sft",
        description="Supervised warm start: imitate env-verified search demonstrations.",
    )


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based): linear warmup over
    ``warmup`` steps, then linear decay to 10% of the peak at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    rest = max(total - warmup - 1, 1)
    return 1.0 - 0.9 * min((step - warmup) / rest, 1.0)


def action_nll(policy: Policy, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the action tokens of ``batch`` and their count.

    Naive equivalent: ``-(policy.sequence_logprobs(ids, attn)[0] * action_mask).sum()``;
    :meth:`Policy.action_logprobs` runs the LM head only where an action token is predicted.
    batch: ``pad_batch`` tensors (B, L).
    """
    lp, _ = policy.action_logprobs(
        batch["input_ids"], batch["attention_mask"], batch["action_mask"]
    )  # (B, L), 0 off the action tokens
    return -lp.sum(), int(batch["action_mask"].bool()[:, 1:].sum())


def sft_loss(policy: Policy, batch: dict[str, torch.Tensor], normalizer: float) -> torch.Tensor:
    """Token-mean cross-entropy piece of one micro-batch: its summed action-token NLL divided
    by ``normalizer`` (the optimiser step's total action-token count), so the micro-batches
    of a step add up to the token mean over the step. Prompt, observation and pad tokens
    carry no loss."""
    nll, _ = action_nll(policy, batch)
    return nll / normalizer


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The columns cut to the longest sequence of the rows (less padding compute)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :width] for k, v in batch.items()}


def train_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    demos: list[Trajectory],
    *,
    micro_batch: int,
    max_grad_norm: float,
) -> dict[str, float]:
    """One optimiser step on ``demos`` (accumulated over micro-batches); its metrics."""
    pad_id = policy.tokenizer.pad_token_id
    tokens = float(sum(sum(t.action_mask()) for t in demos))
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, len(demos), micro_batch):
        mb = _trim(pad_batch(demos[s : s + micro_batch], pad_id))
        loss = sft_loss(policy, mb, tokens)
        loss.backward()
        total += float(loss.detach())
    params = policy.trainable_parameters()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    return {SFT_NLL: total, K.GRAD_NORM: grad_norm, SFT_TOKENS: tokens}


def run_eval(
    policy: Policy,
    envs: list,
    args: SFTConfig,
    label: str,
    episodes_path: Path | None = None,
    engine: Engine | None = None,
) -> dict[str, float]:
    """Greedy episodes on the fixed dev subset; prints the table, returns eval metrics and,
    with ``episodes_path``, writes each episode's turns there (JSONL) for inspection."""
    t0 = time.perf_counter()
    if engine is not None:
        engine.sync_weights(policy)
    trajs, res, subset = greedy_eval(
        policy,
        envs,
        args.eval_questions,
        protocol=args.protocol,
        seed=args.eval_seed,
        source=args.eval_qa,
        engine=engine,
        max_new_tokens=args.max_new_tokens,
        max_context=args.max_context,
        answer_eos=args.answer_eos,
        progress=label,
    )
    secs = time.perf_counter() - t0
    if episodes_path is not None:
        with open(episodes_path, "w", encoding="utf-8") as fh:
            for t in trajs:
                rec = {**_demo_record(t), "prediction": t.answer_text, **t.answer_metrics}
                rec["format_ok"] = t.format_ok and t.answered
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"\n[{label}] {subset.description} ({secs:.0f} s)")
    print(results_table([res]))
    print(f"[{label}] {retrieval_line([episode_record(t) for t in trajs])}")
    print(f"[{label}] F1 {100 * res.f1:.1f}  format errors {100 * res.format_error_rate:.1f}%\n")
    return eval_metrics(res)


def _demo_record(t: Trajectory) -> dict[str, Any]:
    return {
        "qid": t.qid,
        "question": t.question,
        "answers": t.answers,
        "turns": t.turn_texts,
        "kinds": t.turn_kinds,
        "tokens": len(t.token_ids),
        "action_tokens": sum(t.action_mask()),
    }


def sft(args: SFTConfig) -> dict[str, float]:
    """Build demonstrations, fine-tune the adapter, evaluate, save; returns the last metrics."""
    t_start = time.perf_counter()
    configure_torch_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_args.json").write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    lora = LoraSettings(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=tuple(args.lora_target_modules),
    )
    policy = Policy.load(
        args.model, lora=lora, device=args.device, dtype=args.dtype, seed=args.seed
    )
    prompt_fn = policy_prompt_fn(policy, args.protocol)

    # 1. demonstrations from a seeded permutation of the train questions
    t0 = time.perf_counter()
    (env,) = make_envs(args.env_id, 1, args.max_turns, **env_kwargs_from(args, args.train_qa))
    order = np.random.default_rng(args.seed).permutation(question_count(env)).tolist()
    demos, stats = build_demonstrations(
        env,
        order,
        prompt_fn,
        policy.tokenizer,
        count=args.examples,
        seed=args.seed,
        unfound_rate=args.unfound_rate,
        max_turn_tokens=args.max_new_tokens,
        answer_eos_id=policy.tokenizer.eos_token_id if args.answer_eos else None,
    )
    env.close()
    _report_demos(stats, len(demos), args.examples, time.perf_counter() - t0)
    if not demos:
        raise SystemExit(
            "no demonstration was accepted: check that the retriever finds the gold answers "
            f"of {args.train_qa} (or raise --unfound-rate); reasons: {stats.reasons}"
        )
    with open(out / "demonstrations.jsonl", "w", encoding="utf-8") as fh:
        for t in demos:
            fh.write(json.dumps(_demo_record(t), ensure_ascii=False) + "\n")

    eval_envs: list = []
    if args.eval_questions:
        n_env = max(1, min(args.eval_questions, args.eval_batch_size))
        eval_envs = make_envs(
            args.env_id, n_env, args.max_turns, **env_kwargs_from(args, args.eval_qa)
        )
    steps_per_epoch = math.ceil(len(demos) / args.batch)
    total_steps = steps_per_epoch * args.epochs
    logger = K.MetricsLogger(out, tensorboard=False, total_steps=total_steps)
    logger.log(0, stats.as_metrics())
    last: dict[str, float] = {}
    engine: Engine | None = None
    if eval_envs:
        engine = make_engine(
            args.engine, policy, seed=args.seed, dtype=args.vllm_dtype, threads=args.vllm_threads
        )
    if eval_envs and args.eval_before:
        last = run_eval(policy, eval_envs, args, "before SFT", out / "eval_before.jsonl", engine)
        logger.log(0, last)

    # 2. the supervised loop: shuffled epochs, one optimiser step per --batch demonstrations
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay
    )
    rng = np.random.default_rng([args.seed, 1])
    policy.model.train()
    step = 0
    t_train = time.perf_counter()
    for _epoch in range(args.epochs):
        perm = rng.permutation(len(demos)).tolist()
        for s in range(0, len(perm), args.batch):
            t_step = time.perf_counter()
            lr = args.lr * lr_factor(step, total_steps, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chunk = [demos[i] for i in perm[s : s + args.batch]]
            metrics = train_step(
                policy,
                optimizer,
                chunk,
                micro_batch=args.micro_batch,
                max_grad_norm=args.max_grad_norm,
            )
            step += 1
            dt = time.perf_counter() - t_step
            metrics[K.LEARNING_RATE] = lr
            metrics[K.STEP_S] = dt
            metrics["perf/train_tokens_per_s"] = sum(len(t.token_ids) for t in chunk) / dt
            logger.log(step, metrics)
            last = metrics
    policy.model.eval()
    train_s = time.perf_counter() - t_train

    # 3. greedy evaluation, then save
    if eval_envs:
        final = run_eval(policy, eval_envs, args, "after SFT", out / "eval_after.jsonl", engine)
        logger.log(total_steps, final)
        last = {**last, **final}
    saved = policy.save(out)
    logger.close()
    for e in eval_envs:
        e.close()
    total_s = time.perf_counter() - t_start
    print(
        f"SFT: {len(demos)} demonstrations, {total_steps} steps in {train_s:.0f} s "
        f"(total {total_s:.0f} s). Adapter saved to {saved}; continue with RL:\n"
        f"  python -m igpo_agent.train --config configs/cpu_demo.yaml --init_adapter {saved}"
    )
    return {**last, "time/sft_train_s": train_s, "time/sft_total_s": total_s}


def _report_demos(stats: DemoStats, kept: int, wanted: int, secs: float) -> None:
    print(
        f"demonstrations: kept {kept}/{wanted} from {stats.tried} train questions in {secs:.1f} s "
        f"(answer found by the 1st search {stats.found_first}, by the 2nd {stats.found_second}, "
        f"unfound kept {stats.unfound_kept}; skipped: not retrieved {stats.not_found}, "
        f"too long {stats.too_long}, rejected by the env {stats.rejected})"
    )
    if stats.reasons:
        print("  e.g. " + "; ".join(stats.reasons[:3]))
    if kept < wanted:
        print(f"  warning: only {kept} of {wanted} demonstrations; the QA set ran out")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see ``--help``)."""
    sft(parse_config(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
