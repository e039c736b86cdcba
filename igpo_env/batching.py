"""Batching of concurrent retrieval requests for the server (:mod:`igpo_env.serve`).

Requests that arrive within ``batch_wait_ms`` of each other share one ``search`` call per
distinct ``k``: a BM25 or FAISS backend answers a batch of queries far faster than the same
queries one call at a time, and training ranks sharing a server send exactly such bursts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from igpo_env.retrievers.base import Hit, Retriever


@dataclass
class _Job:
    queries: list[str]
    k: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """An asyncio task that owns the retriever and answers queued jobs in gathered batches.

    ``search`` runs in one worker thread at a time (backends need not be thread-safe), so
    the event loop stays free to accept and parse requests while a batch is searched.
    """

    def __init__(self, retriever: Retriever, limits: Any) -> None:
        """``limits``: the server's ``ServeLimits`` (``batch_wait_ms``, ``max_batch_queries``)."""
        self.retriever = retriever
        self.limits = limits
        self.jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the gathering task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Cancel the task (requests still waiting get an error)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Queue one request and await its hits (re-raising the backend's error)."""
        if not queries:
            return []
        job = _Job(queries, k, asyncio.get_running_loop().create_future())
        await self.jobs.put(job)
        return await job.future

    async def _gather(self, first: _Job) -> list[_Job]:
        batch, total = [first], len(first.queries)
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        while total < self.limits.max_batch_queries:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    job = await asyncio.wait_for(self.jobs.get(), remaining)
                else:
                    job = self.jobs.get_nowait()
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            batch.append(job)
            total += len(job.queries)
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._gather(await self.jobs.get())
            by_k: dict[int, list[_Job]] = {}
            for job in batch:
                by_k.setdefault(job.k, []).append(job)
            for k, jobs in by_k.items():
                flat = [q for job in jobs for q in job.queries]
                try:
                    hits = await asyncio.to_thread(self.retriever.search, flat, k)
                except Exception as exc:  # noqa: BLE001  (handed to every waiting request)
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                self.batches += 1
                pos = 0
                for job in jobs:
                    if not job.future.done():
                        job.future.set_result(hits[pos : pos + len(job.queries)])
                    pos += len(job.queries)
