"""The vLLM engine against the HF engine: same episodes, same spans, synced weights, beliefs.

Runs in the separate vLLM environment (``.venv-vllm/bin/python -m pytest tests/vllm``); in
the main environment the module is skipped (no vllm).
"""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM  # noqa: E402

from igpo_agent.ig.beliefs import reencoded_beliefs  # noqa: E402
from igpo_agent.ig.gold import gold_spec  # noqa: E402
from igpo_agent.ig.vllm_beliefs import vllm_beliefs  # noqa: E402
from igpo_agent.model.policy import LoraSettings, Policy  # noqa: E402
from igpo_agent.rollout.episodes import GenerationSettings, RolloutStats, rollout_batch  # noqa: E402
from igpo_agent.rollout.trajectory import Trajectory  # noqa: E402
from igpo_env.data import Document, QAExample  # noqa: E402

torch.set_num_threads(1)

QA = [
    QAExample("q-paris", "What is the capital of France?", ("Paris",)),
    QAExample("q-orwell", "Who wrote the novel 1984?", ("George Orwell", "Orwell")),
]
DOCS = [
    Document("d1", "Paris", "Paris is the capital and largest city of France."),
    Document("d2", "George Orwell", "George Orwell wrote the novel Nineteen Eighty-Four."),
    Document("d3", "Andorra", "Andorra is a small country between France and Spain."),
]
TASKS = [{"index": 0}, {"index": 1}]


def make_envs(n: int, max_steps: int = 3) -> list[gym.Env]:
    return [
        gym.make(
            "igpo_env:SearchQA-v0",
            qa=QA,
            corpus=DOCS,
            top_k=2,
            doc_max_words=20,
            max_episode_steps=max_steps,
        )
        for _ in range(n)
    ]


def prompt_fn(tokenizer):
    def fn(text: str) -> list[int]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return fn


def check_layout(traj: Trajectory, tokenizer) -> None:
    pos = 0
    for s in traj.spans:
        assert s.start == pos and s.end > s.start
        pos = s.end
    assert pos == len(traj.token_ids) == len(traj.sample_logprobs)
    kinds = [s.kind for s in traj.spans]
    assert kinds[0] == "prompt" and kinds[-1] == "action"
    assert kinds[1:] == (["action", "observation"] * traj.num_turns)[: len(kinds) - 1]
    assert len(traj.turn_texts) == len(traj.turn_kinds) == len(traj.env_rewards) == traj.num_turns
    obs_spans = [s for s in traj.spans if s.kind == "observation"]
    for s, text in zip(obs_spans, traj.observations, strict=True):
        assert traj.token_ids[s.start : s.end] == tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def hf_model(tiny_vllm_model_path):
    return AutoModelForCausalLM.from_pretrained(str(tiny_vllm_model_path), dtype=torch.float32)


@pytest.mark.parametrize("max_context", [None, 300])
def test_greedy_rollout_matches_hf_engine(engine, hf_model, smol_tokenizer, max_context):
    settings = GenerationSettings(max_new_tokens=10, temperature=0.0, max_context=max_context)
    kw = {"group_size": 2, "settings": settings, "seed": 5}
    ref = rollout_batch(
        hf_model, smol_tokenizer, prompt_fn(smol_tokenizer), make_envs(4), TASKS, **kw
    )
    stats = RolloutStats()
    got = engine.rollout_batch(prompt_fn(smol_tokenizer), make_envs(4), TASKS, stats=stats, **kw)
    assert len(got) == 4
    for a, b in zip(got, ref, strict=True):
        check_layout(a, smol_tokenizer)
        assert a.token_ids == b.token_ids
        assert a.spans == b.spans
        for field in ("turn_texts", "turn_kinds", "observations", "env_rewards", "group", "qid"):
            assert getattr(a, field) == getattr(b, field), field
        for field in ("answered", "truncated", "context_truncated", "format_ok", "outcome_f1"):
            assert getattr(a, field) == getattr(b, field), field
        torch.testing.assert_close(
            torch.tensor(a.sample_logprobs), torch.tensor(b.sample_logprobs), atol=1e-3, rtol=0
        )
    if max_context is not None:
        assert all(len(t.token_ids) <= max_context for t in got)
        assert any(t.context_truncated for t in got)
    assert stats.episodes == 4 and stats.calls == 1
    assert stats.turns == sum(t.num_turns for t in got)
    assert stats.tokens_generated == sum(sum(t.action_mask()) for t in got)
    assert stats.gen_seconds > 0 and stats.last_batch_sizes[0] == 4


def test_sampled_turns_stop_where_the_hf_engine_would(engine, smol_tokenizer):
    """Temperature 1 with a frequent extra stop string: each action ends at EOS, at its
    budget, or on the token that completed a stop string (kept whole, nothing after)."""
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, stop=("e",))
    trajs = engine.rollout_batch(
        prompt_fn(smol_tokenizer), make_envs(4), TASKS, group_size=2, settings=settings
    )
    stops_seen = 0
    for traj in trajs:
        check_layout(traj, smol_tokenizer)
        for s in (s for s in traj.spans if s.kind == "action"):
            toks = traj.token_ids[s.start : s.end]
            lps = traj.sample_logprobs[s.start : s.end]
            assert all(lp <= 0.0 for lp in lps) and any(lp < 0.0 for lp in lps)
            text, head = smol_tokenizer.decode(toks), smol_tokenizer.decode(toks[:-1])
            assert "e" not in head  # nothing was generated past a completed stop string
            ended_on_stop = "e" in text
            stops_seen += ended_on_stop
            assert ended_on_stop or toks[-1] in engine.eos_ids or len(toks) == 12
    assert stops_seen > 0


def _nll_step(policy: Policy, seq: list[int], lr: float) -> None:
    """One real optimiser step that raises the log-prob of ``seq``."""
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=lr)
    ids = torch.tensor([seq])
    lp, _ = policy.sequence_logprobs(ids, torch.ones_like(ids))
    (-lp.mean()).backward()
    opt.step()
    opt.zero_grad()


@pytest.fixture
def restore_engine(engine, tiny_vllm_model_path):
    """Push the base weights back after a test that synced other weights."""
    yield engine
    engine.sync_weights(Policy.load(str(tiny_vllm_model_path), device="cpu", dtype="float32"))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sync_weights_engine_logprobs_follow_the_policy(
    restore_engine, tiny_vllm_model_path, smol_tokenizer, lora
):
    engine = restore_engine
    settings = LoraSettings(r=4, alpha=8) if lora else None
    policy = Policy.load(
        str(tiny_vllm_model_path), lora=settings, device="cpu", dtype="float32", seed=0
    )
    seq = smol_tokenizer.encode("<search>capital of France</search> <answer>Paris</answer>")

    def hf_logprobs() -> torch.Tensor:
        with torch.no_grad():
            ids = torch.tensor([seq])
            return policy.sequence_logprobs(ids, torch.ones_like(ids))[0][0, 1:]

    before_hf = hf_logprobs()
    before_engine = torch.tensor(engine.prompt_logprobs([seq])[0][1:])
    assert (before_engine - before_hf).abs().mean() < 1e-4  # same start (LoRA B = 0)

    _nll_step(policy, seq, lr=3e-2)
    after_hf = hf_logprobs()
    assert (after_hf - before_hf).abs().mean() > 0.05  # the step changed the policy
    seconds = engine.sync_weights(policy)
    after_engine = torch.tensor(engine.prompt_logprobs([seq])[0][1:])
    assert (after_engine - after_hf).abs().mean() < 1e-4
    assert (after_engine - before_engine).abs().mean() > 0.05
    assert seconds > 0 and engine.weight_syncs >= 1


def test_belief_values_match_hf_packed(engine, hf_model, smol_tokenizer, monkeypatch):
    """Duplicate prompts, boundaries on both sides of the 128-token cache blocks, and a
    second call with the prefix cache warm, where some gold tokens fall inside the cached
    part (vLLM leaves those unset) and are rescored: every value equals HF packed's."""
    torch.manual_seed(0)
    filler = torch.randint(100, 40000, (400,)).tolist()
    seqs = [filler[:300], filler[:300], filler[:150] + filler[200:360], filler[:250]]
    bounds = [
        [10, 126, 127, 128, 129, 200],
        [10, 126, 127, 128, 129, 200],
        [60, 125, 255],
        [40, 122],
    ]
    golds = ("Paris", "Paris", "George Orwell", "Nineteen Eighty-Four")
    specs = [gold_spec(smol_tokenizer, g, "<answer>", "</answer>") for g in golds]
    ref = reencoded_beliefs(hf_model, seqs, bounds, specs, method="packed")
    calls: list[tuple[int, bool]] = []
    score = engine.prompt_logprobs

    def spy(batch, *, read_prefix_cache=False):
        calls.append((len(batch), read_prefix_cache))
        return score(batch, read_prefix_cache=read_prefix_cache)

    monkeypatch.setattr(engine, "prompt_logprobs", spy)
    engine.llm.reset_prefix_cache()
    for _ in range(2):
        got = vllm_beliefs(engine, seqs, bounds, specs)
        assert [len(r) for r in got] == [len(b) for b in bounds]
        for g, r in zip(got, ref, strict=True):
            torch.testing.assert_close(torch.tensor(g), torch.tensor(r), atol=1e-4, rtol=0)
    assert calls[0] == (11, True)  # 17 boundaries, the duplicated trajectory scored once
    assert (2, False) in calls[1:]  # the warm call rescored the two cache-covered values


def test_bad_input_gives_clear_errors(engine, smol_tokenizer):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.rollout_batch(
            prompt_fn(smol_tokenizer),
            make_envs(1),
            TASKS[:1],
            group_size=1,
            settings=GenerationSettings(max_context=4096),
        )
    with pytest.raises(ValueError, match="envs"):
        engine.rollout_batch(prompt_fn(smol_tokenizer), make_envs(1), TASKS, group_size=1)
    with pytest.raises(ValueError, match="scoring needs"):
        engine.prompt_logprobs([[1]])
