"""Serve a local retrieval backend over Search-R1's ``/retrieve`` protocol (FastAPI + uvicorn).

``python -m igpo_env.serve --retriever bm25 --corpus default --port 8000`` lets many training
processes share one index (point them at it with ``make_retriever("http", url=...)``).
``--retriever faiss-prebuilt --index-path e5_Flat.index --corpus wiki-18.jsonl --encoder-dir
e5-base-v2`` serves a prebuilt FAISS index as-is (see :mod:`igpo_env.retrievers.prebuilt`).
Any backend whose :class:`~igpo_env.retrievers.RetrieverSpec` reads a corpus can be served:
a registered name, an installed entry point, or ``--retriever package.module:attr``.

- ``POST /retrieve`` ``{"queries": [...], "topk": k, "return_scores": bool}`` ->
  ``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (bare documents
  when ``return_scores`` is false, as in Search-R1, whose retrieval server is also FastAPI).
- ``GET /health`` -> ``{"status": "ok", "retriever": name, "queued": n, "batches": n}``.
- ``GET /docs``: the OpenAPI page (``/openapi.json``: the schema).

Concurrent requests are batched: an asyncio task gathers what arrives within
``batch_wait_ms`` and calls ``search`` once per distinct ``k``, in a worker thread so the
event loop keeps accepting connections. Requests are validated by a pydantic model; a bad
field, malformed JSON, non-UTF-8 bytes or an oversized body gets a 4xx whose
``{"error": "..."}`` names what was wrong, and the server answers the next request. uvicorn
listens with a deep backlog (the standard library's server, this module's earlier form,
listened with 5 and reset connections under bursts). It binds to 127.0.0.1 unless told
otherwise: there is no authentication. SIGTERM/SIGINT shut it down cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from igpo_env.batching import Batcher
from igpo_env.retrievers.base import Hit, Retriever
from igpo_env.retrievers.registry import retriever_spec, retriever_specs


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
    backlog: int = 2048
    """Pending connections the listening socket holds (the OS may cap it: somaxconn)."""

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_k", "max_body_bytes", "max_query_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")


def hits_payload(hits: list[Hit], return_scores: bool) -> list[dict[str, Any]]:
    """Search-R1's result entries for one query."""
    docs = [{"id": h.doc_id, "contents": f'"{h.title}"\n{h.text}'} for h in hits]
    if not return_scores:
        return docs
    return [{"document": d, "score": h.score} for d, h in zip(docs, hits, strict=True)]


def _limit_body(app: Any, max_bytes: int) -> Any:
    """ASGI middleware: a body over ``max_bytes`` (declared or streamed) gets a 413 unread;
    POST bodies are read as JSON whatever their Content-Type."""
    import json

    async def reply(send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        # the body is JSON whatever its Content-Type says (curl -d sends a form type; the
        # earlier server and Search-R1 clients never relied on it)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await reply(send, 400, f"bad Content-Length {declared[:40]!r}")
                return
            if n > max_bytes:
                await reply(send, 413, f"body of {n} bytes exceeds the limit of {max_bytes}")
                return
        chunks, seen = [], 0  # read it all here (chunked bodies declare no length), capped
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > max_bytes:
                await reply(send, 413, f"body of {seen}+ bytes exceeds the limit of {max_bytes}")
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if sent:
                return await receive()  # http.disconnect, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return middleware


def create_app(retriever: Retriever, limits: ServeLimits | None = None) -> Any:
    """The ASGI app: ``/retrieve``, ``/health`` and the OpenAPI page, over one batcher."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()

    class RetrieveRequest(BaseModel):
        """Search-R1's request: a batch of queries and the number of documents per query."""

        model_config = ConfigDict(extra="ignore")
        queries: list[StrictStr] = Field(
            ..., description="the queries", max_length=limits.max_queries
        )
        topk: StrictInt = Field(3, ge=1, le=limits.max_k, description="documents per query")
        return_scores: StrictBool = Field(False, description="wrap each document with its score")

    batcher = Batcher(retriever, limits)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="igpo_env retrieval server",
        description="Search-R1's /retrieve protocol over a local igpo_env retriever.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Any, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400:  # e.g. bytes that are not UTF-8 inside the JSON
            detail = f"body is not valid UTF-8 JSON ({detail})"
        if exc.status_code == 404:
            detail = "no such path; use POST /retrieve or GET /health (GET /docs: the API)"
        return JSONResponse({"error": detail}, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Any, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        status = 400
        parts = []
        for e in errors:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            where = loc[0] + "".join(f"[{x}]" for x in loc[1:]) if loc else "body"
            if e.get("type") == "json_invalid" or where == "body":
                where = "body"
                msg = "is not valid UTF-8 JSON, or not a JSON object with a 'queries' list"
            else:
                msg = e.get("msg", "is invalid")
            if e.get("type") == "too_long" and loc[:1] == ["queries"] and len(loc) == 1:
                status = 413
                msg = f"too many queries (limit {limits.max_queries}); split the batch"
            parts.append(f"{where}: {msg}")
        return JSONResponse({"error": "; ".join(parts), "detail": _plain(errors)}, status)

    async def retrieve(req: RetrieveRequest) -> JSONResponse:
        """Top-k documents for every query (batched with concurrent requests)."""
        for i, q in enumerate(req.queries):
            if len(q) > limits.max_query_chars:
                msg = f"queries[{i}]: {len(q)} characters; the limit is {limits.max_query_chars}"
                return JSONResponse({"error": msg}, 400)
        try:
            hits = await batcher.submit(req.queries, req.topk)
        except Exception as exc:  # noqa: BLE001  (the backend failed; tell the client, stay up)
            return JSONResponse(
                {"error": f"retriever failed: {type(exc).__name__}: {exc}"}, status_code=500
            )
        return JSONResponse({"result": [hits_payload(h, req.return_scores) for h in hits]})

    # the model is local to this factory: give FastAPI the class, not the postponed string
    retrieve.__annotations__ = {"req": RetrieveRequest, "return": JSONResponse}
    app.post("/retrieve")(retrieve)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and the batcher's counters."""
        return {
            "status": "ok",
            "retriever": getattr(retriever, "name", type(retriever).__name__),
            "queued": batcher.jobs.qsize(),
            "batches": batcher.batches,
        }

    return _limit_body(app, limits.max_body_bytes)


def _plain(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors with only JSON-safe fields (pydantic may attach exceptions)."""
    keep = ("type", "loc", "msg")
    return [{k: (list(e[k]) if k == "loc" else e[k]) for k in keep if k in e} for e in errors]


class RetrievalServer:
    """uvicorn serving :func:`create_app` on ``host:port`` (``port=0``: a free one).

    ``serve()`` blocks (the CLI); ``start()`` runs it in a background thread and returns
    once it accepts connections (tests, notebooks); ``stop()`` shuts it down. ``url`` is
    the bound address.
    """

    def __init__(
        self,
        retriever: Retriever,
        host: str = "127.0.0.1",
        port: int = 8000,
        limits: ServeLimits | None = None,
        verbose: bool = False,
    ) -> None:
        import uvicorn

        self.retriever = retriever
        self.limits = limits or ServeLimits()
        self.app = create_app(retriever, self.limits)
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            backlog=self.limits.backlog,
            log_level="info" if verbose else "warning",
            access_log=verbose,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` actually bound (after start)."""
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def serve(self) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn's handlers: a graceful shutdown)."""
        self._server.run()

    def start(self, timeout_s: float = 30.0) -> RetrievalServer:
        """Serve from a background thread; return once the socket listens."""
        self._server.config.install_signal_handlers = False  # not the main thread
        self._thread = threading.Thread(target=self._server.run, name="retrieval-server")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the retrieval server did not start (port in use?)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Shut down (finishing in-flight requests) and join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """The CLI of ``python -m igpo_env.serve``."""
    d = ServeLimits()
    p = argparse.ArgumentParser(
        prog="python -m igpo_env.serve",
        description="Serve a local retriever over the Search-R1 /retrieve protocol.",
    )
    p.add_argument(
        "--retriever",
        default="bm25",
        help="a backend that reads a corpus: bm25, bm25-rank, dense, faiss-prebuilt, another "
        "registered or installed name, or package.module:attr (default: bm25)",
    )
    p.add_argument("--corpus", default="default", help="corpus JSONL path, or 'default'")
    p.add_argument("--index-dir", default=None, help="index folder (default: the cache dir)")
    g = p.add_argument_group("faiss-prebuilt (a prebuilt index; --corpus: row i = FAISS id i)")
    g.add_argument("--index-path", default=None, help="the FAISS index file (e5_Flat.index)")
    g.add_argument("--encoder-dir", default=None, help="local model folder of the index's encoder")
    g.add_argument("--pooling", default="mean", choices=["mean", "cls", "pooler"])
    g.add_argument("--query-prefix", default="query: ", help="prepended to queries (e5: 'query: ')")
    g.add_argument("--no-normalize", action="store_true", help="do not L2-normalise queries")
    g.add_argument("--max-length", type=int, default=256, help="query tokens kept")
    g.add_argument("--no-mmap", action="store_true", help="read the index into memory")
    g.add_argument("--nprobe", type=int, default=None, help="IVF lists probed per query")
    g.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch")
    g.add_argument("--search-threads", type=int, default=0, help="FAISS threads (0: auto)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (no auth: keep it local)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--max-queries", type=int, default=d.max_queries)
    p.add_argument("--max-k", type=int, default=d.max_k)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-query-chars", type=int, default=d.max_query_chars)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
    p.add_argument("--backlog", type=int, default=d.backlog)
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return p


PREBUILT_ONLY = ("index_path", "encoder_dir")


def backend_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``make_retriever`` keyword arguments for parsed CLI arguments (errors name the flag).

    The backend's spec says where ``--corpus`` goes: ``corpus=`` (``takes_corpus=True``)
    or the keyword it names (a file path, e.g. ``faiss-prebuilt``'s ``corpus_path=``).
    """
    spec = retriever_spec(args.retriever)
    if not spec.takes_corpus:
        readers = sorted(n for n, s in retriever_specs().items() if s.takes_corpus)
        raise ValueError(
            f"--retriever {args.retriever}: it reads no corpus (a remote backend); serve one "
            f"that does: {', '.join(readers)}"
        )
    if args.retriever != "faiss-prebuilt":
        given = [f"--{a.replace('_', '-')}" for a in PREBUILT_ONLY if getattr(args, a)]
        if given:
            raise ValueError(f"{', '.join(given)}: only for --retriever faiss-prebuilt")
        if spec.takes_corpus is not True:
            if args.corpus == "default":
                raise ValueError(
                    f"--retriever {args.retriever} needs --corpus PATH (its {spec.corpus_kwarg}=)"
                )
            return {spec.corpus_kwarg: args.corpus}
        kwargs: dict[str, Any] = {"corpus": args.corpus}
        if args.index_dir is not None:  # only when given: a user backend may not take it
            kwargs["index_dir"] = args.index_dir
        return kwargs
    if args.corpus == "default":
        raise ValueError(
            "--retriever faiss-prebuilt needs --corpus PATH: the JSONL the index was built "
            "from (row i = FAISS id i), e.g. wiki-18.jsonl"
        )
    return {
        "index_path": args.index_path,
        "corpus_path": args.corpus,
        "encoder_dir": args.encoder_dir,
        "pooling": args.pooling,
        "query_prefix": args.query_prefix,
        "normalize": not args.no_normalize,
        "max_length": args.max_length,
        "mmap": not args.no_mmap,
        "nprobe": args.nprobe,
        "ef_search": args.ef_search,
        "search_threads": args.search_threads,
    }


def main(argv: list[str] | None = None) -> int:
    """Build the retriever, bind, print the URL, serve until SIGINT/SIGTERM."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from igpo_env.retrievers import make_retriever

    try:
        kwargs = backend_kwargs(args)
    except (ValueError, TypeError, ImportError) as exc:
        parser.error(str(exc))

    limits = ServeLimits(
        max_queries=args.max_queries,
        max_k=args.max_k,
        max_body_bytes=args.max_body_bytes,
        max_query_chars=args.max_query_chars,
        batch_wait_ms=args.batch_wait_ms,
        backlog=args.backlog,
    )
    t0 = time.perf_counter()
    retriever = make_retriever(args.retriever, **kwargs)
    server = RetrievalServer(retriever, args.host, args.port, limits, verbose=args.verbose)
    ready = time.perf_counter() - t0

    async def announce() -> None:  # print the bound URL once uvicorn listens (port 0 too)
        while not server._server.started:
            await asyncio.sleep(0.01)
        print(f"serving {args.retriever} on {server.url} (ready in {ready:.1f}s)", flush=True)

    async def run() -> None:
        task = asyncio.create_task(announce())
        await server._server.serve()
        task.cancel()

    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was there before: make that one a no-op, so a clean stop exits 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
