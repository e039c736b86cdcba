"""Record/replay wrapper: store any backend's results in sqlite and replay them offline.

Rows are keyed by (backend name, query, k) and hold the hits as JSON. Recording makes a
live run reproducible; ``replay_only=True`` then never touches the backend (a web API, a
remote server) and raises :class:`SearchError` naming the query and the file on a miss.

Several processes (16 training workers) may share one file: the database runs in WAL mode
with a busy timeout, every write is one short transaction, and each thread has its own
connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from igpo_env.retrievers.base import Hit, Retriever, SearchError, check_k, check_queries

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    backend TEXT NOT NULL,
    query   TEXT NOT NULL,
    k       INTEGER NOT NULL,
    hits    TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (backend, query, k)
)
"""


def hits_to_json(hits: list[Hit]) -> str:
    """Serialise hits compactly (list of [doc_id, title, text, score])."""
    return json.dumps([[h.doc_id, h.title, h.text, h.score] for h in hits], ensure_ascii=False)


def hits_from_json(blob: str) -> list[Hit]:
    """Inverse of :func:`hits_to_json`."""
    return [Hit(doc_id=d, title=t, text=x, score=float(s)) for d, t, x, s in json.loads(blob)]


class CachedRetriever:
    """Wrap ``inner`` so that results are recorded to / replayed from the sqlite file ``path``.

    ``inner`` may be ``None`` only with ``replay_only=True``. ``name`` is the key's backend
    part (default ``inner.name``); keep it stable to replay an old recording.
    """

    def __init__(
        self,
        inner: Retriever | None,
        path: str | Path,
        *,
        replay_only: bool = False,
        name: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if inner is None and not replay_only:
            raise ValueError("CachedRetriever needs an inner retriever unless replay_only=True")
        self.inner = inner
        self.path = Path(path)
        self.replay_only = replay_only
        self.backend = name or getattr(inner, "name", None) or "unknown"
        self.name = self.backend
        self.timeout_s = timeout_s
        if replay_only and not self.path.exists():
            raise SearchError(
                f"replay cache {self.path} does not exist; record it first with replay_only=False"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout_s)
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            if not self.replay_only:
                conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    def lookup(self, query: str, k: int) -> list[Hit] | None:
        """The recorded hits of ``query`` at ``k``, or ``None`` if not recorded."""
        row = (
            self._conn()
            .execute(
                "SELECT hits FROM results WHERE backend = ? AND query = ? AND k = ?",
                (self.backend, query, k),
            )
            .fetchone()
        )
        return None if row is None else hits_from_json(row[0])

    def store(self, query: str, k: int, hits: list[Hit]) -> None:
        """Record (or overwrite) the hits of ``query`` at ``k``."""
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                (self.backend, query, k, hits_to_json(hits), time.time()),
            )

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Replay recorded queries; send the misses to the backend in one batch and record them."""
        queries = check_queries(queries)
        k = check_k(k)
        out: list[list[Hit] | None] = [self.lookup(q, k) for q in queries]
        misses = sorted({q for q, hits in zip(queries, out, strict=True) if hits is None})
        if misses:
            if self.replay_only or self.inner is None:
                raise SearchError(
                    f"replay miss: query {misses[0]!r} (k={k}, backend {self.backend!r}) is not "
                    f"in the cache {self.path}; record it with replay_only=False"
                )
            fresh = dict(zip(misses, self.inner.search(misses, k), strict=True))
            with self._conn() as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                    [(self.backend, q, k, hits_to_json(h), time.time()) for q, h in fresh.items()],
                )
            out = [fresh[q] if hits is None else hits for q, hits in zip(queries, out, strict=True)]
        return out  # type: ignore[return-value]

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def __repr__(self) -> str:
        mode = "replay-only" if self.replay_only else "record"
        return f"CachedRetriever({self.backend!r}, path={str(self.path)!r}, {mode})"
