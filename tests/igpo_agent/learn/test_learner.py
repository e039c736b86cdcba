"""The learner glue on a tiny model: real rollouts -> beliefs -> advantages -> update."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.learn.learner import (
    LossSettings,
    belief_matrix,
    compute_advantages,
    pad_batch,
    policy_update,
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


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    d = tmp_path_factory.mktemp("learner_data")
    kw = {"qa": write_qa(d / "q.jsonl", QA), "corpus": write_corpus(d / "c.jsonl", DOCS)}
    kw["top_k"] = 1
    out = [gym.make("igpo_env:SearchQA-v0", max_episode_steps=3, **kw) for _ in range(4)]
    yield out
    for e in out:
        e.close()


_rollouts = paris_nile_rollouts


def test_two_updates_change_every_lora_parameter_and_no_base_one(tiny_policy, envs):
    before = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters()}
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=1e-2)
    for step in range(2):  # LoRA's B starts at 0, so A gets its first gradient on step 2
        trajs, returns = _scored(tiny_policy, envs, seed=step)
        assert bool(returns.abs().sum() > 0), "IG should give non-zero advantages"
        metrics, timings = policy_update(
            tiny_policy, opt, trajs, returns, LossSettings(micro_batch_size=3)
        )
        assert metrics["num_tokens"] > 0 and timings["update_s"] > 0
        assert abs(metrics["clipfrac"]) < 1e-9  # one epoch: ratio is exactly 1
    for n, p in tiny_policy.model.named_parameters():
        if "lora_" in n:
            assert not torch.equal(p, before[n]), f"LoRA parameter {n} did not change"
        else:
            assert torch.equal(p, before[n]), f"base parameter {n} changed"


def test_pad_batch_masks_only_agent_tokens(tiny_policy, envs):
    trajs = _rollouts(tiny_policy, envs, seed=3)
    b = pad_batch(trajs, tiny_policy.tokenizer.pad_token_id)
    for i, t in enumerate(trajs):
        n = len(t.token_ids)
        assert b["attention_mask"][i, :n].all() and not b["attention_mask"][i, n:].any()
        assert b["action_mask"][i, :n].tolist() == [bool(x) for x in t.action_mask()]
        assert b["token_turns"][i, :n].tolist() == t.token_turns()


def test_grpo_ignores_beliefs(tiny_policy, envs):
    trajs = _rollouts(tiny_policy, envs, seed=4)
    values = belief_matrix(tiny_policy, trajs, "<answer>", "</answer>")
    kw = dict(
        group_size=2, ig_mode="log_prob_diff", norm="separate", gamma=1.0, format_penalty=-2.0
    )
    a, _ = compute_advantages(trajs, values, algo="grpo", **kw)
    b, _ = compute_advantages(trajs, torch.randn_like(values), algo="grpo", **kw)
    torch.testing.assert_close(a.returns, b.returns)


def test_compute_advantages_gives_ig_to_search_turns_only():
    def traj(kinds):
        t = Trajectory(
            question="q", answers=["a"], turn_kinds=kinds, format_ok="invalid" not in kinds
        )
        t.spans = [Span("action", i, i + 1, i) for i in range(len(kinds))]
        return t

    trajs = [traj(["invalid", "search", "answer"]), traj(["search", "search", "answer"])]
    values = torch.tensor([[-3.0, -2.0, -1.0], [-3.0, -2.5, -2.0]])
    kw = dict(group_size=2, algo="igpo", ig_mode="log_prob_diff", norm="separate", gamma=1.0)
    adv, _ = compute_advantages(trajs, values, format_penalty=-2.0, **kw)
    assert adv.is_ig.tolist() == [[False, True, False], [True, True, False]]
    every, _ = compute_advantages(trajs, values, format_penalty=-2.0, ig_turns="all", **kw)
    assert every.is_ig.tolist() == [[True, True, False], [True, True, False]]
    with pytest.raises(ValueError, match="ig_turns"):
        compute_advantages(trajs, values, format_penalty=-2.0, ig_turns="some", **kw)


def _scored(policy, envs, seed, temperature=1.0):
    """Rollouts and their IGPO turn returns (IG on every turn: the random model rarely searches)."""
    trajs = _rollouts(policy, envs, seed, temperature)
    values = belief_matrix(policy, trajs, "<answer>", "</answer>")
    assert values.shape[0] == 4 and torch.isfinite(values).all()
    adv, _ = compute_advantages(
        trajs,
        values,
        group_size=2,
        algo="igpo",
        ig_mode="log_prob_diff",
        norm="separate",
        gamma=1.0,
        format_penalty=-2.0,
        ig_turns="all",
    )
    return trajs, adv.returns


def _recording_loss(monkeypatch):
    """Wrap learner.policy_loss to record each micro-batch's metrics."""
    import igpo_agent.learn.learner as learner

    calls = []
    real = learner.policy_loss

    def wrapped(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        calls.append(m)
        return loss, m

    monkeypatch.setattr(learner, "policy_loss", wrapped)
    return calls


def test_mini_batches_step_several_times_and_the_clip_acts(tiny_policy, envs, monkeypatch):
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    assert bool(returns.abs().sum() > 0)
    calls = _recording_loss(monkeypatch)
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=5e-2)
    settings = LossSettings(micro_batch_size=1, ppo_mini_batch_size=2, ppo_epochs=2, kl_coef=0.0)
    assert settings.optimizer_steps(len(trajs)) == 4
    m, _ = policy_update(tiny_policy, opt, trajs, returns, settings)
    assert m["optimizer_steps"] == 4 and m["skipped_steps"] == 0
    # mini-batch 1 (micro-batches 0 and 1): the sampling policy itself, ratio 1
    for c in calls[:2]:
        assert abs(c["ratio_min"] - 1) < 1e-4 and abs(c["ratio_max"] - 1) < 1e-4
    # later mini-batches see the policy after one or more steps: ratio != 1, the clip acts
    later = calls[2:]
    assert max(abs(c["ratio_max"] - 1) for c in later) > 0.05
    assert max(c["clipfrac"] for c in later) > 0
    assert m["ratio_max"] > 1.05 or m["ratio_min"] < 0.95
    assert m["clipfrac"] > 0


def test_one_step_keeps_ratio_one(tiny_policy, envs, monkeypatch):
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    calls = _recording_loss(monkeypatch)
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=5e-2)
    m, _ = policy_update(tiny_policy, opt, trajs, returns, LossSettings(micro_batch_size=2))
    assert m["optimizer_steps"] == 1 and len(calls) == 2
    assert m["ratio_min"] == 1.0 == m["ratio_max"] and m["clipfrac"] == 0.0


def test_learner_logprobs_use_the_sampling_temperature(tiny_policy, envs):
    from igpo_agent.learn.learner import _logprobs

    trajs, _ = _scored(tiny_policy, envs, seed=2, temperature=0.7)
    batch = pad_batch(trajs, tiny_policy.tokenizer.pad_token_id)
    hot = _logprobs(tiny_policy, batch, 2, 0.7)
    raw = _logprobs(tiny_policy, batch, 2, 1.0)
    for i, t in enumerate(trajs):
        mask = torch.tensor(t.action_mask(), dtype=torch.bool)
        sampled = torch.tensor(t.sample_logprobs)[mask]
        torch.testing.assert_close(hot[i, : len(mask)][mask], sampled, atol=1e-4, rtol=0)
    act = batch["action_mask"].clone()
    act[:, 0] = False
    assert float((hot[act] - raw[act]).abs().max()) > 1e-2  # T matters here


def test_non_finite_gradient_skips_the_step(tiny_policy, envs):
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    before = {n: p.detach().clone() for n, p in tiny_policy.model.named_parameters()}
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=1e-2)
    bad = returns.clone()
    bad[0, 0] = float("nan")  # poisons the loss of the first mini-batch only
    settings = LossSettings(micro_batch_size=2, ppo_mini_batch_size=2, kl_coef=0.0)
    m, _ = policy_update(tiny_policy, opt, trajs, bad, settings)
    assert m["skipped_steps"] == 1 and m["optimizer_steps"] == 1
    for n, p in tiny_policy.model.named_parameters():
        assert torch.isfinite(p).all(), f"{n} holds a non-finite value"
    all_bad = torch.full_like(returns, float("nan"))
    with torch.no_grad():
        for n, p in tiny_policy.model.named_parameters():
            p.copy_(before[n])
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=1e-2)
    m, _ = policy_update(tiny_policy, opt, trajs, all_bad, LossSettings(micro_batch_size=2))
    assert m["skipped_steps"] == 1 and m["optimizer_steps"] == 0
    for n, p in tiny_policy.model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed although the step was skipped"


def test_bf16_autocast_loss_and_gradients_agree_with_fp32(tiny_policy, envs):
    """The update's bf16 autocast (``--autocast``) stays within stated tolerances of fp32:
    log-probs 0.05 nats per token at most, loss 2% and the gradient 5% (relative L2)."""
    from igpo_agent.algo.loss import policy_loss
    from igpo_agent.learn.learner import _autocast

    trajs, returns = _scored(tiny_policy, envs, seed=1)
    batch = pad_batch(trajs, tiny_policy.tokenizer.pad_token_id)
    from igpo_agent.algo.advantages import token_advantages

    adv = token_advantages(returns, batch["token_turns"])
    params = tiny_policy.trainable_parameters()
    with torch.no_grad():  # move LoRA's B off 0 so every adapter weight gets a gradient
        for n, p in tiny_policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.05)
    out = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for p in params:
            p.grad = None
        with _autocast(tiny_policy, dtype):
            lp, ent = tiny_policy.action_logprobs(
                batch["input_ids"],
                batch["attention_mask"],
                batch["action_mask"],
                with_entropy=True,
                temperature=0.7,
            )
        assert lp.dtype == torch.float32  # log-softmax in fp32 under autocast too
        loss, _ = policy_loss(lp, lp.detach(), adv, batch["action_mask"], entropy=ent, kl_coef=0.0)
        loss.backward()
        out[name] = (
            lp.detach(),
            float(loss.detach()),
            torch.cat([p.grad.flatten() for p in params]),
        )
    (lp32, l32, g32), (lp16, l16, g16) = out["fp32"], out["bf16"]
    act = batch["action_mask"].clone()
    act[:, 0] = False
    assert float((lp32[act] - lp16[act]).abs().max()) < 0.05
    assert abs(l32 - l16) <= 0.02 * abs(l32) + 1e-3
    assert float((g32 - g16).norm() / g32.norm()) < 0.05


def test_excluded_rollouts_leave_their_group_and_get_no_advantage():
    """A rollout left out (its search backend failed) is out of the group normalisation:
    the others get the advantages of the group without it; it gets 0."""

    def traj(kinds, f1):
        t = Trajectory(question="q", answers=["a"], turn_kinds=kinds, answered=True)
        t.spans = [Span("action", i, i + 1, i) for i in range(len(kinds))]
        t.outcome_f1 = f1
        return t

    trajs = [traj(["search", "answer"], f) for f in (1.0, 0.0, 0.5, 0.2)]
    values = torch.tensor([[-3.0, -1.0], [-3.0, -2.5], [-3.0, -2.0], [-3.0, -2.9]])
    kw = dict(algo="igpo", ig_mode="log_prob_diff", norm="separate", gamma=1.0)
    kw["format_penalty"] = -2.0
    adv, outcome = compute_advantages(
        trajs, values, group_size=4, exclude=[False, True, False, False], **kw
    )
    alone, _ = compute_advantages(
        [trajs[i] for i in (0, 2, 3)], values[[0, 2, 3]], group_size=3, **kw
    )
    torch.testing.assert_close(adv.returns[[0, 2, 3]], alone.returns)
    assert adv.returns[1].abs().sum() == 0 and adv.normalized[1].abs().sum() == 0
    assert outcome.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.2])  # raw, for the logs
    full, _ = compute_advantages(trajs, values, group_size=4, **kw)
    assert not torch.allclose(full.returns[[0, 2, 3]], alone.returns)
    with pytest.raises(ValueError, match="exclude has 2 entries"):
        compute_advantages(trajs, values, group_size=4, exclude=[True, False], **kw)


def test_excluded_rollouts_do_not_reach_the_update(tiny_policy, envs):
    """policy_update(exclude=...) equals the update on the other trajectories alone."""
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    assert sum(trajs[1].action_mask()) > 0
    params = tiny_policy.trainable_parameters()
    start = [p.detach().clone() for p in params]
    settings = LossSettings(micro_batch_size=4, kl_coef=0.01, entropy_coef=0.01)

    def update(batch, rets, **kw):
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        opt = torch.optim.AdamW(params, lr=1e-2)
        m, _ = policy_update(tiny_policy, opt, batch, rets, settings, **kw)
        return m, [p.detach().clone() for p in params]

    keep = [0, 2, 3]
    m_out, excluded = update(trajs, returns, exclude=[False, True, False, False])
    m_alone, alone = update([trajs[i] for i in keep], returns[keep])
    _, everything = update(trajs, returns)
    assert m_out["num_tokens"] == m_alone["num_tokens"]
    for a, b in zip(excluded, alone, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(a, b) for a, b in zip(excluded, everything, strict=True))


@pytest.mark.parametrize("mini", [None, 2])
def test_rows_with_zero_advantage_skip_their_passes_and_the_step_is_unchanged(
    tiny_policy, envs, monkeypatch, mini
):
    """No KL, no entropy: rows whose advantage is 0 everywhere run no forward or backward,
    and the update (mini=2: a whole zero mini-batch, stepped on a zero gradient) equals the
    full computation's."""
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    returns = returns.clone()
    returns[2:] = 0.0  # the second group carries no signal
    assert bool(returns[:2].abs().sum() > 0)
    params = tiny_policy.trainable_parameters()
    start = [p.detach().clone() for p in params]

    def update(skip):
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        opt = torch.optim.AdamW(params, lr=1e-2)
        settings = LossSettings(
            micro_batch_size=1,
            ppo_mini_batch_size=mini,
            ppo_epochs=2,
            kl_coef=0.0,
            entropy_coef=0.0,
            skip_zero_advantage=skip,
        )
        calls = _recording_loss(monkeypatch)
        m, _ = policy_update(tiny_policy, opt, trajs, returns, settings)
        return m, len(calls), [p.detach().clone() for p in params]

    m_skip, n_skip, skipped = update(True)
    m_full, n_full, full = update(False)
    assert m_skip["skipped_rows"] == 2 and m_full["skipped_rows"] == 0
    assert n_skip == n_full - 2 * 2  # two rows x two epochs fewer forwards
    assert m_skip["optimizer_steps"] == m_full["optimizer_steps"]
    for a, b in zip(skipped, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a, s) for a, s in zip(skipped, start, strict=True))


def test_zero_rows_still_run_when_the_kl_or_entropy_term_needs_them(tiny_policy, envs):
    trajs, returns = _scored(tiny_policy, envs, seed=1)
    returns = returns.clone()
    returns[2:] = 0.0
    opt = torch.optim.AdamW(tiny_policy.trainable_parameters(), lr=0.0)
    for kw in ({"kl_coef": 0.01, "entropy_coef": 0.0}, {"kl_coef": 0.0, "entropy_coef": 0.01}):
        m, _ = policy_update(tiny_policy, opt, trajs, returns, LossSettings(**kw))
        assert m["skipped_rows"] == 0


def test_rft_step_is_the_supervised_step_on_the_kept_rollouts(tiny_policy, envs):
    """Advantage 1 on the kept rows, the others out of the loss: the update's gradient is
    the NLL gradient of the kept rows' agent tokens (token mean), computed by hand."""
    from igpo_agent.algo.selection import rft_returns

    trajs, returns = _scored(tiny_policy, envs, seed=1)
    kept = [True, False, True, False]
    turns = torch.tensor([max(t.num_turns, 1) for t in trajs])
    mask = torch.arange(returns.shape[1])[None, :] < turns[:, None]
    targets = rft_returns(mask, kept)
    params = tiny_policy.trainable_parameters()
    start = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1.0)
    settings = LossSettings(kl_coef=0.0, entropy_coef=0.0, max_grad_norm=1e9)
    policy_update(tiny_policy, opt, trajs, targets, settings, exclude=[not k for k in kept])
    step = [s - p.detach() for p, s in zip(params, start, strict=True)]  # = the gradient

    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    rows = [trajs[i] for i, k in enumerate(kept) if k]
    b = pad_batch(rows, tiny_policy.tokenizer.pad_token_id)
    tiny_policy.model.train()
    logp, _ = tiny_policy.action_logprobs(b["input_ids"], b["attention_mask"], b["action_mask"])
    act = b["action_mask"][:, : logp.shape[1]]
    nll = -(logp * act).sum() / act.sum()
    grads = torch.autograd.grad(nll, params, allow_unused=True)
    tiny_policy.model.eval()
    for g, s in zip(grads, step, strict=True):
        torch.testing.assert_close(s, torch.zeros_like(s) if g is None else g, atol=1e-6, rtol=1e-4)
