"""Group-rollout speed: the vLLM engine against the project's HF engine, LoRA on, one run.

    .venv-vllm/bin/python benchmarks/rollout_vllm.py            # SmolLM2-135M, 4 x G=4 episodes
    .venv-vllm/bin/python benchmarks/rollout_vllm.py --quick    # tiny random model, 2 x 2

Both engines run the same 16 sampled episodes setup (temperature 1, the real
``igpo_env:SearchQA-v0``, env ``i`` reset with ``seed + i``) with the same LoRA policy:

- ``hf``: :func:`igpo_agent.rollout.episodes.rollout_batch` on the peft model (fp32, batched,
  KV-cached, ``--hf-threads`` torch threads; 1 is the project's measured-fastest default).
- ``vllm``: :meth:`igpo_agent.rollout.vllm_engine.VLLMEngine.rollout_batch` (``--dtype``, compiled,
  every core) after :meth:`~igpo_agent.rollout.vllm_engine.VLLMEngine.sync_weights` pushed the
  policy with its adapter merged in; the push is timed and counted in the vLLM wall time.

The adapter's B matrices are drawn non-zero so the merged weights differ from the base.
Sampled episodes differ between engines (different random streams), so speed is compared
as generated tokens per wall second of the whole rollout (env steps included). Engine
start-up (load + compile) is reported apart: it is paid once per training run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import load_policy, machine_line, make_env, print_table  # noqa: E402

# vLLM's CPU attention needs head_dim in {32, 64, 80, ...}: common.py's tiny model (16) fails
VLLM_TINY = {"layers": 2, "hidden": 128, "heads": 2, "kv_heads": 1, "intermediate": 256}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", choices=("tiny", "smollm2"))
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--group", type=int, default=4, help="episodes per question (G)")
    p.add_argument("--turns", type=int, default=4, help="turn limit per episode")
    p.add_argument("--max-new-tokens", type=int, default=64, help="per turn")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--doc-max-words", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-threads", type=int, default=1, help="torch threads of the HF engine")
    p.add_argument(
        "--vllm-threads", type=int, default=None, help="torch threads of vLLM (default: all CPUs)"
    )
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--repeat", type=int, default=2, help="timed rollouts per engine (best kept)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 x 2 episodes, 2 turns")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.questions, args.group, args.turns = "tiny", 2, 2, 2
        args.max_new_tokens, args.doc_max_words, args.repeat = 12, 30, 1
    return args


def _rollout(run: Any, args: argparse.Namespace, stats: Any) -> tuple[list, float]:
    from igpo_agent.rollout.sampling import GenerationSettings

    envs = [
        make_env(args.top_k, args.doc_max_words, args.turns)
        for _ in range(args.questions * args.group)
    ]
    tasks = [{"index": q} for q in range(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=1.0)
    t0 = time.perf_counter()
    trajs = run(envs, tasks, settings, stats, args.group)
    wall = time.perf_counter() - t0
    for env in envs:
        env.close()
    return trajs, wall


def _load_lora_policy(kind: str, tmp: str) -> Any:
    """common.load_policy's LoRA policy; the tiny model is built with vLLM-friendly sizes."""
    if kind != "tiny":
        return load_policy(kind, lora=True, tmp=tmp)
    from igpo_agent.model.loading import build_tiny_model, load_tokenizer
    from igpo_agent.model.policy import LoraSettings, Policy

    folder = build_tiny_model(
        load_tokenizer("default"), Path(tmp) / "tiny", init_std=0.1, **VLLM_TINY
    )
    lora = LoraSettings(r=16, alpha=32, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    return Policy.load(str(folder), lora=lora, device="cpu", dtype="float32", seed=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from igpo_agent.model.prompts import policy_prompt_fn
    from igpo_agent.rollout.episodes import RolloutStats, rollout_batch
    from igpo_agent.rollout.vllm_engine import VLLMEngine

    torch.set_num_threads(args.hf_threads)
    n = args.questions * args.group
    print(machine_line(args.hf_threads))
    with tempfile.TemporaryDirectory(prefix="igpo-bench-") as tmp:
        policy = _load_lora_policy(args.model, tmp)
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(args.seed))
        policy.model.eval()
        prompt_fn = policy_prompt_fn(policy, "tags")
        path = policy.model.get_base_model().name_or_path

        t0 = time.perf_counter()
        engine = VLLMEngine(
            path, dtype=args.dtype, max_model_len=2048, seed=args.seed, threads=args.vllm_threads
        )
        startup = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(args.seed)

        def hf_run(envs, tasks, settings, stats, group):
            return rollout_batch(
                policy.model,
                policy.tokenizer,
                prompt_fn,
                envs,
                tasks,
                group_size=group,
                settings=settings,
                generator=gen,
                seed=args.seed,
                stats=stats,
            )

        def vllm_run(envs, tasks, settings, stats, group):
            engine.sync_weights(policy)
            return engine.rollout_batch(
                prompt_fn,
                envs,
                tasks,
                group_size=group,
                settings=settings,
                seed=args.seed,
                stats=stats,
            )

        print(
            f"group rollout: {args.model}+LoRA(r=16, q/k/v/o), temperature 1, {n} episodes "
            f"({args.questions} questions x G={args.group}), <= {args.turns} turns, "
            f"max_new_tokens {args.max_new_tokens}; vLLM {args.dtype} start-up {startup:.1f} s"
        )
        rows, best = [], {}
        for name, run in (("hf (rollout_batch)", hf_run), (f"vllm {args.dtype}", vllm_run)):
            _rollout(run, argparse.Namespace(**{**vars(args), "questions": 1, "group": 1}), None)
            for _ in range(args.repeat):
                stats = RolloutStats()
                trajs, wall = _rollout(run, args, stats)
                rate = stats.tokens_generated / wall
                if name not in best or rate > best[name][0]:
                    best[name] = (rate, wall, stats, trajs)
            rate, wall, stats, trajs = best[name]
            turns = sum(t.num_turns for t in trajs) / n
            rows.append([name, wall, stats.tokens_generated, turns, stats.gen_seconds, rate, 0.0])
        sync = engine.last_sync_seconds
        rows[1][-1] = sync
        base = rows[0][5]
        for r in rows:
            r.append(r[5] / base)
    print_table(
        ["engine", "wall_s", "gen_tokens", "turns/ep", "gen_s", "tok/s", "sync_s", "speedup"],
        rows,
    )
    ratio = rows[1][-1]
    print(
        f"vLLM vs HF engine: {ratio:.2f}x tokens/s (target >= 3x: "
        f"{'met' if ratio >= 3 else 'NOT met'}); weight push {sync:.2f} s per sync"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
