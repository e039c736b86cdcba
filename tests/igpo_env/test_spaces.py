"""FreeText really contains free text, samples reproducibly and batches for vector envs."""

from __future__ import annotations

import pickle

import pytest
from gymnasium.spaces import Text, Tuple
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from igpo_env.spaces import FreeText

REAL_TEXT = (
    '\n\n<information>Doc 1 (Title: "Zürich") It\'s 1,234 m² — “quoted”\ttab</information>\n\n'
)


def test_contains_real_text_that_spaces_text_rejects() -> None:
    space = FreeText(max_length=1000)
    assert REAL_TEXT in space
    assert "" in space
    assert "\x00\x1b control" in space
    assert REAL_TEXT not in Text(max_length=1000)  # the trap this space exists for


def test_rejects_non_str_and_too_long() -> None:
    space = FreeText(max_length=5)
    assert "abcde" in space
    assert "abcdef" not in space
    assert b"abc" not in space
    assert 3 not in space
    assert None not in space
    assert ["a"] not in space


def test_sample_is_seeded_in_space_and_varied() -> None:
    a, b = FreeText(50, seed=7), FreeText(50, seed=7)
    samples_a = [a.sample() for _ in range(20)]
    assert samples_a == [b.sample() for _ in range(20)]
    assert all(s in a for s in samples_a)
    assert len(set(samples_a)) > 15
    assert max(len(s) for s in samples_a) > 25  # lengths span the range
    assert FreeText(50, seed=8).sample() != FreeText(50, seed=7).sample()
    assert all(len(a.sample(mask=3)) <= 3 for _ in range(20))
    assert FreeText(0, seed=1).sample() == ""


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        FreeText(-1)
    with pytest.raises(ValueError, match="mask=LENGTH"):
        FreeText(3).sample(probability=[0.5])


def test_equality_repr_pickle() -> None:
    assert FreeText(10) == FreeText(10)
    assert FreeText(10) != FreeText(11)
    assert repr(FreeText(10)) == "FreeText(max_length=10)"
    space = FreeText(10, seed=3)
    clone = pickle.loads(pickle.dumps(space))
    assert clone == space and clone.sample() == space.sample()
    assert not space.is_np_flattenable


def test_vector_utils_batch_as_tuple_of_strings() -> None:
    space = FreeText(100)
    batched = batch_space(space, 3)
    assert isinstance(batched, Tuple) and all(s == space for s in batched.spaces)
    empty = create_empty_array(space, 3)
    assert empty == ("", "", "") and empty in batched
    items = concatenate(space, ["a", "b\n", "ü"], empty)
    assert items == ("a", "b\n", "ü") and items in batched
    assert list(iterate(batched, items)) == ["a", "b\n", "ü"]
