"""Group-rollout speed: the project's batched, KV-cached rollout vs one HF ``generate`` per turn.

    python benchmarks/rollout.py                      # SmolLM2-135M, 4 questions x G=4, 4 turns
    python benchmarks/rollout.py --quick              # tiny random model, 4 episodes, 2 turns
    python benchmarks/rollout.py --questions 8 --group 8 --max-new-tokens 128

Three ways to run the same greedy episodes (``--questions`` x ``--group`` = 16 episodes
on the real ``igpo_env:SearchQA-v0``, at most ``--turns`` turns, env ``i`` reset with
``seed + i``):

- ``project``: ``igpo_agent.rollout.episodes.rollout_batch`` with ``reuse_cache=True``: all active
  episodes decode together, each keeps its KV cache across turns (only the new observation
  is prefilled), finished episodes leave the batch.
- ``project_no_cache``: the same with ``reuse_cache=False`` (the whole history is
  re-prefilled every turn, still batched).
- ``hf_generate``: the straightforward loop written here, one episode at a time, one
  ``model.generate`` call per turn over the full re-encoded context, stopping on the env's
  stop strings or EOS; log-probs from the returned logits. The stop strings go in as the
  ``StopStringCriteria`` that ``stop_strings=`` + ``tokenizer=`` would build, made once per
  run (``--literal-stop-strings`` passes ``stop_strings=`` to every call instead; HF then
  rebuilds its vocabulary tables each call, ~1.2 s here, which only widens the gap).

Reported: wall seconds of the whole rollout (env steps included), generated tokens,
tokens fed in prefill forwards (prompts, observations, re-encoded histories), tokens per
second, the speed ratio to ``hf_generate``, whether every episode's tokens are
identical to the baseline's and the max |log-prob difference| over generated tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the benchmarks folder (for common.py) and the repo root (so the working tree's packages win)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import MODELS, load_policy, machine_line, make_env, print_table  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", choices=MODELS)
    p.add_argument("--questions", type=int, default=4, help="distinct questions")
    p.add_argument("--group", type=int, default=4, help="episodes per question (G)")
    p.add_argument("--first-question", type=int, default=0, help="index of the first question")
    p.add_argument("--turns", type=int, default=4, help="turn limit per episode")
    p.add_argument("--max-new-tokens", type=int, default=64, help="per turn")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--doc-max-words", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--lora", action="store_true", help="wrap the model in a LoRA adapter")
    p.add_argument(
        "--literal-stop-strings",
        action="store_true",
        help="baseline passes stop_strings= + tokenizer= to every generate call (HF then "
        "rebuilds its stop-string tables per call); default: the same criteria built once",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip hf_generate (slow)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 x 2 episodes, 2 turns")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.questions, args.group, args.turns = "tiny", 2, 2, 2
        args.max_new_tokens, args.doc_max_words = 12, 30
    return args


def project_rollout(
    policy: Any, args: argparse.Namespace, reuse: bool
) -> tuple[list, float, int, int]:
    """The library's rollout; returns (trajectories, wall s, generated, prefilled tokens)."""
    from igpo_agent.model.prompts import policy_prompt_fn
    from igpo_agent.rollout.episodes import RolloutStats, rollout_batch
    from igpo_agent.rollout.sampling import GenerationSettings

    envs = [
        make_env(args.top_k, args.doc_max_words, args.turns)
        for _ in range(args.questions * args.group)
    ]
    tasks = [{"index": args.first_question + q} for q in range(args.questions)]
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=0.0, reuse_cache=reuse
    )
    stats = RolloutStats()
    t0 = time.perf_counter()
    trajs = rollout_batch(
        policy.model,
        policy.tokenizer,
        policy_prompt_fn(policy, "tags"),
        envs,
        tasks,
        group_size=args.group,
        settings=settings,
        seed=args.seed,
        stats=stats,
    )
    wall = time.perf_counter() - t0
    for env in envs:
        env.close()
    return trajs, wall, stats.tokens_generated, stats.prefill_tokens


_CRITERIA: dict[tuple[int, tuple[str, ...]], Any] = {}


def _stop_criteria(tok: Any, stops: tuple[str, ...]) -> Any:
    """The ``StopStringCriteria`` that ``stop_strings=`` builds, made once per run: built per
    call it re-scans the whole vocabulary (~1.2 s each on this machine)."""
    from transformers import StoppingCriteriaList
    from transformers.generation.stopping_criteria import StopStringCriteria

    key = (id(tok), stops)
    if key not in _CRITERIA:
        _CRITERIA[key] = StoppingCriteriaList([StopStringCriteria(tok, list(stops))])
    return _CRITERIA[key]


def hf_episode(policy: Any, env: Any, task: dict, seed: int, args: argparse.Namespace) -> dict:
    """One episode the straightforward way: a ``generate`` call per turn on the full context."""
    import torch

    from igpo_agent.model.prompts import policy_prompt_fn
    from igpo_agent.rollout.sampling import eos_token_ids, model_max_context

    model, tok = policy.model, policy.tokenizer
    max_context = model_max_context(model)
    obs, info = env.reset(seed=seed, options=task)
    stops = [s for s in (info.get("protocol") or {}).get("stop") or [] if s]
    context = list(policy_prompt_fn(policy, "tags")(obs))
    actions: list[list[int]] = []
    logprobs: list[list[float]] = []
    generated = prefill = 0
    eos = eos_token_ids(model, tok)
    if args.literal_stop_strings or not stops:
        stop_kwargs: dict[str, Any] = {"stop_strings": stops or None, "tokenizer": tok}
    else:
        stop_kwargs = {"stopping_criteria": _stop_criteria(tok, tuple(stops))}
    for _ in range(args.turns):
        budget = min(args.max_new_tokens, max_context - len(context))
        ids = torch.tensor([context])
        prefill += len(context)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                **stop_kwargs,
                eos_token_id=list(eos),
                pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
        new = out.sequences[0, len(context) :].tolist()
        logits = torch.cat(out.logits, dim=0).float()  # (n_new, V)
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None]).squeeze(-1)
        actions.append(new)
        logprobs.append(lp.tolist())
        generated += len(new)
        context += new
        obs, _, terminated, truncated, _ = env.step(tok.decode(new, skip_special_tokens=True))
        if terminated or truncated:
            break
        obs_ids = tok.encode(obs, add_special_tokens=False)
        if len(context) + len(obs_ids) + 1 > max_context:
            break
        context += obs_ids
    return {
        "token_ids": context,
        "logprobs": logprobs,
        "generated": generated,
        "prefill": prefill,
    }


def hf_rollout(policy: Any, args: argparse.Namespace) -> tuple[list[dict], float, int, int]:
    """Every episode, one after another, with :func:`hf_episode`."""
    env = make_env(args.top_k, args.doc_max_words, args.turns)
    n = args.questions * args.group
    t0 = time.perf_counter()
    eps = [
        hf_episode(
            policy,
            env,
            {"index": args.first_question + i // args.group},
            args.seed + i,
            args,
        )
        for i in range(n)
    ]
    wall = time.perf_counter() - t0
    env.close()
    return eps, wall, sum(e["generated"] for e in eps), sum(e["prefill"] for e in eps)


def compare(trajs: list, ref: list[dict]) -> tuple[int, float]:
    """(episodes with identical tokens, max |log-prob diff| over generated tokens)."""
    same, diff = 0, 0.0
    for tr, r in zip(trajs, ref, strict=True):
        same += tr.token_ids == r["token_ids"]
        ours = [
            [tr.sample_logprobs[i] for i in range(s.start, s.end)]
            for s in tr.spans
            if s.kind == "action"
        ]
        for a, b in zip(ours, r["logprobs"], strict=False):
            diff = max([diff, *(abs(x - y) for x, y in zip(a, b, strict=False))])
    return same, diff


def as_ref(trajs: list) -> list[dict]:
    """Trajectories in the baseline's shape (for project vs project comparisons)."""
    return [
        {
            "token_ids": t.token_ids,
            "logprobs": [t.sample_logprobs[s.start : s.end] for s in t.spans if s.kind == "action"],
        }
        for t in trajs
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from igpo_agent.model.policy import configure_torch_threads

    threads = configure_torch_threads(args.threads)
    print(machine_line(threads))
    n = args.questions * args.group
    print(
        f"group rollout: {args.model}{'+lora' if args.lora else ''} fp32 CPU, greedy, {n} "
        f"episodes ({args.questions} questions x G={args.group}), <= {args.turns} turns, "
        f"max_new_tokens {args.max_new_tokens}, top_k {args.top_k}, doc_max_words "
        f"{args.doc_max_words}"
    )
    with tempfile.TemporaryDirectory(prefix="igpo-bench-") as tmp:
        policy = load_policy(args.model, lora=args.lora, tmp=tmp)
        policy.model.eval()
        project_rollout(
            policy,
            argparse.Namespace(**{**vars(args), "questions": 1, "group": 1, "turns": 1}),
            True,
        )  # warm-up
        trajs, t_proj, n_proj, p_proj = project_rollout(policy, args, reuse=True)
        trajs_nc, t_nc, n_nc, p_nc = project_rollout(policy, args, reuse=False)
        base = None
        if not args.no_baseline:
            warm = make_env(args.top_k, args.doc_max_words, 1)  # stop-string tables, allocator
            hf_episode(policy, warm, {"index": args.first_question}, args.seed, args)
            base, t_base, n_base, p_base = hf_rollout(policy, args)
    turns = sum(t.num_turns for t in trajs) / n
    ctx = sum(len(t.token_ids) for t in trajs) / n
    print(f"mean turns/episode {turns:.2f}, mean final context {ctx:.0f} tokens")
    ref = base if base is not None else as_ref(trajs)
    t_ref = t_base if base is not None else t_proj
    rows = []
    for name, tr, t, k, pre in (
        ("project (reuse_cache=True)", trajs, t_proj, n_proj, p_proj),
        ("project (reuse_cache=False)", trajs_nc, t_nc, n_nc, p_nc),
    ):
        same, diff = compare(tr, ref)
        rows.append([name, t, k, pre, k / t, t_ref / t, f"{same}/{n}", diff])
    if base is not None:
        rows.append(
            [
                "hf_generate, 1 episode/call",
                t_base,
                n_base,
                p_base,
                n_base / t_base,
                1.0,
                f"{n}/{n}",
                0.0,
            ]
        )
    print_table(
        [
            "method",
            "wall_s",
            "gen_tokens",
            "prefill_tokens",
            "tok/s",
            "speedup",
            "same_tokens",
            "max_lp_diff",
        ],
        rows,
    )
    print(f"reuse_cache=True vs False: {t_nc / t_proj:.2f}x")
    if base is not None:
        same, diff = compare(trajs, base)
        ok = t_base / t_proj >= 4
        print(
            f"project vs hf_generate: {t_base / t_proj:.2f}x (target >= 4x: "
            f"{'met' if ok else 'NOT met'}); identical trajectories {same}/{n}; max "
            f"|log-prob diff| {diff:.2e} (<= 1e-4: {'yes' if diff <= 1e-4 else 'NO'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
