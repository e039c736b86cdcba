"""python -m igpo_agent.evaluate: paper column order, hand-checked aggregates, CLI outputs."""

from __future__ import annotations

import json

import pytest

from igpo_agent.evaluate import (
    DatasetResult,
    column_name,
    main,
    ordered,
    results_table,
    summarize,
)
from igpo_agent.rollout.trajectory import Trajectory
from tests.fixtures import tiny_train_kwargs, write_corpus, write_qa


def _traj(f1: float, em: float, answered: bool = True, ok: bool = True) -> Trajectory:
    t = Trajectory(question="q", answers=["a"], answered=answered, format_ok=ok)
    t.answer_metrics = {"f1": f1, "em": em, "cover_em": em} if answered else {}
    t.turn_kinds = ["search", "answer"] if answered else ["search", "search"]
    return t


def _result(name: str, f1: float) -> DatasetResult:
    return DatasetResult(name, 10, f1, f1 / 2, f1, 2.0, 1.0, 0.1, 0.9)


def test_paper_names_and_order():
    assert column_name("TriviaQA") == "TQ" and column_name("2WikiMultihopQA") == "2Wiki"
    assert column_name("mine") == "mine"
    names = [r.name for r in ordered([_result(n, 0.5) for n in ("popqa", "x", "hotpotqa", "nq")])]
    assert names == ["nq", "hotpotqa", "popqa", "x"]


def test_summarize_by_hand():
    r = summarize([_traj(1.0, 1.0), _traj(0.5, 0.0), _traj(0.0, 0.0, answered=False)], "d")
    assert r.n == 3 and r.f1 == pytest.approx(0.5) and r.em == pytest.approx(1 / 3)
    assert r.format_error_rate == pytest.approx(1 / 3) and r.answered_rate == pytest.approx(2 / 3)
    assert r.searches == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="no episodes"):
        summarize([], "d")


def test_table_has_f1_first_and_the_average():
    md = results_table([_result("popqa", 0.2), _result("nq", 0.6)], markdown=True)
    lines = md.splitlines()
    assert lines[0] == "| metric | NQ | PopQA | Avg |"
    assert lines[2] == "| F1 | 60.0 | 20.0 | 40.0 |"


def test_cli_writes_tables_and_episodes(tiny_smol_model_path, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", [("d1", "Paris", "Paris is in France.")])
    popqa = write_qa(tmp_path / "p.jsonl", [("p1", "Capital of France?", ["Paris"])])
    nq = write_qa(
        tmp_path / "n.jsonl", [("n1", "Where is Paris?", ["France"]), ("n2", "Paris?", ["city"])]
    )
    out = tmp_path / "res"
    argv = ["--model", str(tiny_smol_model_path), "--corpus", str(corpus), "--out", str(out)]
    argv += ["--qa", f"popqa={popqa}", "--qa", f"nq={nq}", "--max-new-tokens", "6"]
    argv += ["--max-turns", "2", "--threads", "1", "--device", "cpu", "--dtype", "float32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "NQ" in printed and printed.index("NQ") < printed.index("PopQA")
    results = json.loads((out / "results.json").read_text())
    assert [r["column"] for r in results] == ["NQ", "PopQA"]
    assert [r["n"] for r in results] == [2, 1]
    assert (out / "results.md").read_text().startswith("| metric | NQ | PopQA | Avg |")
    episodes = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(e["qid"] for e in episodes) == ["n1", "n2", "p1"]


def test_evaluate_follows_the_run_and_reproduces_its_final_eval(
    tiny_smol_model_path, tmp_path, capsys
):
    from igpo_agent.config import TrainConfig
    from igpo_agent.run.summary import read_eval_records
    from igpo_agent.train import train

    corpus = write_corpus(
        tmp_path / "corpus.jsonl",
        [("d1", "Paris", "Paris is the capital of France."), ("d2", "Nile", "A river.")],
    )
    qa = write_qa(
        tmp_path / "qa.jsonl",
        [("q1", "Capital of France?", ["Paris"]), ("q2", "Which river?", ["Nile"])],
    )
    common = tiny_train_kwargs(
        tiny_smol_model_path,
        corpus,
        qa,
        top_k=1,
        doc_max_words=7,  # not the evaluator's defaults: they must come from the run
        max_new_tokens=9,
        questions_per_step=1,
        steps=1,
        probe_every=0,
    )
    del common["eval_questions"]
    train(TrainConfig(run_dir=str(tmp_path / "warm"), eval_questions=0, **common))
    run = tmp_path / "run"  # a warm start merged under a fresh adapter: final is stacked
    train(
        TrainConfig(
            run_dir=str(run), init_adapter=str(tmp_path / "warm/final"), eval_questions=2, **common
        )
    )
    capsys.readouterr()
    out = tmp_path / "res"
    assert main(["--adapter", str(run / "final"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "settings of the adapter's run" in printed
    assert "max_turns=2, max_new_tokens=9" in printed and "doc_max_words=7" in printed
    assert "the same answer on 2 of 2 shared questions" in printed
    own = {r["qid"]: r["answer"] for r in read_eval_records(run, "step-1")}
    episodes = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert {e["qid"]: e["prediction"] for e in episodes} == own
    # a flag still wins over the run's setting
    assert main(["--adapter", str(run / "final"), "--max_turns", "1"]) == 0
    assert "max_turns=1, max_new_tokens=9" in capsys.readouterr().out
