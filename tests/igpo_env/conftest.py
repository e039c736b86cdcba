"""Fixtures for the env tests: a small real-text corpus and QA set, and loopback servers.

The servers are real ``http.server`` instances on 127.0.0.1 speaking the Search-R1
``/retrieve`` protocol (answered by a real bm25s index over the fixture corpus) and the
SearxNG JSON format (word-overlap ranking over the same documents).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

DOCS = [
    ("d-paris", "Paris", "Paris is the capital and most populous city of France, on the Seine."),
    ("d-lyon", "Lyon", "Lyon is the third-largest city of France, at the Rhône and Saône rivers."),
    ("d-berlin", "Berlin", "Berlin is the capital and largest city of Germany by population."),
    (
        "d-curie",
        "Marie Curie",
        "Marie Curie was a physicist who won the Nobel Prize in 1903 and 1911.",
    ),
    (
        "d-apollo",
        "Apollo 11",
        "Apollo 11 was the spaceflight that first landed humans on the Moon in July 1969. "
        "Neil Armstrong and Buzz Aldrin walked on the lunar surface.",
    ),
    (
        "d-everest",
        "Mount Everest",
        "Mount Everest is Earth's highest mountain above sea level, 8,849 m.",
    ),
    (
        "d-nile",
        "Nile",
        "The Nile is a major river in northeastern Africa flowing into the Mediterranean.",
    ),
    ("d-hamlet", "Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("d-python", "Python", "Python is a programming language created by Guido van Rossum in 1991."),
    ("d-zurich", "Zürich", "Zürich is the largest city in Switzerland, on Lake Zürich."),
    ("d-tokyo", "Tokyo", "Tokyo is the capital of Japan and one of the most populous cities."),
    ("d-bach", "Johann Sebastian Bach", "Bach was a German composer of the Baroque period."),
]

QA = [
    ("q-paris", "What is the capital of France?", ["Paris"]),
    ("q-apollo", "In which year did Apollo 11 land on the Moon?", ["1969", "July 1969"]),
    ("q-hamlet", "Who wrote Hamlet?", ["William Shakespeare", "Shakespeare"]),
    ("q-curie", "Which physicist won Nobel Prizes in 1903 and 1911?", ["Marie Curie"]),
    ("q-python", "Who created the Python programming language?", ["Guido van Rossum"]),
    ("q-everest", "How high is Mount Everest?", ["8,849 m", "8849 metres"]),
    ("q-tokyo", "What is the capital of Japan?", ["Tokyo"]),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Indexes go to a per-session temp folder, never ~/.cache."""
    monkeypatch.setenv("IGPO_CACHE", str(tmp_path_factory.getbasetemp() / "igpo-cache"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("igpo-env-data")


@pytest.fixture(scope="session")
def corpus_path(data_dir: Path) -> Path:
    rows = [{"id": i, "contents": f'"{t}"\n{x}'} for i, t, x in DOCS]
    return _write_jsonl(data_dir / "corpus.jsonl", rows)


@pytest.fixture(scope="session")
def qa_path(data_dir: Path) -> Path:
    rows = [{"id": i, "question": q, "golden_answers": a, "dataset": "fixture"} for i, q, a in QA]
    return _write_jsonl(data_dir / "qa.jsonl", rows)


@pytest.fixture()
def env_kwargs(corpus_path: Path, qa_path: Path) -> dict:
    """gym.make keyword arguments that point a local-backend id at the fixture data."""
    return {"qa": str(qa_path), "corpus": str(corpus_path)}


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="session")
def retrieve_server(corpus_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Search-R1 ``POST /retrieve`` server answering with bm25s over the fixture corpus."""
    from igpo_env.data import load_corpus
    from igpo_env.retrievers.bm25 import BM25sRetriever

    backend = BM25sRetriever(load_corpus(corpus_path), tmp_path_factory.mktemp("srv-index"))

    class Handler(_QuietHandler):
        def do_POST(self) -> None:
            if self.path != "/retrieve":
                return self._json(404, {"error": "not found"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hits = backend.search(list(body["queries"]), int(body.get("topk", 3)))
            result = [
                [
                    {
                        "document": {"id": h.doc_id, "contents": f'"{h.title}"\n{h.text}'},
                        "score": h.score,
                    }
                    for h in per_query
                ]
                for per_query in hits
            ]
            self._json(200, {"result": result})

    yield from _serve(Handler)


@pytest.fixture(scope="session")
def searxng_server() -> Iterator[str]:
    """A SearxNG-style ``GET /search?q=...&format=json`` server over the fixture documents."""

    def rank(query: str) -> list[dict]:
        words = set(query.lower().split())
        scored = []
        for doc_id, title, text in DOCS:
            overlap = len(words & set(f"{title} {text}".lower().split()))
            if overlap:
                scored.append((-overlap, doc_id, title, text))
        return [
            {"url": f"https://example.org/{d}", "title": t, "content": x, "score": float(-s)}
            for s, d, t, x in sorted(scored)
        ]

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            params = parse_qs(url.query)
            if url.path != "/search" or params.get("format") != ["json"]:
                return self._json(404, {"error": "use /search?format=json"})
            self._json(200, {"query": params["q"][0], "results": rank(params["q"][0])})

    yield from _serve(Handler)
