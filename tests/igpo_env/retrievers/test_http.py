"""Search-R1 /retrieve client against real loopback servers that fail on purpose."""

from __future__ import annotations

import time

import pytest

from igpo_env.retrievers import SearchError, make_retriever
from igpo_env.retrievers.http import HTTPRetriever, RateLimiter, retry_after_seconds

from .loopback import scripted_server

FAST = {"timeout_s": 0.5, "max_retries": 3, "backoff_s": 0.01, "max_backoff_s": 0.05}


def search_r1_answer(request: dict) -> dict:
    """What Search-R1's server returns: one doc per query, quoted title in contents."""
    body = request["json"]
    result = []
    for q in body["queries"]:
        docs = [
            {
                "document": {"id": f"{q}-{i}", "contents": f'"Title {i}"\nabout {q}'},
                "score": 10.0 - i,
            }
            for i in range(body["topk"])
        ]
        result.append(docs if body.get("return_scores") else [d["document"] for d in docs])
    return {"result": result}


def test_parses_search_r1_response_and_sends_protocol():
    with scripted_server([("ok",)], search_r1_answer) as srv:
        r = HTTPRetriever(srv.url, **FAST)
        hits = r.search(["who wrote hamlet", "capital of peru"], 2)
        sent = srv.requests[0]
    assert sent["method"] == "POST" and sent["path"] == "/retrieve"
    assert sent["json"] == {
        "queries": ["who wrote hamlet", "capital of peru"],
        "topk": 2,
        "return_scores": True,
    }
    assert [h.doc_id for h in hits[1]] == ["capital of peru-0", "capital of peru-1"]
    assert hits[0][0].title == "Title 0" and hits[0][0].text == "about who wrote hamlet"
    assert hits[0][1].score == 9.0


def test_large_batches_are_chunked():
    with scripted_server([("ok",)], search_r1_answer) as srv:
        r = HTTPRetriever(srv.url + "/retrieve", max_batch=2, **FAST)
        hits = r.search([f"q{i}" for i in range(5)], 1)
        sizes = [len(req["json"]["queries"]) for req in srv.requests]
    assert sizes == [2, 2, 1]
    assert [h[0].doc_id for h in hits] == [f"q{i}-0" for i in range(5)]


def test_recovers_from_500_429_and_timeouts():
    script = [
        ("status", 500, {}),
        ("status", 429, {"Retry-After": "0"}),
        ("sleep", 1.0),  # longer than timeout_s=0.5: the client times out
        ("ok",),
    ]
    with scripted_server(script, search_r1_answer) as srv:
        r = HTTPRetriever(srv.url, **FAST)
        hits = r.search(["x"], 1)
        assert len(srv.requests) == 4
    assert hits[0][0].doc_id == "x-0"


def test_recovers_from_dropped_connection():
    with scripted_server([("drop",), ("ok",)], search_r1_answer) as srv:
        hits = HTTPRetriever(srv.url, **FAST).search(["x"], 1)
    assert hits[0][0].doc_id == "x-0"


def test_honours_retry_after():
    script = [("status", 429, {"Retry-After": "0.3"}), ("ok",)]
    with scripted_server(script, search_r1_answer) as srv:
        HTTPRetriever(srv.url, **FAST).search(["x"], 1)
        gap = srv.requests[1]["time"] - srv.requests[0]["time"]
    assert gap >= 0.28  # backoff alone would be 0.01 s


def test_always_failing_server_raises_search_error_after_retries():
    with scripted_server([("status", 503, {})], search_r1_answer) as srv:
        r = HTTPRetriever(srv.url, **FAST)
        with pytest.raises(SearchError, match=r"failed after 4 attempt\(s\): HTTP 503"):
            r.search(["x"], 1)
        assert len(srv.requests) == 4


def test_client_errors_are_not_retried():
    with scripted_server([("status", 400, {})], search_r1_answer) as srv:
        with pytest.raises(SearchError, match="HTTP 400"):
            HTTPRetriever(srv.url, **FAST).search(["x"], 1)
        assert len(srv.requests) == 1


def test_unreachable_server_raises_search_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = HTTPRetriever(f"http://127.0.0.1:{port}", **FAST)
    with pytest.raises(SearchError, match="connection error"):
        r.search(["x"], 1)


@pytest.mark.parametrize(
    "answer",
    [
        {"nope": 1},
        {"result": []},  # wrong length
        {"result": [["not a dict"]]},
        {"result": [[{"document": {"contents": "x"}, "score": "high"}]]},
        ["not", "an", "object"],
    ],
)
def test_malformed_answers_raise_search_error(answer):
    with scripted_server([("ok",)], lambda req: answer) as srv:
        with pytest.raises(SearchError):
            HTTPRetriever(srv.url, **FAST).search(["x"], 1)


def test_non_json_body_raises_search_error():
    with scripted_server([("raw", b"<html>oops</html>")], search_r1_answer) as srv:
        with pytest.raises(SearchError, match="non-JSON body"):
            HTTPRetriever(srv.url, **FAST).search(["x"], 1)


def test_rate_limit_spaces_requests():
    with scripted_server([("ok",)], search_r1_answer) as srv:
        r = HTTPRetriever(srv.url, max_batch=1, rate_limit=20.0, **FAST)
        t0 = time.monotonic()
        r.search(["a", "b", "c", "d"], 1)
        elapsed = time.monotonic() - t0
    assert elapsed >= 3 / 20 - 0.01


def test_retry_after_parsing():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # in the past
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_factory_and_argument_checks():
    r = make_retriever("http", url="http://127.0.0.1:9/")
    assert r.url == "http://127.0.0.1:9/retrieve"
    with pytest.raises(ValueError, match="k must be >= 1"):
        r.search(["x"], 0)
    assert r.search([], 3) == []


def test_retry_budget_defaults_come_from_the_environment(monkeypatch):
    plain = HTTPRetriever("http://127.0.0.1:9").client
    assert (plain.timeout_s, plain.max_retries, plain.backoff_s) == (30.0, 3, 0.5)
    monkeypatch.setenv("IGPO_HTTP_TIMEOUT_S", "0.5")
    monkeypatch.setenv("IGPO_HTTP_MAX_RETRIES", "1")
    monkeypatch.setenv("IGPO_HTTP_BACKOFF_S", "0.01")
    with scripted_server([("status", 503, {})], search_r1_answer) as srv:
        r = make_retriever("http", url=srv.url)  # how gym.make and the trainer build it
        assert (r.client.timeout_s, r.client.max_retries, r.client.backoff_s) == (0.5, 1, 0.01)
        with pytest.raises(SearchError, match=r"after 2 attempt\(s\)"):
            r.search(["x"], 1)
        assert len(srv.requests) == 2
    explicit = HTTPRetriever("http://127.0.0.1:9", max_retries=5).client
    assert explicit.max_retries == 5  # an argument wins over the variable
    monkeypatch.setenv("IGPO_HTTP_MAX_RETRIES", "many")
    with pytest.raises(ValueError, match="IGPO_HTTP_MAX_RETRIES"):
        HTTPRetriever("http://127.0.0.1:9")
