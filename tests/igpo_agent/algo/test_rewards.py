"""Raw turn rewards: IG (both bases), outcome slot, NaN handling, masks (igpo_agent.algo.rewards)."""

import math

import pytest
import torch

from igpo_agent.algo.rewards import (
    info_gain_rewards,
    mean_ig_per_turn,
    outcome_rewards,
    pad_turn_values,
    turn_rewards,
)

NAN = float("nan")


def test_pad_turn_values_shapes_and_nan_padding():
    v, n = pad_turn_values([[-2.0, -1.0, -0.5], [-3.0]])
    assert v.shape == (2, 3) and v.dtype == torch.float32
    assert n.tolist() == [3, 1]
    assert v[0].tolist() == [-2.0, -1.0, -0.5]
    assert v[1, 0].item() == -3.0 and torch.isnan(v[1, 1:]).all()


def test_pad_rejects_empty_rollout_and_empty_batch():
    with pytest.raises(ValueError, match="num_turns >= 1"):
        pad_turn_values([[-1.0], []])
    with pytest.raises(ValueError, match="at least one"):
        pad_turn_values([])


def test_log_prob_diff_hand_numbers():
    # rollout 0: v = [-2, -1, -0.5] -> IG turn0 = -1 - (-2) = 1.0, turn1 = -0.5 - (-1) = 0.5,
    #            turn2 is the last turn (outcome slot) -> 0
    # rollout 1: T = 1 -> no IG at all; the NaN padding is never read
    v, n = pad_turn_values([[-2.0, -1.0, -0.5], [-3.0]])
    ig = info_gain_rewards(v, n, "log_prob_diff")
    assert ig.tolist() == [[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]


def test_prob_diff_hand_numbers():
    # v = [log 0.1, log 0.4, log 0.5] -> IG = 0.4 - 0.1 = 0.3, 0.5 - 0.4 = 0.1
    v, n = pad_turn_values([[math.log(0.1), math.log(0.4), math.log(0.5)]], dtype=torch.float64)
    ig = info_gain_rewards(v, n, "prob_diff")
    assert ig[0].tolist() == pytest.approx([0.3, 0.1, 0.0], abs=1e-12)


def test_nan_and_inf_ig_become_zero():
    # v = [-2, -3, nan, -inf, -1]: gains -1, nan, nan, +inf -> -1, 0, 0, 0 ; last slot 0
    v, n = pad_turn_values([[-2.0, -3.0, NAN, -math.inf, -1.0]])
    ig = info_gain_rewards(v, n)
    assert ig[0].tolist() == [-1.0, 0.0, 0.0, 0.0, 0.0]


def test_info_gain_rejects_bad_inputs():
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="ig_mode"):
        info_gain_rewards(v, [3, 3], "ratio")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceeds"):
        info_gain_rewards(v, [4, 1])
    with pytest.raises(ValueError, match="2 rollouts|rollouts but"):
        info_gain_rewards(v, [3])
    with pytest.raises(ValueError, match="num_turns >= 1"):
        info_gain_rewards(v, [0, 2])


def test_outcome_rewards_rules():
    r = outcome_rewards(
        f1=[0.5, 1.0, 0.0, 0.7, 0.0],
        answered=[True, True, False, True, False],
        format_ok=[True, True, True, False, False],
        truncated=[False, False, True, False, False],
        format_penalty=-2.0,
    )
    # answered+ok -> F1; truncated -> 0 + (-2) = -2; malformed -> -2 instead of F1;
    # never answered -> -2
    assert r.tolist() == [0.5, 1.0, -2.0, -2.0, -2.0]


def test_outcome_truncated_overrides_answered_and_custom_penalty():
    r = outcome_rewards([0.9], [True], [True], [True], format_penalty=-1.0)
    assert r.tolist() == [-1.0]


def test_outcome_rejects_bad_f1_and_shapes():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        outcome_rewards([NAN], [True], [True], [False])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        outcome_rewards([1.5], [True], [True], [False])
    # an out-of-range F1 of a rollout that gets the penalty anyway is not an error
    assert outcome_rewards([NAN], [False], [True], [False]).tolist() == [-2.0]
    with pytest.raises(ValueError, match="answered has shape"):
        outcome_rewards([0.5, 0.5], [True], [True, True], [False, False])


def test_turn_rewards_igpo_and_grpo():
    v, n = pad_turn_values([[-2.0, -1.0, -0.5], [-2.0, -3.0]])
    out = torch.tensor([1.0, -2.0])
    tr = turn_rewards(v, n, out, algo="igpo")
    # rollout 0: IG 1.0, 0.5, outcome 1.0 ; rollout 1 (T=2): IG -1.0, outcome -2.0, pad 0
    assert tr.rewards.tolist() == [[1.0, 0.5, 1.0], [-1.0, -2.0, 0.0]]
    assert tr.is_ig.tolist() == [[True, True, False], [True, False, False]]
    assert tr.is_outcome.tolist() == [[False, False, True], [False, True, False]]
    assert tr.turn_mask.tolist() == [[True, True, True], [True, True, False]]
    g = turn_rewards(v, n, out, algo="grpo")
    assert g.rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, -2.0, 0.0]]
    assert not g.is_ig.any()
    assert torch.equal(g.ig, tr.ig)  # raw IG still available for logging


def test_turn_rewards_errors():
    v, n = pad_turn_values([[-2.0, -1.0]])
    with pytest.raises(ValueError, match="algo"):
        turn_rewards(v, n, [1.0], algo="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outcome must be"):
        turn_rewards(v, n, [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        turn_rewards(v, n, [NAN])


def test_mean_ig_per_turn():
    # turn 0 IGs: 1.0 (r0), -1.0 (r1), none (r2, T=1) -> mean 0.0 ; turn 1: 0.5 (r0) only
    # turn 2: nobody has IG there -> NaN
    v, n = pad_turn_values([[-2.0, -1.0, -0.5], [-2.0, -3.0], [-1.0]])
    ig = info_gain_rewards(v, n)
    m = mean_ig_per_turn(ig, n)
    assert m[:2].tolist() == [0.0, 0.5]
    assert math.isnan(m[2].item())


def test_ig_only_on_search_turns():
    """docs/ALGORITHM.md: IG for turns that end in a search; a malformed turn gets reward 0."""
    v, n = pad_turn_values([[-2.0, -1.0, -0.5], [-2.0, -3.0]])
    out = torch.tensor([1.0, -2.0])
    searched = torch.tensor([[False, True, False], [True, False, False]])  # r0 turn 0 invalid
    tr = turn_rewards(v, n, out, algo="igpo", ig_turns=searched)
    assert tr.rewards.tolist() == [[0.0, 0.5, 1.0], [-1.0, -2.0, 0.0]]
    assert tr.is_ig.tolist() == [[False, True, False], [True, False, False]]
    assert tr.ig.tolist()[0][:2] == [1.0, 0.5]  # the raw gain is still logged
    with pytest.raises(ValueError, match="ig_turns must be"):
        turn_rewards(v, n, out, ig_turns=torch.ones(2, 2, dtype=torch.bool))
