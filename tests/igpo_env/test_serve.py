"""The /retrieve server end to end on loopback: protocol, batching, rejects, load, the CLI."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from igpo_env.data import Document
from igpo_env.retrievers import make_retriever
from igpo_env.retrievers.bm25 import BM25sRetriever
from igpo_env.retrievers.http import HTTPRetriever
from igpo_env.serve import RetrievalServer, ServeLimits

PASSAGES = {
    "Paris": "Paris is the capital of France.",
    "Tokyo": "Tokyo is the capital of Japan.",
    "Everest": "Mount Everest is the highest mountain on Earth.",
    "Nile": "The Nile is a long river in Africa.",
    "Jupiter": "Jupiter is the largest planet in the Solar System.",
}


@pytest.fixture(scope="module")
def retriever():
    docs = [Document(f"d{i}", t, x) for i, (t, x) in enumerate(PASSAGES.items())]
    return BM25sRetriever(docs, None)


class CountingWrapper:
    """Counts the backend calls, to see that concurrent requests were batched."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []
        self.lock = threading.Lock()

    def search(self, queries, k):
        with self.lock:
            self.calls.append(len(queries))
        return self.inner.search(queries, k)


@pytest.fixture
def server(retriever):
    srv = RetrievalServer(
        CountingWrapper(retriever),
        port=0,
        limits=ServeLimits(max_queries=8, max_k=10, max_body_bytes=2000, batch_wait_ms=50),
    )
    with srv:
        yield srv


def post(srv, payload=None, data=None, **kw):
    body = data if data is not None else json.dumps(payload)
    return requests.post(srv.url + "/retrieve", data=body, timeout=5, **kw)


def test_search_r1_protocol(server):
    r = post(
        server,
        {"queries": ["capital of Japan", "highest mountain"], "topk": 2, "return_scores": True},
    )
    assert r.status_code == 200
    result = r.json()["result"]
    assert result[0][0]["document"] == {
        "id": "d1",
        "contents": '"Tokyo"\nTokyo is the capital of Japan.',
    }
    assert result[0][0]["score"] > result[0][1]["score"] > 0
    assert result[1][0]["document"]["id"] == "d2" and len(result[1]) == 1
    bare = post(server, {"queries": ["Nile river"], "topk": 1}).json()["result"]
    assert bare == [[{"id": "d3", "contents": '"Nile"\nThe Nile is a long river in Africa.'}]]
    assert post(server, {"queries": [], "topk": 3}).json() == {"result": []}


def test_health(server):
    r = requests.get(server.url + "/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["retriever"] == "bm25"
    assert requests.get(server.url + "/nope", timeout=5).status_code == 404


def test_openapi_page_describes_the_request(server):
    assert requests.get(server.url + "/docs", timeout=5).status_code == 200
    schema = requests.get(server.url + "/openapi.json", timeout=5).json()
    assert "/retrieve" in schema["paths"]
    fields = schema["components"]["schemas"]["RetrieveRequest"]["properties"]
    assert set(fields) == {"queries", "topk", "return_scores"}


def test_http_client_matches_local_search(server, retriever):
    client = HTTPRetriever(server.url, timeout_s=5)
    queries = ["capital of France", "largest planet", "the of", "Nile"]
    remote = client.search(queries, 3)
    local = retriever.search(queries, 3)
    assert [[h.doc_id for h in hs] for hs in remote] == [[h.doc_id for h in hs] for hs in local]
    for hr, hl in zip(remote, local, strict=True):
        assert [h.title for h in hr] == [h.title for h in hl]
        assert [h.text for h in hr] == [h.text for h in hl]
        assert [h.score for h in hr] == pytest.approx([h.score for h in hl], rel=1e-6)


def test_concurrent_requests_are_batched(server):
    client = HTTPRetriever(server.url, timeout_s=5)
    queries = [f"capital {name}" for name in PASSAGES] * 4
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        results = list(pool.map(lambda q: client.search([q], 1), queries))
    assert [r[0][0].title for r in results[:2]] == ["Paris", "Tokyo"]
    calls = server.retriever.calls
    assert sum(calls) == len(queries)
    assert len(calls) < len(queries)  # several requests shared a search() call


def test_mixed_k_in_one_batch(server):
    client = HTTPRetriever(server.url, timeout_s=5)
    with ThreadPoolExecutor(max_workers=6) as pool:
        out = list(pool.map(lambda k: client.search(["capital"], k), [1, 2, 1, 2, 1, 2]))
    assert [len(o[0]) for o in out] == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{not json", 400, "not valid UTF-8 JSON"),
        (b"\xff\xfe", 400, "not valid UTF-8 JSON"),
        (b'{"queries": ["caf\xe9"]}', 400, "not valid UTF-8 JSON"),
        ("[1, 2]", 400, "JSON object"),
        ("", 400, "body"),
        ('{"topk": 3}', 400, "queries: Field required"),
        ('{"queries": "paris"}', 400, "queries: Input should be a valid list"),
        ('{"queries": ["a", 3]}', 400, r"queries\[1\]: Input should be a valid string"),
        (json.dumps({"queries": ["a"] * 9}), 413, "too many queries"),
        ('{"queries": ["a"], "topk": 0}', 400, "topk: Input should be greater than or equal to 1"),
        ('{"queries": ["a"], "topk": 11}', 400, "topk: Input should be less than or equal to 10"),
        ('{"queries": ["a"], "topk": 10000000000}', 400, "topk: Input should be less than"),
        ('{"queries": ["a"], "topk": "3"}', 400, "topk: Input should be a valid integer"),
        ('{"queries": ["a"], "topk": true}', 400, "topk: Input should be a valid integer"),
        ('{"queries": ["a"], "return_scores": "yes"}', 400, "return_scores: .*valid boolean"),
        (json.dumps({"queries": ["x" * 5000]}), 413, "exceeds the limit"),
    ],
)
def test_rejects_bad_requests_and_stays_up(server, body, status, message):
    r = post(server, data=body)
    assert r.status_code == status
    assert r.headers["Content-Type"].startswith("application/json")
    assert re.search(message, r.json()["error"])
    ok = post(server, {"queries": ["Paris"], "topk": 1})
    assert ok.status_code == 200 and ok.json()["result"][0][0]["id"] == "d0"


def test_raw_socket_abuse(server):
    host, port = server.url.removeprefix("http://").split(":")
    addr = (host, int(port))
    # no Content-Length: an empty body, refused
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 400 " in s.recv(4096).split(b"\r\n")[0] + b" "
    # huge declared body: refused before reading it
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        assert b"413" in s.recv(4096).split(b"\r\n")[0]
    # a chunked body past the limit (no Content-Length to refuse it by)
    with socket.create_connection(addr, timeout=5) as s:
        head = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"x" * 1500
        s.sendall(head + b"%x\r\n" % len(chunk) + chunk + b"\r\n" + b"%x\r\n" % len(chunk) + chunk)
        assert b"413" in s.recv(4096).split(b"\r\n")[0]
    # garbage request line
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        assert b"400" in s.recv(4096).split(b"\r\n")[0]
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


def test_a_burst_of_clients_gets_no_error(retriever):
    """1,000 requests (two queries, top 3) from 200 concurrent clients: 0 failures (the old
    ThreadingHTTPServer, listening with a backlog of 5, reset 14 of them)."""
    with RetrievalServer(retriever, port=0) as srv:
        url = srv.url + "/retrieve"
        body = {"queries": ["capital of Japan", "highest mountain"], "topk": 3}

        def one(i: int) -> int:
            try:
                return requests.post(url, json=body, timeout=60).status_code
            except requests.RequestException:
                return -1

        with ThreadPoolExecutor(max_workers=200) as pool:
            codes = list(pool.map(one, range(1000)))
    assert codes.count(200) == 1000, {c: codes.count(c) for c in set(codes)}


def test_100k_queries_are_refused_and_the_server_stays_up(retriever):
    with RetrievalServer(retriever, port=0) as srv:  # default limits: 256 queries, 1 MB
        r = requests.post(srv.url + "/retrieve", json={"queries": ["a"] * 100_000}, timeout=30)
        assert r.status_code == 413 and "too many queries" in r.json()["error"]
        ok = requests.post(srv.url + "/retrieve", json={"queries": ["Paris"], "topk": 1}, timeout=5)
        assert ok.status_code == 200


def test_backend_failure_is_a_500_not_a_crash(retriever):
    class Broken:
        name = "broken"

        def search(self, queries, k):
            raise RuntimeError("disk on fire")

    with RetrievalServer(Broken(), port=0) as srv:
        r = post(srv, {"queries": ["a"]})
        assert r.status_code == 500 and "disk on fire" in r.json()["error"]
        assert requests.get(srv.url + "/health", timeout=5).status_code == 200


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_k"):
        ServeLimits(max_k=0)


def test_cli_serves_a_corpus_file(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"id": t, "contents": f'"{t}"\n{x}'}) for t, x in PASSAGES.items())
    )
    env = {"IGPO_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "igpo_env.serve", "--corpus", str(corpus), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving bm25 on http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[3]
        hits = make_retriever("http", url=url, timeout_s=10).search(["highest mountain"], 1)
        assert hits[0][0].doc_id == "Everest"
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
