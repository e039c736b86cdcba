"""IGPO against GRPO from the same warm start: dev F1 against rollouts seen, side by side.

    python benchmarks/learning.py --init-adapter runs/demo/sft --steps 4 --eval-every 2 \\
        --eval-questions 16 --out runs/learning          # CPU: ~2 x 7 min on 2 cores
    python benchmarks/learning.py --quick                # tiny random model, seconds

Make the warm start first with ``make demo`` (or its first command, ``python -m
igpo_agent.sft --out runs/demo/sft --eval_questions 0 --max_turns 3 --max_new_tokens 64``). The script runs the trainer's front door twice, sequentially, in child
processes: ``python -m igpo_agent.train --config CONFIG --init_adapter ADAPTER --algo igpo``
and the same with ``--algo grpo`` (outcome reward only). Both runs share the config, the
seed, the warm-start adapter, the number of steps (so the number of rollouts) and the
fixed evaluation subset (stratified by article; ``--eval-qa``: dev by default, test for a
claim) evaluated greedily before training, every ``--eval-every`` steps and after
training. Everything else comes from ``--config`` (default ``configs/cpu_demo.yaml``:
SmolLM2-135M + LoRA, 2 questions x G=4 = 8 rollouts per step, 3 turns, 64 new tokens per
turn); on a GPU pass a bigger config (e.g. ``configs/paper_7b_gpu.yaml``) or ``--extra``
trainer flags (``--extra --group_size 8 --questions_per_step 8 --device cuda``).

Outputs in ``--out``: ``igpo/`` and ``grpo/`` (the two run folders), ``learning.jsonl``
(one ``kind: "eval"`` row per evaluation point per algorithm: algo, step, rollouts_seen,
eval_f1, eval_em, eval_format_error_rate; one ``kind: "train"`` row per training step:
outcome_f1, format_error_rate, reward_mean, ig_turn_k), ``learning.png`` (dev F1 vs
rollouts for both with 95% CI bands, train format-error rate vs rollouts, mean IG reward
per turn index for IGPO, and the learning-signal shares: groups whose outcomes are all
equal and trained tokens with a non-zero advantage), and a printed table: dev F1
before/final/best, format errors, signal shares, wall time per run, then paired 95%
bootstrap intervals over (seed, question) pairs of (RL - warm start) per algorithm and
(IGPO - GRPO) on the final dev F1, each with the per-seed differences.

``--seeds 0 1`` runs independent seeds per arm (run dirs ``OUT/ALGO-seedS``), one seed after
another (with ``--parallel`` the two arms of a seed share the cores); a study that can
resolve a difference needs >= 256 dev questions (``--eval-questions 256``) and hundreds of
rollouts per arm and seed. Seeds can be run one call at a time into the same ``--out``
with ``--reuse`` (finished runs are read, not rerun); the last call, naming every seed,
compares them all. ``--python .venv-vllm/bin/python --extra --engine vllm`` samples with
the vLLM engine (the study in ``results/study/`` was run that way):

    python benchmarks/learning.py --init-adapter runs/demo/sft --steps 63 --eval-every 21 \\
        --eval-questions 256 --seeds 0 --parallel --reuse --python .venv-vllm/bin/python \\
        --out runs/study --extra --engine vllm --vllm_threads 1
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

from igpo_agent.plot import rolling_mean, smoothing_window  # noqa: E402
from igpo_agent.run import logging_utils as K  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ("igpo", "grpo")
SFT_HINT = (  # make demo's warm start (its settings match configs/cpu_demo.yaml)
    "python -m igpo_agent.sft --out runs/demo/sft --eval_questions 0 --max_turns 3 --max_new_tokens 64"
)


def train_command(
    algo: str,
    *,
    config: str,
    run_dir: Path,
    steps: int,
    eval_every: int,
    eval_questions: int,
    init_adapter: str | None,
    eval_qa: str = "default:dev",
    eval_seed: int = 0,
    seed: int | None,
    extra: list[str],
    python: str | None = None,
) -> list[str]:
    """The ``python -m igpo_agent.train`` command of one arm; the arms differ only in algo
    and run_dir (checkpoints off: the comparison needs metrics, not resumable state).

    ``python``: the trainer's interpreter (default: this one); ``--engine vllm`` needs the
    vLLM environment's (``.venv-vllm/bin/python``), which has no matplotlib for this script."""
    cmd = [python or sys.executable, "-m", "igpo_agent.train", "--config", config]
    cmd += ["--run_dir", str(run_dir), "--algo", algo, "--steps", str(steps)]
    cmd += ["--eval_every", str(eval_every), "--eval_questions", str(eval_questions)]
    cmd += ["--eval_qa", eval_qa, "--eval_seed", str(eval_seed)]
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


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a completed training run: the trainer writes its
    end-of-run ``summary.json`` only after the final evaluation."""
    from igpo_agent.run.summary import SUMMARY_FILE

    return (run_dir / SUMMARY_FILE).is_file() and (run_dir / "metrics.jsonl").is_file()


def read_walls(out: Path) -> dict[str, float]:
    """``{run name: wall seconds}`` recorded by earlier invocations in ``out/walls.json``."""
    path = out / "walls.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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
                    "all_equal_groups": rec.get(K.ALL_EQUAL_GROUPS),
                    "nonzero_adv_tokens": rec.get(K.NONZERO_ADV_TOKENS),
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
                    "eval_f1_ci": [rec.get(K.EVAL_F1_CI_LOW), rec.get(K.EVAL_F1_CI_HIGH)],
                    "eval_gold_retrieved": rec.get(K.EVAL_GOLD_RETRIEVED),
                    "eval_f1_retrieved": rec.get(K.EVAL_F1_RETRIEVED),
                    "eval_f1_not_retrieved": rec.get(K.EVAL_F1_NOT_RETRIEVED),
                    "answers_changed": rec.get(K.EVAL_CHANGED),
                    "answers_better": rec.get(K.EVAL_BETTER),
                    "answers_worse": rec.get(K.EVAL_WORSE),
                }
            )
        if isinstance(rec.get(K.PROBE_REWARD), (int, float)):
            rows.append(
                {
                    "kind": "probe",
                    "algo": algo,
                    "step": step,
                    "rollouts_seen": seen,
                    "probe_reward": rec[K.PROBE_REWARD],
                    "probe_reward_ci": [
                        rec.get(K.PROBE_REWARD_CI_LOW),
                        rec.get(K.PROBE_REWARD_CI_HIGH),
                    ],
                    "probe_f1": rec.get(K.PROBE_F1),
                    "probe_pass_at_1": rec.get(K.PROBE_PASS_AT_1),
                    "probe_pass_at_g": rec.get(K.PROBE_PASS_AT_G),
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

    def mean_of(key: str) -> float:
        xs = [r[key] for r in train if isinstance(r.get(key), (int, float))]
        return sum(xs) / len(xs) if xs else float("nan")

    return {
        "rollouts": train[-1]["rollouts_seen"] if train else 0,
        "f1_before": evals[0]["eval_f1"],
        "f1_final": evals[-1]["eval_f1"],
        "f1_best": max(r["eval_f1"] for r in evals),
        "eval_fmt_final": evals[-1]["eval_format_error_rate"],
        "train_fmt_mean": sum(fmt) / len(fmt) if fmt else float("nan"),
        "all_equal_groups": mean_of("all_equal_groups"),
        "nonzero_adv_tokens": mean_of("nonzero_adv_tokens"),
        "wall_s": wall,
    }


def _pair_into(x: dict[str, float], y: dict[str, float], a: list, b: list) -> str:
    """Append the questions both ``{qid: f1}`` maps score to ``a`` (x) and ``b`` (y);
    return their mean difference y - x in F1 points, formatted (``n/a`` with none shared)."""
    qids = [q for q in y if q in x]
    a += [x[q] for q in qids]
    b += [y[q] for q in qids]
    return f"{100 * sum(y[q] - x[q] for q in qids) / len(qids):+.1f}" if qids else "n/a"


def paired_comparisons(runs: dict[str, tuple[str, Any, Path]], steps: int) -> list[str]:
    """Paired 95% bootstrap intervals from the runs' per-question eval records.

    ``runs``: name -> (algo, seed, run dir). Items are (seed, question) pairs: (RL - warm
    start) per algo pairs each run's final eval with its own step-0 eval; (IGPO - GRPO)
    pairs the two algos' final evals of the same seed. Per-seed differences are listed
    too, since pooling resamples questions, not training runs.
    """
    from igpo_agent.algo.stats import paired_diff_ci
    from igpo_agent.run.summary import read_eval_records

    lines: list[str] = []
    finals: dict[tuple[str, Any], dict[str, float]] = {}
    for algo in ALGOS:
        a, b, per_seed = [], [], []
        for al, seed, run in runs.values():
            if al != algo:
                continue
            before = read_eval_records(run, "step-0")
            after = read_eval_records(run, f"step-{steps}")
            if not before or not after:
                continue
            f0 = {r["qid"]: r["f1"] for r in before}
            finals[(algo, seed)] = {r["qid"]: r["f1"] for r in after}
            per_seed.append(_pair_into(f0, finals[(algo, seed)], a, b))
        if a:
            d = paired_diff_ci(a, b)
            lines.append(
                f"{algo} - warm start, dev F1: {d.fmt()} over {d.n} (seed, question) pairs; "
                f"per seed {', '.join(per_seed)}"
            )
    seeds = sorted(
        {s for (al, s) in finals if al == "igpo"} & {s for (al, s) in finals if al == "grpo"},
        key=str,
    )
    a, b, per_seed = [], [], []
    for seed in seeds:
        per_seed.append(_pair_into(finals[("grpo", seed)], finals[("igpo", seed)], a, b))
    if a:
        d = paired_diff_ci(a, b)
        verdict = "excludes 0" if d.excludes_zero() else "includes 0"
        if len(seeds) < 2:  # the pairs resample questions; one run per arm says nothing of seeds
            verdict += "; one run per arm: run-to-run noise not included"
        lines.append(
            f"IGPO - GRPO, final dev F1: {d.fmt()} over {d.n} pairs ({verdict}); "
            f"per seed {', '.join(per_seed)}"
        )
    return lines


def plot_learning(rows: list[dict[str, Any]], out_png: Path) -> Path:
    """Three panels: dev F1 vs rollouts (both arms), train format-error rate vs rollouts
    (both arms), mean IG reward per turn index over IGPO's steps."""
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    names = sorted({(r["algo"], str(r.get("seed"))) for r in rows})
    for algo, seed in names:
        label = algo if seed == "None" else f"{algo} seed {seed}"
        mine = [r for r in rows if r["algo"] == algo and str(r.get("seed")) == seed]
        ev = [r for r in mine if r["kind"] == "eval"]
        tr = [r for r in mine if r["kind"] == "train"]
        xs = [r["rollouts_seen"] for r in ev]
        (line,) = axes[0].plot(xs, [r["eval_f1"] for r in ev], marker="o", label=label)
        ci = [r.get("eval_f1_ci") or [None, None] for r in ev]
        if ci and all(c[0] is not None and c[1] is not None for c in ci):
            axes[0].fill_between(
                xs, [c[0] for c in ci], [c[1] for c in ci], color=line.get_color(), alpha=0.15
            )
        pts = [(r["rollouts_seen"], r["format_error_rate"]) for r in tr]
        pts = [p for p in pts if p[1] is not None]
        w = smoothing_window(len(pts)) if pts else 1  # one step is 8 rollouts: smooth, say so
        axes[1].plot(
            [p[0] for p in pts],
            rolling_mean([p[1] for p in pts], w),
            color=line.get_color(),
            label=f"{label} (mean of last {w} steps)",
        )
        for key, style in (("all_equal_groups", "-"), ("nonzero_adv_tokens", "--")):
            pts = [(r["rollouts_seen"], r.get(key)) for r in tr]
            pts = [p for p in pts if isinstance(p[1], (int, float))]
            if pts:
                w = smoothing_window(len(pts))
                axes[3].plot(
                    [p[0] for p in pts],
                    rolling_mean([p[1] for p in pts], w),
                    style,
                    color=line.get_color(),
                    label=f"{label}: {key.replace('_', ' ')} (last {w} steps)",
                )
    axes[0].set(
        title="dev F1 (greedy, 95% CI band) vs rollouts", xlabel="rollouts seen", ylabel="F1"
    )
    axes[3].set(
        title="signal (rolling mean): all-equal groups (-), non-zero adv. tokens (--)",
        xlabel="rollouts seen",
        ylabel="share",
    )
    axes[1].set(
        title="train format-error rate vs rollouts (rolling mean)",
        xlabel="rollouts seen",
        ylabel="rate",
    )
    ig = [r for r in rows if r["kind"] == "train" and r["ig_turn"]]
    turns = sorted({int(k) for r in ig for k in r["ig_turn"]})
    ig_seeds = sorted({str(r.get("seed")) for r in ig})
    for k in turns:  # one colour per turn, one line style per seed (each seed its own line)
        color = f"C{k}"
        for j, seed in enumerate(ig_seeds):
            mine = [r for r in ig if str(r.get("seed")) == seed and str(k) in r["ig_turn"]]
            pts = [(r["step"], r["ig_turn"][str(k)]) for r in mine]
            if not pts:
                continue
            w = smoothing_window(len(pts))
            who = f"turn {k}" if seed == "None" else f"turn {k}, seed {seed}"
            axes[2].plot(
                [p[0] for p in pts],
                rolling_mean([p[1] for p in pts], w),
                ("-", "--", ":", "-.")[j % 4],
                color=color,
                label=f"{who} (mean of last {w} steps)",
            )
    axes[2].axhline(0.0, color="grey", lw=0.8)
    axes[2].set(title="IGPO: mean IG reward per turn index (rolling)", xlabel="step", ylabel="IG")
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
    p.add_argument("--eval-questions", type=int, default=16, help="questions per eval")
    p.add_argument(
        "--eval-qa",
        default="default:dev",
        help="evaluation split: default:dev to choose settings, default:test for a claim",
    )
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the stratified eval subset")
    p.add_argument("--seed", type=int, default=None, help="seed for both arms (default: config)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several independent runs per arm (run dirs OUT/ALGO-seedS); overrides --seed",
    )
    p.add_argument("--out", default="runs/learning", help="output folder")
    p.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    p.add_argument("--quiet", action="store_true", help="hide the trainers' own output")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run the arms at the same time, each with cpu_count/arms torch threads "
        "(logs in OUT/ALGO.log)",
    )
    p.add_argument(
        "--python",
        default=None,
        help="interpreter for the trainer runs (default: this one); .venv-vllm/bin/python "
        "with --extra --engine vllm",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep runs already finished in OUT (summary.json written) instead of rerunning "
        "them: run seeds one at a time into one OUT, the last call compares them all",
    )
    p.add_argument("--quick", action="store_true", help="tiny random model, tiny_test config")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer flags")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = list(args.extra)
    out = Path(args.out).resolve()
    tmp = None
    init_adapter: str | None = None
    if args.quick:
        from igpo_agent.model.loading import build_tiny_model, load_tokenizer

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
        f"config {args.config}, {args.steps} steps, eval every {args.eval_every} steps on "
        f"{args.eval_questions} questions of {args.eval_qa} (stratified, seed {args.eval_seed}); load average {os.getloadavg()[0]:.2f}"
    )
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    if args.parallel and "--threads" not in extra:
        extra += ["--threads", str(max(1, (os.cpu_count() or 1) // len(args.algos)))]
    seeds: list[Any] = list(args.seeds) if args.seeds else [args.seed]
    runs: dict[str, tuple[str, Any, Path]] = {}
    for seed in seeds:
        for algo in args.algos:
            name = f"{algo}-seed{seed}" if args.seeds else algo
            runs[name] = (algo, seed, out / name)
    cmds = {
        name: train_command(
            algo,
            config=config,
            run_dir=run_dir,
            steps=args.steps,
            eval_every=args.eval_every,
            eval_questions=args.eval_questions,
            init_adapter=init_adapter,
            eval_qa=args.eval_qa,
            eval_seed=args.eval_seed,
            seed=seed,
            extra=extra,
            python=args.python,
        )
        for name, (algo, seed, run_dir) in runs.items()
    }
    walls: dict[str, float] = read_walls(out) if args.reuse else {}
    try:
        for seed in seeds:  # arms of one seed side by side (--parallel), seeds in turn
            todo = {}
            for name, (_, s, run_dir) in runs.items():
                if s != seed:
                    continue
                if args.reuse and finished(run_dir):
                    print(f"=== {name}: reusing the finished run in {run_dir}")
                    walls.setdefault(name, float("nan"))
                else:
                    todo[name] = cmds[name]
            if args.parallel and todo:
                for name, cmd in todo.items():
                    print(
                        f"=== {name} (parallel, log {out / (name + '.log')}): {' '.join(cmd[1:])}"
                    )
                walls.update(run_arms_parallel(todo, out))
            else:
                for name, cmd in todo.items():
                    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
                    walls[name] = run_arm(cmd, quiet=args.quiet)
            out.mkdir(parents=True, exist_ok=True)
            (out / "walls.json").write_text(json.dumps({**read_walls(out), **walls}, indent=1))
        for name, (algo, seed, run_dir) in runs.items():
            arm = [{**r, "seed": seed} for r in collect_rows(algo, K.read_metrics(run_dir))]
            rows += arm
            summary[name] = summarize_arm(arm, walls[name])
        comparisons = paired_comparisons(runs, args.steps)
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
        ("all_equal_groups", "all-equal groups"),
        ("nonzero_adv_tokens", "non-zero adv tokens"),
        ("wall_s", "wall s"),
    ]
    print()
    print_table(
        ["algo", *(h for _, h in cols)],
        [[a, *(s[k] for k, _ in cols)] for a, s in summary.items()],
    )
    print("\n95% paired bootstrap intervals (F1 points):")
    for line in comparisons or ["(no per-question eval records to pair)"]:
        print("  " + line)
    print(f"wrote {out / 'learning.jsonl'} ({len(rows)} rows) and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
