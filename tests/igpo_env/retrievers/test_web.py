"""SearxNG and Serper clients against loopback servers; API keys never leak."""

from __future__ import annotations

import pytest

from igpo_env.retrievers import SearchError, make_retriever
from igpo_env.retrievers.web import SearxNGRetriever, SerperRetriever

from .loopback import scripted_server

FAST = {"timeout_s": 0.5, "max_retries": 2, "backoff_s": 0.01, "rate_limit": None}
KEY = "sk-test-very-secret-123"


def searxng_answer(request: dict) -> dict:
    return {
        "query": "x",
        "results": [
            {"url": "https://a.example/1", "title": "A", "content": "first", "score": 3.5},
            {"title": "no url, skipped"},
            {"url": "https://b.example/2", "title": "B", "content": "second"},
            {"url": "https://c.example/3", "title": "C", "content": "third"},
        ],
    }


def test_searxng_parses_results_and_sends_json_format():
    with scripted_server([("status", 502, {}), ("ok",)], searxng_answer) as srv:
        r = SearxNGRetriever(srv.url, engines="wikipedia", **FAST)
        hits = r.search(["who is ada lovelace", "   "], 2)
        path = srv.requests[-1]["path"]
        assert len(srv.requests) == 2  # one retry, blank query never sent
    assert path.startswith("/search?") and "format=json" in path and "engines=wikipedia" in path
    assert [h.doc_id for h in hits[0]] == ["https://a.example/1", "https://b.example/2"]
    assert hits[0][0].score == 3.5 and hits[0][1].score == 0.5
    assert hits[0][1].text == "second" and hits[1] == []


def test_searxng_without_json_format_explains_fix():
    with scripted_server([("ok",)], lambda req: {"unexpected": True}) as srv:
        with pytest.raises(SearchError, match="format"):
            SearxNGRetriever(srv.url, **FAST).search(["x"], 3)


def serper_answer(request: dict) -> dict:
    n = request["json"]["num"]
    return {
        "organic": [
            {"link": f"https://s.example/{i}", "title": f"S{i}", "snippet": f"snip {i}"}
            for i in range(n)
        ]
    }


def test_serper_key_from_env_only_and_never_leaked(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    with pytest.raises(ValueError, match="SERPER_API_KEY"):
        SerperRetriever()
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    with pytest.raises(TypeError):
        SerperRetriever(api_key=KEY)  # no such argument on purpose
    with scripted_server([("ok",)], serper_answer) as srv:
        r = make_retriever("serper", url=srv.url + "/search", **FAST)
        hits = r.search(["q"], 3)
        assert srv.requests[0]["headers"]["X-API-KEY"] == KEY
        assert srv.requests[0]["json"] == {"q": "q", "num": 3}
    assert [h.title for h in hits[0]] == ["S0", "S1", "S2"]
    assert KEY not in repr(r) and KEY not in repr(r.client)


def test_serper_errors_do_not_contain_the_key(monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    # the key ends up in the failing URL: the error message must still not show it
    with scripted_server([("status", 401, {})], serper_answer) as srv:
        r = SerperRetriever(url=srv.url + f"/search?echo={KEY}", **FAST)
        with pytest.raises(SearchError) as info:
            r.search(["q"], 3)
    assert "HTTP 401" in str(info.value)
    assert KEY not in str(info.value) and "***" in str(info.value)
