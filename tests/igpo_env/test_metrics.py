"""Hand-checked cases for the answer metrics in both normalisation modes."""

from __future__ import annotations

import pytest

from igpo_env.metrics import (
    cover_em,
    exact_match,
    f1_score,
    max_over_aliases,
    metric_fn,
    normalize_answer,
    score_answer,
)


@pytest.mark.parametrize(
    ("raw", "squad", "igpo"),
    [
        ("The Eiffel Tower", "eiffel tower", "the eiffel tower"),
        ("  A   cat, an APPLE! ", "cat apple", "a cat an apple"),
        ("O'Neil", "oneil", "o neil"),
        ("1,000.5 m", "10005 m", "1 000 5 m"),
        ("theory of a thing", "theory of thing", "theory of a thing"),  # 'the' inside a word stays
        ("Zürich — café", "zürich — café", "zürich — café"),  # unicode is kept, em dash too
        ("", "", ""),
        ("...", "", ""),
        ("The", "", "the"),
        ("tab\tand\nnewline", "tab and newline", "tab and newline"),
    ],
)
def test_normalize_answer_both_modes(raw: str, squad: str, igpo: str) -> None:
    assert normalize_answer(raw) == squad
    assert normalize_answer(raw, "squad") == squad
    assert normalize_answer(raw, "igpo") == igpo


def test_unknown_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match="squad"):
        normalize_answer("x", "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cover_em"):
        metric_fn("accuracy")


def test_exact_match() -> None:
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # igpo keeps articles, so the article now matters
    assert exact_match("the Eiffel tower", "Eiffel Tower", "igpo") == 0.0
    assert exact_match("", "") == 1.0


def test_f1_squad_multiset_by_hand() -> None:
    # pred tokens [new, york, city], gold [new, york]: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("New York City", "new york") == pytest.approx(0.8)
    # repeated tokens count with multiplicity: pred [new, new, york], gold [new, york]
    # common = {new: 1, york: 1} = 2, P = 2/3, R = 1 -> 0.8
    assert f1_score("new new york", "new york") == pytest.approx(0.8)
    # articles removed before tokenising: "the beatles" vs "beatles" -> exact
    assert f1_score("The Beatles", "Beatles") == 1.0
    assert f1_score("paris", "london") == 0.0


def test_f1_igpo_set_semantics_by_hand() -> None:
    # sets: {new, york} vs {new, york} -> 1.0 (duplicates collapse)
    assert f1_score("new new york", "new york", "igpo") == 1.0
    # articles kept: {the, beatles} vs {beatles}: P = 1/2, R = 1 -> 2/3
    assert f1_score("The Beatles", "Beatles", "igpo") == pytest.approx(2 / 3)
    # punctuation splits tokens: "o'neil" -> {o, neil} vs {neil}: P = 1/2, R = 1 -> 2/3
    assert f1_score("O'Neil", "Neil", "igpo") == pytest.approx(2 / 3)
    assert f1_score("O'Neil", "Neil", "squad") == 0.0


def test_f1_numbers_and_unicode() -> None:
    assert f1_score("1,234", "1234") == 1.0  # comma deleted in squad mode
    assert f1_score("1,234", "1234", "igpo") == 0.0  # comma becomes a space: {1, 234}
    assert f1_score("Zürich", "zürich") == 1.0
    assert f1_score("Zurich", "Zürich") == 0.0  # no accent folding in either script
    # pred [born, 1879], gold [1879] -> P = 1/2, R = 1 -> 2/3
    assert f1_score("born 1879", "1879") == pytest.approx(2 / 3)


def test_f1_empty_sides_score_zero() -> None:
    assert f1_score("", "Paris") == 0.0
    assert f1_score("Paris", "") == 0.0
    assert f1_score("", "") == 0.0  # SQuAD v1.1: no common tokens -> 0
    assert f1_score("the", "a") == 0.0  # both normalise to empty in squad mode
    assert f1_score("", "", "igpo") == 0.0


def test_cover_em_whole_tokens() -> None:
    assert cover_em("He was born in Paris, France.", "paris") == 1.0
    assert cover_em("He was born in Paris, France.", "Paris France") == 1.0
    assert cover_em("Parisian food", "Paris") == 0.0
    assert cover_em("France Paris", "Paris France") == 0.0  # order matters
    assert cover_em("anything at all", "") == 0.0
    assert cover_em("anything at all", "The") == 0.0  # normalises to empty gold
    assert cover_em("", "Paris") == 0.0


def test_max_over_aliases_and_score_answer() -> None:
    golds = ["Johann Sebastian Bach", "J. S. Bach", "Bach"]
    assert max_over_aliases(exact_match, "bach", golds) == 1.0
    # vs "johann sebastian bach": P = 1, R = 1/3 -> 0.5; vs "bach": 1.0 -> max 1.0
    assert max_over_aliases(f1_score, "Bach", golds) == 1.0
    assert max_over_aliases(f1_score, "Sebastian", golds) == pytest.approx(0.5)
    assert max_over_aliases(f1_score, "x", []) == 0.0
    assert max_over_aliases(f1_score, "bach", "Bach") == 1.0  # a bare string is one alias

    scores = score_answer("It was composed by J.S. Bach", golds)
    assert set(scores) == {"em", "f1", "cover_em"}
    assert scores["em"] == 0.0
    assert scores["cover_em"] == 1.0  # "bach" appears as a token
    # best F1 is vs "bach": pred [it, was, composed, by, js, bach], P = 1/6, R = 1 -> 2/7
    assert scores["f1"] == pytest.approx(2 / 7)
    assert score_answer("Bach", golds, "igpo") == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}
