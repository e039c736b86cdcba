"""make_belief_scorer: one scorer per ig_method, the one train's loop calls."""

from __future__ import annotations

import pytest

from igpo_agent.ig.live import recorded_beliefs
from igpo_agent.ig.scorer import make_belief_scorer
from igpo_agent.rollout.engines import HFEngine, VLLMRollouts


def test_live_reads_what_the_rollout_recorded():
    assert make_belief_scorer("live", policy=None) is recorded_beliefs


@pytest.mark.parametrize("method", ["packed", "naive"])
def test_reencoding_scorers_call_the_reencoded_path_with_their_method(method, monkeypatch):
    import igpo_agent.ig.scorer as scorer_mod

    calls = []

    def fake(policy, trajs, prefix, suffix, *, method):
        calls.append((policy, list(trajs), prefix, suffix, method))
        return [[0.5]]

    monkeypatch.setattr(scorer_mod, "reencoded_trajectory_beliefs", fake)
    score = make_belief_scorer(method, policy="P")
    assert score(["t"], "<a>", "</a>") == [[0.5]]
    assert calls == [("P", ["t"], "<a>", "</a>", method)]


def test_vllm_scores_through_the_engine_and_needs_it(monkeypatch):
    import igpo_agent.ig.scorer as scorer_mod

    calls = []

    def fake(llm, trajs, prefix, suffix):
        calls.append((llm, list(trajs), prefix, suffix))
        return [[0.25]]

    monkeypatch.setattr(scorer_mod, "vllm_trajectory_beliefs", fake)
    engine = object.__new__(VLLMRollouts)  # no vLLM started: the scorer only reads .engine
    engine.engine = "the VLLMEngine"
    score = make_belief_scorer("vllm", policy=None, engine=engine)
    assert score(["t"], "<a>", "</a>") == [[0.25]]
    assert calls == [("the VLLMEngine", ["t"], "<a>", "</a>")]
    with pytest.raises(ValueError, match="engine=vllm"):
        make_belief_scorer("vllm", policy=None, engine=HFEngine(policy=None))
    with pytest.raises(ValueError, match="unknown ig_method"):
        make_belief_scorer("exact", policy=None)
