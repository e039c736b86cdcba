"""IGPO against GRPO from the same warm start: dev F1 against rollouts seen, side by side.

    python benchmarks/learning.py --init-adapter runs/demo/sft --steps 4 --eval-every 2 \\
        --eval-questions 16 --out runs/learning          # CPU: ~2 x 7 min on 2 cores
    python benchmarks/learning.py --quick                # tiny random model, seconds

Make the warm start first with ``python -m igpo_agent.sft --out runs/demo/sft`` (or
``make demo``). The script runs the trainer's front door twice, sequentially, in child
processes: ``python -m igpo_agent.train --config CONFIG --init_adapter ADAPTER --algo igpo``
and the same with ``--algo grpo`` (outcome reward only). Both runs share the config, the
seed, the warm-start adapter, the number of steps (so the number of rollouts) and the
fixed dev subset evaluated greedily before training, every ``--eval-every`` steps and after
training. Everything else comes from ``--config`` (default ``configs/cpu_demo.yaml``:
SmolLM2-135M + LoRA, 2 questions x G=4 = 8 rollouts per step, 3 turns, 64 new tokens per
turn); on a GPU pass a bigger config (e.g. ``configs/paper_7b_gpu.yaml``) or ``--extra``
trainer flags (``--extra --group_size 8 --questions_per_step 8 --device cuda``).

Outputs in ``--out``: ``igpo/`` and ``grpo/`` (the two run folders), ``learning.jsonl``
(one ``kind: "eval"`` row per evaluation point per algorithm: algo, step, rollouts_seen,
eval_f1, eval_em, eval_format_error_rate; one ``kind: "train"`` row per training step:
outcome_f1, format_error_rate, reward_mean, ig_turn_k), ``learning.png`` (dev F1 vs
rollouts for both, train format-error rate vs rollouts for both, mean IG reward per turn
index for IGPO), and a printed table: dev F1 before/final/best, format errors, wall time
per algorithm, and the IGPO - GRPO F1 difference.
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

# the benchmarks folder (for common.py) and the repo root (so the working tree's packages win)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from igpo_agent import logging_utils as K  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("igpo", "grpo")
SFT_HINT = "python -m igpo_agent.sft --out runs/demo/sft"


def train_command(
    algo: str,
    *,
    config: str,
    run_dir: Path,
    steps: int,
    eval_every: int,
    eval_questions: int,
    init_adapter: str | None,
    seed: int | None,
    extra: list[str],
) -> list[str]:
    """The ``python -m igpo_agent.train`` command of one arm; the arms differ only in algo
    and run_dir (checkpoints off: the comparison needs metrics, not resumable state)."""
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", config]
    cmd += ["--run_dir", str(run_dir), "--algo", algo, "--steps", str(steps)]
    cmd += ["--eval_every", str(eval_every), "--eval_questions", str(eval_questions)]
    cmd += ["--save_every", "0", "--tensorboard", "false", "--dump_rollouts_every", "0"]
    if init_adapter is not None:
        cmd += ["--init_adapter", init_adapter]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    return cmd + list(extra)


def run_arm(cmd: list[str], *, quiet: bool) -> float:
    """Run one training child (output streamed unless ``quiet``); returns its wall seconds.

    Raises RuntimeError with the command and the output tail when the child fails."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=quiet, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = ((proc.stdout or "") + (proc.stderr or ""))[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return wall


def run_arms_parallel(cmds: dict[str, list[str]], logs: Path) -> dict[str, float]:
    """Run every arm's child at once (output to ``logs/ALGO.log``); wall seconds per arm.

    On a multi-core machine the arms then share it instead of queueing; each child should
    be given its share of the cores (``--threads``). Raises like :func:`run_arm`."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logs.mkdir(parents=True, exist_ok=True)
    procs, walls, t0 = {}, {}, time.perf_counter()
    for algo, cmd in cmds.items():
        fh = open(logs / f"{algo}.log", "w")  # noqa: SIM115  (closed below)
        procs[algo] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=fh), fh)
    failed = []
    while procs:
        for algo, (proc, fh) in list(procs.items()):
            if proc.poll() is None:
                continue
            walls[algo] = time.perf_counter() - t0
            fh.close()
            del procs[algo]
            print(f"{algo} finished in {walls[algo]:.0f} s (exit {proc.returncode})", flush=True)
            if proc.returncode != 0:
                failed.append(algo)
        time.sleep(1.0)
    if failed:
        tails = {a: (logs / f"{a}.log").read_text()[-3000:] for a in failed}
        raise RuntimeError(f"arm(s) {failed} failed:\n" + "\n".join(tails.values()))
    return walls


def ig_turns(rec: dict[str, Any]) -> dict[int, float]:
    """``{turn index: mean IG}`` from a step record's ``charts/ig_turn_k`` keys."""
    out = {}
    for key, value in rec.items():
        if key.startswith(K.IG_TURN_PREFIX) and isinstance(value, (int, float)):
            out[int(key[len(K.IG_TURN_PREFIX) :])] = float(value)
    return dict(sorted(out.items()))


def collect_rows(algo: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The learning.jsonl rows of one run: eval points and per-step train metrics.

    An eval record without ``charts/rollouts_seen`` takes the latest count logged at or
    before its step (0 before training)."""
    rows: list[dict[str, Any]] = []
    seen = 0
    for rec in records:
        step = int(rec.get("step", 0))
        if isinstance(rec.get(K.ROLLOUTS_SEEN), (int, float)):
            seen = int(rec[K.ROLLOUTS_SEEN])
        if K.STEP_S in rec:
            rows.append(
                {
                    "kind": "train",
                    "algo": algo,
                    "step": step,
                    "rollouts_seen": seen,
                    "outcome_f1": rec.get(K.OUTCOME_F1),
                    "format_error_rate": rec.get(K.FORMAT_ERROR_RATE),
                    "reward_mean": rec.get(K.REWARD_MEAN),
                    "ig_turn": {str(k): v for k, v in ig_turns(rec).items()},
                    "step_s": rec.get(K.STEP_S),
                }
            )
        if isinstance(rec.get(K.EVAL_F1), (int, float)):
            rows.append(
                {
                    "kind": "eval",
                    "algo": algo,
                    "step": step,
                    "rollouts_seen": seen,
                    "eval_f1": rec[K.EVAL_F1],
                    "eval_em": rec.get(K.EVAL_EM),
                    "eval_format_error_rate": rec.get(K.EVAL_FORMAT_ERROR_RATE),
                }
            )
    return rows


def summarize_arm(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Before/final/best dev F1, format errors and wall time of one arm's rows."""
    evals = [r for r in rows if r["kind"] == "eval"]
    train = [r for r in rows if r["kind"] == "train"]
    if not evals:
        raise ValueError("the run logged no evaluation: pass --eval-questions > 0")
    fmt = [r["format_error_rate"] for r in train if r["format_error_rate"] is not None]
    return {
        "rollouts": train[-1]["rollouts_seen"] if train else 0,
        "f1_before": evals[0]["eval_f1"],
        "f1_final": evals[-1]["eval_f1"],
        "f1_best": max(r["eval_f1"] for r in evals),
        "eval_fmt_final": evals[-1]["eval_format_error_rate"],
        "train_fmt_mean": sum(fmt) / len(fmt) if fmt else float("nan"),
        "wall_s": wall,
    }


def plot_learning(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Three panels: dev F1 vs rollouts (both arms), train format-error rate vs rollouts
    (both arms), mean IG reward per turn index over IGPO's steps."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    algos = sorted({r["algo"] for r in rows}, key=lambda a: ALGOS.index(a) if a in ALGOS else 9)
    for algo in algos:
        ev = [r for r in rows if r["algo"] == algo and r["kind"] == "eval"]
        tr = [r for r in rows if r["algo"] == algo and r["kind"] == "train"]
        axes[0].plot(
            [r["rollouts_seen"] for r in ev], [r["eval_f1"] for r in ev], marker="o", label=algo
        )
        pts = [(r["rollouts_seen"], r["format_error_rate"]) for r in tr]
        pts = [p for p in pts if p[1] is not None]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=algo)
    axes[0].set(title="dev F1 (greedy) vs rollouts seen", xlabel="rollouts seen", ylabel="F1")
    axes[1].set(title="train format-error rate vs rollouts", xlabel="rollouts seen", ylabel="rate")
    ig = [r for r in rows if r["kind"] == "train" and r["ig_turn"]]
    turns = sorted({int(k) for r in ig for k in r["ig_turn"]})
    for k in turns:
        pts = [(r["step"], r["ig_turn"][str(k)]) for r in ig if str(k) in r["ig_turn"]]
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"turn {k}")
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[2].set(title="IGPO: mean IG reward per turn index", xlabel="step", ylabel="IG")
    if not turns:
        axes[2].text(0.5, 0.5, "no IG records", ha="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/cpu_demo.yaml", help="trainer config (YAML)")
    p.add_argument("--init-adapter", default="runs/demo/sft", help="warm-start LoRA adapter")
    p.add_argument("--steps", type=int, default=4, help="training steps per algorithm")
    p.add_argument("--eval-every", type=int, default=2, help="dev evaluation every N steps")
    p.add_argument("--eval-questions", type=int, default=16, help="dev questions per eval")
    p.add_argument("--seed", type=int, default=None, help="seed for both arms (default: config)")
    p.add_argument("--out", default="runs/learning", help="output folder")
    p.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    p.add_argument("--quiet", action="store_true", help="hide the trainers' own output")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the arms at the same time, each with cpu_count/arms torch threads "
        "(logs in OUT/ALGO.log)",
    )
    p.add_argument("--quick", action="store_true", help="tiny random model, tiny_test config")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer flags")
    return p.parse_args(argv)


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = list(args.extra)
    out = Path(args.out).resolve()
    tmp = None
    init_adapter: str | None = None
    if args.quick:
        from igpo_agent.models import build_tiny_model, load_tokenizer

        tmp = tempfile.TemporaryDirectory(prefix="igpo-learning-")
        build_tiny_model(load_tokenizer("smollm2-135m-instruct"), Path(tmp.name) / "tiny", seed=0)
        args.config = "configs/tiny_test.yaml"
        args.steps, args.eval_every, args.eval_questions = 2, 1, 2
        extra += ["--model", f"{tmp.name}/tiny"]
    else:
        adapter = Path(args.init_adapter)
        if not adapter.is_absolute() and not adapter.exists():
            adapter = ROOT / adapter
        if not (adapter / "adapter_config.json").is_file():
            print(
                f"no warm-start adapter at {args.init_adapter} (no adapter_config.json there); "
                f"make one with `{SFT_HINT}` (or `make demo`) and pass --init-adapter PATH",
                file=sys.stderr,
            )
            return 2
        init_adapter = str(adapter.resolve())
    if args.steps < 1 or args.eval_questions < 1 or args.eval_every < 0:
        print("need --steps >= 1, --eval-questions >= 1, --eval-every >= 0", file=sys.stderr)
        return 2
    config = str((ROOT / args.config) if not Path(args.config).exists() else Path(args.config))
    print(
        f"learning: {', '.join(args.algos)} from {init_adapter or 'a random tiny model'}; "
        f"config {args.config}, {args.steps} steps, dev eval every {args.eval_every} steps on "
        f"{args.eval_questions} questions; load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    if args.parallel and "--threads" not in extra:
        extra += ["--threads", str(max(1, (os.cpu_count() or 1) // len(args.algos)))]
    cmds = {
        algo: train_command(
            algo,
            config=config,
            run_dir=out / algo,
            steps=args.steps,
            eval_every=args.eval_every,
            eval_questions=args.eval_questions,
            init_adapter=init_adapter,
            seed=args.seed,
            extra=extra,
        )
        for algo in args.algos
    }
    try:
        if args.parallel:
            for algo, cmd in cmds.items():
                print(f"=== {algo} (parallel, log {out / (algo + '.log')}): {' '.join(cmd[1:])}")
            walls = run_arms_parallel(cmds, out)
        else:
            walls = {}
            for algo, cmd in cmds.items():
                print(f"\n=== {algo}: {' '.join(cmd[1:])}", flush=True)
                walls[algo] = run_arm(cmd, quiet=args.quiet)
        for algo in args.algos:
            arm = collect_rows(algo, K.read_metrics(out / algo))
            rows += arm
            summary[algo] = summarize_arm(arm, walls[algo])
    finally:
        if tmp is not None:
            tmp.cleanup()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "learning.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    png = plot_learning(rows, out / "learning.png")

    from common import print_table

    cols = [
        ("rollouts", "rollouts"),
        ("f1_before", "dev F1 before"),
        ("f1_final", "dev F1 final"),
        ("f1_best", "dev F1 best"),
        ("eval_fmt_final", "dev fmt-err final"),
        ("train_fmt_mean", "train fmt-err mean"),
        ("wall_s", "wall s"),
    ]
    print()
    print_table(
        ["algo", *(h for _, h in cols)],
        [[a, *(s[k] for k, _ in cols)] for a, s in summary.items()],
    )
    if "igpo" in summary and "grpo" in summary:
        i, g = summary["igpo"], summary["grpo"]
        print(
            f"IGPO - GRPO dev F1: final {_fmt(i['f1_final'] - g['f1_final'])}, "
            f"best {_fmt(i['f1_best'] - g['f1_best'])} "
            f"({args.eval_questions} dev questions, {i['rollouts']} rollouts each)"
        )
    print(f"wrote {out / 'learning.jsonl'} ({len(rows)} rows) and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
