"""Time split of a training step, tokens per second, and peak memory, on a real config.

    python benchmarks/step.py                           # configs/cpu_demo.yaml, 3 steps, no eval
    python benchmarks/step.py --main-command            # the README's main command, unchanged
    python benchmarks/step.py --quick                   # tiny random model, configs/tiny_test.yaml

Runs the trainer's front door, ``python -m igpo_agent.train --config CONFIG`` (the config
loaded by ``igpo_agent.config.load_config``), in a child process with ``--steps N`` and
evaluation off (``--eval_questions 0``) unless ``--main-command``, then reads the time
split the trainer logs every step in ``RUN_DIR/metrics.jsonl``: generation, retrieval,
information gain, old/reference log-probs, update, the whole step, and generated tokens
per second. Peak memory is the child's ru_maxrss (``RUSAGE_CHILDREN``): the peak
resident set of the training process, evaluation included with ``--main-command``.
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

# the benchmarks folder (for common.py) and the repo root (so the working tree's packages win)
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import machine_line, peak_rss_mb, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLIT = (
    ("generation", "time/generation_s"),
    ("retrieval", "time/retrieval_s"),
    ("info_gain", "time/info_gain_s"),
    ("old/ref_logp", "time/old_logprobs_s"),
    ("update", "time/update_s"),
)


def run_training(
    config: str,
    *,
    steps: int | None,
    extra: list[str] | None = None,
    run_dir: str | None = None,
    echo: bool = False,
) -> tuple[list[dict[str, float]], float]:
    """Run ``python -m igpo_agent.train --config config`` in a child process.

    ``steps=None`` keeps the config's steps (and everything else: the main command).
    Returns the per-step metric records (those with a time split) and the child's peak
    RSS in MiB. Raises RuntimeError with the child's output tail if it fails.
    """
    tmp = None
    if run_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="igpo-step-")
        run_dir = tmp.name
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", config, "--run_dir", run_dir]
    if steps is not None:
        cmd += ["--steps", str(steps), "--save_every", "0", "--tensorboard", "false"]
    cmd += list(extra or [])
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=not echo, text=True, env=dict(os.environ), check=False
        )
        if proc.returncode != 0:
            tail = ((proc.stdout or "") + (proc.stderr or ""))[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
        records = []
        with open(Path(run_dir) / "metrics.jsonl") as fh:
            for line in fh:
                rec = json.loads(line)
                if "time/step_s" in rec:
                    records.append(rec)
        return records, peak_rss_mb(children=True)
    finally:
        if tmp is not None:
            tmp.cleanup()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/cpu_demo.yaml")
    p.add_argument("--steps", type=int, default=3, help="training steps (eval off)")
    p.add_argument(
        "--main-command",
        action="store_true",
        help="run the config unchanged (its steps, evaluation, checkpoints): peak memory of "
        "`python -m igpo_agent.train --config CONFIG`",
    )
    p.add_argument("--model", default=None, help="override the config's model")
    p.add_argument("--quick", action="store_true", help="tiny random model, tiny_test config")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer flags")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = list(args.extra)
    tmp_model = None
    if args.quick:
        from common import load_policy

        tmp_model = tempfile.TemporaryDirectory(prefix="igpo-bench-")
        load_policy("tiny", tmp=tmp_model.name)
        args.config, args.steps, args.model = "configs/tiny_test.yaml", 1, f"{tmp_model.name}/tiny"
    if args.model:
        extra += ["--model", args.model]
    threads = None
    from igpo_agent.config import load_config

    cfg = load_config(["--config", str(ROOT / args.config), *extra])
    threads = cfg.threads
    print(machine_line(threads or 0))
    what = "main command (unchanged)" if args.main_command else f"{args.steps} steps, eval off"
    print(
        f"training step: {args.config} ({what}): model {cfg.model}, "
        f"{cfg.questions_per_step} questions x G={cfg.group_size}, max_turns {cfg.max_turns}, "
        f"max_new_tokens {cfg.max_new_tokens}, threads {cfg.threads}"
    )
    t0 = time.perf_counter()
    try:
        if args.main_command:
            records, peak = run_training(args.config, steps=None, extra=extra)
        else:
            records, peak = run_training(
                args.config,
                steps=args.steps,
                extra=["--eval_questions", "0", "--probe_every", "0", *extra],
            )
    finally:
        if tmp_model is not None:
            tmp_model.cleanup()
    wall = time.perf_counter() - t0
    headers = ["step", *(name + "_s" for name, _ in SPLIT), "step_s", "tok/s"]
    rows = []
    for m in records:
        rows.append(
            [int(m["step"]), *(m[k] for _, k in SPLIT), m["time/step_s"], m["perf/tokens_per_s"]]
        )
    print_table(headers, rows)
    total = sum(r[-2] for r in rows)
    shares = [sum(r[1 + i] for r in rows) / total * 100 for i in range(len(SPLIT))]
    other = 100 - sum(shares)
    print(
        "share of step time: "
        + ", ".join(f"{name} {s:.1f}%" for (name, _), s in zip(SPLIT, shares, strict=True))
        + f", other {other:.1f}%"
    )
    print(
        f"mean step {total / max(len(rows), 1):.2f} s; process wall {wall:.1f} s; "
        f"peak RSS (ru_maxrss) {peak:.0f} MiB = {peak / 1024:.2f} GiB "
        f"(target < 6 GB: {'met' if peak * 2**20 < 6e9 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
