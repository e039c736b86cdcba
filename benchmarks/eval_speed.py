"""Greedy evaluation speed: ``python -m igpo_agent.evaluate`` per engine, side by side.

    python benchmarks/eval_speed.py --adapter runs/demo/sft          # 64 dev questions
    python benchmarks/eval_speed.py --questions 32 --reps 1
    python benchmarks/eval_speed.py --quick                          # tiny model, hf only

Each arm is the evaluator's front door in a fresh child process on the same dev questions
(the demo's episode limits: 3 turns, 64 new tokens a turn, BM25 top 3, 64 words a
document), alternating A B A B:

- ``hf``: the HF engine, fp32, batch 16 (the project's default), one torch thread;
- ``hf-bf16``: the same with bf16 weights;
- ``vllm``: the vLLM engine (bf16, one vLLM thread) under ``--vllm-python`` (a venv with
  vLLM's CPU build, docs/VLLM.md); skipped with a note when that interpreter is missing.

Printed per arm: the median wall seconds of the whole command (model load, engine start-up
and the episodes) and of the episodes alone (the evaluator's own "(N episodes in S s)"
line), seconds per question, the speed-up over ``hf``, and the F1 it measured (engines and
precisions may answer a few questions differently: greedy decoding in another dtype).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import VLLM_PYTHON, machine_line, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPISODE_LIMITS = ["--max_turns", "3", "--max_new_tokens", "64", "--top_k", "3"]
EPISODE_LIMITS += ["--doc_max_words", "64"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--adapter", default=None, help="LoRA adapter to evaluate (e.g. the warm start)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--reps", type=int, default=2, help="A B A B repetitions")
    p.add_argument("--arms", default="hf,hf-bf16,vllm", help="comma list of hf, hf-bf16, vllm")
    p.add_argument(
        "--vllm-python",
        default=VLLM_PYTHON,
        help="interpreter for the vllm arm",
    )
    p.add_argument("--out", default=None, help="folder for runs.jsonl (default: a temp folder)")
    p.add_argument("--quick", action="store_true", help="tiny random model, 4 questions, hf")
    args = p.parse_args(argv)
    if args.quick:
        args.questions, args.reps, args.arms = 4, 1, "hf"
    args.arm_list = [a for a in args.arms.split(",") if a]
    if bad := [a for a in args.arm_list if a not in ("hf", "hf-bf16", "vllm")]:
        p.error(f"unknown arms {bad}")
    return args


def arm_command(args: argparse.Namespace, arm: str, model: str, out: Path) -> list[str]:
    """The evaluator command of one arm."""
    python = args.vllm_python if arm == "vllm" else sys.executable
    cmd = [python, "-m", "igpo_agent.evaluate", "--model", model, "--qa", "default:dev"]
    cmd += ["--questions", str(args.questions), *EPISODE_LIMITS, "--threads", "1"]
    cmd += ["--device", "cpu", "--out", str(out)]
    if args.adapter:
        cmd += ["--adapter", args.adapter]
    if arm == "hf":
        cmd += ["--dtype", "float32"]
    elif arm == "hf-bf16":
        cmd += ["--dtype", "bfloat16"]
    else:
        cmd += ["--engine", "vllm", "--vllm_dtype", "bfloat16", "--vllm_threads", "1"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Run every (rep, arm) in a child, A B A B, then print the side-by-side table."""
    args = parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="eval_speed-"))
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(1), flush=True)
    arms = list(args.arm_list)
    if "vllm" in arms and not Path(args.vllm_python).exists():
        print(f"note: no vLLM interpreter at {args.vllm_python}; the vllm arm is skipped")
        arms.remove("vllm")
    model = args.model
    if args.quick:
        from igpo_agent.model.loading import build_tiny_model, load_tokenizer

        model = str(out / "tiny")
        build_tiny_model(load_tokenizer("smollm2-135m-instruct"), model)
    records = []
    for rep in range(args.reps):
        for arm in arms:
            run_dir = out / f"{arm}-rep{rep}"
            cmd = arm_command(args, arm, model, run_dir)
            print(f"{arm} rep {rep} ...", flush=True)
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                print(res.stdout[-2000:], res.stderr[-3000:], sep="\n", file=sys.stderr)
                raise SystemExit(f"{arm} failed (exit {res.returncode})")
            m = re.search(r"\((\d+) episodes in ([\d.]+) s\)", res.stdout)
            if m is None:
                raise SystemExit(f"{arm}: no episode timing in the evaluator's output")
            f1 = json.loads((run_dir / "results.json").read_text())[0]["f1"]
            rec = dict(arm=arm, rep=rep, wall_s=wall, episodes=int(m[1]), episodes_s=float(m[2]))
            records.append({**rec, "f1": f1, "command": " ".join(cmd)})
            print(f"    {wall:.0f} s ({rec['episodes_s']:.0f} s of episodes)", flush=True)
    with open(out / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"command": " ".join(sys.argv), "machine": machine_line(1)}) + "\n")
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    rows, base = [], None
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        ep = statistics.median(r["episodes_s"] for r in rs)
        wall = statistics.median(r["wall_s"] for r in rs)
        base = base or ep
        per_q = ep / rs[0]["episodes"]
        rows.append([arm, len(rs), wall, ep, per_q, f"{base / ep:.2f}x", 100 * rs[0]["f1"]])
    print()
    headers = ["arm", "runs", "wall s", "episodes s", "s/question", "vs hf", "F1"]
    print_table(headers, rows)
    print(f"\nrecords: {out / 'runs.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
