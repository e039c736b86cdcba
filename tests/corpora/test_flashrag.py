"""FlashRAG dataset conversion (python -m corpora.flashrag) on small files in FlashRAG's layout.

The folder mirrors ``RUC-NLPIR/FlashRAG_datasets`` (``<dataset>/<split>.jsonl``; HotpotQA
without a test split, Bamboogle with only one); the parquet has the columns Search-R1's
``qa_search_*_merge.py`` writes. Outputs are read back with ``igpo_env.data.load_qa``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from corpora import flashrag as fr
from igpo_env.data import load_qa

ROWS = {
    "nq/train.jsonl": [
        {"id": "train_0", "question": " who wrote  hamlet ", "golden_answers": ["Shakespeare"]},
        {"id": "train_1", "question": "year?", "golden_answers": [1998, "1998", " 1998 "]},
        {"id": "train_2", "question": "no answer", "golden_answers": ["", "  "]},
        {"id": "train_3", "question": "", "golden_answers": ["x"]},
    ],
    "nq/test.jsonl": [
        {"id": "test_0", "question": "capital of france", "golden_answers": ["Paris"]},
        {"id": "test_1", "question": "capital of japan", "golden_answers": "Tokyo"},
    ],
    "hotpotqa/train.jsonl": [
        {"id": "train_0", "question": "q h0", "golden_answers": ["a"], "metadata": {"type": "x"}},
        {"id": "train_1", "question": "q h1", "golden_answers": ["b"]},
    ],
    "hotpotqa/dev.jsonl": [{"id": "dev_0", "question": "q hd", "golden_answers": ["c"]}],
    "bamboogle/test.jsonl": [{"id": "test_0", "question": "q b", "golden_answers": ["d"]}],
}


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    root = tmp_path / "flashrag"
    for name, rows in ROWS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_paper_training_set_merged_with_clean_rows(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--src", str(src), "--out", str(out), "--split", "train", "--merge", "nq_hotpotqa"]
    assert fr.main(argv) == 0
    qa = load_qa(out / "nq_hotpotqa-train.jsonl.gz")
    assert [q.id for q in qa] == [
        "nq-train_0",
        "nq-train_1",
        "hotpotqa-train_0",
        "hotpotqa-train_1",
    ]
    assert [q.dataset for q in qa] == ["nq", "nq", "hotpotqa", "hotpotqa"]
    assert qa[0].question == "who wrote hamlet" and qa[1].answers == ("1998",)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    entry = manifest["files"]["nq_hotpotqa-train.jsonl.gz"]
    assert entry["rows"] == 4 and entry["command"].endswith("--merge nq_hotpotqa")
    nq = entry["sources"][0]
    assert (nq["file"], nq["rows_read"], nq["dropped"], nq["kept"]) == ("nq/train.jsonl", 4, 2, 2)
    # deterministic bytes: a second run writes the same file
    first = (out / "nq_hotpotqa-train.jsonl.gz").read_bytes()
    assert fr.main(argv) == 0
    assert (out / "nq_hotpotqa-train.jsonl.gz").read_bytes() == first


def test_eval_split_takes_test_else_dev_one_file_per_set(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--src", str(src), "--out", str(out), "--datasets", "nq,hotpotqa,bamboogle"]
    assert fr.main(argv) == 0
    names = sorted(p.name for p in out.glob("*.jsonl.gz"))
    assert names == ["bamboogle-test.jsonl.gz", "hotpotqa-dev.jsonl.gz", "nq-test.jsonl.gz"]
    assert load_qa(out / "nq-test.jsonl.gz")[1].answers == ("Tokyo",)
    assert {q.dataset for q in load_qa(out / "hotpotqa-dev.jsonl.gz")} == {"hotpotqa"}
    # a later run in the same folder adds its files to the manifest
    assert (
        fr.main(["--src", str(src), "--out", str(out), "--datasets", "nq", "--split", "train"]) == 0
    )
    files = json.loads((out / "MANIFEST.json").read_text())["files"]
    assert sorted(files) == sorted([*names, "nq-train.jsonl.gz"])


def test_paper_eval_default_and_missing_split_named(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fr.main(["--src", str(src), "--out", str(tmp_path / "o")]) == 2  # 7 sets, 3 here
    assert "no triviaqa/test or dev.jsonl" in capsys.readouterr().err
    argv = ["--src", str(src), "--out", str(tmp_path / "o"), "--datasets", "hotpotqa"]
    assert fr.main([*argv, "--split", "test"]) == 2
    assert "no hotpotqa/test.jsonl" in capsys.readouterr().err
    assert fr._dataset_names("paper-train,nq,musique") == ["nq", "hotpotqa", "musique"]


def test_sample_is_seeded_and_keeps_file_order(src: Path, tmp_path: Path) -> None:
    picks = set()
    for seed in range(8):
        out = tmp_path / str(seed)
        argv = ["--src", str(src), "--out", str(out), "--datasets", "hotpotqa", "--split", "train"]
        assert fr.main([*argv, "--sample", "1", "--seed", str(seed)]) == 0
        (row,) = load_qa(out / "hotpotqa-train.jsonl.gz")
        picks.add(row.id)
    assert picks == {"hotpotqa-train_0", "hotpotqa-train_1"}
    assert fr.main(["--src", str(src), "--out", str(tmp_path / "x"), "--sample", "0"]) == 2


def test_download_falls_back_from_test_to_dev(src: Path, tmp_path: Path) -> None:
    local, calls = tmp_path / "local", []

    def fetch(repo_id: str, filename: str, local_dir: Path) -> Path:
        calls.append(filename)
        if not (src / filename).is_file():
            raise RuntimeError(f"{filename} is not in {repo_id}")
        (local_dir / filename).parent.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(src / filename, local_dir / filename))

    argv = ["--src", str(local), "--out", str(tmp_path / "out"), "--download"]
    assert fr.main([*argv, "--datasets", "nq,hotpotqa"], fetch) == 0
    assert calls == ["nq/test.jsonl", "hotpotqa/test.jsonl", "hotpotqa/dev.jsonl"]
    assert fr.main([*argv, "--datasets", "popqa"], fetch) == 2  # neither split exists


def test_search_r1_parquet_one_file_per_data_source(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {
            "data_source": source,
            "question": question,
            "prompt": [{"role": "user", "content": f"Answer the given question. {question}"}],
            "ability": "fact-reasoning",
            "reward_model": {"style": "rule", "ground_truth": {"target": answers}},
            "extra_info": {"split": "test", "index": i},
        }
        for i, (source, question, answers) in enumerate(
            [("nq", "who?", ["Ann", "ann"]), ("nq", "what?", [""]), ("musique", "how?", ["So"])]
        )
    ]
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    assert fr.main(["--src", str(path), "--out", str(out)]) == 0
    (nq,) = load_qa(out / "nq-test.jsonl.gz")
    assert (nq.id, nq.question, nq.answers, nq.dataset) == (
        "nq-test_0",
        "who?",
        ("Ann", "ann"),
        "nq",
    )
    assert [q.dataset for q in load_qa(out / "musique-test.jsonl.gz")] == ["musique"]
    files = json.loads((out / "MANIFEST.json").read_text())["files"]
    assert files["nq-test.jsonl.gz"]["sources"][0]["dropped"] == 1
    assert fr.main(["--src", str(path), "--out", str(out), "--datasets", "hotpotqa"]) == 2
