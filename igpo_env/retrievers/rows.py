"""Random access to the rows of a big corpus JSONL without parsing it into memory.

A prebuilt FAISS index refers to passages by row number (FAISS id ``i`` = row ``i`` of the
corpus file, blank lines not counted, as in Search-R1's wiki-18). :class:`JsonlRows` scans the
file once for the byte offset where each row starts (numpy over 64 MB blocks: 0.7 s for a
551 MB file of 1M rows in the page cache, else disk speed), saves the offsets next to the other caches and memory-maps them
afterwards; a row is then one ``os.pread`` plus one ``json.loads`` when a search returns it
(7.6 us per random row, measured on that file).

Memory: 8 bytes per row for the offsets (168 MB for wiki-18's 21,015,324 rows, memory-mapped,
so only the pages of rows that are read stay resident); building them once holds about twice
that. A gzip-compressed corpus cannot be read at an offset cheaply: it is parsed whole into
memory instead (about 1.5x its uncompressed size in Python objects: a 551 MB file of 1M rows
took 823 MB), with a note on stderr; decompress it to avoid that.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np

from igpo_env.data import Document, cache_dir, document_from_row, load_corpus
from igpo_env.retrievers.base import announce

BLOCK_BYTES = 64 << 20
"""Bytes read per step while scanning for line starts."""
SHORT_LINE = 8
"""Lines shorter than this many bytes are checked for being blank (a JSON row is longer)."""
_FORMAT = 1


def scan_row_starts(path: str | Path) -> np.ndarray:
    """Byte offsets of the non-blank lines of ``path``, then its size: uint64, rows + 1.

    Row ``i`` spans ``[starts[i], starts[i + 1])`` (blank lines after it included, which JSON
    parsing ignores).
    """
    path = Path(path)
    size = path.stat().st_size
    parts = [np.zeros(1, dtype=np.uint64)]
    pos = 0
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_BYTES):
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            parts.append((newlines + (pos + 1)).astype(np.uint64))
            pos += len(block)
        starts = np.concatenate(parts)
        starts = starts[starts < size]  # a final newline starts no row
        ends = np.append(starts[1:], np.uint64(size))
        keep = np.ones(len(starts), dtype=bool)
        for j in np.flatnonzero(ends - starts < SHORT_LINE).tolist():
            fh.seek(int(starts[j]))
            keep[j] = bool(fh.read(int(ends[j] - starts[j])).strip())
    return np.append(starts[keep], np.uint64(size))


def offsets_cache_path(path: Path) -> Path:
    """Where the row offsets of the corpus at ``path`` (this size and mtime) are cached."""
    stat = path.stat()
    key = f"{_FORMAT}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "corpus-offsets" / f"{path.name}-{digest}.npy"


def load_row_starts(path: Path) -> np.ndarray:
    """The cached row offsets of ``path`` (memory-mapped), scanning and caching them once."""
    cached = offsets_cache_path(path)
    if not cached.exists():
        announce(
            f"igpo: indexing the rows of {path} ({path.stat().st_size / 1e9:.2f} GB) once; "
            f"caching the offsets in {cached}"
        )
        starts = scan_row_starts(path)
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=cached.name + ".tmp-", dir=cached.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, starts)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return np.load(cached, mmap_mode="r")


class JsonlRows(Sequence[Document]):
    """The corpus rows of a JSONL file as a read-only sequence of :class:`Document`.

    ``rows[i]`` reads and parses row ``i`` (title and text split from ``contents`` exactly as
    :func:`igpo_env.data.load_corpus` does). Safe to read from several threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"corpus file not found: {self.path}")
        self._docs: list[Document] | None = None
        self._fd: int | None = None
        if self.path.suffix == ".gz":
            announce(
                f"igpo: {self.path} is gzip-compressed, so it is parsed whole into memory; "
                "decompress it (gzip -dk) to read rows on demand instead"
            )
            self._docs = load_corpus(self.path)
            self._starts = np.zeros(0, dtype=np.uint64)
        else:
            self._starts = load_row_starts(self.path)
            self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        if self._docs is not None:
            return len(self._docs)
        return len(self._starts) - 1

    @overload
    def __getitem__(self, i: int) -> Document: ...
    @overload
    def __getitem__(self, i: slice) -> list[Document]: ...
    def __getitem__(self, i: int | slice) -> Document | list[Document]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} is out of range for {n} corpus rows in {self.path}")
        i %= n
        if self._docs is not None:
            return self._docs[i]
        assert self._fd is not None
        start, end = int(self._starts[i]), int(self._starts[i + 1])
        raw = os.pread(self._fd, end - start, start)
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise ValueError(
                f"{self.path}: row {i} (byte {start}) is not valid JSON ({exc}); "
                "was the file changed after its offsets were cached?"
            ) from exc
        if not isinstance(row, dict):
            raise ValueError(f"{self.path}: row {i} (byte {start}) is not a JSON object")
        return document_from_row(row, i + 1)

    def close(self) -> None:
        """Close the file (rows of a gzip corpus stay readable: they are in memory)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()

    def __repr__(self) -> str:
        return f"JsonlRows({str(self.path)!r}, rows={len(self)})"
