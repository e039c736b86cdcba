"""Dense retrieval ready in seconds: fresh-machine times against the goals, encode rates,
and the dense env's step cost next to the BM25 env's.

    python benchmarks/dense_ready.py                    # all parts
    python benchmarks/dense_ready.py --parts ready,check
    python benchmarks/dense_ready.py --quick            # fewer queries and documents

Parts (each prints a table; ratios are measured side by side in one run):

- ``ready``: a fresh child process (``IGPO_CACHE`` and ``NUMBA_CACHE_DIR`` pointing at empty
  temporary folders, so no index and no compiled kernel exists) runs
  ``gym.make("SearchQA-Dense-v0")``, ``reset`` and one search ``step``; goal: < 30 s.
- ``check``: one fresh child process with an empty cache runs
  ``gymnasium.utils.env_checker.check_env`` over every registered id (``igpo_env.ENV_IDS``);
  ``SearchQA-HTTP-v0`` talks to an in-process ``igpo_env.serve.RetrievalServer`` (bm25 over
  the default corpus) and ``SearchQA-Web-v0`` to a loopback stand-in answering the SearxNG
  JSON format from the same bm25 index (no internet here); goal: < 60 s for all of it.
- ``encode``: corpus encoding rate of the old path (input order, float32, 1 thread) and the
  new one (sorted by length, ``precision="auto"``, all cores) on a seeded sample of default
  documents, extrapolated to the 12,100-document corpus.
- ``query``: query encode rates (one query per call, and batches of 16) in float32 and
  bf16, then the median ``env.step`` time of one ``<search>`` of ``SearchQA-Dense-v0`` next
  to ``SearchQA-v0`` (BM25): distinct dev questions (every query encoded), and one question
  repeated by G=8 episodes (answered from the dense backend's query memo after the first). Wall and CPU (process) time are
  both given: CPU time is steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import machine_line, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL_READY_S = 30.0
GOAL_CHECK_S = 60.0
PARTS = ("ready", "check", "encode", "query")
CORPUS_DOCS = 12_100


# ----------------------------------------------------------------------------- child side
def child_ready() -> dict[str, Any]:
    """gym.make + reset + one search step of SearchQA-Dense-v0; phase times in seconds."""
    t0 = time.perf_counter()
    import gymnasium as gym

    import igpo_env  # noqa: F401

    t_import = time.perf_counter()
    env = gym.make("SearchQA-Dense-v0")
    t_make = time.perf_counter()
    _, info = env.reset(seed=0)
    t_reset = time.perf_counter()
    _, _, _, _, step_info = env.step(f"<search>{info['question']}</search>")
    t_step = time.perf_counter()
    return {
        "import_s": t_import - t0,
        "make_s": t_make - t_import,
        "reset_s": t_reset - t_make,
        "step_s": t_step - t_reset,
        "embeddings": env.unwrapped.retriever.source,
        "hits": len(step_info["doc_ids"]),
    }


@contextlib.contextmanager
def searxng_standin(retriever: Any) -> Iterator[str]:
    """A loopback ``GET /search?q=...&format=json`` server answering from ``retriever``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            params = parse_qs(urlparse(self.path).query)
            hits = retriever.search([params.get("q", [""])[0]], 10)[0]
            results = [
                {"url": f"https://example.org/{h.doc_id}", "title": h.title, "content": h.text}
                for h in hits
            ]
            body = json.dumps({"results": results}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def child_check() -> dict[str, Any]:
    """check_env over every registered id; seconds and warning count per id."""
    t0 = time.perf_counter()
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import igpo_env
    from igpo_env.retrievers import make_retriever
    from igpo_env.serve import RetrievalServer

    rows: dict[str, Any] = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    bm25 = make_retriever("bm25")  # empty cache: index build and numba compile happen here
    with RetrievalServer(make_retriever("bm25"), port=0) as server, searxng_standin(bm25) as sx:
        rows["setup_s"] = time.perf_counter() - t
        extra = {
            "SearchQA-HTTP-v0": {"url": server.url},
            "SearchQA-Web-v0": {"url": sx, "retriever_kwargs": {"rate_limit": None}},
        }
        for env_id in igpo_env.ENV_IDS:
            t = time.perf_counter()
            env = gym.make(env_id, **extra.get(env_id, {}))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                check_env(env.unwrapped, skip_render_check=True)
            env.close()
            rows[env_id] = {"s": time.perf_counter() - t, "warnings": len(caught)}
    return rows


# ----------------------------------------------------------------------------- parent side
def run_child(part: str, tmp: Path) -> tuple[float, dict[str, Any]]:
    """Run ``--child part`` in a fresh interpreter with empty caches; (wall s, its JSON)."""
    env = {
        **os.environ,
        "IGPO_CACHE": str(tmp / "igpo-cache"),
        "NUMBA_CACHE_DIR": str(tmp / "numba-cache"),
        "PYTHONPATH": str(ROOT),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", part],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {part} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    notes = [line for line in proc.stderr.splitlines() if line.startswith("igpo:")]
    for line in notes:
        print(f"  child stderr: {line}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def goal(wall: float, limit: float) -> str:
    return f"{wall:.1f} s vs goal < {limit:.0f} s: {'met' if wall < limit else 'NOT met'}"


def part_ready(tmp: Path) -> None:
    wall, r = run_child("ready", tmp)
    print("(a) SearchQA-Dense-v0 on a fresh process, empty cache")
    print_table(
        ["import_s", "make_s", "reset_s", "first_step_s", "process_wall_s", "embeddings"],
        [[r["import_s"], r["make_s"], r["reset_s"], r["step_s"], wall, r["embeddings"]]],
    )
    print(f"ready (process start to first step done): {goal(wall, GOAL_READY_S)}\n")


def part_check(tmp: Path) -> None:
    wall, r = run_child("check", tmp)
    print("(b) check_env over every registered id, one fresh process, empty cache")
    ids = [k for k in r if k not in ("import_s", "setup_s")]
    print_table(["id", "make+check_s", "warnings"], [[i, r[i]["s"], r[i]["warnings"]] for i in ids])
    print(
        f"imports {r['import_s']:.1f} s; bm25 index + numba compile + both servers "
        f"{r['setup_s']:.1f} s (before the first id); all ids, process start to end: "
        f"{goal(wall, GOAL_CHECK_S)}\n"
    )


def cpu_and_wall(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Median wall and median CPU (process) seconds of ``reps`` calls."""
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def part_encode(n_docs: int) -> None:
    import numpy as np

    from igpo_env.data import load_corpus
    from igpo_env.retrievers.encoder import (
        all_cores,
        default_model_dir,
        doc_text,
        resolve_precision,
        shared_encoder,
    )

    enc = shared_encoder(str(default_model_dir()), 256, 1)
    docs = load_corpus("default")
    rows = np.random.default_rng(0).choice(len(docs), n_docs, replace=False)
    texts = [doc_text(docs[i]) for i in rows]
    enc.encode(texts[:4], precision="auto")  # load the bf16 copy outside the timing

    def old() -> None:  # one batch per call: no sorting, as before
        for s in range(0, len(texts), 32):
            enc.encode(texts[s : s + 32], threads=1, precision="fp32")

    def new() -> None:
        enc.encode(texts, threads=0, precision="auto")

    table = []
    for name, fn in (("input order, fp32, 1 thread", old), ("sorted, auto, all cores", new)):
        wall, cpu = cpu_and_wall(fn, 1)
        table.append([name, n_docs / wall, CORPUS_DOCS / (n_docs / wall) / 60, cpu])
    print(
        f"(c1) corpus encoding, {n_docs} default documents (seed 0); auto = "
        f"{resolve_precision('auto')}, all cores = {all_cores()}"
    )
    print_table(["path", "docs/s", "12,100 docs (min)", "cpu_s"], table)
    print(f"new vs old: {table[1][1] / table[0][1]:.2f}x docs/s (wall)\n")


def query_rates(questions: list[str]) -> None:
    """(c2) encode rates of one query per call and of batches of 16, per precision/threads."""
    from igpo_env.retrievers.encoder import default_model_dir, shared_encoder

    enc = shared_encoder(str(default_model_dir()), 256, 1)
    enc.encode(questions[:2], precision="bf16")  # make the bf16 copy outside the timing
    n, rates = len(questions), []
    for precision, threads in (("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2)):
        kw = {"precision": precision, "threads": threads}
        w1, c1 = cpu_and_wall(lambda kw=kw: [enc.encode([q], **kw) for q in questions], 1)
        w16, c16 = cpu_and_wall(lambda kw=kw: enc.encode(questions, 16, **kw), 1)
        rates.append([precision, threads, n / w1, n / c1, n / w16, n / c16])
    print(f"(c2) query encoding, {n} dev questions (cpu q/s: per CPU-second of all threads)")
    print_table(
        ["precision", "threads", "single q/s", "single cpu q/s", "batch16 q/s", "batch16 cpu q/s"],
        rates,
    )
    print(
        f"bf16 vs fp32, one query per call, 1 thread: {rates[1][2] / rates[0][2]:.2f}x wall, "
        f"{rates[1][3] / rates[0][3]:.2f}x cpu\n"
    )


def step_ms(env_id: str, actions: list[str], **kwargs: Any) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``env.step(action)`` after a seeded reset."""
    import gymnasium as gym

    env = gym.make(env_id, qa="default:dev", **kwargs)
    env.reset(seed=0)
    env.step("<search>warm up the backend</search>")
    walls, cpus = [], []
    for i, action in enumerate(actions):
        env.reset(seed=i)
        w, c = time.perf_counter(), time.process_time()
        env.step(action)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    env.close()
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def step_times(questions: list[str]) -> None:
    """(c3) one search step of the dense env next to the BM25 env."""
    distinct = [f"<search>{q}</search>" for q in questions]
    repeated = [f"<search>{questions[0]}</search>"] * 8
    fp32 = {"retriever_kwargs": {"query_precision": "fp32"}}
    cases = (
        ("distinct queries", distinct, {}),
        ("distinct, fp32 queries", distinct, fp32),
        ("one query x G=8", repeated, {}),
    )
    table = []
    for label, actions, kwargs in cases:
        b_wall, b_cpu = step_ms("SearchQA-v0", actions)
        d_wall, d_cpu = step_ms("SearchQA-Dense-v0", actions, **kwargs)
        table.append([label, b_wall, d_wall, d_wall / b_wall, b_cpu, d_cpu, d_cpu / b_cpu])
    print("(c3) env.step of one <search>, median ms (default corpus, top_k 3)")
    print_table(
        [
            "queries",
            "bm25_ms",
            "dense_ms",
            "dense/bm25",
            "bm25_cpu_ms",
            "dense_cpu_ms",
            "cpu ratio",
        ],
        table,
    )
    print("goal: dense step within 2x of bm25's\n")


def part_query(n_queries: int) -> None:
    from igpo_env.data import load_qa

    questions = [q.question for q in load_qa("default:dev")][:n_queries]
    query_rates(questions)
    step_times(questions)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    p.add_argument("--queries", type=int, default=64, help="dev questions for the query part")
    p.add_argument("--docs", type=int, default=96, help="documents for the encode part")
    p.add_argument("--quick", action="store_true", help="8 queries, 16 documents")
    p.add_argument("--child", choices=("ready", "check"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        result = child_ready() if args.child == "ready" else child_check()
        print(json.dumps(result))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise SystemExit(f"unknown part(s) {bad}; choose from {PARTS}")
    if args.quick:
        args.queries, args.docs = 8, 16
    print(machine_line(1))
    with tempfile.TemporaryDirectory(prefix="igpo-dense-ready-") as tmp:
        os.environ["IGPO_CACHE"] = str(Path(tmp) / "parent-cache")
        for i, part in enumerate(parts):
            if part == "ready":
                part_ready(Path(tmp) / f"fresh{i}")
            elif part == "check":
                part_check(Path(tmp) / f"fresh{i}")
            elif part == "encode":
                part_encode(args.docs)
            else:
                part_query(args.queries)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
