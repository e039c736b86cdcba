"""Record/replay cache: round trip, replay-only misses, several processes on one file."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from igpo_env.retrievers import Hit, SearchError, make_retriever
from igpo_env.retrievers.cache import CachedRetriever


class CountingRetriever:
    """A real in-memory backend that counts the queries it is asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        self.asked.extend(queries)
        return [
            [Hit(f"{q}#{i}", f"T{i}", f"körper {q}", 1.0 / (i + 1)) for i in range(k)]
            for q in queries
        ]


def test_records_then_replays(tmp_path):
    inner = CountingRetriever()
    path = tmp_path / "c.sqlite"
    r = CachedRetriever(inner, path)
    first = r.search(["a", "b", "a"], 2)
    assert inner.asked == ["a", "b"]  # duplicate asked once
    again = r.search(["b", "a", "c"], 2)
    assert inner.asked == ["a", "b", "c"]
    assert again[0] == first[1] and again[1] == first[0]
    assert len(r) == 3
    # a different k is a different key
    r.search(["a"], 1)
    assert inner.asked[-1] == "a"
    # replay-only needs no backend and reproduces exactly (unicode included)
    replay = CachedRetriever(None, path, replay_only=True, name="counting")
    assert replay.search(["a", "b"], 2) == first[:2]
    assert replay.search(["a"], 2)[0][0].text == "körper a"


def test_replay_only_miss_names_query_and_file(tmp_path):
    path = tmp_path / "c.sqlite"
    CachedRetriever(CountingRetriever(), path).search(["known"], 3)
    replay = CachedRetriever(None, path, replay_only=True, name="counting")
    with pytest.raises(SearchError, match=r"'unknown'.*c\.sqlite"):
        replay.search(["known", "unknown"], 3)
    with pytest.raises(SearchError, match="not in the cache"):
        replay.search(["known"], 4)
    # another backend name does not see these records
    other = CachedRetriever(None, path, replay_only=True, name="bm25")
    with pytest.raises(SearchError):
        other.search(["known"], 3)


def test_replay_only_needs_an_existing_file(tmp_path):
    with pytest.raises(SearchError, match="does not exist"):
        CachedRetriever(None, tmp_path / "missing.sqlite", replay_only=True)
    with pytest.raises(ValueError, match="inner retriever"):
        CachedRetriever(None, tmp_path / "x.sqlite")


def test_factory_cache_kwarg(docs, tmp_path):
    path = tmp_path / "bm25.sqlite"
    live = make_retriever("bm25", corpus=docs, cache=path)
    assert isinstance(live, CachedRetriever) and live.name == "bm25"
    hits = live.search(["capital of France"], 2)
    replay = make_retriever("bm25", corpus=docs, cache=path, replay_only=True)
    assert replay.inner is None  # nothing built
    assert replay.search(["capital of France"], 2) == hits
    with pytest.raises(ValueError, match="cache=PATH"):
        make_retriever("bm25", corpus=docs, replay_only=True)


def _worker(path: str, worker: int, out: mp.Queue) -> None:
    r = CachedRetriever(CountingRetriever(), path)
    for i in range(30):
        r.search([f"q{i % 10}", f"w{worker}-{i}"], 2)
    out.put(len(r))


def test_several_processes_share_one_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, w, out)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(CachedRetriever(None, path, replay_only=True, name="counting")) == 10 + 3 * 30
