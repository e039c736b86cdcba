"""The shipped default data (``igpo_env/corpora/default/``, package data) as ``igpo_env.data`` reads it.

How it is built is tested in ``tests/corpora/test_build.py``; these tests check the
committed files themselves against their manifest and the QA format.
"""

from __future__ import annotations

import hashlib
import json

from igpo_env.data import default_data_dir, iter_jsonl, load_corpus, load_qa


def test_committed_default_matches_manifest() -> None:
    root = default_data_dir()
    manifest = json.loads((root / "MANIFEST.json").read_text())
    for name, meta in manifest["files"].items():
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert digest == meta["sha256"], f"{name} differs from MANIFEST"
        assert (root / name).stat().st_size == meta["bytes"]
    counts = manifest["counts"]
    docs = load_corpus("default")
    assert len(docs) == counts["documents"] == counts["squad_paragraphs"] + counts["wiki_summaries"]
    assert counts["squad_paragraphs"] == 2067
    assert sum(counts["questions"].values()) == 10565
    for split in ("train", "dev", "test"):
        assert len(load_qa(f"default:{split}")) == counts["questions"][split]
    articles = [a for names in counts["articles"].values() for a in names]
    assert len(articles) == len(set(articles)) == 48


def test_default_answers_non_empty_and_doc_ids_unique() -> None:
    docs = load_corpus("default")
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids))
    squad_ids = {i for i in ids if i.startswith("squad-")}
    assert len(squad_ids) == 2067
    assert all(d.title and d.text for d in docs)
    root = default_data_dir()
    for split in ("train", "dev", "test"):
        for row in iter_jsonl(root / f"{split}.jsonl.gz"):
            answers = row["golden_answers"]
            assert answers and all(isinstance(a, str) and a == a.strip() and a for a in answers)
            assert len(answers) == len(set(answers))
            assert row["metadata"]["doc_id"] in squad_ids
