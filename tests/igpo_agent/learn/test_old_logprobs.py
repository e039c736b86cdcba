"""pi_old from the sampler's records (igpo_agent.learn.old_logprobs) and its use in the update."""

from __future__ import annotations

import math

import gymnasium as gym
import pytest
import torch

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.learn.learner import LossSettings, _logprobs, pad_batch, policy_update
from igpo_agent.learn.old_logprobs import (
    SamplerDrift,
    batch_records,
    has_recorded_logprobs,
    recorded_logprobs,
)
from igpo_agent.rollout.trajectory import Span, Trajectory
from tests.fixtures import (
    PARIS_NILE_DOCS,
    PARIS_NILE_QA,
    paris_nile_rollouts,
    write_corpus,
    write_qa,
)

DOCS, QA = PARIS_NILE_DOCS, PARIS_NILE_QA


def _traj(spans: list[tuple[str, int]], logprobs: list[float], qid: str = "") -> Trajectory:
    """A trajectory of ``(kind, n_tokens)`` spans (turn numbers in order) and its records."""
    t = Trajectory(question="q", answers=["a"], qid=qid, sample_logprobs=list(logprobs))
    pos, turn = 0, -1
    for kind, n in spans:
        turn += kind == "action"
        t.spans.append(Span(kind, pos, pos + n, turn))  # type: ignore[arg-type]
        pos += n
    t.token_ids = list(range(10, 10 + pos))
    return t


def test_records_take_the_learners_layout():
    # prompt 3 | action 2 | observation 2 | action 1, then a shorter rollout padded on the right
    a = _traj(
        [("prompt", 3), ("action", 2), ("observation", 2), ("action", 1)],
        [0.0, 0.0, 0.0, -0.5, -1.5, 0.0, 0.0, -2.0],
    )
    b = _traj([("prompt", 2), ("action", 2)], [0.0, 0.0, -0.25, -0.75])
    got = recorded_logprobs([a, b])
    want = [[0, 0, 0, -0.5, -1.5, 0, 0, -2.0], [0, 0, -0.25, -0.75, 0, 0, 0, 0]]
    assert got.dtype == torch.float32 and got.tolist() == want
    # the same columns pad_batch gives the action mask (position 0 never holds a value)
    act = pad_batch([a, b], pad_id=0)["action_mask"]
    assert ((got != 0) == act).all()
    assert recorded_logprobs([a, b], width=10).shape == (2, 10)
    # observation / prompt records, whatever they hold, stay out
    c = _traj([("prompt", 2), ("action", 1), ("observation", 1)], [9.0, 9.0, -1.0, 9.0])
    assert recorded_logprobs([c]).tolist() == [[0.0, 0.0, -1.0, 0.0]]


def test_misaligned_records_raise_a_clear_error():
    short = _traj([("prompt", 2), ("action", 2)], [0.0, 0.0, -1.0], qid="q7")
    with pytest.raises(
        ValueError, match=r"trajectory 0 \(qid 'q7'\) records 3 sampler log-probs for 4 tokens"
    ):
        recorded_logprobs([short])
    bad = _traj([("prompt", 1), ("action", 2)], [0.0, float("-inf"), -1.0])
    with pytest.raises(ValueError, match="non-finite sampler log-probs at action tokens"):
        recorded_logprobs([bad])
    empty = _traj([("prompt", 1), ("action", 2)], [])  # e.g. a hand-built trajectory
    ok = _traj([("prompt", 1), ("action", 2)], [0.0, -1.0, -1.0])
    assert has_recorded_logprobs([ok]) and not has_recorded_logprobs([ok, empty])
    assert batch_records([ok, empty], 3, required=False) is None  # diagnostics: skipped
    with pytest.raises(ValueError, match="records 0 sampler log-probs"):
        batch_records([ok, empty], 3, required=True)  # sampler pi_old / TIS: refused
    with pytest.raises(ValueError, match="width"):
        recorded_logprobs([ok], width=2)


def test_drift_weights_and_metrics_by_hand():
    recorded = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.0, 0.0]])
    drift = SamplerDrift(recorded, cap=2.0)
    prox = torch.tensor([[0.0, -0.5, -3.0]])
    mask = torch.tensor([[0, 1, 1]])
    w = drift.weights(prox, [0], mask)
    assert w is not None
    assert w.tolist() == [pytest.approx([1.0, math.exp(0.5), math.exp(-1.0)])]
    drift.weights(torch.tensor([[0.0, 1.0]]), [1], torch.tensor([[0, 1]]))  # exp(2) -> cap 2
    m = drift.metrics()
    assert m["tis_weight_mean"] == pytest.approx((math.exp(0.5) + math.exp(-1.0) + 2.0) / 3)
    assert m["tis_weight_max"] == 2.0
    assert m["sampler_logp_diff"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    none = SamplerDrift(None, cap=2.0)
    assert none.weights(prox, [0], mask) is None and none.metrics() == {}


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    d = tmp_path_factory.mktemp("old_logprobs_data")
    kw = {"qa": write_qa(d / "q.jsonl", QA), "corpus": write_corpus(d / "c.jsonl", DOCS)}
    out = [gym.make("igpo_env:SearchQA-v0", max_episode_steps=3, top_k=1, **kw) for _ in range(4)]
    yield out
    for e in out:
        e.close()


_rollouts = paris_nile_rollouts


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recorded_equal_recomputed_in_fp32_and_drift_under_bf16(tiny_policy, envs, temperature):
    """The HF sampler's records are the learner's pi_old in fp32 without autocast (measured
    here: max gap ~1e-6 nats); under bf16 autocast the learner's own forward moves by ~1e-2,
    which is why ``old_logprobs: auto`` recomputes there."""
    trajs = _rollouts(tiny_policy, envs, seed=5, temperature=temperature)
    batch = pad_batch(trajs, tiny_policy.tokenizer.pad_token_id)
    rec = recorded_logprobs(trajs)
    act = batch["action_mask"].clone()
    act[:, 0] = False
    assert int(act.sum()) > 8
    fp32 = _logprobs(tiny_policy, batch, 2, temperature)
    gap32 = float((fp32 - rec)[act].abs().max())
    bf16 = _logprobs(tiny_policy, batch, 2, temperature, torch.bfloat16)
    gap16 = float((bf16 - rec)[act].abs().max())
    print(
        f"T={temperature}: max |recomputed - recorded| fp32 {gap32:.2e}, bf16 autocast {gap16:.2e}"
    )
    assert gap32 < 1e-5
    assert gap16 < 0.1  # bf16's drift: tolerable for TIS, not an exact pi_old


def _returns(trajs: list[Trajectory]) -> torch.Tensor:
    """Turn returns of alternating sign per rollout (a signal on every row)."""
    t_max = max(t.num_turns for t in trajs)
    return torch.tensor([[1.0 if i % 2 else -1.0] * t_max for i in range(len(trajs))])


def _counting(fn, calls: list[int]):
    """``fn`` that appends to ``calls`` on every call."""

    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_sampler_pi_old_skips_the_forward_and_steps_like_recompute(tiny_policy, envs, monkeypatch):
    import igpo_agent.learn.learner as learner

    trajs = _rollouts(tiny_policy, envs, seed=6)
    returns = _returns(trajs)
    start = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters()}
    start_b = tiny_policy.trainable_parameters()[1].detach().clone()
    kw = dict(micro_batch_size=1, ppo_mini_batch_size=2, kl_coef=0.0)
    adapters, metrics = {}, {}
    real = learner._logprobs
    for mode in ("recompute", "sampler"):
        with torch.no_grad():
            for n, p in tiny_policy.model.named_parameters():
                p.copy_(start[n])
        calls: list[int] = []
        monkeypatch.setattr(learner, "_logprobs", _counting(real, calls))
        # SGD: Adam's first step divides by |g| + 1e-8, which turns a 1e-7 relative
        # difference in a near-zero gradient into ~1e-3 of lr on that one weight
        opt = torch.optim.SGD(tiny_policy.trainable_parameters(), lr=2.0)
        m, _ = policy_update(
            tiny_policy, opt, trajs, returns, LossSettings(old_logprobs=mode, **kw)
        )
        assert m["optimizer_steps"] == 2
        assert len(calls) == (1 if mode == "recompute" else 0)  # no pi_old forward from records
        adapters[mode] = [p.detach().clone() for p in tiny_policy.trainable_parameters()]
        metrics[mode] = m
    for a, b in zip(adapters["recompute"], adapters["sampler"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.equal(adapters["recompute"][1], start_b)  # the steps moved the adapter
    assert metrics["sampler"]["ratio_max"] > 1 + 1e-4 or metrics["sampler"]["ratio_min"] < 1 - 1e-4
    assert metrics["recompute"]["sampler_logp_diff"] < 1e-5  # recomputed vs recorded
    assert "sampler_logp_diff" not in metrics["sampler"]  # nothing was recomputed to compare
    assert abs(metrics["recompute"]["tis_weight_mean"] - 1) < 1e-5


def test_tis_weights_the_loss_and_reports_them(tiny_policy, envs):
    trajs = _rollouts(tiny_policy, envs, seed=7)
    for t in trajs:  # pretend a sampler that found the sampled tokens less likely by 0.3 nats
        t.sample_logprobs = [
            x - 0.3 * a for x, a in zip(t.sample_logprobs, t.action_mask(), strict=True)
        ]
    returns = _returns(trajs)
    opt = torch.optim.SGD(tiny_policy.trainable_parameters(), lr=0.0)  # the policy stays put
    off, _ = policy_update(tiny_policy, opt, trajs, returns, LossSettings(kl_coef=0.0))
    on, _ = policy_update(tiny_policy, opt, trajs, returns, LossSettings(kl_coef=0.0, tis=True))
    # one step: pi_old is the detached current policy; the weights exp(0.3) apply with tis only
    assert off["tis_weight_mean"] == pytest.approx(math.exp(0.3), abs=1e-3)
    assert on["tis_weight_max"] == pytest.approx(math.exp(0.3), abs=1e-3)
    assert on["sampler_logp_diff"] == pytest.approx(0.3, abs=1e-3)
    # the PG loss scales by the weight (ratio 1 on the one step: pg = -A, times exp(0.3))
    assert on["pg_loss"] == pytest.approx(off["pg_loss"] * math.exp(0.3), rel=1e-2, abs=1e-4)
    capped, _ = policy_update(
        tiny_policy, opt, trajs, returns, LossSettings(kl_coef=0.0, tis=True, tis_cap=1.1)
    )
    assert capped["tis_weight_max"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="recompute with tis"):
        LossSettings(tis=True, old_logprobs="sampler")
    trajs[0].sample_logprobs = trajs[0].sample_logprobs[:-1]
    with pytest.raises(ValueError, match="trajectory 0 .*sampler log-probs for"):
        policy_update(tiny_policy, opt, trajs, returns, LossSettings(tis=True))
