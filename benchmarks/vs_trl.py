"""Seconds per training step: ``python -m igpo_agent.train`` beside TRL's ``GRPOTrainer``.

    python benchmarks/vs_trl.py                                   # 3 steps, A B A B, fp32 + bf16
    python benchmarks/vs_trl.py --arms trl,igpo --dtypes fp32 --reps 1 --steps 2   # quicker
    python benchmarks/vs_trl.py --quick                           # smoke run: tiny random model

One task for every arm: SmolLM2-135M-Instruct (merged with ``--init-adapter`` when given)
+ a fresh LoRA r=8 on q/k/v/o, the shipped default corpus and train questions, BM25 top 3,
100 words a document, 2 questions x 4 rollouts a step, temperature 0.7, one optimiser step
per batch of 8, micro-batches of 2, no KL, no evaluation, no checkpoints.

- ``trl``: TRL's ``GRPOTrainer`` with the SearchQA environment adapter
  (:mod:`igpo_env.integrations.trl`), its own tool loop, the first search forced (SmolLM2
  makes no tool call on its own) and at most 2 more; TRL bounds the whole completion
  (``--trl-max-completion``, tool output included), not each turn.
- ``igpo`` / ``grpo``: ``igpo_agent.train.train`` (HF engine, KV-cached rollouts; IGPO adds
  the information-gain scoring), at most 4 turns (3 searches + an answer), 128 new tokens a
  turn.
- ``igpo-vllm`` (opt-in: add it to ``--arms``): the same IGPO run with rollouts sampled by
  the vLLM engine (``engine=vllm``, ``--vllm-threads`` threads, vLLM in the run's dtype, IG
  by the packed path), run under ``--vllm-python`` (a venv with vLLM's CPU build, see
  docs/VLLM.md). TRL can sample with vLLM too (``use_vllm``), but not in this CPU venv, so
  this arm says what the project gains where vLLM is installed, not an engine-for-engine
  comparison.

Every run is a fresh child process (``--child``), so its peak RSS is its own (plus its
largest child's: vLLM may run its engine core in one); runs
alternate A B A B (arms inside dtypes inside repetitions) so that a machine's changing
load falls on every arm alike. Per arm and dtype the script prints the median seconds a
step (all measured steps of all repetitions; step 1 included: both sides pay their
warm-up), generated tokens a step and per second of step time (tokens the model sampled and
trains on, tool/observation tokens excluded on both sides), peak RSS, and two ratios to TRL
at the same dtype: step time (TRL s/step / arm s/step) and throughput (arm tok/s / TRL
tok/s). They differ when the two sides sample different amounts a step: TRL's tool loop
stops a completion only at EOS or its length bound, this trainer's turns also at
``</search>`` / ``</answer>``.
Records go to ``--out``/runs.jsonl with the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from common import VLLM_PYTHON, machine_line, peak_rss_mb, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("trl", "igpo", "grpo", "igpo-vllm")
DTYPES = ("fp32", "bf16")
TASK = dict(top_k=3, doc_max_words=100, group_size=4, questions=2, temperature=0.7, lr=1e-5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--child ARM`` runs one measurement (internal)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--arms", default="trl,igpo,grpo", help="comma list of trl, igpo, grpo, igpo-vllm"
    )
    p.add_argument("--dtypes", default=",".join(DTYPES), help="fp32 and/or bf16 (update autocast)")
    p.add_argument("--steps", type=int, default=3, help="training steps per run")
    p.add_argument("--reps", type=int, default=2, help="A B A B repetitions")
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
    p.add_argument("--trl-max-completion", type=int, default=1536, help="TRL's completion bound")
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
        help="smoke run: tiny random model, trl + igpo, fp32, 1 step, 1 rep, 1 thread",
    )
    p.add_argument("--child", choices=ARMS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.arms, args.dtypes, args.steps, args.reps = "tiny", "trl,igpo", "fp32", 1, 1
        args.threads, args.trl_max_completion = 1, 128
    args.arm_list = [a for a in args.arms.split(",") if a]
    args.dtype_list = [d for d in args.dtypes.split(",") if d]
    bad = [a for a in args.arm_list if a not in ARMS] + [
        d for d in args.dtype_list if d not in DTYPES
    ]
    if bad or not args.arm_list or not args.dtype_list:
        p.error(f"unknown or empty arms/dtypes {bad}: arms from {ARMS}, dtypes from {DTYPES}")
    if args.steps < 1 or args.reps < 1:
        p.error("--steps and --reps must be >= 1")
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
        max_turns=4,
        max_new_tokens=128,
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
    gen = [r["perf/tokens_per_s"] * r["time/generation_s"] for r in rows]
    return {"step_s": [r["time/step_s"] for r in rows], "generated_tokens": gen}


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
        max_completion_length=args.trl_max_completion,
        max_tool_calling_iterations=2,
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
    return {"step_s": times, "generated_tokens": gen, "trl_clipped_ratio": clipped}


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
            # vLLM may run its engine in a child process: add the largest child's peak
            peak_rss_mb=peak_rss_mb() + peak_rss_mb(children=True),
        )
    Path(args.json).write_text(json.dumps(res))


def summarize(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows per (arm, dtype): median s/step [min, max], tok/s, RSS, speed-up vs TRL."""
    rows, median = [], {}
    keys = sorted({(r["arm"], r["dtype"]) for r in records}, key=lambda k: (k[1], ARMS.index(k[0])))
    for arm, dtype in keys:
        rs = [r for r in records if (r["arm"], r["dtype"]) == (arm, dtype)]
        steps = [s for r in rs for s in r["step_s"]]
        tokens = sum(t for r in rs for t in r["generated_tokens"])
        median[arm, dtype] = statistics.median(steps)
        rows.append(
            [
                arm,
                dtype,
                len(steps),
                median[arm, dtype],
                f"{min(steps):.0f}-{max(steps):.0f}",
                tokens / len(steps),
                tokens / sum(steps),
                max(r["peak_rss_mb"] for r in rs) / 1024,
            ]
        )
    rate = {(r[0], r[1]): r[6] for r in rows}
    for row in rows:
        ref = median.get(("trl", row[1]))
        row.append(f"{ref / median[row[0], row[1]]:.2f}x" if ref else "-")
        ref_rate = rate.get(("trl", row[1]))
        row.append(f"{row[6] / ref_rate:.2f}x" if ref_rate else "-")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every (rep, dtype, arm) in a child, A B A B, then print the side-by-side table."""
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    out = Path(args.out or tempfile.mkdtemp(prefix="vs_trl-"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(args.threads), flush=True)
    order = [(r, d, a) for r in range(args.reps) for d in args.dtype_list for a in args.arm_list]
    records = []
    for k, (rep, dtype, arm) in enumerate(order, 1):
        rec_path = out / f"{arm}-{dtype}-rep{rep}.json"
        python = args.vllm_python if arm == "igpo-vllm" else sys.executable
        cmd = [python, __file__, "--child", arm, "--dtype", dtype, "--json", str(rec_path)]
        cmd += ["--steps", str(args.steps), "--model", args.model, "--threads", str(args.threads)]
        cmd += ["--trl-max-completion", str(args.trl_max_completion)]
        cmd += ["--vllm-threads", str(args.vllm_threads)]
        if args.init_adapter:
            cmd += ["--init-adapter", args.init_adapter]
        settings = {"steps": args.steps, "model": args.model, "threads": args.threads}
        settings |= {
            "init_adapter": args.init_adapter,
            "trl_max_completion": args.trl_max_completion,
        }
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
        fh.write(json.dumps({"command": " ".join(sys.argv), "machine": machine_line(args.threads)}))
        fh.write("\n")
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    print()
    headers = ["arm", "dtype", "steps", "median s/step", "range", "gen tok/step", "gen tok/s"]
    headers += ["peak GiB"]
    print_table([*headers, "s/step vs TRL", "tok/s vs TRL"], summarize(records))
    print(f"\nrecords: {out / 'runs.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
