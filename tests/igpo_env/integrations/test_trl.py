"""The TRL adapter: SearchQA as a GRPOTrainer environment, its tool, reward and helpers.

The GRPOTrainer test runs TRL's real tool-calling loop, reward computation and loss on a
tiny random model; only sampling is scripted (a random model never writes a tool call),
so the masks and rewards can be checked token by token against the env's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

trl = pytest.importorskip("trl")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import igpo_env  # noqa: E402,F401  (registers the ids)
from igpo_env.integrations.trl import (  # noqa: E402
    SearchQATool,
    answer_reward,
    build_dataset,
    cut_at_stop,
    make_environment_factory,
    prepare_tokenizer,
)
from igpo_env.retrievers.base import Hit, SearchError  # noqa: E402
from tests.fixtures import TINY_CPU_GRPO  # noqa: E402

QUERY = "capital of France"
TOOL_CALL = (
    '<tool_call>\n{"name": "search", "arguments": {"query": "capital of France"}}\n</tool_call>'
)
FINAL_TURNS = [
    "<answer>Paris</answer>",
    "<think>unsure</think><answer>Paris, France</answer>",
    "I think it is Lyon.",
]
SMALL = {"top_k": 2, "doc_max_words": 12}


def env_text(env_kwargs: dict, env_id: str, action: str, question: str, answers: list) -> tuple:
    """(observation, reward) of one ``env.step(action)`` on a fresh env: the reference."""
    env = gym.make(env_id, **env_kwargs)
    env.reset(options={"question": question, "answers": answers})
    obs, reward, *_ = env.step(action)
    prefix = env.unwrapped.protocol.observation_prefix
    suffix = env.unwrapped.protocol.observation_suffix
    return obs.removeprefix(prefix).removesuffix(suffix), reward


@pytest.fixture(scope="module")
def tokenizer():
    """The SmolLM2 tokenizer with TRL's tool-calling template."""
    from igpo_agent.model.loading import load_tokenizer

    return prepare_tokenizer(load_tokenizer("default"))


@pytest.fixture()
def tool(env_kwargs: dict) -> SearchQATool:
    t = make_environment_factory("SearchQA-v0", **SMALL, **env_kwargs)()
    t.reset(question="What is the capital of France?", answers=["Paris"])
    return t


class Raising:
    """A backend that fails the way a dead server or a bug would."""

    name = "raising"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        raise self.exc


class TooFew:
    name = "too-few"

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        return []


# ------------------------------------------------------------------ GRPOTrainer


def test_grpo_trainer_masks_tool_output_and_rewards_env_scores(
    tmp_path: Path, tokenizer, env_kwargs: dict, qa_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from igpo_agent.model.loading import build_tiny_model

    model_path = build_tiny_model(tokenizer, tmp_path / "tiny", seed=0)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=3,
        max_completion_length=256,
        **TINY_CPU_GRPO,
    )
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=answer_reward,
        args=args,
        train_dataset=build_dataset(str(qa_path), limit=2),
        processing_class=tokenizer,
        environment_factory=make_environment_factory("SearchQA-v0", **SMALL, **env_kwargs),
    )
    after_tool = "</tool_response><|im_end|>\n<|im_start|>assistant\n"

    def scripted(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        out = []
        for i, ids in enumerate(prompt_ids):
            tail = tokenizer.decode(ids[-20:])
            text = FINAL_TURNS[i % 3] if tail.endswith(after_tool) else TOOL_CALL
            out.append(tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id])
        return out, None

    rewards, losses = [], []
    calculate, compute_loss = trainer._calculate_rewards, trainer._compute_loss

    def record_rewards(inputs, prompts, completions, completion_ids_list):
        out = calculate(inputs, prompts, completions, completion_ids_list)
        rewards.append(([(x["question"], list(x["answers"])) for x in inputs], out[:, 0].tolist()))
        return out

    def record_loss(model, inputs):
        losses.append({k: inputs[k].clone() for k in ("completion_ids", "completion_mask")})
        losses[-1]["tool_mask"] = inputs["tool_mask"].clone()
        return compute_loss(model, inputs)

    trainer._generate_single_turn = scripted
    trainer._calculate_rewards = record_rewards
    trainer._compute_loss = record_loss
    start = time.perf_counter()
    trainer.train()
    assert time.perf_counter() - start < 120
    assert trainer.state.global_step == 2 and len(rewards) == 2 and len(losses) == 2

    docs, _ = env_text(env_kwargs | SMALL, "SearchQA-v0", f"<search>{QUERY}</search>", "q", ["a"])
    assert docs.startswith("Doc 1 (Title: Paris)")
    logs = [entry for entry in trainer.state.log_history if "rewards/answer_reward/mean" in entry]
    for step, ((rows, got), batch) in enumerate(zip(rewards, losses, strict=True)):
        # rewards: the env's own reward for the same final turn, per rollout
        expected = [
            env_text(env_kwargs | SMALL, "SearchQA-v0", FINAL_TURNS[i % 3], q, a)[1]
            for i, (q, a) in enumerate(rows)
        ]
        assert got == pytest.approx(expected)
        assert logs[step]["rewards/answer_reward/mean"] == pytest.approx(sum(expected) / 3)
        # masks: the model's tokens are trained, the tool response (env documents) never is;
        # TRL may reorder the rollouts of a batch before the loss, so compare as multisets
        model_texts, model_lengths = [], []
        for i in range(3):
            ids, mask, tool = (
                batch[k][i] for k in ("completion_ids", "completion_mask", "tool_mask")
            )
            model_ids = ids[(mask * tool).bool()].tolist()
            tool_ids = ids[(mask * (1 - tool)).bool()].tolist()
            assert tokenizer.decode(tool_ids) == (
                f"\n<|im_start|>user\n<tool_response>\n{docs}\n</tool_response><|im_end|>\n"
                "<|im_start|>assistant\n"
            )
            model_texts.append(tokenizer.decode(model_ids))
            model_lengths.append(len(model_ids))
        assert sorted(model_texts) == sorted(
            f"{TOOL_CALL}<|im_end|>{t}<|im_end|>" for t in FINAL_TURNS
        )
        # TRL counts only model tokens as completion length
        assert logs[step]["completions/mean_length"] == pytest.approx(sum(model_lengths) / 3)
    assert {r[0][0][0] for r in rewards} == {
        "What is the capital of France?",
        "In which year did Apollo 11 land on the Moon?",
    }
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the loss reached the weights


# ------------------------------------------------------------------ the search tool


@pytest.mark.parametrize("env_id", ["SearchQA-v0", "SearchQA-ToolCall-v0"])
def test_search_returns_the_documents_the_env_shows(env_kwargs: dict, env_id: str) -> None:
    t = make_environment_factory(env_id, **SMALL, **env_kwargs)()
    t.reset(question="Who wrote Hamlet?", answers=["Shakespeare"])
    action = (
        f"<search>{QUERY}</search>"
        if env_id == "SearchQA-v0"
        else f"<tool_call>{json.dumps({'name': 'web_search', 'arguments': {'query': [QUERY]}})}</tool_call>"
    )
    expected, _ = env_text(env_kwargs | SMALL, env_id, action, "q", ["a"])
    assert t.search(QUERY) == expected
    assert expected.count("Doc ") == 2 and "<information>" not in expected
    assert t.searches[-1]["doc_ids"][0] == "d-paris" and not t.searches[-1]["failed"]


@pytest.mark.parametrize("query", ["", "   \n\t "])
def test_empty_query_is_an_observation(tool: SearchQATool, query: str) -> None:
    obs = tool.search(query)
    assert obs.startswith("Invalid search: empty query.") and "<answer>" in obs
    assert tool.searches[-1]["failed"] and tool.searches[-1]["doc_ids"] == []


@pytest.mark.parametrize("query", [None, 5, ["capital of France"], {"q": "x"}])
def test_non_string_query_is_an_observation(tool: SearchQATool, query) -> None:
    obs = tool.search(query)
    assert obs.startswith("Invalid search: the query must be a string, got ")


def test_huge_query_is_capped_like_the_env_caps_it(tool: SearchQATool, env_kwargs: dict) -> None:
    words = ["capital", "France"] + [f"w{i}" for i in range(200_000)]  # ~1.5 MB
    start = time.perf_counter()
    obs = tool.search(" ".join(words))
    assert time.perf_counter() - start < 2.0
    record = tool.searches[-1]
    assert record["truncated"] and len(record["sent"]) <= 2_000 and not record["failed"]
    expected, _ = env_text(
        env_kwargs | SMALL, "SearchQA-v0", f"<search>{record['sent']}</search>", "q", ["a"]
    )
    assert obs == expected and obs.startswith("Doc 1 (Title: Paris)")


@pytest.mark.parametrize(
    "backend",
    [Raising(SearchError("server down")), Raising(RuntimeError("bug in backend")), TooFew()],
)
def test_failing_backend_is_an_observation(backend, qa_path: Path) -> None:
    t = SearchQATool(gym.make("SearchQA-v0", qa=str(qa_path), retriever=backend))
    t.reset(question="q?", answers=["a"])
    obs = t.search(QUERY)
    assert obs.startswith("search failed: ")
    assert t.searches[-1]["failed"] and t.searches[-1]["error"]
    if isinstance(backend, Raising) and isinstance(backend.exc, SearchError):
        env = gym.make("SearchQA-v0", qa=str(qa_path), retriever=backend)
        env.reset(options={"index": 0})
        env_obs = env.step(f"<search>{QUERY}</search>")[0]
        assert env_obs == f"\n\n<information>{obs}</information>\n\n"  # the env's wording


def test_a_failed_backend_search_is_reported_not_rewarded(qa_path: Path, caplog) -> None:
    """A rollout whose search hit a dead server (real HTTP, nothing listening) gets no
    reward (TRL: unscorable), and the batch's failures are logged; a bad query is the
    agent's own failure and is scored as usual."""
    from igpo_env.retrievers import make_retriever

    dead = make_retriever("http", url="http://127.0.0.1:9", max_retries=0, timeout_s=2.0)
    env = gym.make("SearchQA-v0", qa=str(qa_path), retriever=dead)
    tools = [SearchQATool(env) for _ in range(3)]
    for t in tools:
        t.reset(question="What is the capital of France?", answers=["Paris"])
    assert tools[0].search(QUERY).startswith("search failed: ")
    tools[1].search("   ")  # an empty query: invalid, not a backend failure
    assert tools[0].search_failures == 1 and tools[0].searches[-1]["backend_failed"]
    assert tools[1].search_failures == 0 and tools[1].searches[-1]["failed"]
    completions = [[{"role": "assistant", "content": "<answer>Paris</answer>"}]] * 3
    logged: dict[str, float] = {}
    with caplog.at_level("WARNING", logger="igpo_env.integrations.trl"):
        got = answer_reward(completions, environments=tools, log_metric=logged.__setitem__)
    assert got == [None, 1.0, 1.0] and tools[0].reward is None
    assert logged["searchqa/search_failures"] == 1.0
    assert logged["searchqa/search_failure_rate"] == 0.5  # 1 of 2 search calls
    assert logged["searchqa/unscored"] == pytest.approx(1 / 3)
    assert "1 of 2 searches failed in the search backend" in caplog.text
    assert "connection error" in caplog.text


def test_only_search_is_exposed_as_a_tool() -> None:
    import inspect

    public = {
        n for n, _ in inspect.getmembers(SearchQATool, inspect.isfunction) if not n.startswith("_")
    }
    assert public == {"reset", "search"}
    from transformers.utils import get_json_schema

    schema = get_json_schema(SearchQATool.search)["function"]
    assert schema["name"] == "search"
    assert schema["parameters"]["properties"] == {
        "query": {
            "type": "string",
            "description": 'A short search query, e.g. "capital of France".',
        }
    }


# ------------------------------------------------------------------ reset, reward, dataset


def test_reset_validates_the_row(tool: SearchQATool) -> None:
    with pytest.raises(ValueError, match="'question'"):
        tool.reset(question="", answers=["a"])
    with pytest.raises(ValueError, match="'answers'"):
        tool.reset(question="q?", answers=[])
    with pytest.raises(ValueError, match="'answers'"):
        tool.reset(question="q?")
    assert tool.reset(question="q?", answers="Paris", prompt=[], qid="x") is None
    assert tool.answers == ["Paris"] and tool.searches == []


def test_dataset_rows_and_first_search(env_kwargs: dict, qa_path: Path) -> None:
    rows = build_dataset(str(qa_path), limit=3)
    assert len(rows) == 3 and rows.column_names == [
        "prompt",
        "question",
        "answers",
        "qid",
        "dataset",
    ]
    row = rows[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["prompt"][-1]["content"].endswith("Question: What is the capital of France?")
    assert row["answers"] == ["Paris"] and row["qid"] == "q-paris"
    plain = make_environment_factory("SearchQA-v0", **SMALL, **env_kwargs)()
    assert plain.reset(**row) is None and plain.searches == []
    first = make_environment_factory("SearchQA-v0", first_search=True, **SMALL, **env_kwargs)()
    appended = first.reset(**row)
    assert appended == "\n\nSearch results for the question:\n" + plain.search(row["question"])
    assert "Doc 1 (Title: Paris)" in appended and len(first.searches) == 1
    assert first.searches[0]["query"] == "What is the capital of France?"
    with pytest.raises(ValueError, match="limit"):
        build_dataset(str(qa_path), limit=0)


@pytest.mark.parametrize(
    "env_args",
    [{}, {"reward_metric": "em"}, {"reward_metric": "cover_em", "normalization": "igpo"}],
)
def test_answer_reward_equals_env_step(env_kwargs: dict, env_args: dict) -> None:
    turns = [
        "<answer>Paris</answer>",
        "<answer>the city of Paris, France</answer>",
        "<think>hmm</think> <answer>Lyon</answer>",
        "<answer></answer>",
        "no tags at all",
        "<answer>Paris</answer> trailing text <answer>Lyon</answer>",
        "<answer>Lyon</answer><search>Paris</search>",
        "<search>capital of France</search>",
        "",
    ]
    factory = make_environment_factory("SearchQA-v0", **env_args, **env_kwargs)
    envs = [factory() for _ in turns]
    for e in envs:
        e.reset(question="What is the capital of France?", answers=["Paris"])
    completions = [[{"role": "assistant", "content": t}] for t in turns]
    logged: dict[str, float] = {}
    got = answer_reward(completions, environments=envs, log_metric=logged.__setitem__)
    kwargs = env_kwargs | env_args
    # the env scores a turn cut at its first stop string (its generators stop there)
    cut = [cut_at_stop(t, ("</search>", "</answer>")) for t in turns]
    assert cut[5] == "<answer>Paris</answer>" and cut[6] == "<answer>Lyon</answer>"
    expected = [
        env_text(kwargs, "SearchQA-v0", t, "What is the capital of France?", ["Paris"])[1]
        for t in cut
    ]
    assert got == pytest.approx(expected)
    assert -2.0 in got and 1.0 in got
    assert logged["searchqa/answered"] == pytest.approx(6 / 9)


def test_answer_reward_reads_reasoning_and_tool_endings(tool: SearchQATool) -> None:
    completions = [
        [
            {
                "role": "assistant",
                "reasoning_content": "It is Paris.",
                "content": "<answer>Paris</answer>",
            }
        ],
        [{"role": "assistant", "content": "", "tool_calls": [{"type": "function"}]}],
        [{"role": "assistant", "content": "x"}, {"role": "tool", "name": "search", "content": "d"}],
        "<answer>Paris</answer>",
    ]
    envs = [tool] + [make_environment_factory(tool.env)() for _ in range(3)]
    for e in envs:
        e.reset(question="What is the capital of France?", answers=["Paris"])
    assert answer_reward(completions, environments=envs) == [1.0, 0.0, 0.0, 1.0]
    assert envs[0].metrics == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}
    with pytest.raises(ValueError, match="environment_factory"):
        answer_reward(completions)
    with pytest.raises(ValueError, match="pair up"):
        answer_reward(completions, environments=envs[:2])


def test_factory_rejects_bad_configuration(env_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="top_k"):
        make_environment_factory("SearchQA-v0", top_k=0, **env_kwargs)
    with pytest.raises(TypeError, match="SearchQA"):
        make_environment_factory(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="env_kwargs"):
        make_environment_factory(gym.make("SearchQA-v0", **env_kwargs), top_k=2)


# ------------------------------------------------------------------ tokenizer, optional TRL


def test_prepare_tokenizer_gives_smollm2_a_tool_template(tokenizer) -> None:
    from trl.chat_template_utils import is_chat_template_prefix_preserving, supports_tool_calling

    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)
    assert tokenizer.padding_side == "left" and tokenizer.eos_token == "<|im_end|>"


def test_prepare_tokenizer_rejects_a_non_chatml_tokenizer() -> None:
    from igpo_agent.model.loading import build_bpe_tokenizer

    bpe = build_bpe_tokenizer(["plain text without any chat markup"] * 20, vocab_size=300)
    with pytest.raises(ValueError, match="tool-calling template"):
        prepare_tokenizer(bpe)


def test_module_imports_without_trl_and_names_the_extra(monkeypatch) -> None:
    code = (
        "import sys; import igpo_env.integrations.trl as m; "
        "assert 'trl' not in sys.modules and 'datasets' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.setitem(sys.modules, "trl.chat_template_utils", None)
    with pytest.raises(ImportError, match=r"pip install igpo\[trl\]"):
        build_dataset("default:train", limit=1)
    with pytest.raises(ImportError, match=r"pip install igpo\[trl\]"):
        prepare_tokenizer(object())
