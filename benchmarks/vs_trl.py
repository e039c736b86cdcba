"""Seconds per training step, same work: ``igpo_agent.train`` beside TRL's ``GRPOTrainer``.

    python -m igpo_agent.sft --answer_eos --out runs/sft_eos       # the EOS-trained warm start
    python benchmarks/vs_trl.py --init-adapter runs/sft_eos --arms trl,igpo,grpo \
        --reps 3 --steps 6 --out results/vs_trl/same_work          # the defaults, A B
    python benchmarks/vs_trl.py --quick                            # smoke run: tiny random model

One task for every arm: SmolLM2-135M-Instruct merged with ``--init-adapter`` + a fresh LoRA
r=8 on q/k/v/o, the shipped default corpus and train questions, BM25 top 3, 100 words a
document, 2 questions x 4 rollouts a step, temperature 0.7, one optimiser step per batch of
8, micro-batches of 2, no KL, no evaluation, no checkpoints. The same work on both sides
(issue #21; the table of 2026-11-29 in results/vs_trl/ compared unequal work):

- the same warm start, and it must be EOS-trained (``igpo_agent.sft --answer_eos``):
  TRL's tool loop ends a turn only at EOS or its token budget, so a warm start that does
  not end its answer with EOS runs TRL's answers to the budget (75% of completions did, 16x
  our sampled tokens). The script warns when the adapter's run config (``config.yaml`` or
  ``sft_args.json``) says ``answer_eos`` is off or does not say.
- the same per-turn budget, ``--max-new-tokens`` (128): ours ``max_new_tokens``; TRL
  ``generation_kwargs={"max_new_tokens": N}``, which TRL 1.16 applies to every ``generate``
  call of its tool loop, while ``max_completion_length`` bounds the whole completion (tool
  responses included). We set that to 3 model turns x N + 2 tool responses x a generous
  bound (``trl_same_work.trl_completion_bound``, 2,440 tokens by default) so that it never
  binds first: the per-turn budget is the only bound on either side.
- the same stops, but one difference: answer turns end at EOS on both sides (ours with
  ``answer_eos``); our search turns also stop at ``</search>``, while TRL's HF ``generate``
  takes no stop strings, so a TRL tool-call turn runs on to EOS. Both sides' searches a
  rollout are recorded (``searches_per_rollout``) and TRL's share of completions that ended
  without EOS (``trl_clipped_ratio``).
- the same search budget, 3 a rollout: ours ``max_turns=4`` (3 searches + an answer); TRL
  the first search forced at reset (SmolLM2 makes no tool call on its own; its documents
  go in the prompt) + ``max_tool_calling_iterations=2``. So TRL has at most 3 model turns
  and we 4 (our first search is a sampled turn).

Arms: ``trl`` (TRL's ``GRPOTrainer`` with :mod:`igpo_env.integrations.trl`); ``igpo`` /
``grpo`` (``igpo_agent.train``, HF engine, KV-cached rollouts; IGPO adds the information-gain
scoring); ``igpo-vllm`` (opt-in: the IGPO run with the vLLM engine, ``--vllm-threads``
threads, under ``--vllm-python``, see docs/VLLM.md; TRL's ``use_vllm`` is not in this CPU
venv, so this arm says what vLLM gains, not an engine-for-engine comparison).

Every run is a fresh child process (``--child``), so its peak RSS is its own (plus its
largest child's: vLLM may run its engine core in one); runs alternate A B A B (arms inside
dtypes inside repetitions) so that a machine's changing load falls on every arm alike. The
first step of every run is a warm-up, left out of every figure. Per arm and dtype the
script prints the median s/step, the sampled tokens a step, seconds per 1,000 trained tokens
(the sampled tokens the loss trains on: model tokens, tool/observation tokens excluded on
both sides; rows of zero advantage count too: without KL or entropy terms their gradient is
zero, TRL runs their backward, ours skips it, recorded as ``skipped_rows``), peak RSS, the
sampled tokens over TRL's (flagged ``!`` and warned past 10%), and two TRL / arm ratios
paired by repetition, median [min-max] over repetitions: s/step and s per 1,000 trained
tokens. Records go to ``--out``/runs.jsonl with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from common import VLLM_PYTHON, machine_line, peak_rss_mb, print_table  # noqa: E402
from trl_same_work import (  # noqa: E402
    summarize,
    token_mismatches,
    tool_tokens_bound,
    trl_completion_bound,
    warm_start_warning,
)

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("trl", "igpo", "grpo", "igpo-vllm")
DTYPES = ("fp32", "bf16")
TASK = dict(top_k=3, doc_max_words=100, group_size=4, questions=2, temperature=0.7, lr=1e-5)
MAX_TURNS = 4  # ours: 3 searches + an answer
TRL_TOOL_CALLS = MAX_TURNS - 2  # TRL: the forced first search + 2 = the same 3 searches
WARMUP_STEPS = 1  # the first step of every run, left out of every figure
SETTINGS = ("steps", "model", "threads", "init_adapter", "trl_max_completion", "max_new_tokens")
"""The options a record must share with this run to be kept by ``--reuse``."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--child ARM`` runs one measurement (internal)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--arms", default="trl,igpo,grpo", help="comma list of trl, igpo, grpo, igpo-vllm"
    )
    p.add_argument("--dtypes", default=",".join(DTYPES), help="fp32 and/or bf16 (update autocast)")
    p.add_argument("--steps", type=int, default=6, help="steps per run, the first a warm-up")
    p.add_argument("--reps", type=int, default=3, help="A B A B repetitions")
    p.add_argument("--model", default="smollm2", help="smollm2 or tiny (a random 2-layer model)")
    p.add_argument(
        "--init-adapter", default=None, help="LoRA merged in first (e.g. the warm start)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    p.add_argument(
        "--vllm-python",
        default=VLLM_PYTHON,
        help="interpreter for the igpo-vllm arm (a venv with vLLM)",
    )
    p.add_argument("--vllm-threads", type=int, default=1, help="vLLM's CPU threads (igpo-vllm)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="token budget of one turn")
    p.add_argument(
        "--trl-max-completion",
        type=int,
        default=None,
        help="TRL's whole-completion bound (default: one that never binds before the turn budget)",
    )
    p.add_argument("--out", default=None, help="folder for runs.jsonl (default: a temp folder)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep a run whose record (ARM-DTYPE-repN.json) is already in --out with the same "
        "settings instead of running it again (to finish an interrupted benchmark)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny random model, trl + igpo, fp32, 2 steps (1 timed), 1 rep, "
        "1 thread, 32 tokens a turn",
    )
    p.add_argument("--child", choices=ARMS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.arms, args.dtypes, args.steps, args.reps = "tiny", "trl,igpo", "fp32", 2, 1
        args.threads, args.max_new_tokens = 1, 32
    if args.trl_max_completion is None:  # 1 + TRL_TOOL_CALLS model turns, TRL_TOOL_CALLS tools
        tool = tool_tokens_bound(TASK["top_k"], TASK["doc_max_words"])
        bound = trl_completion_bound(args.max_new_tokens, 1 + TRL_TOOL_CALLS, TRL_TOOL_CALLS, tool)
        args.trl_max_completion = bound
    args.arm_list = [a for a in args.arms.split(",") if a]
    args.dtype_list = [d for d in args.dtypes.split(",") if d]
    bad = [a for a in args.arm_list if a not in ARMS] + [
        d for d in args.dtype_list if d not in DTYPES
    ]
    if bad or not args.arm_list or not args.dtype_list:
        p.error(f"unknown or empty arms/dtypes {bad}: arms from {ARMS}, dtypes from {DTYPES}")
    if args.steps <= WARMUP_STEPS or args.reps < 1 or args.max_new_tokens < 1:
        p.error(f"--steps must be > {WARMUP_STEPS} (warm-up), --reps and --max-new-tokens >= 1")
    if "igpo-vllm" in args.arm_list and not args.child and not Path(args.vllm_python).exists():
        p.error(f"arm igpo-vllm needs --vllm-python (a venv with vLLM): {args.vllm_python} missing")
    return args


def _model_path(args: argparse.Namespace, tmp: str) -> str:
    """A folder holding the model to train: SmolLM2 (+ merged adapter) or a tiny random one."""
    import torch
    from transformers import AutoModelForCausalLM

    from igpo_agent.model.loading import build_tiny_model, load_tokenizer, resolve_model

    if args.model == "tiny":
        out = Path(tmp) / "tiny"
        build_tiny_model(load_tokenizer("smollm2-135m-instruct"), out)
        return str(out)
    path = resolve_model("smollm2-135m-instruct")
    if not args.init_adapter:
        return str(path)
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, args.init_adapter).merge_and_unload()
    out = Path(tmp) / "merged"
    model.save_pretrained(out)
    load_tokenizer("smollm2-135m-instruct").save_pretrained(out)
    return str(out)


def run_igpo(args: argparse.Namespace, model: str, tmp: str) -> dict[str, Any]:
    """Train with ``igpo_agent.train`` and read the per-step times from its metrics.jsonl."""
    from igpo_agent.config import TrainConfig
    from igpo_agent.run.logging_utils import read_metrics
    from igpo_agent.train import train

    cfg = TrainConfig(
        model=model,
        run_dir=f"{tmp}/run",
        algo="grpo" if args.child == "grpo" else "igpo",
        engine="vllm" if args.child == "igpo-vllm" else "hf",
        vllm_dtype="bfloat16" if args.dtype == "bf16" else "float32",
        vllm_threads=args.vllm_threads,
        device="cpu",
        dtype="float32",
        autocast="bfloat16" if args.dtype == "bf16" else "float32",
        threads=args.threads,
        lora_r=8,
        lora_alpha=16,
        lora_targets="q_proj,k_proj,v_proj,o_proj",
        top_k=TASK["top_k"],
        doc_max_words=TASK["doc_max_words"],
        max_turns=MAX_TURNS,
        max_new_tokens=args.max_new_tokens,
        answer_eos=True,  # the answer turn ends at EOS, as TRL's turns do
        group_size=TASK["group_size"],
        questions_per_step=TASK["questions"],
        temperature=TASK["temperature"],
        lr=TASK["lr"],
        kl_coef=0.0,
        entropy_coef=0.0,
        micro_batch_size=2,
        steps=args.steps,
        eval_questions=0,
        probe_every=0,
        save_every=0,
        dump_rollouts_every=0,
        tensorboard=False,
    )
    train(cfg)
    rows = [r for r in read_metrics(f"{tmp}/run/metrics.jsonl") if "time/step_s" in r]
    gen = [round(r["perf/tokens_per_s"] * r["time/generation_s"]) for r in rows]  # sampled
    return {
        "step_s": [r["time/step_s"] for r in rows],
        "generated_tokens": gen,
        "trained_tokens": gen,  # the loss mask covers every sampled token, no observation
        "searches_per_rollout": [r.get("charts/searches_per_episode") for r in rows],
        "skipped_rows": [r.get("losses/skipped_rows") for r in rows],  # zero advantage
    }


def run_trl(args: argparse.Namespace, model_path: str, tmp: str) -> dict[str, Any]:
    """Train with TRL's GRPOTrainer on the SearchQA adapter; time steps with a callback."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from igpo_agent.model.loading import load_tokenizer
    from igpo_env.integrations.trl import (
        answer_reward,
        build_dataset,
        make_environment_factory,
        prepare_tokenizer,
    )

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.t0)

    g, q = TASK["group_size"], TASK["questions"]
    config = GRPOConfig(
        output_dir=f"{tmp}/trl",
        max_steps=args.steps,
        num_generations=g,
        generation_batch_size=g * q,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=g * q // 2,
        max_completion_length=args.trl_max_completion,  # never binds first (see docstring)
        generation_kwargs={"max_new_tokens": args.max_new_tokens},  # every turn's budget
        max_tool_calling_iterations=TRL_TOOL_CALLS,
        temperature=TASK["temperature"],
        learning_rate=TASK["lr"],
        beta=0.0,
        use_cpu=True,
        bf16=args.dtype == "bf16",
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    torch.set_num_threads(args.threads)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
        reward_funcs=answer_reward,
        args=config,
        train_dataset=build_dataset("default:train"),
        processing_class=prepare_tokenizer(load_tokenizer(model_path)),
        environment_factory=make_environment_factory(
            "SearchQA-v0",
            first_search=True,
            top_k=TASK["top_k"],
            doc_max_words=TASK["doc_max_words"],
        ),
        peft_config=LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        ),
        callbacks=[StepTimer()],
    )
    trainer.train()
    logs = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    gen = [r["completions/mean_length"] * g * q for r in logs]  # model tokens only (tool mask)
    # share of completions cut by the length bound (no EOS before it)
    clipped = [r.get("completions/clipped_ratio") for r in logs]
    return {
        "step_s": times,
        "generated_tokens": gen,
        "trained_tokens": gen,  # TRL's loss mask is its completion mask x the tool mask
        "searches_per_rollout": [r.get("searchqa/searches") for r in logs],  # forced one too
        "trl_clipped_ratio": clipped,
    }


def child(args: argparse.Namespace) -> None:
    """One measured run in this process; its record goes to ``--json``."""
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        model = _model_path(args, tmp)
        t0 = time.perf_counter()
        run = run_trl if args.child == "trl" else run_igpo
        res = run(args, model, tmp)
        res.update(
            arm=args.child,
            dtype=args.dtype,
            wall_s=time.perf_counter() - t0,
            warmup_steps=WARMUP_STEPS,
            max_new_tokens=args.max_new_tokens,
            trl_max_completion=args.trl_max_completion,
            # vLLM may run its engine in a child process: add the largest child's peak
            peak_rss_mb=peak_rss_mb() + peak_rss_mb(children=True),
        )
    Path(args.json).write_text(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    """Run every (rep, dtype, arm) in a child, A B A B, then print the side-by-side table."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="vs_trl-"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(args.threads), flush=True)
    warning = warm_start_warning(args.init_adapter, args.model)
    if warning:
        print(warning, flush=True)
    order = [(r, d, a) for r in range(args.reps) for d in args.dtype_list for a in args.arm_list]
    records = []
    for k, (rep, dtype, arm) in enumerate(order, 1):
        rec_path = out / f"{arm}-{dtype}-rep{rep}.json"
        python = args.vllm_python if arm == "igpo-vllm" else sys.executable
        cmd = [python, __file__, "--child", arm, "--dtype", dtype, "--json", str(rec_path)]
        cmd += ["--steps", str(args.steps), "--model", args.model, "--threads", str(args.threads)]
        cmd += ["--trl-max-completion", str(args.trl_max_completion)]
        cmd += ["--max-new-tokens", str(args.max_new_tokens)]
        cmd += ["--vllm-threads", str(args.vllm_threads)]
        if args.init_adapter:
            cmd += ["--init-adapter", args.init_adapter]
        settings = {k: getattr(args, k) for k in SETTINGS}
        settings |= {"warmup_steps": WARMUP_STEPS, "answer_eos": True}
        if args.reuse and rec_path.is_file():
            rec = json.loads(rec_path.read_text())
            if rec.get("settings") == settings:
                records.append({**rec, "rep": rep, "reused": True})
                print(f"[{k}/{len(order)}] {arm} {dtype} rep {rep}: reused {rec_path}", flush=True)
                continue
        print(f"[{k}/{len(order)}] {arm} {dtype} rep {rep} ...", flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stdout[-2000:], res.stderr[-4000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"{arm} {dtype} failed (exit {res.returncode})")
        rec = {**json.loads(rec_path.read_text()), "rep": rep, "load": os.getloadavg()[0]}
        rec["settings"] = settings
        rec_path.write_text(json.dumps(rec))
        records.append(rec)
        steps = ", ".join(f"{s:.0f}" for s in rec["step_s"])
        print(f"    {time.perf_counter() - t0:.0f} s; steps {steps} s", flush=True)
    with open(out / "runs.jsonl", "a", encoding="utf-8") as fh:
        head = {"command": " ".join(sys.argv), "machine": machine_line(args.threads)}
        fh.write(json.dumps({**head, "warm_start_warning": warning}))
        fh.write("\n")
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    print()
    headers, rows = summarize(records)
    print_table(headers, rows)
    print(
        f"(step 1 of each run is a warm-up, left out; ratios TRL / arm paired by repetition, "
        f"median [min-max]; {args.max_new_tokens} tokens a turn both sides, TRL completion "
        f"bound {args.trl_max_completion})"
    )
    for line in token_mismatches(headers, rows) + ([warning] if warning else []):
        print(line)
    print(f"\nrecords: {out / 'runs.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
