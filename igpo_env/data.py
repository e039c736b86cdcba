"""Readers for QA sets and corpora in the FlashRAG / Search-R1 JSONL formats.

- Corpus JSONL: ``{"id": ..., "contents": "\\"Title\\"\\ntext"}`` (title on the first line of
  ``contents``, optionally quoted, as in the Search-R1 wiki-18 dump), or explicit
  ``{"id", "title", "text"}`` fields.
- QA JSONL: ``{"id": ..., "question": ..., "golden_answers": [...]}`` (FlashRAG).

Files may be gzip-compressed (``.gz``). ``"default"`` names the small corpus shipped in
``igpo_env/corpora/default`` and ``"default:train"`` (``dev``, ``test``) its QA splits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Document:
    """One corpus passage."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The Search-R1 ``contents`` field: quoted title, newline, text."""
        return f'"{self.title}"\n{self.text}'


@dataclass(frozen=True)
class QAExample:
    """One question with its gold answer aliases (the first alias is the canonical one).

    ``article`` is the source document the question was written from, where the QA file
    says (SQuAD's ``metadata.title``, or a row's ``article``/``title`` field), else "".
    Questions of one article share their answers' context, so evaluation subsets are
    stratified by it (:attr:`stratum`) rather than taken in file order.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    dataset: str = "unknown"
    article: str = ""

    @property
    def stratum(self) -> str:
        """The group an evaluation sample is stratified by: the article, else the dataset."""
        return self.article or self.dataset


def default_data_dir() -> Path:
    """Folder of the shipped default data (``igpo_env/corpora/default``, package data)."""
    folder = Path(__file__).resolve().parent / "corpora" / "default"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the shipped default data is missing ({folder}); reinstall the project "
            "(`make install`) or pass explicit corpus/QA paths"
        )
    return folder


def resolve_corpus_path(corpus: str | Path) -> Path:
    """Map ``"default"`` to the shipped corpus file; other values are paths."""
    if str(corpus) == "default":
        return default_data_dir() / "corpus.jsonl.gz"
    path = Path(corpus)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    return path


def resolve_qa_path(qa: str | Path) -> Path:
    """Map ``"default:SPLIT"`` (or ``"default"`` = train) to a shipped QA file; others are paths."""
    text = str(qa)
    if text == "default" or text.startswith("default:"):
        split = text.partition(":")[2] or "train"
        if split not in SPLITS:
            raise ValueError(f"unknown default split {split!r}; choose one of {SPLITS}")
        return default_data_dir() / f"{split}.jsonl.gz"
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"QA file not found: {path}")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a (possibly gzipped) JSONL file, naming the bad line on error."""
    path = Path(path)
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield row


def split_contents(contents: str) -> tuple[str, str]:
    """Split Search-R1 ``contents`` into (title, text); the title may be wrapped in quotes."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text.strip()


def document_from_row(row: dict, lineno: int = 0) -> Document:
    """Build a :class:`Document` from a corpus JSONL row (``contents`` or ``title``/``text``)."""
    if "id" not in row:
        raise ValueError(f"corpus row {lineno}: missing 'id'")
    if "title" in row or "text" in row:
        title, text = str(row.get("title", "")), str(row.get("text", ""))
    elif "contents" in row:
        title, text = split_contents(str(row["contents"]))
    else:
        raise ValueError(f"corpus row {lineno}: needs 'contents' or 'title'/'text'")
    return Document(id=str(row["id"]), title=title, text=text)


def load_corpus(corpus: str | Path) -> list[Document]:
    """Read a corpus JSONL (``"default"`` for the shipped one)."""
    path = resolve_corpus_path(corpus)
    return [document_from_row(row, i) for i, row in enumerate(iter_jsonl(path), 1)]


def load_qa(qa: str | Path, dataset: str | None = None) -> list[QAExample]:
    """Read a FlashRAG QA JSONL (``"default:train"`` etc. for the shipped splits).

    ``dataset`` overrides the name; otherwise a row's ``dataset`` field, else the file stem.
    Rows without a question or without any non-empty answer are rejected with their line.
    """
    path = resolve_qa_path(qa)
    stem = path.name.split(".")[0]
    out: list[QAExample] = []
    for i, row in enumerate(iter_jsonl(path), 1):
        question = row.get("question")
        answers = row.get("golden_answers", row.get("answers"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{i}: missing 'question'")
        if not isinstance(answers, list) or not any(str(a).strip() for a in answers):
            raise ValueError(f"{path}:{i}: 'golden_answers' must be a non-empty list")
        out.append(
            QAExample(
                id=str(row.get("id", f"{stem}-{i}")),
                question=question.strip(),
                answers=tuple(str(a) for a in answers if str(a).strip()),
                dataset=dataset
                or str(row.get("dataset", stem if stem not in SPLITS else "default")),
                article=_article(row),
            )
        )
    return out


def _article(row: dict) -> str:
    """The source article of a QA row: ``metadata.title`` (the shipped SQuAD splits), else a
    top-level ``article`` or ``title`` field, else ""."""
    meta = row.get("metadata")
    for value in (
        meta.get("title") if isinstance(meta, dict) else None,
        row.get("article"),
        row.get("title"),
    ):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def corpus_fingerprint(docs: Iterable[Document]) -> str:
    """A short content hash of a corpus, used to key saved indexes."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode())
        h.update(b"\x00")
        h.update(d.title.encode())
        h.update(b"\x00")
        h.update(d.text.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where indexes and converted models are cached (``$IGPO_CACHE`` or ``~/.cache/igpo``)."""
    import os

    return Path(os.environ.get("IGPO_CACHE", Path.home() / ".cache" / "igpo"))
