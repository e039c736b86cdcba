"""Dynamic sampling's group filter and RFT's targets, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from igpo_agent.algo.selection import (
    group_rows,
    group_signal,
    keep_groups,
    rft_returns,
    rft_selected,
)


def test_outcome_signal_is_a_contrast_within_the_group():
    # groups of 2: [1, 1] equal, [0, 0.5] differ, [-2, -2] equal
    outcome = torch.tensor([1.0, 1.0, 0.0, 0.5, -2.0, -2.0])
    returns = torch.zeros(6, 2)
    assert group_signal(outcome, returns, 2, "outcome") == [False, True, False]


def test_advantage_signal_counts_ig_contrast_under_equal_outcomes():
    outcome = torch.tensor([0.0, 0.0, 0.0, 0.0])
    returns = torch.tensor([[0.7, 0.0], [-0.7, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert group_signal(outcome, returns, 2, "outcome") == [False, False]
    assert group_signal(outcome, returns, 2, "advantage") == [True, False]


def test_signal_refuses_bad_shapes_and_modes():
    with pytest.raises(ValueError, match="groups of 4"):
        group_signal(torch.zeros(6), torch.zeros(6, 1), 4)
    with pytest.raises(ValueError, match="mode"):
        group_signal(torch.zeros(4), torch.zeros(4, 1), 2, "variance")
    with pytest.raises(ValueError, match="rows"):
        group_signal(torch.zeros(4), torch.zeros(2, 1), 2)


def test_keep_groups_takes_the_first_with_signal_in_sampled_order():
    assert keep_groups([False, True, True, False, True], 2) == [1, 2]
    assert keep_groups([False, True, False], 3) == [1]
    assert keep_groups([True, True], 0) == []
    with pytest.raises(ValueError):
        keep_groups([True], -1)


def test_group_rows():
    assert group_rows([1, 3], 2) == [2, 3, 6, 7]
    assert group_rows([], 4) == []


def test_rft_keeps_well_formed_rollouts_at_the_threshold():
    f1 = [1.0, 1.0, 0.5, 0.0]
    ok = [True, False, True, True]
    assert rft_selected(f1, ok) == [True, False, False, False]
    assert rft_selected(f1, ok, min_f1=0.5) == [True, False, True, False]
    with pytest.raises(ValueError, match="min_f1"):
        rft_selected(f1, ok, min_f1=0.0)
    with pytest.raises(ValueError, match="format flags"):
        rft_selected(f1, ok[:2])


def test_rft_returns_are_one_on_the_kept_rollouts_real_turns():
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    out = rft_returns(mask, [True, False, True])
    assert out.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
