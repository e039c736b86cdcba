"""Every registered id: gym.make, check_env, same-seed determinism; fresh-interpreter make."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import igpo_env
from igpo_env.spaces import FreeText

ROOT = Path(__file__).resolve().parents[2]
LOCAL_IDS = ["SearchQA-v0", "SearchQA-Dense-v0", "SearchQA-ToolCall-v0"]
ALL_IDS = [*LOCAL_IDS, "SearchQA-HTTP-v0", "SearchQA-Web-v0"]


def _needs_dense(env_id: str) -> None:
    if "Dense" in env_id and importlib.util.find_spec("igpo_env.retrievers.dense") is None:
        pytest.skip("the dense backend (igpo_env/retrievers/dense.py) is not in this checkout")


@pytest.fixture()
def kwargs_for(env_kwargs: dict, retrieve_server: str, searxng_server: str):
    """gym.make kwargs that run each id on fixture data or a loopback server."""

    def get(env_id: str) -> dict:
        if env_id == "SearchQA-HTTP-v0":
            return {"qa": env_kwargs["qa"], "url": retrieve_server}
        if env_id == "SearchQA-Web-v0":
            return {
                "qa": env_kwargs["qa"],
                "url": searxng_server,
                "retriever_kwargs": {"rate_limit": None},
            }
        return dict(env_kwargs)

    return get


def test_ids_registered_with_turn_limit_and_lazy_entry_point() -> None:
    assert set(igpo_env.ENV_IDS) == set(ALL_IDS)
    for env_id in ALL_IDS:
        spec = gym.spec(env_id)
        assert spec.entry_point == "igpo_env.env:SearchQAEnv"
        assert spec.max_episode_steps == 4
        assert spec.kwargs["qa"] == "default:train"
        assert spec.nondeterministic is (env_id == "SearchQA-Web-v0")
    assert gym.spec("SearchQA-ToolCall-v0").kwargs["protocol"] == "tool_call"
    assert gym.spec("SearchQA-Dense-v0").kwargs["retriever"] == "dense"


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env_passes_without_warnings(env_id: str, kwargs_for) -> None:
    _needs_dense(env_id)
    env = gym.make(env_id, **kwargs_for(env_id))
    assert isinstance(env.observation_space, FreeText)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


SCRIPT = [
    "<think>Start broad.</think><search>capital city</search>",
    "no tags at all",
    "<search>Apollo Moon 1969</search>",
    "<answer>Paris</answer>",
]
TOOL_SCRIPT = [
    '<tool_call>{"name": "web_search", "arguments": {"query": ["capital", "Moon"]}}</tool_call>',
    "no tags at all",
    '<tool_call>{"name": "web_search", "arguments": {"query": ["river Africa"]}}</tool_call>',
    "<answer>Paris</answer>",
]


def _rollout(env: gym.Env, seed: int, script: list[str]) -> list:
    obs, info = env.reset(seed=seed)
    out = [obs, json.dumps(info, sort_keys=True)]
    for action in script:
        obs, reward, terminated, truncated, info = env.step(action)
        out += [obs, reward, terminated, truncated, json.dumps(info, sort_keys=True)]
        if terminated or truncated:
            break
    return out


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_same_seed_same_episode(env_id: str, kwargs_for) -> None:
    _needs_dense(env_id)
    script = TOOL_SCRIPT if "ToolCall" in env_id else SCRIPT
    a = gym.make(env_id, **kwargs_for(env_id))
    b = gym.make(env_id, **kwargs_for(env_id))
    for seed in (0, 1, 2):
        first = _rollout(a, seed, script)
        assert first == _rollout(b, seed, script)
        assert first == _rollout(a, seed, script)  # and on the same instance again
        assert "Doc 1 (Title:" in first[2]  # the first search really retrieved documents
    assert len({a.reset(seed=s)[1]["qid"] for s in range(10)}) > 1  # seeds pick questions


def test_gym_make_from_a_fresh_interpreter(env_kwargs: dict) -> None:
    code = (
        "import gymnasium as gym, json, sys\n"
        "env = gym.make('igpo_env:SearchQA-v0', retriever='bm25-rank', **json.loads(sys.argv[1]))\n"
        "obs, info = env.reset(seed=0)\n"
        "out = env.step('<search>capital of France</search>')\n"
        "print(json.dumps([env.spec.id, env.spec.max_episode_steps, out[4]['doc_ids'][0]]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(env_kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["SearchQA-v0", 4, "d-paris"]


@pytest.mark.slow
def test_default_id_on_the_shipped_data() -> None:
    """SearchQA-v0 exactly as registered: shipped corpus, default:train, bm25s."""
    env = gym.make("SearchQA-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert info["dataset"] and info["answers"] and obs.endswith(f"Question: {info['question']}\n")
    _, _, _, _, step_info = env.step(f"<search>{info['question']}</search>")
    assert len(step_info["doc_ids"]) == 3
    _, reward, terminated, _, _ = env.step(f"<answer>{info['answers'][0]}</answer>")
    assert terminated and reward == 1.0
