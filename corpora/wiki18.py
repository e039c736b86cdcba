"""The Search-R1 wiki-18 + e5 recipe: fetch, assemble and check the paper's retrieval data.

The IGPO paper (like Search-R1) retrieves from ``wiki-18`` (21,015,324 passages) through an
exact e5-base-v2 FAISS index. Search-R1 publishes both as Hugging Face datasets: the index
in two parts (``PeterJinGo/wiki-18-e5-index``: ``part_aa``, ``part_ab``, 65 GB together)
and the corpus (``PeterJinGo/wiki-18-corpus``: ``wiki-18.jsonl.gz``). ``python -m
corpora.wiki18 --save-path DIR`` does what its instructions do by hand, each step skipped
when its output is already there:

1. ``--download``: fetch the three files into ``DIR`` (``huggingface_hub``);
2. join the parts, in name order, into ``DIR/e5_Flat.index`` (streamed, written atomically);
3. decompress the corpus into ``DIR/wiki-18.jsonl`` (the ``faiss-prebuilt`` backend reads
   rows at an offset, which a ``.gz`` file does not allow);
4. check what the backend will check, before any training job: the index (memory-mapped)
   holds one vector per corpus row, the first and last rows parse, and with
   ``--encoder-dir`` the vectors have the encoder's hidden size. Counting the rows caches
   their offsets under ``$IGPO_CACHE/corpus-offsets/``, which the backend then reuses.

The encoder is a plain model folder (``hf download intfloat/e5-base-v2 --local-dir
/models/e5-base-v2``; ``huggingface-cli download`` before huggingface_hub 1.0). How to use
the result: ``docs/RETRIEVAL.md``.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

if __package__ in (None, ""):  # run as a script (python corpora/wiki18.py): import the checkout's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpora import hub  # noqa: E402

INDEX_REPO = "PeterJinGo/wiki-18-e5-index"
INDEX_PARTS = ("part_aa", "part_ab")
CORPUS_REPO = "PeterJinGo/wiki-18-corpus"
CORPUS_GZ = "wiki-18.jsonl.gz"
INDEX_FILE = "e5_Flat.index"
CORPUS_FILE = "wiki-18.jsonl"
WIKI18_ROWS = 21_015_324
E5_DIM = 768
CHUNK = 16 << 20


def download(save_path: Path, fetch: hub.Fetch = hub.fetch_dataset_file) -> list[Path]:
    """Fetch the index parts and the compressed corpus into ``save_path``; return their paths."""
    save_path.mkdir(parents=True, exist_ok=True)
    got = [fetch(INDEX_REPO, part, save_path) for part in INDEX_PARTS]
    got.append(fetch(CORPUS_REPO, CORPUS_GZ, save_path))
    return got


def _write_atomically(out: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Run ``write(fh)`` into a temporary file next to ``out``, then rename it to ``out``, so
    an interrupted run never leaves a partial file under the final name."""
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def join_parts(parts: list[Path], out: Path) -> Path:
    """Concatenate ``parts`` (in the given order) into ``out``, unless ``out`` already holds
    exactly their total size (then it is taken as joined)."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"index parts not found: {', '.join(missing)} (use --download)")
    total = sum(p.stat().st_size for p in parts)
    if out.is_file() and out.stat().st_size == total:
        return out

    def write(fh: BinaryIO) -> None:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, CHUNK)

    print(f"joining {len(parts)} parts into {out} ({total / 1e9:.1f} GB) ...", flush=True)
    return _write_atomically(out, write)


def decompress(gz: Path, out: Path) -> Path:
    """Gunzip ``gz`` into ``out`` (streamed), unless ``out`` already exists."""
    if out.is_file():
        return out
    if not gz.is_file():
        raise FileNotFoundError(f"corpus not found: {gz} (use --download)")

    def write(fh: BinaryIO) -> None:
        with gzip.open(gz, "rb") as src:
            shutil.copyfileobj(src, fh, CHUNK)

    print(f"decompressing {gz} into {out} ...", flush=True)
    return _write_atomically(out, write)


def check(index_path: Path, corpus_path: Path, encoder_dir: Path | None = None) -> dict:
    """The faiss-prebuilt backend's construction checks, without loading an encoder.

    Returns ``{"vectors", "dim", "rows", "first_id", "last_id"}``; raises ``ValueError`` when
    the index and the corpus (or the encoder) do not fit together.
    """
    from igpo_env.retrievers.prebuilt import encoder_hidden_size, read_faiss_index
    from igpo_env.retrievers.rows import JsonlRows

    index, _ = read_faiss_index(index_path, mmap=True)
    vectors, dim = int(index.ntotal), int(index.d)
    rows = JsonlRows(corpus_path)
    try:
        n = len(rows)
        if n != vectors:
            raise ValueError(
                f"{index_path} holds {vectors:,} vectors but {corpus_path} has {n:,} rows: "
                "FAISS id i must be corpus row i"
            )
        first, last = rows[0], rows[n - 1]
    finally:
        rows.close()
    if encoder_dir is not None:
        hidden = encoder_hidden_size(encoder_dir)
        if hidden != dim:
            raise ValueError(
                f"{index_path} holds {dim}-dimensional vectors but {encoder_dir} has hidden "
                f"size {hidden}: it is not the encoder that built this index"
            )
    return {"vectors": vectors, "dim": dim, "rows": n, "first_id": first.id, "last_id": last.id}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The recipe's command line."""
    p = argparse.ArgumentParser(
        prog="python -m corpora.wiki18",
        description="Search-R1's wiki-18 corpus + prebuilt e5 FAISS index: fetch (--download), "
        "join the index parts, decompress the corpus, check that they fit together.",
    )
    p.add_argument("--save-path", type=Path, required=True, help="folder for the files")
    p.add_argument(
        "--download",
        action="store_true",
        help=f"fetch {', '.join(INDEX_PARTS)} ({INDEX_REPO}) and {CORPUS_GZ} ({CORPUS_REPO})",
    )
    p.add_argument(
        "--encoder-dir",
        type=Path,
        default=None,
        help="local intfloat/e5-base-v2 folder: also check its hidden size against the index",
    )
    p.add_argument(
        "--delete-parts",
        action="store_true",
        help="after a successful check, delete part_* (65 GB) and the .gz",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None, fetch: hub.Fetch = hub.fetch_dataset_file) -> int:
    """Run the recipe; returns the process exit status (1: the files do not fit together)."""
    args = parse_args(argv)
    root: Path = args.save_path.expanduser()
    index, corpus = root / INDEX_FILE, root / CORPUS_FILE
    parts = [root / p for p in INDEX_PARTS]
    try:
        if args.download:
            download(root, fetch)
        if not index.is_file() or any(p.is_file() for p in parts):
            join_parts(parts, index)
        decompress(root / CORPUS_GZ, corpus)
        found = check(index, corpus, args.encoder_dir)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"MISMATCH: {exc}", file=sys.stderr)
        return 1
    if args.delete_parts:
        for leftover in (*parts, root / CORPUS_GZ):
            if leftover.is_file():
                leftover.unlink()
    full = found["rows"] == WIKI18_ROWS and found["dim"] == E5_DIM
    print(
        f"{index}: {found['vectors']:,} x {found['dim']} vectors, {corpus}: {found['rows']:,} "
        f"rows (ids {found['first_id']} .. {found['last_id']}): they fit"
        + ("" if full else f" (not the full wiki-18: {WIKI18_ROWS:,} x {E5_DIM})")
    )
    encoder = args.encoder_dir or "/models/e5-base-v2"
    print(
        f"serve it: python -m igpo_env.serve --retriever faiss-prebuilt --index-path {index} "
        f"--corpus {corpus} --encoder-dir {encoder} --port 8000"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
