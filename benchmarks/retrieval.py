"""Retrieval speed: bm25s (+numba) vs rank-bm25 on a synthetic 100,000-document corpus.

    python benchmarks/retrieval.py                 # 100k docs, bm25s + rank-bm25 + FAISS
    python benchmarks/retrieval.py --docs 20000 --no-dense

The corpus is seeded and synthetic: words drawn from a Zipf(1.1) vocabulary, document
lengths ~ Poisson(--doc-len); queries are 2-4 words taken from random documents (skipping
the 100 most frequent words, which stand in for stopwords), so every query has matches. Reported per backend: index build (and save/load) time, memory (RSS
growth while building, and the index's size on disk), single-query and batch throughput,
and the speed ratio to rank-bm25's ``BM25Okapi`` measured in the same run (rank-bm25 is
timed over ``--rank-queries`` queries only; it is that slow).

Dense: encoding 100k documents with MiniLM on 2 CPU cores takes far too long for a
benchmark, so the FAISS rows search *random unit 384-d vectors* (the shape of MiniLM
embeddings; query vectors given, encoding excluded), and the encoder's throughput is
measured separately on ``--encode-sample`` real-length synthetic documents. HNSW is built
with M=32, efConstruction=40 and searched with efSearch=64.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from igpo_env.data import Document  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def synthetic_corpus(n_docs: int, vocab: int, doc_len: int, seed: int) -> list[Document]:
    """Seeded documents over a Zipf(1.1) vocabulary of made-up words (``w<rank>``)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks**1.1
    p /= p.sum()
    words = np.array([f"w{i}" for i in range(vocab)])
    lengths = np.maximum(5, rng.poisson(doc_len, n_docs))
    flat = words[rng.choice(vocab, size=int(lengths.sum()), p=p)]
    docs, pos = [], 0
    for i, n in enumerate(lengths):
        toks = flat[pos : pos + n]
        pos += n
        docs.append(Document(id=f"doc{i}", title=" ".join(toks[:3]), text=" ".join(toks[3:])))
    return docs


def make_queries(docs: list[Document], n: int, seed: int, skip_top: int = 100) -> list[str]:
    """2-4 words from random documents, never one of the ``skip_top`` most frequent words.

    Those play the part of stopwords: in real text the tokeniser drops them, and they are
    the only terms in more than half of the documents, where BM25 idf variants disagree.
    """
    rng = np.random.default_rng(seed + 1)
    out = []
    while len(out) < n:
        words = [
            w for w in docs[int(rng.integers(len(docs)))].text.split() if int(w[1:]) >= skip_top
        ]
        if len(words) < 2:
            continue
        m = int(rng.integers(2, 5))
        out.append(" ".join(rng.choice(words, size=min(m, len(words)), replace=False)))
    return out


def qps(fn: Callable[[list[str]], object], queries: list[str], batch: int) -> float:
    """Queries per second answering ``queries`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for i in range(0, len(queries), batch):
        fn(queries[i : i + batch])
    return len(queries) / (time.perf_counter() - t0)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--doc-len", type=int, default=60, help="mean words per document")
    ap.add_argument("--queries", type=int, default=2000, help="queries for the fast backends")
    ap.add_argument("--rank-queries", type=int, default=20, help="queries for rank-bm25")
    ap.add_argument("--batch", type=int, default=64, help="batch size of the batch rows")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-dense", action="store_true", help="skip the FAISS/encoder rows")
    ap.add_argument("--encode-sample", type=int, default=256)
    args = ap.parse_args()

    from igpo_env.retrievers.bm25 import BM25sRetriever, RankBM25Retriever

    k = args.k
    print(f"corpus: {args.docs:,} synthetic docs, Zipf vocab {args.vocab:,}, ~{args.doc_len} words")
    docs, t_gen = timed(lambda: synthetic_corpus(args.docs, args.vocab, args.doc_len, args.seed))
    queries = make_queries(docs, args.queries, args.seed)
    rank_q = queries[: args.rank_queries]
    print(f"(generated in {t_gen:.1f}s; {len(queries)} queries, k={k}, cpus={os.cpu_count()})\n")
    rows: list[tuple[str, str, str, float, float, str]] = []

    # --- rank-bm25 (reference) ---------------------------------------------------------
    m0 = rss_mb()
    rank, t_rank_build = timed(lambda: RankBM25Retriever(docs, None))
    m_rank = rss_mb() - m0
    rank_single = qps(lambda q: rank.search(q, k), rank_q, 1)
    rank_hits = rank.search(rank_q, 1)
    rank_top1 = [h[0].doc_id if h else None for h in rank_hits]
    rank_top1_score = [h[0].score if h else 0.0 for h in rank_hits]
    rows.append(
        (
            "rank-bm25 BM25Okapi",
            f"{t_rank_build:.1f}s",
            f"+{m_rank:.0f} MiB RSS",
            rank_single,
            rank_single,
            "",
        )
    )

    # --- bm25s: build + save, then load memory-mapped (a fresh object) ----------------------
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bm25s"
        m0 = rss_mb()
        _, t_build = timed(lambda: BM25sRetriever(docs, folder))
        m_build = rss_mb() - m0
        fast, t_load = timed(lambda: BM25sRetriever(docs, folder))  # load + JIT warm-up
        _, t_first = timed(lambda: fast.search([queries[0]], k))
        single = qps(lambda q: fast.search(q, k), queries, 1)
        batch = qps(lambda q: fast.search(q, k), queries, args.batch)
        agree = np.mean(
            [
                (h[0].doc_id if h else None) == r
                for h, r in zip(fast.search(rank_q, 1), rank_top1, strict=True)
            ]
        )
        rows.append(
            (
                "bm25s lucene (numba)" if fast.backend == "numba" else "bm25s lucene (numpy)",
                f"{t_build:.1f}s (+load {t_load:.2f}s)",
                f"+{m_build:.0f} MiB RSS, {dir_mb(folder):.0f} MiB disk",
                single,
                batch,
                f"top-1 doc = rank-bm25's on {agree:.0%}",
            )
        )
        okapi = BM25sRetriever(docs, None, method="atire", idf_method="robertson", k1=1.5, b=0.75)
        same_score = np.mean(
            [
                bool(h) and abs(h[0].score - r) <= 1e-4 * max(1.0, abs(r))
                for h, r in zip(okapi.search(rank_q, 1), rank_top1_score, strict=True)
            ]
        )
        single_o = qps(lambda q: okapi.search(q, k), queries, 1)
        batch_o = qps(lambda q: okapi.search(q, k), queries, args.batch)
        rows.append(
            (
                "bm25s atire+robertson idf",
                "(in memory)",
                "",
                single_o,
                batch_o,
                f"top-1 score = rank-bm25's on {same_score:.0%}",
            )
        )
    print(f"bm25s first query after load: {t_first * 1000:.2f} ms (JIT paid at load)\n")

    # --- dense: FAISS over random unit vectors + encoder throughput ------------------------
    if not args.no_dense:
        from igpo_env.retrievers.dense import build_faiss_index, faiss_search

        rng = np.random.default_rng(args.seed)
        base = rng.standard_normal((args.docs, 384)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        qv = rng.standard_normal((min(args.queries, 1000), 384)).astype(np.float32)
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)

        def vec_qps(index, batch: int) -> float:
            t0 = time.perf_counter()
            for i in range(0, len(qv), batch):
                faiss_search(index, qv[i : i + batch], k)
            return len(qv) / (time.perf_counter() - t0)

        for kind in ("flat", "hnsw"):
            m0 = rss_mb()
            index, t_idx = timed(
                lambda kind=kind: build_faiss_index(base, kind, ef_construction=40)
            )
            if kind == "hnsw":
                index.hnsw.efSearch = 64
            rows.append(
                (
                    f"FAISS {kind} (random 384-d)",
                    f"{t_idx:.1f}s",
                    f"+{rss_mb() - m0:.0f} MiB RSS",
                    vec_qps(index, 1),
                    vec_qps(index, args.batch),
                    "search only, no encoding",
                )
            )
            del index
        from igpo_env.retrievers.dense import default_model_dir, shared_encoder

        enc = shared_encoder(str(default_model_dir()), 256, 1)
        sample = [f"{d.title}\n{d.text}" for d in docs[: args.encode_sample]]
        enc.encode(sample[:8])
        _, t_enc = timed(lambda: enc.encode(sample, batch_size=32))
        q_single = qps(lambda q: enc.encode(q), queries[:50], 1)
        print(
            f"MiniLM encoder (1 torch thread): {len(sample) / t_enc:.0f} docs/s on "
            f"~{args.doc_len}-word docs ({args.docs:,} docs would take ~{args.docs / (len(sample) / t_enc) / 60:.0f} "
            f"min); single query encode {q_single:.0f} q/s\n"
        )

    header = (
        "backend",
        "index",
        "memory",
        "single q/s",
        f"batch{args.batch} q/s",
        "x rank-bm25",
        "note",
    )
    table = [header] + [
        (
            name,
            idx,
            mem,
            f"{s:,.0f}" if s >= 10 else f"{s:.1f}",
            f"{b:,.0f}" if b >= 10 else f"{b:.1f}",
            f"{s / rank_single:,.0f}x",
            note,
        )
        for name, idx, mem, s, b, note in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print("\n'x rank-bm25' = single-query throughput / rank-bm25's single-query throughput.")


if __name__ == "__main__":
    main()
