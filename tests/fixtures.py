"""Helpers that write small corpus and QA files in the formats the env reads (tests only).

Corpus rows are FlashRAG/Search-R1 ``{"id", "contents": '"Title"\\ntext'}``; QA rows are
``{"id", "question", "golden_answers"[, "dataset"]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_corpus(path: Path, docs: Iterable[tuple[str, str, str]]) -> str:
    """Write ``(id, title, text)`` documents as a JSONL corpus; returns the path as str."""
    path.write_text(
        "".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in docs)
    )
    return str(path)


def write_qa(
    path: Path, rows: Iterable[tuple[str, str, Sequence[str]]], dataset: str | None = None
) -> str:
    """Write ``(id, question, answers)`` rows as a FlashRAG QA file; returns the path as str."""
    lines = []
    for i, q, a in rows:
        row = {"id": i, "question": q, "golden_answers": list(a)}
        if dataset is not None:
            row["dataset"] = dataset
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    return str(path)
