"""SearchQAEnv behaviour on the fixture corpus with the real bm25s backend."""

from __future__ import annotations

import gymnasium as gym
import pytest

import igpo_env  # noqa: F401  (registers the ids)
from igpo_env.data import QAExample
from igpo_env.env import SearchQAEnv
from igpo_env.retrievers import make_retriever
from igpo_env.retrievers.base import Hit


def make(env_kwargs: dict, **kw) -> SearchQAEnv:
    return SearchQAEnv(**{**env_kwargs, **kw})


def test_reset_info_carries_what_the_learner_needs(env_kwargs: dict) -> None:
    env = make(env_kwargs)
    obs, info = env.reset(seed=0, options={"index": 2})
    assert obs.endswith("Question: Who wrote Hamlet?\n")
    assert "<search>" in obs  # the prompt teaches the protocol
    assert info["answers"] == ["William Shakespeare", "Shakespeare"]
    assert info["qid"] == "q-hamlet"
    assert info["dataset"] == "fixture"
    assert info["question"] == "Who wrote Hamlet?"
    assert info["index"] == 2
    assert info["protocol"]["answer_prefix"] == "<answer>"
    assert info["protocol"]["answer_suffix"] == "</answer>"
    assert info["protocol"]["stop"] == ["</search>", "</answer>"]
    assert obs in env.observation_space


def test_search_then_answer_full_episode(env_kwargs: dict) -> None:
    env = make(env_kwargs, top_k=2, doc_max_words=5)
    env.reset(seed=0, options={"index": 1})
    obs, reward, terminated, truncated, info = env.step(
        "<think>Look it up.</think><search>Apollo 11 Moon landing year</search>"
    )
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert obs.startswith(
        "\n\n<information>Doc 1 (Title: Apollo 11) Apollo 11 was the spaceflight ..."
    )
    assert obs.count("Doc ") <= 2
    assert info["action"] == "search" and info["valid"] and info["turn"] == 0
    assert info["query"] == "Apollo 11 Moon landing year" and info["think"] == "Look it up."
    assert info["doc_ids"][0] == "d-apollo" and len(info["doc_ids"]) == len(info["scores"]) <= 2
    assert info["scores"] == sorted(info["scores"], reverse=True)
    assert info["search_failed"] is False and "metrics" not in info

    obs, reward, terminated, truncated, info = env.step("<answer>July 1969</answer>")
    assert obs == "" and terminated and not truncated
    assert reward == 1.0  # exact alias "July 1969"
    assert info["action"] == "answer" and info["answer"] == "July 1969" and info["turn"] == 1
    assert info["metrics"] == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}


@pytest.mark.parametrize(
    ("metric", "answer", "expected"),
    [
        ("f1", "the year 1969", 2 / 3),  # [year, 1969] vs [1969]: P = 1/2, R = 1
        ("em", "the year 1969", 0.0),
        ("cover_em", "the year 1969", 1.0),
        ("f1", "1970", 0.0),
    ],
)
def test_reward_metric_choice(env_kwargs: dict, metric: str, answer: str, expected: float) -> None:
    env = make(env_kwargs, reward_metric=metric)
    env.reset(options={"index": 1})
    _, reward, terminated, _, _ = env.step(f"<answer>{answer}</answer>")
    assert terminated and reward == pytest.approx(expected)


def test_igpo_normalization_option(env_kwargs: dict) -> None:
    env = make(env_kwargs, normalization="igpo")
    env.reset(options={"question": "Which band?", "answers": ["Beatles"]})
    _, reward, _, _, info = env.step("<answer>The Beatles</answer>")
    assert reward == pytest.approx(2 / 3)  # articles kept: {the, beatles} vs {beatles}
    squad = make(env_kwargs)
    squad.reset(options={"question": "Which band?", "answers": ["Beatles"]})
    assert squad.step("<answer>The Beatles</answer>")[1] == 1.0


def test_invalid_turn_continue_then_recover(env_kwargs: dict) -> None:
    env = make(env_kwargs)
    env.reset(options={"index": 0})
    obs, reward, terminated, truncated, info = env.step("I think it is Paris.")
    assert reward == -2.0 and not terminated and not truncated
    assert info["action"] == "invalid" and info["valid"] is False
    assert "no action" in info["error"]
    assert obs.startswith("\n\n<information>Invalid action: no action")
    _, reward, terminated, _, info = env.step("<answer>Paris</answer>")
    assert terminated and reward == 1.0 and info["turn"] == 1


def test_invalid_turn_terminate_and_custom_penalty(env_kwargs: dict) -> None:
    env = make(env_kwargs, on_invalid="terminate", format_penalty=-0.5)
    env.reset(options={"index": 0})
    obs, reward, terminated, _, info = env.step("<search>a</search><search>b</search>")
    assert terminated and reward == -0.5 and "several actions" in info["error"]
    assert "Invalid action" in obs


def test_search_error_becomes_an_observation_and_the_episode_goes_on(env_kwargs: dict) -> None:
    # a real HTTP backend aimed at a port where nothing listens, no retries
    dead = make_retriever("http", url="http://127.0.0.1:9", max_retries=0, timeout_s=2.0)
    env = SearchQAEnv(qa=env_kwargs["qa"], retriever=dead)
    env.reset(options={"index": 0})
    obs, reward, terminated, _, info = env.step("<search>capital of France</search>")
    assert obs.startswith("\n\n<information>search failed: ")
    assert reward == 0.0 and not terminated
    assert info["search_failed"] is True and info["search_error"] and info["doc_ids"] == []
    _, reward, terminated, _, _ = env.step("<answer>Paris</answer>")
    assert terminated and reward == 1.0


def test_failed_searches_are_counted_per_episode(env_kwargs: dict) -> None:
    dead = make_retriever("http", url="http://127.0.0.1:9", max_retries=0, timeout_s=2.0)
    env = SearchQAEnv(qa=env_kwargs["qa"], retriever=dead)
    env.reset(options={"index": 0})
    counts = [env.step("<search>capital of France</search>")[4]["search_failures"]]
    counts.append(env.step("<search>Seine</search>")[4]["search_failures"])
    counts.append(env.step("not an action")[4]["search_failures"])  # invalid: no search
    assert counts == [1, 2, 2]
    env.reset(options={"index": 1})  # a new episode starts at 0
    info = env.step("<answer>1969</answer>")[4]
    assert info["search_failures"] == 0 and info["search_failed"] is False


class _WrongLengthRetriever:
    name = "wrong-length"

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        return []


def test_backend_returning_wrong_shape_is_a_search_failure(env_kwargs: dict) -> None:
    env = SearchQAEnv(qa=env_kwargs["qa"], retriever=_WrongLengthRetriever())
    env.reset(options={"index": 0})
    obs, _, _, _, info = env.step("<search>x</search>")
    assert info["search_failed"] and "0 result lists for 1 queries" in obs


def test_tool_call_protocol_multi_query(env_kwargs: dict) -> None:
    env = make(env_kwargs, protocol="tool_call", top_k=1)
    obs, info = env.reset(options={"index": 0})
    assert info["protocol"]["stop"] == ["</tool_call>", "</answer>"]
    assert "web_search" in obs
    turn = '<tool_call>{"name": "web_search", "arguments": {"query": ["capital of France", "capital of Japan"]}}</tool_call>'
    obs, reward, terminated, _, info = env.step(turn)
    assert reward == 0.0 and not terminated
    assert info["queries"] == ["capital of France", "capital of Japan"]
    assert info["doc_ids"] == ["d-paris", "d-tokyo"]  # flat, query after query
    assert obs.startswith("\n\n<tool_response>") and 'Results for "capital of Japan"' in obs


def test_reset_options_question_and_index(env_kwargs: dict) -> None:
    env = make(env_kwargs)
    obs, info = env.reset(
        options={
            "question": "Who painted the Mona Lisa?",
            "answers": "Leonardo da Vinci",
            "qid": "x1",
        }
    )
    assert obs.endswith("Question: Who painted the Mona Lisa?\n")
    assert info["answers"] == ["Leonardo da Vinci"] and info["qid"] == "x1" and info["index"] == -1
    assert env.reset(options={"index": -1})[1]["qid"] == "q-tokyo"


def test_same_seed_same_question_and_all_questions_reachable(env_kwargs: dict) -> None:
    env = make(env_kwargs)
    first = [env.reset(seed=s)[1]["qid"] for s in range(30)]
    assert first == [env.reset(seed=s)[1]["qid"] for s in range(30)]
    env.reset(seed=123)
    drawn = {env.reset()[1]["qid"] for _ in range(200)}
    assert len(drawn) == 7  # unseeded resets continue the seeded stream over all questions


def test_qa_and_retriever_instances(env_kwargs: dict, corpus_path) -> None:
    retriever = make_retriever("bm25", corpus=str(corpus_path))
    qa = [QAExample(id="a", question="Capital of Germany?", answers=("Berlin",))]
    env = SearchQAEnv(qa=qa, retriever=retriever)
    assert env.retriever is retriever
    _, info = env.reset(seed=1)
    assert info["qid"] == "a" and info["dataset"] == "unknown"
    assert env.step("<search>capital of Germany</search>")[4]["doc_ids"][0] == "d-berlin"


def test_local_backends_are_built_once_per_process(env_kwargs: dict) -> None:
    a, b = make(env_kwargs), make(env_kwargs)
    assert a.retriever is b.retriever
    assert a.examples is b.examples


def test_render_ansi_transcript(env_kwargs: dict) -> None:
    env = make(env_kwargs, render_mode="ansi")
    obs, _ = env.reset(options={"index": 0})
    step_obs = env.step("<search>Paris</search>")[0]
    assert env.render() == obs + "<search>Paris</search>" + step_obs
    assert make(env_kwargs).render() is None


def test_time_limit_truncates_at_four_turns(env_kwargs: dict) -> None:
    env = gym.make("SearchQA-v0", **env_kwargs)
    env.reset(seed=0)
    flags = [env.step("<search>France</search>")[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]


def test_sync_vector_env(env_kwargs: dict) -> None:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("SearchQA-v0", **env_kwargs)] * 3)
    obs, infos = envs.reset(seed=[1, 2, 3])
    assert len(obs) == 3 and all(o in envs.single_observation_space for o in obs)
    assert len(infos["answers"]) == 3 and infos["protocol"]["answer_suffix"][0] == "</answer>"
    obs, rewards, term, trunc, infos = envs.step(
        ("<search>capital city</search>", "<answer>Paris</answer>", "bad turn")
    )
    assert rewards[0] == 0.0 and 0.0 <= rewards[1] <= 1.0 and rewards[2] == -2.0
    assert list(term) == [False, True, False]
    assert list(infos["action"]) == ["search", "answer", "invalid"]
    assert "<information>Doc 1" in obs[0] and obs[1] == ""
    assert list(infos["_metrics"]) == [False, True, False]
    assert infos["metrics"]["f1"][1] == rewards[1]
    envs.close()


def test_async_vector_env_builds_retrievers_in_workers(env_kwargs: dict) -> None:
    fns = [lambda: gym.make("SearchQA-v0", **env_kwargs)] * 2
    envs = gym.vector.AsyncVectorEnv(fns, shared_memory=False)
    try:
        obs, infos = envs.reset(seed=[5, 6])
        sync = gym.vector.SyncVectorEnv(fns)
        sync_obs, sync_infos = sync.reset(seed=[5, 6])
        assert tuple(obs) == tuple(sync_obs)
        assert list(infos["qid"]) == list(sync_infos["qid"])
        step = ("<search>highest mountain</search>", "<answer>x</answer>")
        a, s = envs.step(step), sync.step(step)
        assert tuple(a[0]) == tuple(s[0]) and list(a[1]) == list(s[1])
        assert list(a[4]["doc_ids"][0]) == list(s[4]["doc_ids"][0])
        assert a[4]["doc_ids"][0][0] == "d-everest"
        sync.close()
    finally:
        envs.close()


def test_async_vector_env_with_spawned_workers(env_kwargs: dict) -> None:
    """Spawned workers share nothing with the parent: each builds its own retriever.

    They have not imported igpo_env either, hence the ``igpo_env:`` prefix on the id.
    """
    fns = [lambda: gym.make("igpo_env:SearchQA-ToolCall-v0", **env_kwargs)] * 2
    envs = gym.vector.AsyncVectorEnv(fns, shared_memory=False, context="spawn")
    try:
        _, infos = envs.reset(seed=[0, 0])
        assert infos["qid"][0] == infos["qid"][1]
        call = (
            '<tool_call>{"name": "web_search", "arguments": {"query": ["Nile river"]}}</tool_call>'
        )
        _, rewards, _, _, infos = envs.step((call, "<answer>x</answer>"))
        assert infos["doc_ids"][0][0] == "d-nile" and list(infos["action"]) == ["search", "answer"]
    finally:
        envs.close()


def test_gold_retrieved_says_whether_a_shown_document_held_the_answer(env_kwargs: dict) -> None:
    env = make(env_kwargs, top_k=1, doc_max_words=40)
    env.reset(seed=0, options={"index": 1})  # gold "1969" / "July 1969"
    _, _, _, _, info = env.step("<search>Apollo 11 Moon landing</search>")
    assert info["doc_ids"] == ["d-apollo"] and info["gold_retrieved"] is True
    _, _, _, _, info = env.step("<search>Hamlet play author</search>")
    assert info["doc_ids"][0] != "d-apollo" and info["gold_retrieved"] is False
    _, _, _, _, info = env.step("<answer>1969</answer>")
    assert info["gold_retrieved"] is False  # only search turns retrieve
    # the document as the agent reads it: cut before the year, the gold is not there
    short = make(env_kwargs, top_k=1, doc_max_words=3)
    short.reset(seed=0, options={"index": 1})
    _, _, _, _, info = short.step("<search>Apollo 11 Moon landing</search>")
    assert info["doc_ids"] == ["d-apollo"] and info["gold_retrieved"] is False


def test_reset_info_names_the_article(tmp_path, corpus_path) -> None:
    import json

    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": "1", "question": "Q?", "golden_answers": ["a"], "metadata": {"title": "Art"}},
        {"id": "2", "question": "R?", "golden_answers": ["b"], "dataset": "nq"},
    ]
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = SearchQAEnv(qa=str(qa), corpus=str(corpus_path))
    assert env.reset(options={"index": 0})[1]["article"] == "Art"
    assert env.reset(options={"index": 1})[1]["article"] == ""
    assert [e.stratum for e in env.examples] == ["Art", "nq"]
