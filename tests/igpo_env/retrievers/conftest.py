"""Shared fixtures: a small real corpus (hand-written passages) and an isolated cache dir."""

from __future__ import annotations

import pytest

from igpo_env.data import Document

PASSAGES = [
    ("Paris", "Paris is the capital and most populous city of France, on the river Seine."),
    ("Berlin", "Berlin is the capital of Germany and its largest city by population."),
    (
        "Mount Everest",
        "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    ),
    (
        "Python (programming language)",
        "Python is a high-level programming language created by Guido van Rossum.",
    ),
    (
        "Photosynthesis",
        "Photosynthesis converts light energy into chemical energy in plants and algae.",
    ),
    ("Amazon River", "The Amazon River in South America is the largest river by discharge volume."),
    (
        "Marie Curie",
        "Marie Curie was a physicist and chemist who researched radioactivity; she won two Nobel prizes.",
    ),
    (
        "Tokyo",
        "Tokyo is the capital of Japan and the most populous metropolitan area in the world.",
    ),
    (
        "Jupiter",
        "Jupiter is the fifth planet from the Sun and the largest planet in the Solar System.",
    ),
    (
        "Café Müller",
        "Café Müller is a dance piece by Pina Bausch; the name means Müller's café in German.",
    ),
    (
        "Beethoven",
        "Ludwig van Beethoven was a German composer; his ninth symphony ends with a choral finale.",
    ),
    (
        "Great Wall of China",
        "The Great Wall of China is a series of fortifications built across northern China.",
    ),
]


@pytest.fixture
def docs() -> list[Document]:
    return [Document(id=f"d{i}", title=t, text=x) for i, (t, x) in enumerate(PASSAGES)]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Indexes go to a per-test folder, and memoised backends do not leak between tests."""
    monkeypatch.setenv("IGPO_CACHE", str(tmp_path / "igpo-cache"))
    from igpo_env.retrievers.builtin import clear_memo

    clear_memo()
    yield
    clear_memo()
