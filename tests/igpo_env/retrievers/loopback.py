"""Real loopback HTTP servers for the client tests: scripted failures, then real answers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A behaviour is ("ok",) | ("status", code, headers) | ("sleep", seconds) | ("drop",)
# | ("raw", body_bytes)
Behaviour = tuple


class ScriptedServer(ThreadingHTTPServer):
    """Answers request i with ``script[i]`` (the last entry repeats); records every request."""

    daemon_threads = True

    def __init__(self, script: list[Behaviour], respond: Callable[[dict], Any]) -> None:
        self.script = script
        self.respond = respond
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_behaviour(self, request: dict) -> Behaviour:
        with self.lock:
            i = len(self.requests)
            self.requests.append(request)
            return self.script[min(i, len(self.script) - 1)]


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def _handle(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        request = {
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers),
            "json": json.loads(body) if body else None,
            "time": time.monotonic(),
        }
        kind, *args = self.server.next_behaviour(request)
        if kind == "sleep":
            time.sleep(args[0])
            kind = "ok"
        if kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if kind == "status":
            code, headers = args
            payload = b'{"error": "injected failure"}'
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
        elif kind == "raw":
            payload = args[0]
            self.send_response(200)
        else:
            payload = json.dumps(self.server.respond(request)).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def scripted_server(
    script: list[Behaviour], respond: Callable[[dict], Any]
) -> Iterator[ScriptedServer]:
    """Run a :class:`ScriptedServer` in a thread for the duration of the block."""
    server = ScriptedServer(script, respond)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
