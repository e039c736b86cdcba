"""Serve a local retrieval backend over Search-R1's ``/retrieve`` protocol.

``python -m igpo_env.serve --retriever bm25 --corpus default --port 8000`` lets many training
processes share one index (point them at it with ``make_retriever("http", url=...)``).

- ``POST /retrieve`` ``{"queries": [...], "topk": k, "return_scores": bool}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (bare documents
  when ``return_scores`` is false, as in Search-R1).
- ``GET /health`` -> ``{"status": "ok", "retriever": name, "queued": n}``.

Concurrent requests are batched: a batcher thread gathers what arrives within
``batch_wait_ms`` and calls ``search`` once per distinct ``k``. Malformed or oversized
requests get a 4xx with ``{"error": "..."}`` and the server stays up. It binds to
127.0.0.1 unless told otherwise: there is no authentication.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from igpo_env.retrievers.base import Hit, Retriever


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for, and how long the batcher waits to fill a batch."""

    max_queries: int = 256
    """Most queries in one request (more: 413)."""
    max_k: int = 100
    """Largest ``topk`` accepted."""
    max_body_bytes: int = 1_000_000
    """Largest request body (more: 413, the body is not read)."""
    max_query_chars: int = 4096
    """Longest single query string."""
    batch_wait_ms: float = 5.0
    """How long the batcher waits for more requests after the first one arrives."""
    max_batch_queries: int = 1024
    """Stop gathering once a batch holds this many queries."""

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_k", "max_body_bytes", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_retrieve_request(body: bytes, limits: ServeLimits) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body into ``(queries, topk, return_scores)`` or raise RequestError."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"body is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object with a 'queries' list")
    queries = data.get("queries")
    if not isinstance(queries, list):
        raise RequestError(400, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise RequestError(
            413, f"too many queries ({len(queries)} > {limits.max_queries}); split the batch"
        )
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise RequestError(400, f"queries[{i}] must be a string, got {type(q).__name__}")
        if len(q) > limits.max_query_chars:
            raise RequestError(
                400, f"queries[{i}] is {len(q)} characters; the limit is {limits.max_query_chars}"
            )
    k = data.get("topk", 3)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(400, f"'topk' must be an integer, got {k!r:.40}")
    if not 1 <= k <= limits.max_k:
        raise RequestError(400, f"'topk' must be between 1 and {limits.max_k}, got {k}")
    scores = data.get("return_scores", False)
    if not isinstance(scores, bool):
        raise RequestError(400, f"'return_scores' must be true or false, got {scores!r:.40}")
    return queries, k, scores


def hits_payload(hits: list[Hit], return_scores: bool) -> list[dict[str, Any]]:
    """Search-R1's result entries for one query."""
    docs = [{"id": h.doc_id, "contents": f'"{h.title}"\n{h.text}'} for h in hits]
    if not return_scores:
        return docs
    return [{"document": d, "score": h.score} for d, h in zip(docs, hits, strict=True)]


@dataclass
class _Job:
    queries: list[str]
    k: int
    done: threading.Event = field(default_factory=threading.Event)
    result: list[list[Hit]] | None = None
    error: BaseException | None = None


class Batcher:
    """One thread that owns the retriever and answers queued jobs in gathered batches."""

    def __init__(self, retriever: Retriever, limits: ServeLimits) -> None:
        self.retriever = retriever
        self.limits = limits
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.batches = 0
        self._thread = threading.Thread(target=self._loop, name="retrieve-batcher", daemon=True)
        self._thread.start()

    def submit(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Queue one request and wait for its hits (re-raising the backend's error)."""
        if not queries:
            return []
        job = _Job(queries, k)
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _gather(self, first: _Job) -> list[_Job]:
        batch, total = [first], len(first.queries)
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        while total < self.limits.max_batch_queries:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.jobs.put(None)  # stop after this batch
                break
            batch.append(job)
            total += len(job.queries)
        return batch

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = self._gather(first)
            by_k: dict[int, list[_Job]] = {}
            for job in batch:
                by_k.setdefault(job.k, []).append(job)
            for k, jobs in by_k.items():
                try:
                    flat = [q for job in jobs for q in job.queries]
                    hits = self.retriever.search(flat, k)
                    self.batches += 1
                    pos = 0
                    for job in jobs:
                        job.result = hits[pos : pos + len(job.queries)]
                        pos += len(job.queries)
                except Exception as exc:  # noqa: BLE001  (handed to every waiting request)
                    for job in jobs:
                        job.error = exc
                for job in jobs:
                    job.done.set()

    def close(self) -> None:
        """Finish queued work, then stop the thread."""
        self.jobs.put(None)
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request
    server: RetrievalServer

    def _send(self, status: int, payload: Any, close: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, bad headers) as JSON, connection closed."""
        try:
            self._send(code, {"error": message or explain or "bad request"}, close=True)
        except OSError:
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if self.path.split("?")[0] == "/health":
            self._send(200, self.server.health())
        else:
            self._send(404, {"error": f"no such path {self.path!r}; use POST /retrieve"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/retrieve":
            self._send(404, {"error": f"no such path {self.path!r}; use POST /retrieve"}, True)
            return
        limits = self.server.limits
        length = self.headers.get("Content-Length")
        if length is None:
            self._send(411, {"error": "Content-Length header required"}, close=True)
            return
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self._send(400, {"error": f"bad Content-Length {length!r:.40}"}, close=True)
            return
        if n > limits.max_body_bytes:
            msg = f"body of {n} bytes exceeds the limit of {limits.max_body_bytes}"
            self._send(413, {"error": msg}, close=True)
            return
        body = self.rfile.read(n)
        try:
            queries, k, scores = parse_retrieve_request(body, limits)
            hits = self.server.batcher.submit(queries, k)
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001  (the backend failed; tell the client, stay up)
            self._send(500, {"error": f"retriever failed: {type(exc).__name__}: {exc}"})
            return
        self._send(200, {"result": [hits_payload(h, scores) for h in hits]})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


class RetrievalServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one retriever through a :class:`Batcher`."""

    daemon_threads = True

    def __init__(
        self,
        retriever: Retriever,
        host: str = "127.0.0.1",
        port: int = 8000,
        limits: ServeLimits | None = None,
        verbose: bool = False,
    ) -> None:
        self.retriever = retriever
        self.limits = limits or ServeLimits()
        self.verbose = verbose
        self.batcher = Batcher(retriever, self.limits)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """``http://host:port`` actually bound (useful with ``port=0``)."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        """The ``/health`` payload."""
        return {
            "status": "ok",
            "retriever": getattr(self.retriever, "name", type(self.retriever).__name__),
            "queued": self.batcher.jobs.qsize(),
            "batches": self.batcher.batches,
        }

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m igpo_env.serve``."""
    d = ServeLimits()
    p = argparse.ArgumentParser(
        prog="python -m igpo_env.serve",
        description="Serve a local retriever over the Search-R1 /retrieve protocol.",
    )
    p.add_argument("--retriever", default="bm25", choices=["bm25", "bm25-rank", "dense"])
    p.add_argument("--corpus", default="default", help="corpus JSONL path, or 'default'")
    p.add_argument("--index-dir", default=None, help="index folder (default: the cache dir)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (no auth: keep it local)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--max-queries", type=int, default=d.max_queries)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the retriever, bind, print the URL, serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    from igpo_env.retrievers import make_retriever

    limits = ServeLimits(
        max_queries=args.max_queries,
        max_k=args.max_k,
        max_body_bytes=args.max_body_bytes,
        max_query_chars=args.max_query_chars,
        batch_wait_ms=args.batch_wait_ms,
    )
    t0 = time.perf_counter()
    retriever = make_retriever(args.retriever, corpus=args.corpus, index_dir=args.index_dir)
    server = RetrievalServer(retriever, args.host, args.port, limits, verbose=args.verbose)
    print(
        f"serving {args.retriever} on {server.url} (ready in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
