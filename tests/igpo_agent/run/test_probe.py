"""The fixed probe: metrics by hand, the same draw at every call, and no effect on training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from igpo_agent.config import TrainConfig
from igpo_agent.rollout.engines import HFEngine
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Trajectory
from igpo_agent.run import logging_utils as K
from igpo_agent.run.envs import make_envs
from igpo_agent.run.probe import (
    paired_reward_change,
    probe_metrics,
    probe_records,
    run_probe,
)
from igpo_agent.train import train
from tests.fixtures import tiny_train_kwargs, write_corpus, write_qa
from tests.igpo_agent.test_golden import DOCS, QA


def _traj(qid: str, f1: float, em: float, ok: bool = True) -> Trajectory:
    t = Trajectory(question="q", answers=["a"], qid=qid, answered=ok, format_ok=ok)
    t.outcome_f1 = f1 if ok else 0.0
    t.answer_metrics = {"f1": f1, "em": em} if ok else {}
    return t


def test_probe_metrics_by_hand() -> None:
    # question 10: rewards 1.0, 0.5 (one exact match); question 11: -2 (malformed), 0.0
    trajs = [_traj("x", 1.0, 1.0), _traj("x", 0.5, 0.0), _traj("y", 0, 0, ok=False)]
    trajs.append(_traj("y", 0.0, 0.0))
    recs = probe_records(trajs, [10, 11], group_size=2, format_penalty=-2.0)
    assert [r["reward"] for r in recs] == [1.0, 0.5, -2.0, 0.0]
    assert [r["index"] for r in recs] == [10, 10, 11, 11]
    m = probe_metrics(recs, group_size=2)
    assert m[K.PROBE_REWARD] == pytest.approx((0.75 + -1.0) / 2)  # mean of question means
    assert m[K.PROBE_F1] == pytest.approx(1.5 / 4)
    assert m[K.PROBE_PASS_AT_1] == pytest.approx(1 / 4)
    assert m[K.PROBE_PASS_AT_G] == pytest.approx(1 / 2)
    assert m[K.PROBE_FORMAT_ERROR_RATE] == pytest.approx(1 / 4)
    assert m[K.PROBE_REWARD_CI_LOW] <= m[K.PROBE_REWARD] <= m[K.PROBE_REWARD_CI_HIGH]
    better = [{**r, "reward": r["reward"] + 0.5} for r in recs]
    diff = paired_reward_change(recs, better)
    assert diff.value == pytest.approx(0.5) and diff.low == pytest.approx(0.5)
    with pytest.raises(ValueError, match="3 probe rollouts"):
        probe_records(trajs[:3], [10, 11], group_size=2, format_penalty=-2.0)


def test_probe_draws_the_same_rollouts_every_time(tiny_policy, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", DOCS)
    qa = write_qa(tmp_path / "qa.jsonl", QA, dataset="fixture")
    envs = make_envs("igpo_env:SearchQA-v0", 4, 2, qa=qa, corpus=corpus, retriever="bm25", top_k=2)
    engine = HFEngine(tiny_policy)
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0)

    def probe(seed: int) -> list[tuple]:
        trajs = run_probe(
            engine, envs, [0, 1, 2], group_size=2, settings=settings, protocol="tags", seed=seed
        )
        return [(t.qid, tuple(t.token_ids)) for t in trajs]

    first = probe(0)
    assert [q for q, _ in first] == ["q1", "q1", "q2", "q2", "q3", "q3"]
    assert probe(0) == first  # same policy, same seeds: the same tokens
    assert probe(1) != first  # the seed is what fixes the draw
    for env in envs:
        env.close()


def _cfg(model: Path, tmp: Path, name: str, **over) -> TrainConfig:
    corpus = write_corpus(tmp / "corpus.jsonl", DOCS)
    qa = write_qa(tmp / "qa.jsonl", QA, dataset="fixture")
    return TrainConfig(**tiny_train_kwargs(model, corpus, qa, run_dir=str(tmp / name), **over))


def test_a_run_with_the_probe_trains_what_one_without_does(
    tiny_smol_model_path: Path, tmp_path: Path
) -> None:
    train(_cfg(tiny_smol_model_path, tmp_path, "off", probe_every=0))
    train(_cfg(tiny_smol_model_path, tmp_path, "on", probe_every=1, probe_questions=2))
    off = load_file(str(tmp_path / "off/final/adapter_model.safetensors"))
    on = load_file(str(tmp_path / "on/final/adapter_model.safetensors"))
    assert off.keys() == on.keys() and all((off[k] == on[k]).all() for k in off)
    rows = [json.loads(x) for x in (tmp_path / "on/metrics.jsonl").read_text().splitlines()]
    probed = [r["step"] for r in rows if K.PROBE_REWARD in r]
    assert probed == [0, 1, 2]
    assert all(
        r[K.PROBE_QUESTIONS] == 2 and r[K.PROBE_GROUP_SIZE] == 2
        for r in rows
        if r["step"] in probed
    )
    for step in probed:
        recs = (tmp_path / f"on/probe/step-{step}.jsonl").read_text().splitlines()
        assert len(recs) == 4  # 2 questions x G=2
    first = [json.loads(x) for x in (tmp_path / "on/probe/step-0.jsonl").read_text().splitlines()]
    assert {r["index"] for r in first} == {
        r["index"]
        for r in (
            json.loads(x) for x in (tmp_path / "on/probe/step-2.jsonl").read_text().splitlines()
        )
    }
    summary = json.loads((tmp_path / "on/summary.json").read_text())
    assert summary["probe"]["first"]["step"] == 0 and summary["probe"]["last"]["step"] == 2
    assert "reward_diff" in summary["probe"]
