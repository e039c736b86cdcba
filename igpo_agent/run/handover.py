"""What a saved adapter's run hands to its evaluation: ``evaluate --adapter RUN/final``.

A run writes its whole config to ``RUN/config.yaml``. Evaluating its adapter with the
evaluator's own defaults (4 turns, 96 tokens a turn, the first QA set's default sample)
would measure a different agent from the one the run trained and evaluated; so the
evaluator reads :data:`HANDED_OVER` from that file, under its ``--config`` file and flags,
and can say whether it reproduced the run's own final evaluation (:func:`same_answers`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from igpo_agent.run.summary import read_eval_records

RUN_CONFIG = "config.yaml"
HANDED_OVER = (
    "model",
    "dtype",
    "env_id",
    "corpus",
    "retriever",
    "top_k",
    "doc_max_words",
    "max_turns",
    "protocol",
    "format_penalty",
    "on_invalid",
    "max_new_tokens",
    "max_context",
    "answer_eos",
    "engine",
    "vllm_dtype",
    "eval_seed",
    "eval_batch_size",
)
"""The settings an adapter's run hands to its evaluation: model and precision, the env, how
turns are generated (at temperature 0), and which questions (with ``eval_qa`` -> ``qa``,
``eval_questions`` -> ``questions``) in batches of the same size."""


def adapter_in(argv: list[str] | None) -> str | None:
    """The ``--adapter`` a command line names, directly or in its ``--config`` YAML file."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--adapter")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.adapter is None and known.config and Path(known.config).is_file():
        return (yaml.safe_load(Path(known.config).read_text()) or {}).get("adapter")
    return known.adapter


def find_run_config(adapter: str | Path) -> Path | None:
    """The ``config.yaml`` of the run that saved ``adapter`` (``RUN/final`` -> ``RUN``; an
    adapter folder holding its own ``config.yaml`` counts too), or None."""
    folder = Path(adapter)
    for d in (folder, folder.parent):
        if (d / RUN_CONFIG).is_file():
            return d / RUN_CONFIG
    return None


def run_settings(adapter: str | Path | None) -> tuple[dict[str, Any], Path | None]:
    """Evaluator option values from the adapter's run config (:data:`HANDED_OVER`) and its path;
    ({}, None) when there is no run config."""
    path = find_run_config(adapter) if adapter else None
    if path is None:
        return {}, None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a mapping of field: value")
    out = {k: data[k] for k in HANDED_OVER if k in data}
    if data.get("eval_qa"):
        out["qa"] = [str(data["eval_qa"])]
    if data.get("eval_questions"):
        out["questions"] = int(data["eval_questions"])
    return out, path


def same_answers(run_records: Sequence[dict], records: Sequence[dict]) -> tuple[int, int]:
    """(same answers, shared questions) of two evaluations' records, matched by qid."""
    by_qid = {r["qid"]: r for r in run_records}
    shared = [r for r in records if r["qid"] in by_qid]
    same = sum(
        by_qid[r["qid"]]["answer"] == r["answer"]
        and by_qid[r["qid"]]["format_ok"] == r["format_ok"]
        for r in shared
    )
    return same, len(shared)


def run_final_records(run_config: Path, adapter: str) -> list[dict[str, Any]] | None:
    """The run's own final evaluation records when ``adapter`` is that run's ``final``."""
    if Path(adapter).resolve() != (run_config.parent / "final").resolve():
        return None
    steps = (yaml.safe_load(run_config.read_text()) or {}).get("steps")
    if not isinstance(steps, int):
        return None
    return read_eval_records(run_config.parent, f"step-{steps}")


def settings_line(args: Any) -> str:
    """The episode and generation settings an evaluation runs with, in one line."""
    names = ("max_turns", "max_new_tokens", "max_context", "top_k", "doc_max_words")
    names += ("protocol", "retriever", "corpus", "engine", "dtype", "eval_seed")
    return ", ".join(f"{k}={getattr(args, k)}" for k in names) + ", temperature=0 (greedy)"
