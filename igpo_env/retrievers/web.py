"""Web-search backends: a self-hosted SearxNG JSON API and Serper (Google results).

Both return web pages as hits with ``doc_id`` = the URL, ``title`` and the result snippet
as ``text``; the score is the engine's score when it gives one, else ``1 / rank``. They are
nondeterministic (the web changes): wrap them with ``cache=`` to record and replay.
Queries are sent one request each (the APIs take one query), through
:class:`~igpo_env.retrievers.http.RetryingClient` (timeouts, retries, rate limit).

API keys come only from environment variables and are never put in a repr or an error.
"""

from __future__ import annotations

import os

from igpo_env.retrievers.base import Hit, SearchError, check_k, check_queries
from igpo_env.retrievers.http import RetryingClient


def _score(result: dict, rank: int) -> float:
    value = result.get("score")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return 1.0 / rank


class _WebRetriever:
    """What both web backends share: one request per query through a ``RetryingClient``,
    blank queries answered with no hits, results turned into at most ``k`` hits.

    A subclass sets ``client``, ``url``, ``link_key`` / ``text_key`` (the result fields
    holding the URL and the snippet) and implements :meth:`_results` (one query's raw
    result dicts).
    """

    client: RetryingClient
    url: str
    link_key = "url"
    text_key = "content"
    engine_score = False  # use the result's own "score" when it has one

    def _results(self, query: str, k: int) -> list:
        raise NotImplementedError

    def _one(self, query: str, k: int) -> list[Hit]:
        if not query.strip():
            return []
        results = self._results(query, k)
        usable = (r for r in results if isinstance(r, dict) and r.get(self.link_key))
        hits = []
        for rank, r in enumerate(usable, 1):
            hits.append(
                Hit(
                    doc_id=str(r[self.link_key]),
                    title=str(r.get("title") or ""),
                    text=str(r.get(self.text_key) or ""),
                    score=_score(r, rank) if self.engine_score else 1.0 / rank,
                )
            )
            if len(hits) == k:
                break
        return hits

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """One request per query, rate-limited; blank queries get no hits."""
        queries = check_queries(queries)
        k = check_k(k)
        return [self._one(q, k) for q in queries]


class SearxNGRetriever(_WebRetriever):
    """``GET {url}/search?q=...&format=json`` on a SearxNG instance (JSON output enabled)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        *,
        engines: str | None = None,
        language: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        rate_limit: float | None = 1.0,
        name: str = "searxng",
    ) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/search") else url + "/search"
        self.engines = engines
        self.language = language
        self.name = name
        self.client = RetryingClient(
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            rate_limit=rate_limit,
        )

    engine_score = True

    def _results(self, query: str, k: int) -> list:
        params = {"q": query, "format": "json"}
        if self.engines:
            params["engines"] = self.engines
        if self.language:
            params["language"] = self.language
        data = self.client.json("GET", self.url, params=params)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise SearchError(
                f"SearxNG at {self.url} answered without a 'results' list; "
                "is the JSON format enabled in its settings.yml (search.formats: [json])?"
            )
        return results

    def __repr__(self) -> str:
        return f"SearxNGRetriever(url={self.url!r})"


class SerperRetriever(_WebRetriever):
    """Serper's Google search API (``POST https://google.serper.dev/search``).

    The key is read from the environment variable named by ``api_key_env``
    (``SERPER_API_KEY``); there is deliberately no ``api_key=`` argument.
    """

    def __init__(
        self,
        *,
        api_key_env: str = "SERPER_API_KEY",
        url: str = "https://google.serper.dev/search",
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        rate_limit: float | None = 5.0,
        name: str = "serper",
    ) -> None:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise ValueError(
                f"the serper backend needs an API key in the environment variable {api_key_env}; "
                f"export {api_key_env}=... (keys are never taken as arguments)"
            )
        self.url = url
        self.name = name
        self.api_key_env = api_key_env
        self.client = RetryingClient(
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            rate_limit=rate_limit,
            headers={"X-API-KEY": key, "Content-Type": "application/json"},
            secrets=(key,),
        )

    link_key, text_key = "link", "snippet"

    def _results(self, query: str, k: int) -> list:
        data = self.client.json("POST", self.url, json={"q": query, "num": min(k, 100)})
        organic = data.get("organic") if isinstance(data, dict) else None
        if not isinstance(organic, list):
            raise SearchError(f"Serper at {self.url} answered without an 'organic' result list")
        return organic

    def __repr__(self) -> str:
        return f"SerperRetriever(url={self.url!r}, key from ${self.api_key_env})"
