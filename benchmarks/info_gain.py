"""Information-gain scoring speed: naive per-turn re-encoding vs packed vs live (KV cache).

    python benchmarks/info_gain.py                    # tiny + SmolLM2-135M, G=8, 4 turns
    python benchmarks/info_gain.py --quick            # tiny model only, small, no step
    python benchmarks/info_gain.py --models smollm2 --group 16 --repeat 5

Both methods score the same recorded trajectories: ``--group`` episodes of one question
on the real ``igpo_env:SearchQA-v0`` (default corpus, BM25, ``--top-k`` documents of at
most ``--doc-max-words`` words) with scripted turns (``--turns - 1`` searches, then an
answer), tokenised as the rollout records them; the contexts are ~1,000 tokens. For each
model: median wall time of ``reencoded_trajectory_beliefs(method="naive")`` (one forward per
turn boundary over prefix + answer wrapper) and ``method="packed"`` (one pass per
micro-batch, every trajectory encoded once), their ratio, and max |v_packed - v_naive|.

``live`` is the trainer's default (``ig_method=live``): v_t is scored inside the rollout,
on top of the KV cache the rollout has just prefilled for turn t (the wrapper's few tokens
in one extra batched forward, then the cache is cropped back). To time exactly that work on
the same recorded trajectories, the benchmark replays them through the rollout's own
``generate_turn`` (all G episodes batched, each turn's new tokens prefilled on the kept
cache, as in a rollout) with scoring on, and reports the time spent scoring
(``RolloutStats.ig_seconds``): the cost IG adds to a rollout. ``replay_s`` is the rest of
that replay (prefills the rollout pays anyway), for scale.

Then (unless ``--no-step``) the share of information-gain scoring in real training steps:
``python -m igpo_agent.train`` on ``--step-config`` (default configs/cpu_demo.yaml) for
``--step-steps`` steps without evaluation, reading the logged time split
(``time/info_gain_s`` / ``time/step_s``). See step.py for the whole split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# the benchmarks folder (for common.py) and the repo root (so the working tree's packages win)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import (  # noqa: E402
    MODELS,
    load_policy,
    machine_line,
    print_table,
    scripted_trajectories,
    time_call,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="tiny,smollm2", help="comma list of: tiny, smollm2")
    p.add_argument("--group", type=int, default=8, help="trajectories scored (G)")
    p.add_argument("--turns", type=int, default=4, help="turns per trajectory (T)")
    p.add_argument("--question", type=int, default=0, help="index into the default QA set")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--doc-max-words", type=int, default=50, help="50: ~1,000-token contexts")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per method (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method first")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--lora", action="store_true", help="wrap the model in a LoRA adapter")
    p.add_argument("--max-tokens-per-batch", type=int, default=8192, help="packed micro-batch")
    p.add_argument("--no-step", action="store_true", help="skip the training-step IG share")
    p.add_argument("--step-config", default="configs/cpu_demo.yaml")
    p.add_argument("--step-steps", type=int, default=2, help="training steps for the IG share")
    p.add_argument("--quick", action="store_true", help="tiny model, G=4, 3 turns, no step")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.group, args.turns, args.repeat = "tiny", 4, 3, 1
        args.doc_max_words, args.no_step = 40, True
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {MODELS}")
    return args


def live_replay(policy, trajs, repeat: int, warmup: int) -> tuple[float, float, list[list[float]]]:
    """Score v_t from the live KV cache while replaying ``trajs`` turn by turn, batched.

    Returns (median scoring seconds, median seconds of the rest of the replay, values).
    """
    import statistics
    import time

    from igpo_agent.ig.gold import trajectory_gold_specs
    from igpo_agent.ig.live import score_after_prefill
    from igpo_agent.rollout.sampling import RolloutStats, TurnRequest, generate_turn

    golds = trajectory_gold_specs(policy.tokenizer, trajs, "<answer>", "</answer>")
    bounds = [t.boundaries() for t in trajs]
    scoring, rest = [], []
    values: list[list[float]] = []
    policy.model.eval()
    for k in range(warmup + max(1, repeat)):
        stats = RolloutStats()
        caches = [None] * len(trajs)
        fed = [0] * len(trajs)
        values = [[] for _ in trajs]
        t0 = time.perf_counter()
        for turn in range(max(len(b) for b in bounds)):
            live = [i for i, b in enumerate(bounds) if len(b) > turn]
            reqs = [
                TurnRequest(
                    trajs[i].token_ids[fed[i] : bounds[i][turn]], 1, cache=caches[i], gold=golds[i]
                )
                for i in live
            ]
            outs = generate_turn(
                policy.model,
                policy.tokenizer,
                reqs,
                temperature=0.0,
                keep_cache=True,
                stats=stats,
                after_prefill=score_after_prefill,
            )
            for i, out in zip(live, outs, strict=True):
                caches[i], fed[i] = out.cache, bounds[i][turn]
                values[i].append(out.belief)
        wall = time.perf_counter() - t0
        if k >= warmup:
            scoring.append(stats.ig_seconds)
            rest.append(wall - stats.ig_seconds)
    return statistics.median(scoring), statistics.median(rest), values


def bench_model(kind: str, args: argparse.Namespace, tmp: str) -> dict[str, float]:
    """Time naive vs packed on one model; returns the row's numbers."""
    from igpo_agent.ig.beliefs import reencoded_trajectory_beliefs

    policy = load_policy(kind, lora=args.lora, tmp=tmp)
    trajs = scripted_trajectories(
        policy,
        group=args.group,
        turns=args.turns,
        question=args.question,
        top_k=args.top_k,
        doc_max_words=args.doc_max_words,
    )
    lengths = [len(t.token_ids) for t in trajs]
    bounds = [b for t in trajs for b in t.boundaries()]
    # tokens each method feeds (wrapper copies aside): naive re-encodes every prefix b_t,
    # packed encodes each trajectory once up to its last boundary; their ratio bounds the
    # speed-up when the forward cost is linear in tokens
    naive_tokens = sum(bounds)
    packed_tokens = sum(max(t.boundaries()) for t in trajs)

    def run(method: str):
        return reencoded_trajectory_beliefs(
            policy,
            trajs,
            "<answer>",
            "</answer>",
            method=method,
            max_tokens_per_batch=args.max_tokens_per_batch,
        )

    t_naive, v_naive = time_call(lambda: run("naive"), args.repeat, args.warmup)
    t_packed, v_packed = time_call(lambda: run("packed"), args.repeat, args.warmup)
    t_live, t_replay, v_live = live_replay(policy, trajs, args.repeat, args.warmup)

    def max_diff(values):
        return max(
            abs(a - b)
            for ra, rb in zip(v_naive, values, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )

    return {
        "model": kind + ("+lora" if args.lora else ""),
        "trajs": len(trajs),
        "boundaries": len(bounds),
        "mean_len": sum(lengths) / len(lengths),
        "max_len": max(lengths),
        "tok_ratio": naive_tokens / packed_tokens,
        "naive_s": t_naive,
        "packed_s": t_packed,
        "live_s": t_live,
        "replay_s": t_replay,
        "packed_x": t_naive / t_packed,
        "live_x": t_naive / t_live,
        "packed_diff": max_diff(v_packed),
        "live_diff": max_diff(v_live),
    }


def step_share(args: argparse.Namespace) -> None:
    """IG share of real training steps, from the trainer's logged time split."""
    from step import run_training

    runs, peak = run_training(
        args.step_config,
        steps=args.step_steps,
        extra=["--eval_questions", "0", "--probe_every", "0"],
    )
    rows = []
    for m in runs:
        ig, total = m["time/info_gain_s"], m["time/step_s"]
        rows.append([int(m["step"]), total, ig, 100.0 * ig / total])
    ig_sum = sum(r[2] for r in rows)
    step_sum = sum(r[1] for r in rows)
    print(f"\nIG share of training steps ({args.step_config}, eval off):")
    print_table(["step", "step_s", "info_gain_s", "ig_%"], rows)
    share = 100.0 * ig_sum / step_sum
    print(
        f"IG over all steps: {share:.2f}% of step wall time (target <= 5%: "
        f"{'met' if share <= 5 else 'NOT met'}); trainer peak RSS {peak:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from igpo_agent.model.policy import configure_torch_threads

    threads = configure_torch_threads(args.threads)
    print(machine_line(threads))
    print(
        f"IG scoring: G={args.group} trajectories x {args.turns} turns (question "
        f"{args.question}, top_k={args.top_k}, doc_max_words={args.doc_max_words}), "
        f"median of {args.repeat} call(s) after {args.warmup} warm-up, fp32 CPU"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="igpo-bench-") as tmp:
        for kind in args.models.split(","):
            r = bench_model(kind, args, tmp)
            rows.append(list(r.values()))
            cols = list(r)
    print_table(cols, rows)
    for row in rows:
        r = dict(zip(cols, row, strict=True))
        print(
            f"{r['model']}: live (the trainer's default) {r['live_x']:.1f}x faster than naive "
            f"(target >= 5x: {'met' if r['live_x'] >= 5 else 'NOT met'}), max |v_live - v_naive| "
            f"= {r['live_diff']:.2e} (<= 1e-4: {'yes' if r['live_diff'] <= 1e-4 else 'NO'}); "
            f"packed {r['packed_x']:.1f}x, max diff {r['packed_diff']:.2e}; live scoring = "
            f"{100 * r['live_s'] / r['replay_s']:.1f}% of the prefills it rides on"
        )
    if not args.no_step:
        step_share(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
