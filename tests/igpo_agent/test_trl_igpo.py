"""IGPO inside TRL: the TRL path gives igpo_agent's own per-token advantages, and trains.

- ``turn_token_advantages`` on hand-computed values;
- the same recorded rollouts, once as igpo_agent's ``Trajectory`` objects through the
  learner (``belief_matrix`` -> ``compute_advantages`` -> ``token_advantages``) and once as
  TRL sees them (prompt ids, completion ids, tool mask, chat messages, reward-function
  rewards) through :mod:`igpo_agent.integrations.turns`: equal to 1e-6;
- one real ``IGPOTrainer`` step on a tiny model (scripted generations, TRL's real tool
  loop, rewards and loss) gives the loss (B, T) advantages and changes the LoRA weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

trl = pytest.importorskip("trl")

import torch  # noqa: E402

from igpo_agent.algo.advantages import token_advantages  # noqa: E402
from igpo_agent.ig.beliefs import reencoded_beliefs  # noqa: E402
from igpo_agent.ig.gold import gold_spec  # noqa: E402
from igpo_agent.integrations.turns import (  # noqa: E402
    model_turn_spans,
    rollout_turns,
    score_turn_beliefs,
    trl_turn_advantages,
    turn_token_advantages,
)
from igpo_agent.learn.learner import belief_matrix, compute_advantages, pad_batch  # noqa: E402
from igpo_agent.rollout.trajectory import Span, Trajectory  # noqa: E402
from tests.fixtures import TINY_CPU_GRPO  # noqa: E402

A, Z = "<answer>", "</answer>"
ERROR = "{'error': 'Tool web_find not found.'}"


# ------------------------------------------------------------------ the pure helpers


def test_turn_token_advantages_hand_computed() -> None:
    spans = [[(0, 2), (4, 5)], [(1, 3)], []]
    returns = torch.tensor([[1.5, -0.5], [2.0, 0.0], [0.7, 0.0]])
    got = turn_token_advantages(spans, returns, width=6)
    expected = torch.tensor(
        [
            [1.5, 1.5, 0.0, 0.0, -0.5, 0.0],
            [0.0, 2.0, 2.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="within the 6 completion columns"):
        turn_token_advantages([[(4, 7)], [], []], returns, width=6)
    with pytest.raises(ValueError, match="after the previous span"):
        turn_token_advantages([[(2, 4), (3, 5)], [], []], returns, width=6)
    with pytest.raises(ValueError, match="N = 2 rollouts"):
        turn_token_advantages(spans[:2], returns, width=6)
    with pytest.raises(ValueError, match="3 turns"):
        turn_token_advantages([[(0, 1), (1, 2), (2, 3)], [], []], returns, width=6)


def test_rollout_turns_kinds_and_truncation() -> None:
    assert model_turn_spans([1, 1, 0, 0, 1, 0, 1, 1]) == [(0, 2), (4, 5), (6, 8)]
    with pytest.raises(ValueError, match="0/1"):
        model_turn_spans([1, 2])
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}
    msgs = [call, {"role": "tool", "content": ERROR}, call, {"role": "tool", "content": "docs"}]
    done = msgs + [{"role": "assistant", "content": "<answer>x</answer>"}]
    ro = rollout_turns([5, 6, 0, 0, 7, 0, 8, 9], [1, 1, 0, 0, 1, 0, 1, 1], done, [9])
    assert ro.spans == ((0, 2), (4, 5), (6, 8)) and ro.kinds == ("invalid", "search", "final")
    assert not ro.truncated and ro.malformed and ro.boundaries(10) == [10, 14, 16]
    cut = rollout_turns([5, 0, 7], [1, 0, 1], [call, {"role": "tool", "content": "d"}, call], [9])
    assert cut.truncated and cut.kinds == ("search", "final")  # ended on an unanswered call
    no_eos = rollout_turns([5, 6], None, "<answer>x", [9])
    assert no_eos.truncated and no_eos.spans == ((0, 2),)
    with pytest.raises(ValueError, match="do not describe the same rollout"):
        rollout_turns([5, 0, 7, 9], [1, 0, 1, 1], [call, done[-1]], [9])


# ------------------------------------------------------------------ same rollouts, two paths

# (gold, [(action text, kind)...], observation texts, outcome f1, flags); every turn but a
# context-truncated last one ends in <|im_end|> as a chat model's turn does
ROLLOUTS = [
    ("Paris", [("q1", "search"), ("q2", "search"), (f"{A}Paris{Z}", "answer")], 1.0, {}),
    ("Paris", [("q3", "search"), (f"{A}Paris France{Z}", "answer")], 0.67, {}),
    ("Paris", [("bad", "invalid"), ("q1", "search"), (f"{A}Paris{Z}", "answer")], 1.0, {}),
    ("Paris", [("q2", "search"), ("I think Lyon", "invalid")], 0.0, {"final_bad": True}),
    ("1969", [(f"{A}1969{Z}", "answer")], 1.0, {}),
    ("1969", [("q4", "search"), ("q5", "search"), ("q6", "search")], 0.0, {"truncated": True}),
    ("1969", [("q4", "search"), (f"{A}1968{Z}", "answer")], 0.0, {}),
    ("1969", [("q5", "search"), (f"{A}19", "answer")], 0.0, {"context": True}),
]
DOCS = {
    "q1": "Paris is the capital of France.",
    "q2": "Lyon is a city in France.",
    "q3": "France is in Europe.",
    "q4": "Apollo 11 landed on the Moon in July 1969.",
    "q5": "Neil Armstrong walked on the Moon.",
    "q6": "The Moon orbits the Earth.",
    "bad": "",
}


def _record(tok, gold: str, turns, f1: float, flags: dict, group: int, penalty: float):
    """One rollout as igpo_agent records it, and the same rollout as TRL holds it."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": f"Question about {gold}?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    tr = Trajectory(question=f"q-{gold}", answers=[gold, "alias"], group=group)
    tr.token_ids, tr.spans = list(ids), [Span("prompt", 0, len(ids), -1)]
    messages, tool_mask = [], []
    for t, (text, kind) in enumerate(turns):
        last = t == len(turns) - 1
        is_call = not last or flags.get("truncated")
        action = f'<tool_call>{{"query": "{text}"}}</tool_call>' if is_call else text
        a_ids = tok(action, add_special_tokens=False)["input_ids"]
        a_ids += [] if last and flags.get("context") else [eos]
        tr.spans.append(Span("action", len(tr.token_ids), len(tr.token_ids) + len(a_ids), t))
        tr.token_ids += a_ids
        tool_mask += [1] * len(a_ids)
        tr.turn_kinds.append(kind)
        messages.append({"role": "assistant", "content": action, "tool_calls": is_call or None})
        if last:
            break
        content = ERROR if kind == "invalid" else DOCS[text]
        obs = f"\n<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"
        o_ids = tok(obs + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        tr.spans.append(Span("observation", len(tr.token_ids), len(tr.token_ids) + len(o_ids), t))
        tr.token_ids += o_ids
        tool_mask += [0] * len(o_ids)
        messages.append({"role": "tool", "name": "search", "content": content})
    final_bad = flags.get("final_bad", False)
    tr.truncated, tr.context_truncated = bool(flags.get("truncated")), bool(flags.get("context"))
    tr.answered = not (tr.truncated or final_bad or tr.context_truncated)
    tr.format_ok = "invalid" not in tr.turn_kinds
    tr.outcome_f1 = f1
    # what answer_reward returns: the score of a final answer, the env's format penalty (set
    # equal to the trainer's) for a malformed final turn, 0.0 for one that ended on a tool call
    reward = penalty if final_bad else (0.0 if tr.truncated else f1)
    trl_view = {
        "prompt_ids": list(ids),
        "completion_ids": tr.token_ids[len(ids) :],
        "tool_mask": tool_mask,
        "completion": messages,
        "reward": reward,
        "gold": gold,
    }
    return tr, trl_view


SETTINGS = [
    {},
    {"gamma": 0.8, "norm": "joint", "ig_mode": "prob_diff"},
    {"ig_turns": "all", "ig_exclude_zero": True, "ig_weight": 0.5, "gamma": 0.5},
    {"algo": "grpo"},
    {"format_penalty": -1.0},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
def test_trl_path_equals_igpo_agent(tiny_policy, settings: dict) -> None:
    tok = tiny_policy.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    knobs = {"algo": "igpo", "ig_mode": "log_prob_diff", "norm": "separate", "gamma": 1.0}
    knobs |= {"format_penalty": -2.0} | settings
    recorded = [
        _record(tok, g, t, f, fl, i // 4, knobs["format_penalty"])
        for i, (g, t, f, fl) in enumerate(ROLLOUTS)
    ]
    trajs = [r[0] for r in recorded]
    views = [r[1] for r in recorded]
    # igpo_agent: the learner's own path
    values = belief_matrix(tiny_policy, trajs, A, Z, method="packed")
    adv, outcome = compute_advantages(trajs, values, group_size=4, **knobs)
    batch = pad_batch(trajs, tok.pad_token_id)
    expected = token_advantages(adv.returns, batch["token_turns"])
    # the TRL path
    rollouts = [
        rollout_turns(v["completion_ids"], v["tool_mask"], v["completion"], [eos, tok.pad_token_id])
        for v in views
    ]
    assert [r.kinds[:-1] for r in rollouts] == [tuple(t.turn_kinds[:-1]) for t in trajs]
    trl_values = score_turn_beliefs(
        tiny_policy.model,
        tok,
        [v["prompt_ids"] for v in views],
        [v["completion_ids"] for v in views],
        rollouts,
        [v["gold"] for v in views],
        answer_prefix=A,
        answer_suffix=Z,
    )
    got_adv, got_outcome = trl_turn_advantages(
        trl_values, rollouts, [v["reward"] for v in views], group_size=4, **knobs
    )
    width = max(len(v["completion_ids"]) for v in views)
    got = turn_token_advantages([r.spans for r in rollouts], got_adv.returns, width)
    for i, (tr, v) in enumerate(zip(trajs, views, strict=True)):
        n = tr.num_turns
        assert trl_values[i] == pytest.approx(values[i, :n].tolist(), abs=1e-6)
        start, length = tr.prompt_len, len(v["completion_ids"])
        torch.testing.assert_close(
            got[i, :length], expected[i, start : start + length], atol=1e-6, rtol=0
        )
        assert not got[i, length:].any()
    torch.testing.assert_close(got_outcome, outcome, atol=1e-6, rtol=0)
    assert expected.abs().sum() > 1.0  # a real signal, not zeros on both sides
    if knobs["algo"] == "igpo":  # IG makes advantages differ between turns of a rollout
        first, last = got_adv.returns[0, 0], got_adv.returns[0, 2]
        assert abs(float(first - last)) > 1e-3


def test_unscored_rollouts_are_left_out_like_the_learner_leaves_them(tiny_policy) -> None:
    """A rollout no reward function scored (NaN: answer_reward's None after a failed backend
    search) is out of its group and gets advantage 0, as compute_advantages(exclude=)."""
    tok = tiny_policy.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    knobs = {"algo": "igpo", "ig_mode": "log_prob_diff", "norm": "separate", "gamma": 1.0}
    knobs["format_penalty"] = -2.0
    recorded = [_record(tok, g, t, f, fl, i // 4, -2.0) for i, (g, t, f, fl) in enumerate(ROLLOUTS)]
    trajs, views = [r[0] for r in recorded], [r[1] for r in recorded]
    out = [i in (1, 5) for i in range(len(trajs))]
    values = belief_matrix(tiny_policy, trajs, A, Z, method="packed")
    adv, _ = compute_advantages(trajs, values, group_size=4, exclude=out, **knobs)
    rollouts = [
        rollout_turns(v["completion_ids"], v["tool_mask"], v["completion"], [eos, tok.pad_token_id])
        for v in views
    ]
    trl_values = [values[i, : r.num_turns].tolist() for i, r in enumerate(rollouts)]
    rewards = [float("nan") if o else v["reward"] for o, v in zip(out, views, strict=True)]
    with pytest.raises(ValueError, match="finite outcome"):  # without exclude: refused
        trl_turn_advantages(trl_values, rollouts, rewards, group_size=4, **knobs)
    got, outcome = trl_turn_advantages(
        trl_values, rollouts, rewards, group_size=4, exclude=out, **knobs
    )
    torch.testing.assert_close(got.returns, adv.returns, atol=1e-6, rtol=0)
    assert not got.returns[1].any() and not got.returns[5].any()
    assert got.returns[0].abs().sum() > 0 and outcome[1] == 0.0 == outcome[5]


# ------------------------------------------------------------------ one real IGPOTrainer step

CORPUS = [
    ("d-paris", "Paris", "Paris is the capital and most populous city of France."),
    ("d-apollo", "Apollo 11", "Apollo 11 first landed humans on the Moon in July 1969."),
    ("d-hamlet", "Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
]
QA = [
    ("q-paris", "What is the capital of France?", ["Paris"]),
    ("q-apollo", "In which year did Apollo 11 land on the Moon?", ["1969"]),
]
QUERIES = ("capital of France", "Apollo 11 Moon", "Hamlet")


def _call(query: str) -> str:
    args = json.dumps({"name": "search", "arguments": {"query": query}})
    return f"<tool_call>\n{args}\n</tool_call>"


def test_igpo_trainer_step_trains_lora_with_token_advantages(
    tmp_path: Path, tiny_smol_model_path, monkeypatch
) -> None:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from igpo_agent.integrations.trl_igpo import IGPOConfig, IGPOTrainer
    from igpo_agent.model.loading import load_tokenizer
    from igpo_env.integrations.trl import (
        answer_reward,
        build_dataset,
        make_environment_factory,
        prepare_tokenizer,
    )

    monkeypatch.setenv("IGPO_CACHE", str(tmp_path / "cache"))
    corpus, qa = tmp_path / "corpus.jsonl", tmp_path / "qa.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in CORPUS)
    )
    qa.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "golden_answers": a, "dataset": "t"}) + "\n"
            for i, q, a in QA
        )
    )
    tok = prepare_tokenizer(load_tokenizer("default"))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_smol_model_path), dtype=torch.float32)
    args = IGPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=6,
        max_completion_length=512,
        gamma=0.9,
        **TINY_CPU_GRPO,
    )
    with pytest.raises(TypeError, match="IGPOConfig"):
        plain = trl.GRPOConfig(str(tmp_path), use_cpu=True, bf16=False, report_to="none")
        IGPOTrainer(model=model, reward_funcs=answer_reward, args=plain)
    trainer = IGPOTrainer(
        model=model,
        reward_funcs=answer_reward,
        args=args,
        train_dataset=build_dataset(str(qa)),
        processing_class=tok,
        environment_factory=make_environment_factory(
            "SearchQA-v0", qa=str(qa), corpus=str(corpus), top_k=1, doc_max_words=12
        ),
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for i, ids in enumerate(prompt_ids):
            text = tok.decode(ids)
            done = text.count("<tool_response>")
            if done == 0:  # first turn: rollout i of a group searches QUERIES[i % 3]
                reply = _call(QUERIES[i % 3])
            elif "Hamlet" in text.split("<|im_start|>assistant")[-2] and done == 1:
                reply = _call("William Shakespeare")  # a second search
            elif done == 2:
                reply = "I do not know."  # malformed final turn: format penalty
            else:  # answer after one search: right only when the search fit the question
                reply = f"{A}{'Paris' if chr(34) + QUERIES[0] + chr(34) in text else '1969'}{Z}"
            out.append(tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id])
        return out, None

    scored, losses = [], []
    generate, compute_loss = trainer._generate_and_score_completions, trainer._compute_loss

    def record_batch(inputs):
        out = generate(inputs)
        record = trainer.last_igpo
        # v_t recomputed independently (naive path, before the update) at the same prefixes
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        for i, ro in enumerate(record.rollouts):
            p = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
            c = out["completion_ids"][i][: ro.spans[-1][1]].tolist()
            spec = gold_spec(tok, inputs[i]["answers"][0], A, Z)
            naive = reencoded_beliefs(
                peft_model, [p + c], [ro.boundaries(len(p))], [spec], method="naive"
            )
            assert record.values[i] == pytest.approx(naive[0], abs=1e-4)
        scored.append((out["advantages"].clone(), out["tool_mask"].clone(), record))
        return out

    def record_loss(model, inputs):
        losses.append(inputs["advantages"].clone())
        return compute_loss(model, inputs)

    trainer._generate_single_turn = scripted
    trainer._generate_and_score_completions = record_batch
    trainer._compute_loss = record_loss
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora
    trainer.train()
    assert trainer.state.global_step == 1 and len(scored) == 1 and losses
    advantages, tool_mask, record = scored[0]
    assert advantages.dim() == 2 and all(a.dim() == 2 for a in losses)
    assert [r.num_turns for r in record.rollouts] == [2, 2, 3] * 2
    assert not any(r.malformed for r in record.rollouts)  # "I do not know.": the reward's -2
    assert record.outcome.tolist() == pytest.approx([1.0, 0.0, -2.0, 0.0, 1.0, -2.0])
    returns = record.advantages.returns
    for i, ro in enumerate(record.rollouts):
        row = advantages[i]
        assert not row[tool_mask[i] == 0].any()  # tool output never carries an advantage
        for t, (a, b) in enumerate(ro.spans):
            assert torch.all(row[a:b] == returns[i, t])
    assert not torch.allclose(returns[:, 0], returns[:, 1])  # IG: turns differ
    changed = [
        n for n, p in trainer.model.named_parameters() if n in lora and not torch.equal(p, lora[n])
    ]
    assert changed  # the (B, T) advantages reached the LoRA weights
    logged = [e for e in trainer.state.log_history if "igpo/ig_mean" in e]
    assert logged and logged[0]["igpo/turns_per_rollout"] == pytest.approx(14 / 6)
