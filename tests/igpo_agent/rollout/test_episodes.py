"""Batched multi-turn rollouts against the real SearchQA env: token spans, guards, seeds."""

from __future__ import annotations

import copy

import gymnasium as gym
import pytest
import torch

import igpo_agent  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from igpo_agent.model.prompts import policy_prompt_fn, system_prompt
from igpo_agent.rollout.episodes import GenerationSettings, RolloutStats, rollout_batch
from igpo_agent.rollout.sampling import TurnRequest, generate_turn
from igpo_agent.rollout.trajectory import Trajectory
from igpo_env.data import Document, QAExample
from tests.fixtures import load_model, plain_prompt_fn

torch.set_num_threads(1)

QA = [
    QAExample("q-paris", "What is the capital of France?", ("Paris",)),
    QAExample("q-orwell", "Who wrote the novel 1984?", ("George Orwell", "Orwell")),
]
DOCS = [
    Document("d1", "Paris", "Paris is the capital and largest city of France."),
    Document("d2", "George Orwell", "George Orwell wrote the novel Nineteen Eighty-Four."),
    Document("d3", "Andorra", "Andorra is a small country between France and Spain."),
    Document("d4", "Berlin", "Berlin is the capital of Germany."),
]
TASKS = [{"index": 0}, {"index": 1}]


def make_envs(n: int, max_steps: int | list[int] = 3) -> list[gym.Env]:
    steps = max_steps if isinstance(max_steps, list) else [max_steps] * n
    return [
        gym.make(
            "igpo_env:SearchQA-v0",
            qa=QA,
            corpus=DOCS,
            top_k=2,
            doc_max_words=20,
            max_episode_steps=s,
        )
        for s in steps
    ]


def check_layout(traj: Trajectory, tokenizer) -> None:
    """Spans are contiguous, cover every token, alternate action/observation, end on an
    action; the per-turn lists line up; observations are the env text's tokens."""
    pos = 0
    for s in traj.spans:
        assert s.start == pos and s.end >= s.start
        pos = s.end
    assert pos == len(traj.token_ids) == len(traj.sample_logprobs)
    kinds = [s.kind for s in traj.spans]
    assert kinds[0] == "prompt" and traj.spans[0].turn == -1
    assert kinds[1:] == (["action", "observation"] * traj.num_turns)[: len(kinds) - 1]
    assert kinds[-1] == "action" or traj.num_turns == 0
    T = traj.num_turns
    assert len(traj.turn_texts) == len(traj.turn_kinds) == len(traj.env_rewards) == T
    actions = [s for s in traj.spans if s.kind == "action"]
    observations = [s for s in traj.spans if s.kind == "observation"]
    assert [s.turn for s in actions] == list(range(T))
    assert [s.turn for s in observations] == list(range(len(observations)))
    assert len(traj.observations) == len(observations)
    for s, text in zip(observations, traj.observations, strict=True):
        assert traj.token_ids[s.start : s.end] == tokenizer.encode(text, add_special_tokens=False)
        assert all(lp == 0.0 for lp in traj.sample_logprobs[s.start : s.end])
    for s, text in zip(actions, traj.turn_texts, strict=True):
        assert s.end > s.start
        ids = traj.token_ids[s.start : s.end]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    mask = traj.action_mask()
    assert sum(mask) == sum(s.end - s.start for s in actions)
    assert all(m == 0 for m in mask[: traj.prompt_len])


def check_sampled(model, traj: Trajectory, temperature: float) -> None:
    """Every trained position holds the token that was sampled there: the model's
    teacher-forced log-prob of it equals the recorded sampling log-prob (and, greedy, it is
    the argmax)."""
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()  # (S, V)
    scale = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits / scale, -1)
    for p in (i for i, m in enumerate(traj.action_mask()) if m):
        assert abs(logp[p - 1, traj.token_ids[p]].item() - traj.sample_logprobs[p]) < 1e-4
        if temperature == 0:
            assert logits[p - 1].argmax().item() == traj.token_ids[p]


def run(model, tok, fn, envs, *, g=2, temperature=1.0, seed=0, **kw):
    settings = GenerationSettings(
        max_new_tokens=kw.pop("max_new_tokens", 24), temperature=temperature, **kw
    )
    gen = torch.Generator().manual_seed(seed)
    return rollout_batch(
        model, tok, fn, envs, TASKS, group_size=g, settings=settings, generator=gen, seed=seed
    )


@pytest.mark.parametrize("family", ["smol", "bpe"])
def test_trained_positions_are_the_sampled_tokens(family, request):
    model, tok, fn = request.getfixturevalue(family)
    envs = make_envs(4, max_steps=3)
    stats = RolloutStats()
    trajs = rollout_batch(
        model,
        tok,
        fn,
        envs,
        TASKS,
        group_size=2,
        settings=GenerationSettings(max_new_tokens=24, temperature=1.0),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        stats=stats,
    )
    assert [t.group for t in trajs] == [0, 0, 1, 1]
    assert [t.qid for t in trajs] == ["q-paris", "q-paris", "q-orwell", "q-orwell"]
    assert trajs[2].answers == ["George Orwell", "Orwell"]
    assert trajs[0].question == QA[0].question
    retokenised_differs = False
    for traj in trajs:
        check_layout(traj, tok)
        check_sampled(model, traj, temperature=1.0)
        for s, text in zip(
            [s for s in traj.spans if s.kind == "action"], traj.turn_texts, strict=True
        ):
            ids = traj.token_ids[s.start : s.end]
            retokenised_differs |= tok.encode(text, add_special_tokens=False) != ids
        # a random model writes garbage: every turn invalid, the turn limit ends it cleanly
        assert traj.turn_kinds == ["invalid"] * 3
        assert traj.env_rewards == [-2.0] * 3
        assert not traj.format_ok and not traj.answered and traj.truncated
        assert traj.outcome_f1 == 0.0 and not traj.context_truncated
        assert traj.answer_text == "" and traj.answer_metrics == {}
    assert retokenised_differs, "re-tokenising the decoded turns would have changed the ids"
    assert stats.episodes == 4 and stats.turns == 12
    assert stats.tokens_generated == sum(sum(t.action_mask()) for t in trajs)


def test_peft_policy_with_system_prompt(tiny_policy):
    envs = make_envs(2, max_steps=2)
    tiny_policy.model.train()
    fn = policy_prompt_fn(tiny_policy, "tags")
    trajs = rollout_batch(
        tiny_policy.model,
        tiny_policy.tokenizer,
        fn,
        envs,
        TASKS[:1],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=16, max_context=tiny_policy.max_context),
        generator=torch.Generator().manual_seed(1),
    )
    assert system_prompt("tags") in tiny_policy.tokenizer.decode(trajs[0].token_ids)
    for traj in trajs:
        check_layout(traj, tiny_policy.tokenizer)
        check_sampled(tiny_policy.model, traj, temperature=1.0)
    assert tiny_policy.model.training  # the rollout ran in eval mode and restored it
    with pytest.raises(ValueError, match="no system prompt"):
        system_prompt("smoke-signals")


def test_greedy_and_seeded_sampling_are_reproducible(smol):
    model, tok, fn = smol
    envs = make_envs(4, max_steps=2)

    def ids(**kw):
        return [t.token_ids for t in run(model, tok, fn, envs, **kw)]

    assert ids(temperature=0.0, seed=1) == ids(temperature=0.0, seed=2)
    assert ids(temperature=1.0, seed=3) == ids(temperature=1.0, seed=3)
    assert ids(temperature=1.0, seed=3) != ids(temperature=1.0, seed=4)
    greedy = run(model, tok, fn, envs, temperature=0.0)
    for traj in greedy:
        check_sampled(model, traj, temperature=0.0)
    assert greedy[0].token_ids == greedy[1].token_ids  # same question, greedy: same rollout


def test_cache_reuse_equals_reprefill(tiny_bpe_model_path, bpe_tokenizer):
    model = load_model(tiny_bpe_model_path, dtype=torch.float64)
    fn = plain_prompt_fn(bpe_tokenizer)
    envs = make_envs(4, max_steps=[1, 3, 2, 3])
    kw = dict(temperature=0.0, max_new_tokens=20)
    reused = run(model, bpe_tokenizer, fn, envs, reuse_cache=True, **kw)
    fresh = run(model, bpe_tokenizer, fn, envs, reuse_cache=False, **kw)
    for a, b in zip(reused, fresh, strict=True):
        assert a.token_ids == b.token_ids and a.spans == b.spans
        torch.testing.assert_close(
            torch.tensor(a.sample_logprobs), torch.tensor(b.sample_logprobs), atol=1e-9, rtol=0
        )


def test_finished_episodes_leave_the_batch(bpe):
    model, tok, fn = bpe
    envs = make_envs(4, max_steps=[1, 2, 3, 3])
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_hook(
        lambda m, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    try:
        trajs = run(model, tok, fn, envs, max_new_tokens=6)
    finally:
        hook.remove()
    assert [t.num_turns for t in trajs] == [1, 2, 3, 3]
    # the 2 distinct prompts (2 tasks x G=2) are prefilled once, in one forward; then one
    # prefill per round (round 0 feeds each prompt's last token, so it looks like a decode)
    assert shapes[0][0] == 2 and shapes[1] == (4, 1)
    prefills = [b for b, s in shapes[1:] if s > 1]
    assert prefills == [3, 2]
    assert all(b <= 4 for b, _ in shapes)


def test_context_guard_truncates_cleanly(smol):
    model, tok, fn = smol
    envs = make_envs(4, max_steps=4)
    prompt_len = len(fn(envs[0].reset(options={"index": 0})[0]))
    # 1) the first turn is cut by the limit
    trajs = run(model, tok, fn, envs, max_new_tokens=24, max_context=prompt_len + 5)
    for traj in trajs[:2]:
        check_layout(traj, tok)
        assert traj.context_truncated and traj.truncated and not traj.answered
        assert len(traj.token_ids) <= prompt_len + 5 and traj.num_turns == 1
    # 2) the observation does not fit: dropped, the trajectory still ends on the action
    trajs = run(model, tok, fn, envs, max_new_tokens=4, max_context=prompt_len + 12)
    for traj in trajs[:2]:
        check_layout(traj, tok)
        assert traj.context_truncated and traj.truncated
        assert traj.num_turns == 1 and traj.observations == []
        assert traj.prompt_len == prompt_len and len(traj.token_ids) <= prompt_len + 4
    # 3) a prompt that is already too long: no turn at all, no crash
    trajs = run(model, tok, fn, envs, max_context=8)
    for traj in trajs:
        check_layout(traj, tok)
        assert traj.num_turns == 0 and traj.context_truncated and traj.truncated


def test_stop_strings_end_turns_with_a_trained_model(tiny_bpe_model_path, bpe_tokenizer):
    """Overfit a tiny model on one scripted episode (search, read, answer, and it goes on
    writing the observation after </search>): the stop string must end the search turn, the
    env's real observation follows, and the answer scores."""
    tok = bpe_tokenizer
    fn = plain_prompt_fn(tok)
    env = make_envs(1, max_steps=3)[0]
    prompt, _ = env.reset(options={"index": 0})
    search, answer = "<search>capital of France</search>", "<answer>Paris</answer>"
    obs = env.step(search)[0]
    p_ids = fn(prompt)
    target = tok.encode(search) + tok.encode(obs) + tok.encode(answer) + [tok.eos_token_id]
    model = copy.deepcopy(load_model(tiny_bpe_model_path)).train()
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor([p_ids + target])
    labels = ids.clone()
    labels[0, : len(p_ids)] = -100
    for _ in range(120):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    free = generate_turn(model, tok, [TurnRequest(p_ids, 60)], temperature=0.0)[0]
    assert tok.decode(free.tokens).startswith(search + "\n\n<information>")  # it would go on

    envs = make_envs(2, max_steps=3)
    trajs = rollout_batch(
        model,
        tok,
        fn,
        envs,
        TASKS[:1],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=60, temperature=0.0),
    )
    for traj in trajs:
        check_layout(traj, tok)
        check_sampled(model, traj, temperature=0.0)
        assert traj.turn_texts == [search, answer]
        assert traj.turn_kinds == ["search", "answer"]
        assert traj.observations == [obs]
        assert traj.answered and traj.format_ok and not traj.truncated
        assert traj.outcome_f1 == 1.0 and traj.success()
        assert traj.answer_text == "Paris" and traj.answer_metrics["em"] == 1.0
        assert traj.token_ids[-1] == tok.eos_token_id or traj.turn_texts[-1].endswith("</answer>")

    # answer_eos: </answer> is no stop string, the answer turn runs on to the EOS it learned
    trajs = rollout_batch(
        model,
        tok,
        fn,
        envs,
        TASKS[:1],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=60, temperature=0.0, answer_eos=True),
    )
    for traj in trajs:
        check_layout(traj, tok)
        assert traj.turn_texts == [search, answer]  # the env reads the text, EOS skipped
        assert traj.answered and traj.format_ok and traj.outcome_f1 == 1.0
        assert traj.token_ids[-1] == tok.eos_token_id


def test_answer_eos_drops_only_the_answer_stop():
    from igpo_agent.rollout.episodes import stop_strings

    info = {"protocol": {"stop": ["</search>", "</answer>"], "answer_suffix": "</answer>"}}
    assert stop_strings(info, ()) == ("</search>", "</answer>")
    assert stop_strings(info, ("\nQ:",), answer_eos=True) == ("</search>", "\nQ:")


def test_failed_searches_are_recorded(bpe_tokenizer):
    """A search the env reports as failed (a dead HTTP backend) is counted on the trajectory
    with its message; the observation is still recorded as the env gave it."""
    from igpo_agent.rollout.episodes import record_turn, start_episode
    from igpo_env.retrievers import make_retriever

    tok = bpe_tokenizer
    dead = make_retriever("http", url="http://127.0.0.1:9", max_retries=0, timeout_s=2.0)
    env = gym.make("igpo_env:SearchQA-v0", qa=QA, retriever=dead, max_episode_steps=3)
    settings = GenerationSettings(max_new_tokens=8)
    ep = start_episode(env, {"index": 0}, 0, 0, plain_prompt_fn(tok), settings, 4096)
    stats = RolloutStats()
    for text in ("<search>capital of France</search>", "<search>Paris</search>"):
        ids = tok.encode(text)
        record_turn(ep, ids, [0.0] * len(ids), False, tok, 4096, False, stats)
    traj = ep.traj
    assert traj.search_failures == 2 and "connection error" in traj.search_error
    assert traj.turn_kinds == ["search", "search"]
    assert traj.observations[-1].startswith("\n\n<information>search failed: ")


def test_shared_prompts_are_prefilled_once(bpe):
    """G episodes of a question share one prompt prefill; same trajectories as without."""
    model, tok, fn = bpe
    prompt_len = len(fn(make_envs(1)[0].reset(options={"index": 0})[0]))
    stats = {True: RolloutStats(), False: RolloutStats()}
    out = {}
    for reuse in (True, False):
        out[reuse] = rollout_batch(
            model,
            tok,
            fn,
            make_envs(6, max_steps=1),
            [{"index": 0}, {"index": 0}],  # the same question twice: 6 equal prompts
            group_size=3,
            settings=GenerationSettings(max_new_tokens=4, temperature=0.0, reuse_cache=reuse),
            stats=stats[reuse],
        )
    assert stats[False].prefill_tokens == 6 * prompt_len
    assert stats[True].prefill_tokens == (prompt_len - 1) + 6  # once, then each last token
    for a, b in zip(out[True], out[False], strict=True):
        assert a.token_ids == b.token_ids
        assert a.sample_logprobs == pytest.approx(b.sample_logprobs, abs=1e-5)
