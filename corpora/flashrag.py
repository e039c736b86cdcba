"""FlashRAG (and Search-R1) QA sets converted into the QA files the environment reads.

The IGPO paper trains on NQ + HotpotQA and evaluates on seven sets (NQ, TriviaQA, PopQA,
HotpotQA, 2WikiMultihopQA, MuSiQue, Bamboogle), all as FlashRAG publishes them
(``RUC-NLPIR/FlashRAG_datasets``: ``<dataset>/<split>.jsonl``, rows ``{"id", "question",
"golden_answers", "metadata"}``). ``igpo_env.data.load_qa`` reads such a file as it is, but
a file used directly has three snags this converter removes:

- its rows carry no ``dataset`` field, and the file stem (``test``) would name them, so
  every output row gets ``"dataset": <name>`` and each file is named ``<name>-<split>``
  (``nq-test.jsonl.gz``);
- ids repeat across datasets (``test_0``), so they become ``<name>-<id>``;
- a row without a question or a non-empty answer stops ``load_qa``; such rows are dropped
  and counted. Answers are stripped, de-duplicated in order, and made strings.

``--split eval`` takes each set's ``test`` split where it has one, else ``dev`` (Search-R1's
evaluation rule); ``--merge NAME`` writes all sets into one file (Search-R1's NQ + HotpotQA
training set); ``--sample N --seed S`` keeps a seeded subset per set, in file order. A
Search-R1 parquet (``train.parquet``/``test.parquet`` of its ``qa_search_*_merge.py``) is
read too, one set per ``data_source``. Outputs are gzip JSONL with deterministic bytes, and
``MANIFEST.json`` in the output folder records each file's sources, hashes, counts and command.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python corpora/flashrag.py): import the checkout's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpora import hub  # noqa: E402
from corpora.build import clean_text, write_jsonl_gz  # noqa: E402
from corpora.sources import sha256_file  # noqa: E402
from igpo_env.data import iter_jsonl  # noqa: E402

FLASHRAG_REPO = "RUC-NLPIR/FlashRAG_datasets"
PAPER_TRAIN = ("nq", "hotpotqa")
PAPER_EVAL = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
SPLITS = ("train", "dev", "test", "eval")


def answers_of(value: object) -> list[str]:
    """Gold answers as unique stripped non-empty strings, in order (a bare value is one)."""
    items = value if isinstance(value, list | tuple) else [value]
    out: list[str] = []
    for item in items:
        text = "" if item is None else str(item).strip()
        if text and text not in out:
            out.append(text)
    return out


def convert_row(row: dict, dataset: str, split: str, index: int) -> dict | None:
    """One output row, or None when the source row has no question or no usable answer."""
    question = clean_text(row.get("question") or "")
    ground_truth = (row.get("reward_model") or {}).get("ground_truth") or {}
    target = ground_truth.get("target")  # Search-R1 parquet rows
    answers = answers_of(row["golden_answers"] if "golden_answers" in row else target)
    if not question or not answers:
        return None
    source_id = str(row.get("id", f"{split}_{index}"))
    return {
        "id": f"{dataset}-{source_id}",
        "question": question,
        "golden_answers": answers,
        "dataset": dataset,
        "metadata": {"source_id": source_id, "split": split},
    }


def flashrag_file(src: Path, dataset: str, split: str) -> tuple[Path, str]:
    """``(path, split)`` of a set's file in a FlashRAG folder; ``eval`` = test, else dev."""
    for name in ("test", "dev") if split == "eval" else (split,):
        path = src / dataset / f"{name}.jsonl"
        if path.is_file():
            return path, name
    raise FileNotFoundError(
        f"no {dataset}/{'test or dev' if split == 'eval' else split}.jsonl in {src} "
        "(use --download, or download the FlashRAG files there)"
    )


def download(src: Path, datasets: list[str], split: str, fetch: hub.Fetch) -> None:
    """Fetch each set's file from the FlashRAG repository into ``src`` (``eval``: test, else dev)."""
    for dataset in datasets:
        names = ("test", "dev") if split == "eval" else (split,)
        for i, name in enumerate(names):
            try:
                fetch(FLASHRAG_REPO, f"{dataset}/{name}.jsonl", src)
                break
            except RuntimeError:
                if i == len(names) - 1:
                    raise


def read_parquet(path: Path) -> dict[str, list[dict]]:
    """Rows of a Search-R1 parquet grouped by ``data_source`` (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("reading parquet needs pyarrow (pip install pyarrow)") from exc
    groups: dict[str, list[dict]] = {}
    for row in pq.read_table(path).to_pylist():
        groups.setdefault(str(row.get("data_source", path.stem)), []).append(row)
    return groups


def convert(
    sources: list[tuple[str, str, Path, list[dict]]],
    out: Path,
    split: str,
    merge: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    command: str = "",
) -> dict:
    """Convert ``(dataset, split, path, rows)`` sources into ``out``; update its manifest.

    One file per set, named by the split it came from (``nq-test.jsonl.gz``,
    ``hotpotqa-dev.jsonl.gz``), or one ``<merge>-<split>.jsonl.gz`` for all of them.
    Returns the manifest entries written.
    """
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {}
    for dataset, used, path, rows in sources:
        converted = [convert_row(r, dataset, used, i) for i, r in enumerate(rows)]
        kept = [r for r in converted if r is not None]
        dropped = len(converted) - len(kept)
        if sample is not None and sample < len(kept):
            keep = sorted(random.Random(seed).sample(range(len(kept)), sample))
            kept = [kept[i] for i in keep]
        name = f"{merge}-{split}.jsonl.gz" if merge else f"{dataset}-{used}.jsonl.gz"
        entry = files.setdefault(name, {"rows": [], "sources": []})
        entry["rows"].extend(kept)
        entry["sources"].append(
            {
                "dataset": dataset,
                "split": used,
                "file": path.name if path.suffix == ".parquet" else f"{dataset}/{path.name}",
                "sha256": sha256_file(path),
                "rows_read": len(rows),
                "dropped": dropped,
                "kept": len(kept),
            }
        )
    written = {}
    for name, entry in files.items():
        ids = [r["id"] for r in entry["rows"]]
        if len(ids) != len(set(ids)):
            raise ValueError(f"{name}: repeated ids after conversion (a source repeats an id)")
        write_jsonl_gz(out / name, entry["rows"])
        written[name] = {
            "rows": len(entry["rows"]),
            "sha256": sha256_file(out / name),
            "bytes": (out / name).stat().st_size,
            "sources": entry["sources"],
            "sample": None if sample is None else {"per_dataset": sample, "seed": seed},
            "command": command,
        }
    manifest_path = out / "MANIFEST.json"
    manifest = {"format": 1, "files": {}}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"].update(written)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    manifest_path.write_text(text, encoding="utf-8")
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The converter's command line."""
    p = argparse.ArgumentParser(
        prog="python -m corpora.flashrag",
        description="Convert FlashRAG QA sets (or a Search-R1 parquet) into the env's QA "
        "JSONL: dataset field, unique ids, clean answers, deterministic gzip, MANIFEST.json.",
    )
    p.add_argument(
        "--src",
        type=Path,
        required=True,
        help="a FlashRAG folder (<dataset>/<split>.jsonl) or a Search-R1 .parquet file",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--datasets",
        default=None,
        help="comma-separated sets; 'paper-train' / 'paper-eval' name the paper's "
        "(default: paper-eval for --split eval/test/dev, paper-train for train; "
        "every data_source of a parquet)",
    )
    p.add_argument("--split", choices=SPLITS, default="eval", help="eval: test, else dev")
    p.add_argument("--merge", default=None, help="write all sets into one file NAME-SPLIT")
    p.add_argument("--sample", type=int, default=None, help="keep N seeded rows per set")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument(
        "--download", action="store_true", help=f"fetch the files from {FLASHRAG_REPO} first"
    )
    return p.parse_args(argv)


def _dataset_names(arg: str | None) -> list[str] | None:
    """The ``--datasets`` list with the paper's shorthands expanded (None: not given)."""
    if arg is None:
        return None
    names: list[str] = []
    for item in (s.strip() for s in arg.split(",") if s.strip()):
        expanded = {"paper-train": PAPER_TRAIN, "paper-eval": PAPER_EVAL}.get(item, (item,))
        names.extend(n for n in expanded if n not in names)
    return names


def main(argv: list[str] | None = None, fetch: hub.Fetch = hub.fetch_dataset_file) -> int:
    """Convert; returns the process exit status."""
    args = parse_args(argv)
    if args.sample is not None and args.sample < 1:
        print("error: --sample must be at least 1", file=sys.stderr)
        return 2
    command = "python -m corpora.flashrag " + " ".join(argv if argv is not None else sys.argv[1:])
    datasets = _dataset_names(args.datasets)
    label = args.split
    try:
        sources = []
        if args.src.suffix == ".parquet":
            groups = read_parquet(args.src)
            if label == "eval":  # a parquet is one split already: name it by the file
                label = args.src.stem
            for name in datasets or sorted(groups):
                if name not in groups:
                    raise FileNotFoundError(f"no data_source {name!r} in {args.src}")
                sources.append((name, label, args.src, groups[name]))
        else:
            if datasets is None:
                datasets = list(PAPER_TRAIN if args.split == "train" else PAPER_EVAL)
            if args.download:
                download(args.src, datasets, args.split, fetch)
            for name in datasets:
                path, used = flashrag_file(args.src, name, args.split)
                sources.append((name, used, path, list(iter_jsonl(path))))
        written = convert(sources, args.out, label, args.merge, args.sample, args.seed, command)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, entry in written.items():
        dropped = sum(s["dropped"] for s in entry["sources"])
        print(f"{args.out / name}: {entry['rows']:,} questions ({dropped} source rows dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
