"""The retrieval server under load, next to direct in-process search (the ceiling).

    python benchmarks/serve.py                      # default corpus, BM25, 1/16/64/256 clients
    python benchmarks/serve.py --quick              # a 5-document corpus, fewer requests
    python benchmarks/serve.py --server-pythonpath /tmp/old-checkout   # another version

Starts ``python -m igpo_env.serve --port 0`` in a child process (so the clients' threads and
the server do not share a GIL), then for each concurrency c sends ``--requests`` POST
/retrieve requests (two dev questions each, top 3) from c client threads, each with its own
connection-reusing session, and prints requests/s, p50 and p99 latency and the failures.
The same request mix is run as direct ``retriever.search`` calls in this process, one
request's two queries per call (the ceiling: no HTTP, no JSON). Printed side by side, with
each concurrency's ratio to the ceiling. ``--server-pythonpath`` runs the server from
another checkout (how the README's figures for the earlier ThreadingHTTPServer were taken).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import requests  # noqa: E402
from common import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT / "igpo_env" / "corpora" / "default" / "dev.jsonl.gz"
QUICK_DOCS = {
    "Paris": "Paris is the capital of France.",
    "Tokyo": "Tokyo is the capital of Japan.",
    "Everest": "Mount Everest is the highest mountain on Earth.",
    "Nile": "The Nile is a long river in Africa.",
    "Jupiter": "Jupiter is the largest planet in the Solar System.",
}


def request_mix(n: int, quick: bool) -> list[list[str]]:
    """``n`` requests of two queries each: dev questions in file order (cycled)."""
    if quick:
        qs = [f"capital of {t}" for t in QUICK_DOCS] + ["highest mountain", "largest planet"]
    else:
        with gzip.open(DEV, "rt") as fh:
            qs = [json.loads(line)["question"] for line in fh][:512]
    return [[qs[(2 * i) % len(qs)], qs[(2 * i + 1) % len(qs)]] for i in range(n)]


def start_server(
    corpus: str, pythonpath: str | None, env_extra: dict
) -> tuple[subprocess.Popen, str]:
    """The server child and its URL (it prints ``serving NAME on URL ...`` when ready)."""
    env = {**os.environ, **env_extra}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.Popen(
        [sys.executable, "-m", "igpo_env.serve", "--corpus", corpus, "--port", "0"],
        cwd=pythonpath or ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("serving "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.split()[3]


def load(url: str, mix: list[list[str]], clients: int, k: int) -> dict[str, float]:
    """Send every request of ``mix`` from ``clients`` threads; rps, p50/p99 (ms), failures."""
    local = threading.local()

    def one(queries: list[str]) -> float:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        t0 = time.perf_counter()
        try:
            r = session.post(url + "/retrieve", json={"queries": queries, "topk": k}, timeout=60)
            ok = r.status_code == 200 and len(r.json()["result"]) == len(queries)
        except requests.RequestException:
            ok = False
        return (time.perf_counter() - t0) if ok else -1.0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        lat = list(pool.map(one, mix))
    wall = time.perf_counter() - t0
    good = sorted(x for x in lat if x >= 0)
    q = statistics.quantiles(good, n=100) if len(good) > 1 else good * 99
    return {
        "rps": len(good) / wall,
        "p50_ms": 1000 * q[49] if good else float("nan"),
        "p99_ms": 1000 * q[98] if good else float("nan"),
        "failed": float(len(lat) - len(good)),
    }


def direct(corpus: str, mix: list[list[str]], k: int) -> dict[str, float]:
    """The ceiling: the same requests as in-process ``search`` calls, one after another."""
    from igpo_env.retrievers import make_retriever

    retriever = make_retriever("bm25", corpus=corpus)
    retriever.search(mix[0], k)  # warm
    lat = []
    t0 = time.perf_counter()
    for queries in mix:
        t1 = time.perf_counter()
        retriever.search(queries, k)
        lat.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {"rps": len(mix) / wall, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "failed": 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", default="default")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--requests", type=int, default=1000, help="requests per concurrency level")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--server-pythonpath", default=None, help="run the server from this checkout")
    p.add_argument("--quick", action="store_true", help="tiny corpus, 100 requests")
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="igpo-serve-bench-")
    env_extra: dict = {}
    corpus = args.corpus
    if args.quick:
        path = Path(tmp.name) / "corpus.jsonl"
        rows = [{"id": t, "contents": f'"{t}"\n{x}'} for t, x in QUICK_DOCS.items()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        corpus, args.requests = str(path), min(args.requests, 100)
        env_extra["IGPO_CACHE"] = str(Path(tmp.name) / "cache")
        os.environ["IGPO_CACHE"] = env_extra["IGPO_CACHE"]
    mix = request_mix(args.requests, args.quick)
    print(
        f"serve benchmark: {args.requests} requests x 2 queries, top {args.k}, corpus "
        f"{args.corpus if not args.quick else 'quick (5 docs)'}; server from "
        f"{args.server_pythonpath or 'this checkout'}; load average {os.getloadavg()[0]:.2f}"
    )
    ceiling = direct(corpus, mix, args.k)
    proc, url = start_server(corpus, args.server_pythonpath, env_extra)
    rows = []
    try:
        for c in args.clients:
            m = load(url, mix, c, args.k)
            rows.append(
                [f"server, {c} clients", f"{m['rps']:.0f}", f"{m['p50_ms']:.1f}",
                 f"{m['p99_ms']:.1f}", int(m["failed"]), f"{m['rps'] / ceiling['rps']:.2f}"]
            )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        tmp.cleanup()
    rows.append(
        ["direct search (ceiling)", f"{ceiling['rps']:.0f}", f"{ceiling['p50_ms']:.1f}",
         f"{ceiling['p99_ms']:.1f}", 0, "1.00"]
    )  # fmt: skip
    print_table(["", "requests/s", "p50 ms", "p99 ms", "failed", "x ceiling"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
