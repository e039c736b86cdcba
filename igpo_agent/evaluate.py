"""Greedy evaluation episodes and the results table: ``python -m igpo_agent.evaluate``.

Runs one greedy episode per question on one or more QA sets and reports EM, F1 and cover-EM
(the env's scores of the final answer), turns per episode and the format-error rate, per
dataset. Datasets with the paper's names appear in the paper's column order (NQ, TQ,
HotpotQA, 2Wiki, MuSiQue, Bamboogle, PopQA) followed by any others and the average.

Examples::

    python -m igpo_agent.evaluate --qa default:dev --questions 64
    python -m igpo_agent.evaluate --adapter runs/cpu_demo/final --qa nq=data/nq_test.jsonl \\
        --qa hotpotqa=data/hotpotqa_dev.jsonl --corpus data/wiki18.jsonl --out results/
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import igpo_agent  # noqa: F401  (threading policy before torch loads)
from igpo_agent.cli import parse_options
from igpo_agent.options import (
    EnvOptions,
    EvalSeedOptions,
    GenerationOptions,
    ModelOptions,
    SearchHealthOptions,
    opt,
)
from igpo_agent.rollout.engines import Engine, HFEngine, make_engine
from igpo_agent.rollout.episodes import RolloutStats
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Trajectory
from igpo_agent.run import logging_utils as K
from igpo_agent.run import search_health as SH
from igpo_agent.run.envs import env_kwargs_from, make_envs, question_strata
from igpo_agent.run.handover import (
    adapter_in,
    run_final_records,
    run_settings,
    same_answers,
    settings_line,
)
from igpo_agent.run.subsets import describe, stratified_indices
from igpo_agent.run.summary import episode_record, retrieval_line

# The paper's column order (ALGORITHM "Reference results"), with the names users give files.
PAPER_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("NQ", ("nq", "naturalquestions", "natural_questions")),
    ("TQ", ("tq", "triviaqa", "trivia_qa")),
    ("HotpotQA", ("hotpotqa", "hotpot_qa", "hotpot")),
    ("2Wiki", ("2wiki", "2wikimultihopqa", "2wikimqa")),
    ("MuSiQue", ("musique",)),
    ("Bamboogle", ("bamboogle",)),
    ("PopQA", ("popqa",)),
)
METRIC_NAMES = ("f1", "em", "cover_em")


def column_name(dataset: str) -> str:
    """The paper's column name for a dataset name (case-insensitive), else the name itself."""
    key = dataset.lower().replace("-", "").replace(" ", "")
    for col, aliases in PAPER_COLUMNS:
        if key in aliases:
            return col
    return dataset


@dataclass
class DatasetResult:
    """Aggregates of one dataset's episodes (scores in [0, 1])."""

    name: str
    n: int
    f1: float
    em: float
    cover_em: float
    turns: float
    searches: float
    format_error_rate: float
    answered_rate: float


def summarize(trajs: Sequence[Trajectory], dataset: str) -> DatasetResult:
    """Mean scores of finished episodes; an episode without an answer scores 0."""
    n = len(trajs)
    if n == 0:
        raise ValueError(f"no episodes to summarise for {dataset!r}")

    def mean(xs: list[float]) -> float:
        return sum(xs) / n

    return DatasetResult(
        name=dataset,
        n=n,
        f1=mean([t.answer_metrics.get("f1", 0.0) for t in trajs]),
        em=mean([t.answer_metrics.get("em", 0.0) for t in trajs]),
        cover_em=mean([t.answer_metrics.get("cover_em", 0.0) for t in trajs]),
        turns=mean([float(t.num_turns) for t in trajs]),
        searches=mean([float(sum(k == "search" for k in t.turn_kinds)) for t in trajs]),
        format_error_rate=mean([float(not (t.format_ok and t.answered)) for t in trajs]),
        answered_rate=mean([float(t.answered) for t in trajs]),
    )


def ordered(results: Sequence[DatasetResult]) -> list[DatasetResult]:
    """Paper datasets first in the paper's order, then the others as given."""
    order = {col: i for i, (col, _) in enumerate(PAPER_COLUMNS)}
    return sorted(results, key=lambda r: order.get(column_name(r.name), len(order)))


def results_table(results: Sequence[DatasetResult], *, markdown: bool = False) -> str:
    """The paper-style table: one column per dataset (paper order) plus Avg; F1 first."""
    rows = ordered(results)
    cols = [column_name(r.name) for r in rows] + ["Avg"]
    lines = []
    body: list[list[str]] = []
    for metric in METRIC_NAMES:
        vals = [100 * getattr(r, metric) for r in rows]
        avg = sum(vals) / len(vals) if vals else float("nan")
        body.append([metric.upper().replace("_", "-")] + [f"{v:.1f}" for v in vals + [avg]])
    details = [
        ("n", [str(r.n) for r in rows] + [str(sum(r.n for r in rows))]),
        ("turns", [f"{r.turns:.2f}" for r in rows] + [""]),
        ("searches", [f"{r.searches:.2f}" for r in rows] + [""]),
        ("format-err %", [f"{100 * r.format_error_rate:.1f}" for r in rows] + [""]),
    ]
    body += [[name] + vals for name, vals in details]
    header = ["metric"] + cols
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        for r in [header] + body:
            lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def evaluate_policy(
    policy: Any,
    envs: Sequence[Any],
    indices: Sequence[int],
    *,
    settings: GenerationSettings,
    protocol: str,
    stats: RolloutStats | None = None,
    engine: Engine | None = None,
    progress: str | None = None,
) -> list[Trajectory]:
    """One greedy (or as ``settings`` say) episode per question index, in env-sized chunks,
    generated by ``engine`` (:mod:`igpo_agent.rollout.engines`; default: the policy's HF model).

    ``progress`` names a progress bar (questions done, rate, ETA) on stderr; None: no bar.
    """
    from tqdm.auto import tqdm

    engine = engine or HFEngine(policy)
    out: list[Trajectory] = []
    bar = tqdm(
        total=len(indices), desc=progress, unit="q", disable=progress is None, dynamic_ncols=True
    )
    with bar:
        for start in range(0, len(indices), len(envs)):
            chunk = indices[start : start + len(envs)]
            out += engine.rollout(
                envs[: len(chunk)],
                [{"index": int(i)} for i in chunk],
                protocol=protocol,
                group_size=1,
                settings=settings,
                seed=0,
                stats=stats,
            )
            bar.update(len(chunk))
    return out


@dataclass(frozen=True)
class EvalSubset:
    """The questions an evaluation plays: env indices (sorted) and a line naming them."""

    indices: list[int]
    description: str


def eval_subset(env: Any, questions: int, seed: int, source: str = "eval") -> EvalSubset:
    """A fixed seeded sample of ``questions`` of the env's QA set, stratified by article (or
    dataset where there is none): :func:`igpo_agent.run.subsets.stratified_indices`. Every
    question when ``questions`` is 0 or more than there are. The same arguments give the
    same subset, so evaluations before and after training (and other runs with the same
    ``seed``) see the same questions."""
    strata = question_strata(env)
    idx = stratified_indices(strata, questions, seed)
    return EvalSubset(idx, describe(strata, idx, source=source, seed=seed))


def greedy_eval(
    policy: Any,
    envs: Sequence[Any],
    questions: int,
    *,
    protocol: str,
    seed: int = 0,
    source: str = "eval",
    engine: Engine | None = None,
    progress: str | None = None,
    **settings: Any,
) -> tuple[list[Trajectory], DatasetResult, EvalSubset]:
    """The fixed eval subset (:func:`eval_subset` of ``questions`` and ``seed``) played
    greedily, its summary and the subset: the shared core of train's and sft's
    ``run_eval``. ``settings`` are :class:`GenerationSettings` fields besides the
    temperature (0)."""
    subset = eval_subset(envs[0], questions, seed, source)
    trajs = evaluate_policy(
        policy,
        envs,
        subset.indices,
        settings=GenerationSettings(temperature=0.0, **settings),
        protocol=protocol,
        engine=engine,
        progress=progress,
    )
    return trajs, summarize(trajs, trajs[0].dataset or "eval"), subset


def eval_metrics(res: DatasetResult) -> dict[str, float]:
    """The logged eval metrics every front door reports for a summary."""
    return {
        K.EVAL_F1: res.f1,
        K.EVAL_EM: res.em,
        K.EVAL_COVER_EM: res.cover_em,
        K.EVAL_FORMAT_ERROR_RATE: res.format_error_rate,
    }


@dataclass
class EvalConfig(SearchHealthOptions, GenerationOptions, EnvOptions, EvalSeedOptions, ModelOptions):
    """The evaluator's options: the shared model, env and generation groups
    (:mod:`igpo_agent.options`, the trainer's too) plus which adapter and QA sets."""

    kind: ClassVar[str] = "evaluation config"
    adapter: str | None = opt(
        None, "model", "A saved LoRA adapter (e.g. RUN/final); none: the base model."
    )
    qa: list[str] = opt(
        ["default:dev"],
        "eval",
        "QA set, repeatable: default:SPLIT, a FlashRAG JSONL path, or NAME=PATH.",
    )
    questions: int = opt(
        64,
        "eval",
        "Questions per QA set: a fixed sample stratified by article (eval_seed); 0 = all.",
    )
    eval_batch_size: int = opt(
        16,
        "eval",
        "Evaluation episodes generated together (32 vs 16: only 3 percent faster on 2 CPU cores).",
    )
    out: str | None = opt(None, "run", "Folder for results.json/.md and episodes.jsonl.")

    def _check(self, e: list[str]) -> None:
        if self.questions < 0:
            e.append(f"questions={self.questions}: use 0 (all) or more")
        if self.eval_batch_size < 1:
            e.append(f"eval_batch_size={self.eval_batch_size}: use a value >= 1")
        if not self.qa:
            e.append("qa is empty: give at least one QA set, e.g. default:dev")


def parse_config(argv: list[str] | None = None) -> EvalConfig:
    """``--config FILE.yaml``, then flags, over the ``--adapter``'s run settings."""
    return _parse_with_run(argv)[0]


def _parse_with_run(
    argv: list[str] | None,
) -> tuple[EvalConfig, dict[str, Any], Path | None]:
    """:func:`parse_config`, plus the run settings it started from and their file."""
    base, run_config = run_settings(adapter_in(argv))
    args = parse_options(
        EvalConfig,
        argv,
        prog="python -m igpo_agent.evaluate",
        description="Greedy search-agent evaluation: EM / F1 / cover-EM per dataset.",
        base=base,
    )
    return args, base, run_config


@SH.exit_on_outage  # a search backend outage: a clear message and exit status 3
def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the table and optionally writes JSON/Markdown/JSONL."""
    args, base, run_config = _parse_with_run(argv)
    if run_config is not None:
        print(
            f"settings of the adapter's run ({run_config}) unless overridden: "
            + ", ".join(f"{k}={v}" for k, v in base.items())
        )
    print(f"evaluating with {settings_line(args)}")
    from igpo_agent.model.policy import Policy, configure_torch_threads

    configure_torch_threads(args.threads)
    policy = Policy.load(
        args.model, device=args.device, dtype=args.dtype, init_adapter=args.adapter
    )
    gen = {k: getattr(args, k) for k in ("max_new_tokens", "max_context", "answer_eos")}
    settings = GenerationSettings(temperature=0.0, **gen)
    engine = make_engine(args.engine, policy, dtype=args.vllm_dtype, threads=args.vllm_threads)
    results: list[DatasetResult] = []
    episodes: list[dict[str, Any]] = []
    all_records: list[dict[str, Any]] = []
    failures: dict[str, SH.SearchFailures] = {}  # per dataset, shown next to its scores
    t0 = time.perf_counter()
    for spec in args.qa:
        name, sep, path = spec.partition("=")
        if not sep or spec.startswith("default"):
            name, path = ("" if spec.startswith("default") else Path(spec).name.split(".")[0]), spec
        kw = env_kwargs_from(args, path)
        envs = make_envs(args.env_id, args.eval_batch_size, args.max_turns, **kw)
        SH.preflight(envs[0], args.retriever, before="evaluation")
        subset = eval_subset(envs[0], args.questions, args.eval_seed, spec)
        print(subset.description)
        trajs = evaluate_policy(
            policy,
            envs,
            subset.indices,
            settings=settings,
            protocol=args.protocol,
            engine=engine,
            progress=name or spec,
        )
        dataset = name or (trajs[0].dataset if trajs else spec)
        failures[dataset] = SH.check_eval(
            trajs, args.max_search_failure_rate, dataset, args.retriever
        )
        results.append(summarize(trajs, dataset))
        records = [episode_record(t) for t in trajs]
        all_records += records
        print(f"{dataset}: {retrieval_line(records)}")
        episodes += [
            {
                "dataset": dataset,
                "qid": t.qid,
                "question": t.question,
                "answers": t.answers,
                "prediction": t.answer_text,
                **t.answer_metrics,
                "turns": t.num_turns,
                "format_ok": t.format_ok,
                "gold_retrieved": t.gold_retrieved,
                "stratum": t.article or t.dataset,
                "search_failures": t.search_failures,
            }
            for t in trajs
        ]
        for env in envs:
            env.close()
    table = results_table(results)
    print(table)
    notes = SH.failure_notes(failures, args.max_search_failure_rate)  # "" when none failed
    print(notes, end="")
    print(f"({sum(r.n for r in results)} episodes in {time.perf_counter() - t0:.1f} s)")
    own = run_final_records(run_config, args.adapter) if run_config and args.adapter else None
    if own:
        same, shared = same_answers(own, all_records)
        print(
            f"the run's own final evaluation ({run_config.parent}/eval): the same answer on "
            f"{same} of {shared} shared questions"
        )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(
            json.dumps(
                [
                    r.__dict__ | {"column": column_name(r.name)} | failures[r.name].result_fields()
                    for r in ordered(results)
                ],
                indent=2,
            )
            + "\n"
        )
        (out / "results.md").write_text(results_table(results, markdown=True) + "\n" + notes)
        with open(out / "episodes.jsonl", "w", encoding="utf-8") as fh:
            for e in episodes:
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")
        print(f"wrote {out}/results.json, results.md, episodes.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
