"""The wiki-18 + e5 recipe (python -m corpora.wiki18) on a small index built the Search-R1 way.

A real ``faiss.IndexFlatIP`` written with ``faiss.write_index`` and cut into two parts, a
gzip JSONL corpus in Search-R1's row format, and a fake fetch that serves them from a folder
in place of the Hugging Face hub (the only part not exercised for real).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from corpora import hub, wiki18

faiss = pytest.importorskip("faiss")

DIM, ROWS = 8, 7


def _corpus_lines(n: int) -> bytes:
    rows = [{"id": str(i), "contents": f'"Title {i}"\npassage number {i}'} for i in range(n)]
    return b"".join((json.dumps(r) + "\n").encode() for r in rows)


@pytest.fixture()
def hub_files(tmp_path: Path) -> Path:
    """What the two Search-R1 dataset repositories hold, in a local folder."""
    src = tmp_path / "hub"
    src.mkdir()
    index = faiss.IndexFlatIP(DIM)
    index.add(np.random.default_rng(0).standard_normal((ROWS, DIM)).astype("float32"))
    faiss.write_index(index, str(src / "whole.index"))
    data = (src / "whole.index").read_bytes()
    (src / "part_aa").write_bytes(data[:100])
    (src / "part_ab").write_bytes(data[100:])
    (src / wiki18.CORPUS_GZ).write_bytes(gzip.compress(_corpus_lines(ROWS)))
    return src


def _fake_fetch(src: Path, calls: list[tuple[str, str]]):
    def fetch(repo_id: str, filename: str, local_dir: Path) -> Path:
        calls.append((repo_id, filename))
        shutil.copy2(src / filename, local_dir / filename)
        return local_dir / filename

    return fetch


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGPO_CACHE", str(tmp_path / "igpo-cache"))


def test_download_join_decompress_check(
    hub_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save, calls = tmp_path / "save", []
    assert wiki18.main(["--save-path", str(save), "--download"], _fake_fetch(hub_files, calls)) == 0
    assert calls == [
        (wiki18.INDEX_REPO, "part_aa"),
        (wiki18.INDEX_REPO, "part_ab"),
        (wiki18.CORPUS_REPO, wiki18.CORPUS_GZ),
    ]
    assert (save / wiki18.INDEX_FILE).read_bytes() == (hub_files / "whole.index").read_bytes()
    assert (save / wiki18.CORPUS_FILE).read_bytes() == _corpus_lines(ROWS)
    out = capsys.readouterr().out
    assert f"{ROWS:,} x {DIM} vectors" in out and "they fit" in out
    assert "not the full wiki-18" in out and "--retriever faiss-prebuilt" in out
    # the index the recipe assembled loads in the backend's reader, memory-mapped
    assert wiki18.check(save / wiki18.INDEX_FILE, save / wiki18.CORPUS_FILE)["rows"] == ROWS
    assert (save / "part_aa").is_file()  # kept unless --delete-parts

    # a second run finds everything done and, asked to, deletes the parts and the .gz
    assert wiki18.main(["--save-path", str(save), "--delete-parts"]) == 0
    assert not (save / "part_aa").exists() and not (save / wiki18.CORPUS_GZ).exists()
    assert wiki18.main(["--save-path", str(save)]) == 0


def test_mismatches_and_missing_files_are_named(
    hub_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save = tmp_path / "save"
    assert wiki18.main(["--save-path", str(save)]) == 2
    assert "index parts not found" in capsys.readouterr().err
    save.mkdir()
    for name in ("part_aa", "part_ab"):
        shutil.copy2(hub_files / name, save / name)
    (save / wiki18.CORPUS_FILE).write_bytes(_corpus_lines(ROWS - 1))  # one row short
    assert wiki18.main(["--save-path", str(save)]) == 1
    assert f"holds {ROWS:,} vectors but" in capsys.readouterr().err
    (save / wiki18.CORPUS_FILE).write_bytes(_corpus_lines(ROWS))
    (save / wiki18.CORPUS_FILE).touch()  # new mtime: the offsets cache is keyed by it
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    config = {"model_type": "bert", "hidden_size": DIM * 2, "num_attention_heads": 2}
    (encoder / "config.json").write_text(json.dumps(config))
    assert wiki18.main(["--save-path", str(save), "--encoder-dir", str(encoder)]) == 1
    assert f"has hidden size {DIM * 2}" in capsys.readouterr().err
    config["hidden_size"] = DIM
    (encoder / "config.json").write_text(json.dumps(config))
    assert wiki18.main(["--save-path", str(save), "--encoder-dir", str(encoder)]) == 0


def test_join_parts_redoes_a_wrong_size_output(hub_files: Path, tmp_path: Path) -> None:
    parts = [hub_files / "part_aa", hub_files / "part_ab"]
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / wiki18.INDEX_FILE
    out.write_bytes(b"truncated")
    wiki18.join_parts(parts, out)
    assert out.read_bytes() == (hub_files / "whole.index").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == [wiki18.INDEX_FILE]  # no temp file left


def test_hub_errors_become_one_message_with_the_manual_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the hub raises (offline, HTTP, not found), --download says how to do it by hand."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    seen = {}

    def refuse(**kwargs: object) -> str:
        seen.update(kwargs)
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(RuntimeError, match="resolve/main/part_aa") as info:
        hub.fetch_dataset_file(wiki18.INDEX_REPO, "part_aa", tmp_path)
    assert "ConnectionError: no network" in str(info.value)
    assert seen == {
        "repo_id": wiki18.INDEX_REPO,
        "filename": "part_aa",
        "repo_type": "dataset",
        "local_dir": str(tmp_path),
    }
