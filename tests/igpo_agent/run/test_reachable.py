"""Reachable training questions: a first search with the question retrieves the gold."""

from __future__ import annotations

import json

import pytest

import igpo_env  # noqa: F401  (registers the ids)
from igpo_agent.run import reachable as R
from tests.fixtures import write_corpus, write_qa

DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France."),
    ("d2", "Nile", "The Nile is a major river in northeastern Africa."),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "Which planet is the largest?", ["Jupiter"]),  # in no document
    ("q3", "Which major river is in northeastern Africa?", ["Nile"]),
]
ENV = "igpo_env:SearchQA-v0"


@pytest.fixture
def kwargs(tmp_path, monkeypatch):
    monkeypatch.setenv(R.CACHE_ENV, str(tmp_path / "cache"))
    qa = write_qa(tmp_path / "qa.jsonl", QA)
    return {"qa": qa, "corpus": write_corpus(tmp_path / "c.jsonl", DOCS), "top_k": 1}


def test_finds_the_reachable_questions_and_caches_them(kwargs, tmp_path, monkeypatch):
    assert R.reachable_indices(ENV, kwargs, progress=False) == [0, 2]
    files = list((tmp_path / "cache").glob("reachable-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["indices"] == [0, 2]

    def boom(*a, **k):
        raise AssertionError("the cached list should have been read")

    monkeypatch.setattr(R, "_scan", boom)
    assert R.reachable_indices(ENV, kwargs, progress=False) == [0, 2]


def test_the_cache_key_follows_the_retrieval_settings(kwargs):
    questions = [("q", ["a"])]
    assert R.cache_key(kwargs, questions) == R.cache_key(dict(kwargs), questions)
    assert R.cache_key(kwargs, questions) != R.cache_key({**kwargs, "top_k": 2}, questions)
    assert R.cache_key(kwargs, questions) != R.cache_key(kwargs, [("q", ["b"])])


def test_a_failed_search_is_an_error_not_unreachable(kwargs, monkeypatch):
    monkeypatch.setenv("IGPO_HTTP_MAX_RETRIES", "0")
    bad = {**kwargs, "retriever": "http", "url": "http://127.0.0.1:9/retrieve"}
    bad.pop("corpus")
    with pytest.raises(RuntimeError, match="failed"):
        R.reachable_indices(ENV, bad, use_cache=False, progress=False)
