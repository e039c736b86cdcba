"""The trainer-neutral batch export: written, read back and padded with nothing lost.

- a hand-built batch pads into the verl layout exactly as written out by hand;
- real rollouts of a tiny model, scored by the learner, round-trip through the JSONL file
  bit for bit: the ids, masks, sampler log-probs and the per-token advantages the learner's
  own ``policy_update`` path builds (``pad_batch`` + ``token_advantages``);
- broken files and records are refused with the line and the field named.
(The CLI flag ``--export_batches_every`` is exercised in test_train.py's smoke test.)
"""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
import torch

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.algo.advantages import token_advantages
from igpo_agent.learn.learner import belief_matrix, compute_advantages, pad_batch
from igpo_agent.model.prompts import policy_prompt_fn
from igpo_agent.rollout.episodes import rollout_batch
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Span, Trajectory
from igpo_agent.run.export import SCHEMA, batch_records, check_record, read_batch, to_tensors
from igpo_agent.run.logging_utils import RolloutDumper
from tests.fixtures import write_corpus, write_qa

KW = dict(group_size=2, ig_mode="log_prob_diff", norm="separate", gamma=1.0)


def _traj(prompt: list[int], turns: list[tuple[list[int], list[int]]], kinds, f1=0.0):
    """A trajectory from prompt ids and (action ids, observation ids) per turn."""
    t = Trajectory(question="q", answers=["a"], turn_kinds=list(kinds), outcome_f1=f1)
    t.token_ids, t.sample_logprobs = list(prompt), [0.0] * len(prompt)
    t.spans = [Span("prompt", 0, len(prompt), -1)]
    for k, (act, obs) in enumerate(turns):
        s = len(t.token_ids)
        t.token_ids += act
        t.sample_logprobs += [-0.5 - k] * len(act)
        t.spans.append(Span("action", s, s + len(act), k))
        if obs:
            t.token_ids += obs
            t.sample_logprobs += [0.0] * len(obs)
            t.spans.append(Span("observation", s + len(act), len(t.token_ids), k))
    t.answered = kinds[-1] == "answer"
    return t


def test_hand_built_batch_pads_into_the_verl_layout():
    a = _traj([1, 2, 3], [([10, 11], [50]), ([12], [])], ["search", "answer"], f1=1.0)
    b = _traj([4, 5], [([20], [])], ["answer"], f1=0.0)
    values = torch.tensor([[-2.0, -1.0], [-2.0, 0.0]])
    adv, outcome = compute_advantages([a, b], values, algo="igpo", format_penalty=-2.0, **KW)
    recs = batch_records([a, b], adv, values, outcome, step=7, algo="igpo", temperature=0.7)
    assert [r["schema"] for r in recs] == [SCHEMA, SCHEMA] and recs[0]["step"] == 7
    assert recs[0]["spans"] == [["prompt", 0, 3, -1], ["action", 3, 5, 0], ["observation", 5, 6, 0],
                                ["action", 6, 7, 1]]  # fmt: skip
    r0, r1 = adv.returns[0].tolist(), adv.returns[1].tolist()
    assert recs[0]["advantages"] == [0, 0, 0, r0[0], r0[0], 0, r0[1]]
    assert recs[1]["advantages"] == [0, 0, r1[0]]
    assert recs[0]["turns"]["ig"] == [1.0, 0.0] and recs[0]["turns"]["kinds"] == [
        "search",
        "answer",
    ]
    assert recs[0]["outcome_reward"] == 1.0 and recs[1]["outcome_reward"] == 0.0

    x = to_tensors(recs, pad_id=0)
    assert x["prompts"].tolist() == [[1, 2, 3], [0, 4, 5]]
    assert x["responses"].tolist() == [[10, 11, 50, 12], [20, 0, 0, 0]]
    assert x["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0]]
    assert x["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 0, 1, 2, 2, 2, 2]]
    assert x["response_mask"].tolist() == [[1, 1, 0, 1], [1, 0, 0, 0]]
    assert x["advantages"].tolist() == [[r0[0], r0[0], 0, r0[1]], [r1[0], 0, 0, 0]]
    assert x["old_log_probs"].tolist() == [[-0.5, -0.5, 0, -1.5], [-0.5, 0, 0, 0]]
    assert torch.equal(x["input_ids"], torch.cat([x["prompts"], x["responses"]], 1))


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_data")
    docs = [("d1", "Paris", "Paris is the capital of France."), ("d2", "Nile", "A river.")]
    qa = [("q1", "What is the capital of France?", ["Paris"]), ("q2", "Which river?", ["Nile"])]
    kw = {"qa": write_qa(d / "q.jsonl", qa), "corpus": write_corpus(d / "c.jsonl", docs)}
    out = [gym.make("igpo_env:SearchQA-v0", max_episode_steps=3, top_k=1, **kw) for _ in range(4)]
    yield out
    for e in out:
        e.close()


def test_real_batch_round_trips_through_the_file_bit_for_bit(tiny_policy, envs, tmp_path):
    trajs = rollout_batch(
        tiny_policy.model,
        tiny_policy.tokenizer,
        policy_prompt_fn(tiny_policy, "tags"),
        envs,
        [{"index": 0}, {"index": 1}],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=8, temperature=1.0),
        generator=torch.Generator().manual_seed(5),
        seed=5,
    )
    values = belief_matrix(tiny_policy, trajs, "<answer>", "</answer>")
    adv, outcome = compute_advantages(
        trajs, values, algo="igpo", format_penalty=-2.0, ig_turns="all", **KW
    )
    recs = batch_records(trajs, adv, values, outcome, step=3, algo="igpo", temperature=1.0)
    path = RolloutDumper(tmp_path, subdir="batches").dump(3, recs)
    assert path == tmp_path / "batches" / "step-3.jsonl"
    back = read_batch(path)
    assert back == json.loads(json.dumps(recs))  # nothing lost or altered in the file

    pad = tiny_policy.tokenizer.pad_token_id
    learner = pad_batch(trajs, pad)  # what policy_update trains on
    learner_adv = token_advantages(adv.returns, learner["token_turns"])
    x = to_tensors(back, pad)
    for i, t in enumerate(trajs):
        p, n = t.prompt_len, len(t.token_ids)
        assert x["prompts"][i, x["prompts"].shape[1] - p :].tolist() == t.token_ids[:p]
        assert x["responses"][i, : n - p].tolist() == t.token_ids[p:]
        assert x["response_mask"][i, : n - p].tolist() == t.action_mask()[p:]
        assert not x["response_mask"][i, n - p :].any()
        torch.testing.assert_close(x["advantages"][i, : n - p], learner_adv[i, p:n], rtol=0, atol=0)
        assert x["old_log_probs"][i, : n - p].tolist() == pytest.approx(
            t.sample_logprobs[p:], abs=1e-7
        )
        got = torch.tensor(back[i]["turns"]["returns"])
        torch.testing.assert_close(got, adv.returns[i, : t.num_turns], rtol=0, atol=0)
    assert bool(x["advantages"].abs().sum() > 0)


def test_bad_files_and_records_are_refused_by_name(tmp_path):
    t = _traj([1, 2], [([3, 4], [])], ["answer"], f1=1.0)
    values = torch.zeros(2, 1)
    adv, outcome = compute_advantages([t, t], values, algo="grpo", format_penalty=-2.0, **KW)
    good = batch_records([t, t], adv, values, outcome, step=1, algo="grpo", temperature=1.0)[0]

    def broken(**change):
        return {**good, **change}

    with pytest.raises(ValueError, match="schema"):
        check_record(broken(schema="igpo-batch/0"))
    with pytest.raises(ValueError, match="advantages"):
        check_record(broken(advantages=[0.0]))
    with pytest.raises(ValueError, match="outside the action mask"):
        check_record(broken(advantages=[1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="prompt_len"):
        check_record(broken(prompt_len=3))
    with pytest.raises(ValueError, match="missing"):
        check_record({k: v for k, v in good.items() if k != "spans"})
    with pytest.raises(ValueError, match="per-turn"):
        check_record(broken(turns={**good["turns"], "ig": [0.0, 1.0]}))
    with pytest.raises(ValueError, match="one batch"):
        batch_records([t], adv, values, outcome, step=1, algo="grpo", temperature=1.0)
    path = tmp_path / "step-1.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"step-1\.jsonl:2: not JSON"):
        read_batch(path)
    with pytest.raises(ValueError, match="no records"):
        to_tensors([], pad_id=0)
