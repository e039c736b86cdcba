"""Client for a Search-R1-compatible retrieval server, and the retrying HTTP core it shares.

Protocol (Search-R1's ``retrieval_server.py``, also served by :mod:`igpo_env.serve`)::

    POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}
    ->  {"result": [[{"document": {"id": "...", "contents": "\\"Title\\"\\ntext"}, "score": 1.2}]]}

:class:`RetryingClient` gives every remote backend the same behaviour: a per-request
timeout, retries with exponential backoff on connection errors, timeouts, 5xx and 429
(a ``Retry-After`` header is honoured, capped), a client-side rate limit, and a final
:class:`SearchError` whose message never contains a secret.

The ``/retrieve`` client's timeout, retries and first backoff default to the environment
variables ``IGPO_HTTP_TIMEOUT_S`` (30), ``IGPO_HTTP_MAX_RETRIES`` (3) and
``IGPO_HTTP_BACKOFF_S`` (0.5) when not passed, so a trainer or evaluator that builds its
envs from a URL (``--retriever http://...``) can be given a shorter retry budget without
code: each failed search costs the whole budget (a dead server: about 3.5 s by default).
"""

from __future__ import annotations

import email.utils
import os
import threading
import time
from typing import Any

import requests

from igpo_env.data import document_from_row
from igpo_env.retrievers.base import Hit, SearchError, check_k, check_queries

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
TIMEOUT_ENV, RETRIES_ENV, BACKOFF_ENV = (
    "IGPO_HTTP_TIMEOUT_S",
    "IGPO_HTTP_MAX_RETRIES",
    "IGPO_HTTP_BACKOFF_S",
)


def env_default(value: float | None, variable: str, default: float, kind: type = float) -> Any:
    """``value`` if given, else the environment variable ``variable`` parsed as ``kind``, else
    ``default``; a variable that does not parse raises a ValueError naming it."""
    if value is not None:
        return value
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"${variable}={raw!r} is not a {kind.__name__}; unset it or give a number"
        ) from None


class RateLimiter:
    """At most ``rate`` request starts per second across threads (``None``: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate limit must be > 0 requests/s or None, got {rate}")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next request may start."""
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header (delta seconds or an HTTP date) into seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RetryingClient:
    """``requests`` with timeouts, retries, backoff, rate limiting and secret-free errors.

    ``secrets`` are strings (API keys) scrubbed from every error message.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        rate_limit: float | None = None,
        headers: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0:
            raise ValueError("need timeout_s > 0, max_retries >= 0 and backoff_s >= 0")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.limiter = RateLimiter(rate_limit)
        self._headers = dict(headers or {})
        self._secrets = tuple(s for s in secrets if s)
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers.update(self._headers)
            self._local.session = s
        return s

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send with retries; return the 2xx response or raise :class:`SearchError`."""
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            self.limiter.wait()
            wait = min(self.max_backoff_s, self.backoff_s * (2**attempt))
            try:
                resp = self._session().request(method, url, timeout=self.timeout_s, **kwargs)
            except requests.Timeout:
                last = f"timed out after {self.timeout_s:g}s"
            except requests.RequestException as exc:
                last = f"connection error ({type(exc).__name__})"
            else:
                if resp.ok:
                    return resp
                snippet = resp.text[:200].strip().replace("\n", " ")
                last = f"HTTP {resp.status_code}" + (f": {snippet}" if snippet else "")
                if resp.status_code not in RETRY_STATUS:
                    break  # a client error will not fix itself
                hinted = retry_after_seconds(resp.headers.get("Retry-After"))
                if hinted is not None:
                    wait = min(hinted, self.max_retry_after_s)
            if attempt + 1 < attempts:
                time.sleep(wait)
        raise SearchError(
            self.scrub(f"{method} {url} failed after {attempt + 1} attempt(s): {last}")
        )

    def json(self, method: str, url: str, **kwargs: Any) -> Any:
        """:meth:`request` and decode the JSON body (a clear SearchError if it is not JSON)."""
        resp = self.request(method, url, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise SearchError(self.scrub(f"{method} {url} returned a non-JSON body")) from exc


def _hit_from_item(item: Any, rank: int) -> Hit:
    """One Search-R1 result item (``{"document": {...}, "score": s}`` or a bare document)."""
    if not isinstance(item, dict):
        raise SearchError(f"retrieval server returned a non-object result item: {item!r:.100}")
    doc = item.get("document", item)
    if not isinstance(doc, dict):
        raise SearchError(f"retrieval server returned a bad document: {doc!r:.100}")
    row = dict(doc)
    row.setdefault("id", row.get("doc_id", row.get("title", f"rank-{rank}")))
    try:
        d = document_from_row(row)
    except ValueError as exc:
        raise SearchError(f"retrieval server returned a bad document: {exc}") from exc
    score = item.get("score", -float(rank)) if "document" in item else -float(rank)
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise SearchError(f"retrieval server returned a non-numeric score {score!r}") from None
    return Hit(doc_id=d.id, title=d.title, text=d.text, score=score)


class HTTPRetriever:
    """Search-R1 ``/retrieve`` client. ``url`` is the server root or the full /retrieve URL.

    Batches of more than ``max_batch`` queries are sent as several requests. Without scores
    (``return_scores=False`` servers) the score is ``-rank``. ``timeout_s``, ``max_retries``
    and ``backoff_s`` left at None read ``$IGPO_HTTP_TIMEOUT_S`` (30),
    ``$IGPO_HTTP_MAX_RETRIES`` (3) and ``$IGPO_HTTP_BACKOFF_S`` (0.5).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        max_batch: int = 256,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        max_backoff_s: float = 8.0,
        rate_limit: float | None = None,
        name: str = "http",
    ) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/retrieve") else url + "/retrieve"
        self.name = name
        self.max_batch = max_batch
        self.client = RetryingClient(
            timeout_s=env_default(timeout_s, TIMEOUT_ENV, 30.0),
            max_retries=env_default(max_retries, RETRIES_ENV, 3, int),
            backoff_s=env_default(backoff_s, BACKOFF_ENV, 0.5),
            max_backoff_s=max_backoff_s,
            rate_limit=rate_limit,
        )

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """POST the queries (in chunks of ``max_batch``) and parse the hits."""
        queries = check_queries(queries)
        k = check_k(k)
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.max_batch):
            chunk = queries[start : start + self.max_batch]
            body = {"queries": chunk, "topk": k, "return_scores": True}
            data = self.client.json("POST", self.url, json=body)
            result = data.get("result") if isinstance(data, dict) else None
            if not isinstance(result, list) or len(result) != len(chunk):
                raise SearchError(
                    f"retrieval server {self.url} answered without a 'result' list of "
                    f"{len(chunk)} entries (got {str(data)[:120]!r})"
                )
            for items in result:
                if not isinstance(items, list):
                    raise SearchError(f"retrieval server {self.url} returned a non-list result")
                out.append([_hit_from_item(it, r) for r, it in enumerate(items[:k], 1)])
        return out

    def __repr__(self) -> str:
        return f"HTTPRetriever(url={self.url!r})"
