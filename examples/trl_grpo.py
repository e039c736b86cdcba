"""Train SmolLM2-135M-Instruct + LoRA with TRL's GRPOTrainer on a SearchQA environment.

A CPU-sized demo of :mod:`igpo_env.integrations.trl` (``pip install igpo[trl]``)::

    python examples/trl_grpo.py                                # 2 steps, first search forced
    python examples/trl_grpo.py --init_adapter runs/demo/sft   # warm start (merged) first
    python examples/trl_grpo.py --no-first_search --steps 4    # the model must call search itself

Each step samples ``--num_generations`` rollouts of one question: the model may call the
``search`` tool (answered by the env's retriever; the documents are masked out of the
loss) and ends with ``<answer>...</answer>``, scored by the env (F1 by default).
SmolLM2-135M alone never emits a tool call, hence ``--first_search`` (on by default): the
environment searches for the question at reset and appends the documents to the prompt,
so the model starts from evidence. ``--init_adapter`` merges a saved LoRA adapter (e.g.
the project's SFT warm start) into the base weights before a fresh rank-``--lora_r``
adapter is trained on top.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental

import igpo_agent  # noqa: E402,F401  (OMP_WAIT_POLICY before torch loads)


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults fit a 2-core CPU)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, folder or hub id")
    p.add_argument("--init_adapter", default=None, help="LoRA adapter merged in before training")
    p.add_argument("--env", default="SearchQA-v0", help="a SearchQA-* env id")
    p.add_argument("--qa", default="default:train", help="QA split or JSONL for the prompts")
    p.add_argument("--questions", type=int, default=16, help="first N questions of --qa")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps (one question each)")
    p.add_argument("--num_generations", type=int, default=4, help="rollouts per question")
    p.add_argument("--micro_batch", type=int, default=2, help="rollouts per forward/backward")
    p.add_argument("--max_completion_length", type=int, default=256, help="tokens, tools included")
    p.add_argument("--max_tool_calls", type=int, default=2, help="tool-call rounds per rollout")
    p.add_argument("--top_k", type=int, default=3, help="documents per search")
    p.add_argument("--doc_max_words", type=int, default=64, help="words kept per document")
    p.add_argument("--first_search", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default=None, help="where the LoRA adapter is saved (temp)")
    args = p.parse_args()
    if args.num_generations < 2 or args.num_generations % args.micro_batch:
        p.error("--num_generations must be >= 2 and a multiple of --micro_batch")
    return args


def load_model(name: str, init_adapter: str | None):
    """The base causal LM in fp32, with ``init_adapter`` merged into its weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_agent.model.loading import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch.float32)
    if init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_adapter).merge_and_unload()
    return model


def main() -> None:
    """Build the env, dataset, model and trainer; train; print a summary."""
    args = parse_args()
    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from igpo_agent.model.loading import load_tokenizer
    from igpo_env.integrations.trl import (
        answer_reward,
        build_dataset,
        make_environment_factory,
        prepare_tokenizer,
    )

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = args.output_dir or tempfile.mkdtemp(prefix="trl_grpo-")
    tokenizer = prepare_tokenizer(load_tokenizer(args.model))
    factory = make_environment_factory(
        args.env,
        first_search=args.first_search,
        top_k=args.top_k,
        doc_max_words=args.doc_max_words,
    )
    dataset = build_dataset(args.qa, limit=args.questions)
    config = GRPOConfig(
        output_dir=out,
        max_steps=args.steps,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.num_generations // args.micro_batch,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=args.max_tool_calls,
        temperature=args.temperature,
        learning_rate=args.lr,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
    )
    lora = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    last_batch: list = []

    def searchqa_reward(completions: list, **kwargs) -> list[float]:
        rewards = answer_reward(completions, **kwargs)
        last_batch[:] = list(zip(completions, rewards, strict=True))
        return rewards

    trainer = GRPOTrainer(
        model=load_model(args.model, args.init_adapter),
        reward_funcs=searchqa_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=factory,
        peft_config=lora,
    )
    print(f"setup {time.perf_counter() - start:.1f}s; training {args.steps} steps ...", flush=True)
    trainer.train()
    trainer.save_model(out)

    print("\nstep  reward  f1     answered  tool_calls/rollout  model_tokens  step_s")
    for row in (r for r in trainer.state.log_history if "reward" in r):
        print(
            f"{row['step']:>4}  "
            f"{row['reward']:+.3f}  {row.get('searchqa/f1', 0.0):.3f}  "
            f"{row.get('searchqa/answered', 0.0):>8.2f}  "
            f"{row.get('tools/call_frequency', 0.0):>18.2f}  "
            f"{row.get('completions/mean_length', 0.0):>12.1f}  {row.get('step_time', 0.0):>6.1f}"
        )
    if last_batch:
        completion, reward = last_batch[0]
        print(f"\nlast step, rollout 0 (reward {reward:+.3f}):")
        for message in completion:
            text = message.get("content") or message.get("tool_calls")
            print(f"  [{message['role']}] {str(text)[:300]!r}")
    print(f"\nLoRA adapter saved to {out}; wall time {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
