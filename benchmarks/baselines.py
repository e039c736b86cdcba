"""Dev-split baseline table: each policy x each retrieval backend, greedy, same questions.

    python benchmarks/baselines.py \\
        --policy zero-shot=none --policy "warm start=runs/demo/sft" \\
        --policy GRPO=runs/learning/grpo/final --policy IGPO=runs/learning/igpo/final \\
        --retrievers bm25,dense --questions 32 --jobs 2 --out results/baselines
    python benchmarks/baselines.py --quick            # tiny random model, seconds

Every cell is one ``python -m igpo_agent.evaluate`` run in a child process (the exact
command is stored next to its numbers): SmolLM2-135M-Instruct (``--model``) with the
policy's LoRA adapter (``none`` = the base model zero-shot), the first ``--questions``
questions of ``--qa`` (default ``default:dev``, the same fixed subset the trainer
evaluates), greedy, with the env settings of ``configs/cpu_demo.yaml`` (top_k 3, 64 words
per document, 3 turns, 64 new tokens per turn). ``--jobs`` cells run at once, each on
``cpu_count / jobs`` torch threads.

Writes ``OUT/baselines.jsonl`` (one row per cell: policy, adapter, retriever, n, f1, em,
cover_em, format_error_rate, turns, searches, seconds, command), ``OUT/baselines.md`` (the
table, F1/EM/cover-EM in %, and the commands) and each cell's evaluate output folder
(``OUT/cells/POLICY-RETRIEVER/``: results.json/.md, episodes.jsonl). ``--append`` adds
cells to an existing table (e.g. new policies after more training) instead of replacing it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENV_FLAGS = ["--top-k", "3", "--doc-max-words", "64", "--max-turns", "3", "--max-new-tokens", "64"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        help="NAME=ADAPTER_DIR (or NAME=none for the base model); repeatable, table order",
    )
    p.add_argument("--retrievers", default="bm25,dense", help="comma list of backends")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--qa", default="default:dev")
    p.add_argument("--corpus", default="default")
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--jobs", type=int, default=1, help="cells evaluated at the same time")
    p.add_argument("--out", default="results/baselines")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in OUT/baselines.jsonl (cells not run now) and add these",
    )
    p.add_argument("--quick", action="store_true", help="tiny random model, bm25, 2 questions")
    args = p.parse_args(argv)
    if not args.policy and not args.quick:
        p.error("give at least one --policy NAME=ADAPTER (or NAME=none)")
    return args


def slug(text: str) -> str:
    """A folder-safe name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "policy"


def cell_command(
    args: argparse.Namespace, adapter: str | None, retriever: str, out: Path, threads: int
) -> list[str]:
    """The ``python -m igpo_agent.evaluate`` command of one cell."""
    cmd = [sys.executable, "-m", "igpo_agent.evaluate", "--model", args.model]
    if adapter:
        cmd += ["--adapter", adapter]
    cmd += ["--qa", args.qa, "--corpus", args.corpus, "--retriever", retriever]
    cmd += ["--questions", str(args.questions), *ENV_FLAGS, "--threads", str(threads)]
    return cmd + ["--out", str(out)]


def run_cell(cmd: list[str], log: Path) -> float:
    """Run one evaluation child, output to ``log``; its wall seconds. Raises on failure."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=fh, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({code}):\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def markdown(rows: list[dict[str, Any]], questions: int, qa: str) -> str:
    """The baseline table (scores in %) followed by the command of every cell."""
    lines = [
        f"Greedy, first {questions} questions of `{qa}`.",
        "",
        "| policy | retriever | F1 | EM | cover-EM | format errors | turns | searches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['retriever']} | {100 * r['f1']:.1f} | {100 * r['em']:.1f} | "
            f"{100 * r['cover_em']:.1f} | {100 * r['format_error_rate']:.1f}% | "
            f"{r['turns']:.2f} | {r['searches']:.2f} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- {r['policy']} / {r['retriever']}: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.quick:
        from igpo_agent.model.loading import build_tiny_model, load_tokenizer

        tmp = tempfile.TemporaryDirectory(prefix="igpo-baselines-")
        tiny = build_tiny_model(load_tokenizer("smollm2-135m-instruct"), Path(tmp.name) / "t")
        args.model, args.questions, args.retrievers = str(tiny), 2, "bm25"
        args.policy = args.policy or ["tiny=none"]
    policies = []
    for spec in args.policy:
        name, sep, adapter = spec.partition("=")
        if not sep or not name:
            print(f"--policy {spec!r}: use NAME=ADAPTER_DIR or NAME=none", file=sys.stderr)
            return 2
        adapter = None if adapter.lower() in ("", "none") else adapter
        if adapter and not (Path(adapter) / "adapter_config.json").is_file():
            print(f"--policy {spec!r}: no adapter_config.json in {adapter}", file=sys.stderr)
            return 2
        policies.append((name, adapter))
    retrievers = [r for r in args.retrievers.split(",") if r]
    out = Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cells = [(p, a, r) for p, a in policies for r in retrievers]
    print(f"baselines: {len(cells)} cells, {jobs} at a time, {threads} thread(s) each")

    def one(cell: tuple[str, str | None, str]) -> dict[str, Any]:
        name, adapter, retriever = cell
        folder = out / "cells" / f"{slug(name)}-{retriever}"
        cmd = cell_command(args, adapter, retriever, folder, threads)
        folder.mkdir(parents=True, exist_ok=True)
        seconds = run_cell(cmd, folder / "log.txt")
        (res,) = json.loads((folder / "results.json").read_text())
        print(f"  {name} / {retriever}: F1 {100 * res['f1']:.1f} ({seconds:.0f} s)", flush=True)
        shown = [Path(cmd[0]).name.replace("python3", "python"), *cmd[1:]]
        return {
            "policy": name,
            "adapter": adapter,
            "retriever": retriever,
            **{k: res[k] for k in ("n", "f1", "em", "cover_em", "format_error_rate")},
            **{k: res[k] for k in ("turns", "searches")},
            "seconds": round(seconds, 1),
            "command": shlex.join(shown),
        }

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            rows = list(pool.map(one, cells))
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.append and (out / "baselines.jsonl").is_file():
        done = {(r["policy"], r["retriever"]) for r in rows}
        old = [json.loads(x) for x in (out / "baselines.jsonl").read_text().splitlines() if x]
        rows = [r for r in old if (r["policy"], r["retriever"]) not in done] + rows
    with open(out / "baselines.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    table = markdown(rows, args.questions, args.qa)
    (out / "baselines.md").write_text(table)
    print()
    print(table)
    print(f"wrote {out / 'baselines.jsonl'} and {out / 'baselines.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
