"""Group normalisation, returns and token broadcast (igpo_agent.algo.advantages).

Hand-computed numbers for a 2-rollout, 3-turn group, plus a plain-Python loop reference
that the vectorised code must match on random batches of several groups.
"""

import math
import random

import pytest
import torch

from igpo_agent.algo.advantages import (
    discounted_returns,
    group_advantages,
    group_index,
    normalize_group,
    token_advantages,
)
from igpo_agent.algo.rewards import pad_turn_values
from igpo_agent.rollout.trajectory import Span, Trajectory

NAN = float("nan")
EPS = 1e-6

# The worked group. Rollout A answered correctly (F1 = 1.0):
#   v = [-2, -1, -0.5] -> IG turn0 = 1.0, turn1 = 0.5, turn2 = outcome 1.0
# Rollout B was truncated at the 3-turn limit (outcome = 0 + lambda_fmt = -2.0) and its
# second belief is NaN: v = [-2, -3, nan] -> IG turn0 = -1.0, turn1 = nan -> 0.0
VALUES = [[-2.0, -1.0, -0.5], [-2.0, -3.0, NAN]]
OUTCOME = [1.0, -2.0]
# separate: IG pool {1.0, 0.5, -1.0, 0.0}: mean 0.5/4 = 0.125,
#   deviations 0.875, 0.375, -1.125, -0.125; squares sum 0.765625 + 0.140625 + 1.265625
#   + 0.015625 = 2.1875; population var 2.1875/4 = 0.546875
IG_STD = math.sqrt(0.546875)
#   outcome pool {1.0, -2.0}: mean -0.5, deviations +-1.5, std 1.5 -> +-1.5/(1.5+eps)
OUT_Z = 1.5 / (1.5 + EPS)


def z(x: float, mean: float, std: float) -> float:
    return (x - mean) / (std + EPS)


def _worked(**kw):
    v, n = pad_turn_values(VALUES, dtype=torch.float64)
    return group_advantages(v, n, torch.tensor(OUTCOME, dtype=torch.float64), group_size=2, **kw)


def test_worked_group_separate_gamma_1():
    adv = _worked()
    a0, a1 = z(1.0, 0.125, IG_STD), z(0.5, 0.125, IG_STD)
    b0, b1 = z(-1.0, 0.125, IG_STD), z(0.0, 0.125, IG_STD)
    assert adv.normalized.tolist()[0] == pytest.approx([a0, a1, OUT_Z])
    assert adv.normalized.tolist()[1] == pytest.approx([b0, b1, -OUT_Z])
    # returns: R_t = sum_{k>=t} rnorm_k
    assert adv.returns.tolist()[0] == pytest.approx([a0 + a1 + OUT_Z, a1 + OUT_Z, OUT_Z])
    assert adv.returns.tolist()[1] == pytest.approx([b0 + b1 - OUT_Z, b1 - OUT_Z, -OUT_Z])
    # numerically: a0 = 0.875/0.739510 = 1.18322, a1 = 0.50709, b0 = -1.52128, b1 = -0.16903
    assert adv.returns[0, 0].item() == pytest.approx(2.69031, abs=1e-4)
    assert adv.returns[1, 0].item() == pytest.approx(-2.69031, abs=1e-4)
    assert adv.raw.tolist() == [[1.0, 0.5, 1.0], [-1.0, 0.0, -2.0]]


def test_worked_group_gamma_half():
    adv = _worked(gamma=0.5)
    a0, a1 = z(1.0, 0.125, IG_STD), z(0.5, 0.125, IG_STD)
    # R_0 = r0 + 0.5 r1 + 0.25 r2 ; R_1 = r1 + 0.5 r2 ; R_2 = r2
    expected = [a0 + 0.5 * a1 + 0.25 * OUT_Z, a1 + 0.5 * OUT_Z, OUT_Z]
    assert adv.returns.tolist()[0] == pytest.approx(expected)


def test_worked_group_joint():
    adv = _worked(norm="joint")
    # one pool {1.0, 0.5, 1.0, -1.0, 0.0, -2.0}: mean -0.5/6 = -1/12
    pool = [1.0, 0.5, 1.0, -1.0, 0.0, -2.0]
    mean = -1.0 / 12.0
    # sum x^2 = 1 + 0.25 + 1 + 1 + 0 + 4 = 7.25 ; SS = 7.25 - 6 * (1/12)^2 = 7.208333
    # var = 7.208333 / 6 = 1.201389 ; std = 1.096079
    std = math.sqrt(sum((x - mean) ** 2 for x in pool) / 6)
    assert std == pytest.approx(1.096079, abs=1e-6)
    za = [z(x, mean, std) for x in (1.0, 0.5, 1.0)]
    zb = [z(x, mean, std) for x in (-1.0, 0.0, -2.0)]
    assert adv.normalized.tolist() == [pytest.approx(za), pytest.approx(zb)]
    assert adv.returns[0].tolist() == pytest.approx([sum(za), za[1] + za[2], za[2]])


def test_worked_group_prob_diff():
    adv = _worked(ig_mode="prob_diff")
    # A: e^-1 - e^-2 = 0.232544, e^-0.5 - e^-1 = 0.238651 ; B: e^-3 - e^-2 = -0.085548, NaN->0
    ig = [math.exp(-1) - math.exp(-2), math.exp(-0.5) - math.exp(-1), math.exp(-3) - math.exp(-2)]
    assert adv.raw[0, :2].tolist() == pytest.approx(ig[:2])
    assert adv.raw[1, :2].tolist() == pytest.approx([ig[2], 0.0])
    pool = ig + [0.0]
    mean = sum(pool) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in pool) / 4)
    assert adv.normalized[1, 1].item() == pytest.approx(z(0.0, mean, std))


def test_worked_group_grpo_every_turn_gets_normalised_outcome():
    adv = _worked(algo="grpo", gamma=0.5)  # gamma does not apply to grpo
    assert adv.returns.tolist() == [pytest.approx([OUT_Z] * 3), pytest.approx([-OUT_Z] * 3)]
    assert not adv.is_ig.any()
    # joint == separate under grpo: the only pool is the outcomes
    assert torch.allclose(_worked(algo="grpo", norm="joint").returns, adv.returns)


def test_identical_outcomes_give_zero_outcome_advantage():
    # both answered with F1 0.5: outcome std 0 -> (0.5 - 0.5)/(0 + eps) = 0; IG still counts
    v, n = pad_turn_values([[-2.0, -1.0], [-2.0, -2.5]], dtype=torch.float64)
    adv = group_advantages(v, n, [0.5, 0.5], group_size=2)
    assert adv.normalized[:, 1].tolist() == [0.0, 0.0]
    # IG pool {1.0, -0.5}: mean 0.25, std 0.75 -> +-0.75/(0.75+eps)
    assert adv.returns[:, 0].tolist() == pytest.approx([0.75 / (0.75 + EPS), -0.75 / (0.75 + EPS)])
    g = group_advantages(v, n, [0.5, 0.5], group_size=2, algo="grpo")
    assert g.returns.abs().max().item() == 0.0


def test_group_of_one():
    # G = 1, 3 turns: IG pool {1.0, 0.5} mean 0.75, std 0.25 -> +-0.25/(0.25+eps);
    # outcome pool has one value -> std := 1, mean subtracted -> 0
    v, n = pad_turn_values([[-2.0, -1.0, -0.5]], dtype=torch.float64)
    adv = group_advantages(v, n, [1.0], group_size=1)
    s = 0.25 / (0.25 + EPS)
    assert adv.normalized[0].tolist() == pytest.approx([s, -s, 0.0])
    assert adv.returns[0].tolist() == pytest.approx([0.0, -s, 0.0])
    # a lone single-turn rollout: nothing to compare with, advantage 0
    v1, n1 = pad_turn_values([[-1.0]])
    assert group_advantages(v1, n1, [1.0], group_size=1).returns.tolist() == [[0.0]]


def test_single_value_pool_subtracts_mean():
    x = torch.tensor([[3.0, 7.0]])
    out = normalize_group(x, torch.tensor([[True, False]]), torch.tensor([0]), 1)
    assert out.tolist() == [[0.0, 0.0]]


# --------------------------------------------------------------------------------------
# plain-Python loop reference (no tensors) that the vectorised path must match


def ref_advantages(values, outcome, groups, algo, ig_mode, norm, gamma):
    f = (lambda x: x) if ig_mode == "log_prob_diff" else math.exp
    raw, kind = [], []
    for v, o in zip(values, outcome, strict=True):
        r, k = [], []
        for t in range(len(v) - 1):
            try:
                g = f(v[t + 1]) - f(v[t])
            except OverflowError:
                g = math.inf
            r.append(g if math.isfinite(g) else 0.0)
            k.append("ig" if algo == "igpo" else "none")
        r.append(o)
        k.append("out")
        raw.append(r)
        kind.append(k)
    normed = [[0.0] * len(r) for r in raw]
    pools = ["ig", "out"] if norm == "separate" else [("ig", "out")]
    for g in set(groups):
        rows = [i for i, gi in enumerate(groups) if gi == g]
        for p in pools:
            cells = [(i, t) for i in rows for t in range(len(raw[i])) if kind[i][t] in p]
            xs = [raw[i][t] for i, t in cells]
            if not xs:
                continue
            mu = sum(xs) / len(xs)
            sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs)) if len(xs) > 1 else 1.0
            for i, t in cells:
                normed[i][t] = (raw[i][t] - mu) / (sd + EPS)
    returns = []
    for r in normed:
        if algo == "grpo":
            returns.append([r[-1]] * len(r))
            continue
        out, run = [0.0] * len(r), 0.0
        for t in reversed(range(len(r))):
            run = r[t] + gamma * run
            out[t] = run
        returns.append(out)
    return returns


@pytest.mark.parametrize("algo", ["igpo", "grpo"])
@pytest.mark.parametrize("ig_mode", ["log_prob_diff", "prob_diff"])
@pytest.mark.parametrize("norm", ["separate", "joint"])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_vectorised_matches_loop_reference(algo, ig_mode, norm, gamma):
    rng = random.Random(hash((algo, ig_mode, norm, gamma)) % 1000)
    for _ in range(5):
        n_groups, g_size = rng.randint(1, 4), rng.randint(1, 5)
        values, outcome, labels = [], [], []
        for gi in range(n_groups):
            for _ in range(g_size):
                t = rng.randint(1, 5)
                v = [rng.uniform(-6, 0) for _ in range(t)]
                if t > 1 and rng.random() < 0.2:
                    v[rng.randrange(t)] = NAN
                values.append(v)
                outcome.append(rng.choice([-2.0, 0.0, 1.0, rng.random()]))
                labels.append(f"q{gi}")
        order = list(range(len(values)))
        rng.shuffle(order)  # groups interleaved: only the labels say who belongs together
        values = [values[i] for i in order]
        outcome = [outcome[i] for i in order]
        labels = [labels[i] for i in order]
        v, n = pad_turn_values(values, dtype=torch.float64)
        got = group_advantages(
            v, n, outcome, group_ids=labels, algo=algo, ig_mode=ig_mode, norm=norm, gamma=gamma
        )
        want = ref_advantages(values, outcome, labels, algo, ig_mode, norm, gamma)
        for i, w in enumerate(want):
            assert got.returns[i, : len(w)].tolist() == pytest.approx(w, abs=1e-9)
            assert got.returns[i, len(w) :].abs().sum().item() == 0.0


def test_group_ids_and_group_size_agree():
    v, n = pad_turn_values([[-2.0, -1.0], [-1.0], [-3.0, -2.0, -2.5], [-1.0, -1.5]])
    out = [1.0, 0.0, -2.0, 0.5]
    a = group_advantages(v, n, out, group_size=2)
    b = group_advantages(v, n, out, group_ids=torch.tensor([7, 7, 3, 3]))
    assert torch.equal(a.returns, b.returns)
    assert a.group.tolist() == [0, 0, 1, 1]
    # groups are independent: the second group alone gives the same numbers
    c = group_advantages(v[2:], n[2:], out[2:], group_size=2)
    assert torch.equal(a.returns[2:], c.returns)


def test_group_index_errors():
    with pytest.raises(ValueError, match="exactly one"):
        group_index(4)
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_index(5, group_size=2)
    with pytest.raises(ValueError, match="3 labels"):
        group_index(4, group_ids=["a", "a", "b"])


def test_bad_options_are_named():
    v, n = pad_turn_values([[-1.0, -0.5]])
    with pytest.raises(ValueError, match="norm="):
        group_advantages(v, n, [1.0], group_size=1, norm="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma"):
        group_advantages(v, n, [1.0], group_size=1, gamma=1.5)


def test_discounted_returns_hand():
    r = torch.tensor([[1.0, 2.0, 4.0], [8.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, True], [True, False, False]])
    # row 0, gamma 0.5: R2 = 4, R1 = 2 + 2 = 4, R0 = 1 + 2 = 3 ; row 1: only turn 0
    assert discounted_returns(r, m, 0.5).tolist() == [[3.0, 4.0, 4.0], [8.0, 0.0, 0.0]]


def test_token_advantages_from_trajectory_spans():
    # prompt(3) | turn0(2) | obs0(2) | turn1(1) | obs1(1) | turn2(2)
    spans = [
        Span("prompt", 0, 3, -1),
        Span("action", 3, 5, 0),
        Span("observation", 5, 7, 0),
        Span("action", 7, 8, 1),
        Span("observation", 8, 9, 1),
        Span("action", 9, 11, 2),
    ]
    traj = Trajectory(question="q", answers=["a"], token_ids=list(range(11)), spans=spans)
    tt = torch.tensor([traj.token_turns(), [0, 0, 1] + [-1] * 8])
    returns = torch.tensor([[0.5, -1.0, 2.0], [3.0, 4.0, 0.0]])
    adv = token_advantages(returns, tt)
    assert adv[0].tolist() == [0, 0, 0, 0.5, 0.5, 0, 0, -1.0, 0, 2.0, 2.0]
    assert adv[1].tolist() == [3.0, 3.0, 4.0] + [0.0] * 8
    # the action mask and the non-zero pattern of turn ids agree
    assert [int(x >= 0) for x in tt[0].tolist()] == traj.action_mask()


def test_token_advantages_errors():
    with pytest.raises(ValueError, match="turn columns"):
        token_advantages(torch.zeros(1, 2), torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match=">= -1"):
        token_advantages(torch.zeros(1, 2), torch.tensor([[-2, 0]]))
    with pytest.raises(ValueError, match="rows"):
        token_advantages(torch.zeros(2, 2), torch.tensor([[0, 1]]))


def test_invalid_turn_leaves_the_ig_pool():
    """With IG only on searches, rollout A's turn 0 (invalid) is outside the IG pool."""
    eligible = torch.tensor([[False, True, False], [True, True, False]])
    adv = _worked(ig_turns=eligible)
    # IG pool {0.5 (A t1), -1.0 (B t0), 0.0 (B t1, NaN IG)}: mean -0.5/3, population std
    pool = [0.5, -1.0, 0.0]
    mean = sum(pool) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in pool) / 3)
    a1, b0, b1 = (z(x, mean, std) for x in pool)
    assert adv.normalized[0].tolist() == pytest.approx([0.0, a1, OUT_Z])
    assert adv.normalized[1].tolist()[:2] == pytest.approx([b0, b1])
    # gamma 1: A's invalid turn 0 gets what the rest of its rollout earns
    assert adv.returns[0].tolist() == pytest.approx([a1 + OUT_Z, a1 + OUT_Z, OUT_Z])


def test_exclude_zero_ig_and_ig_weight_by_hand():
    from igpo_agent.algo.advantages import group_advantages

    values = torch.tensor([[-2.0, -1.0], [-3.0, -3.0], [-4.0, -1.0]])  # IG 1, 0, 3
    outcome = torch.tensor([0.5, 0.0, 1.0])
    kw = dict(group_size=3, algo="igpo", norm="separate", gamma=1.0)
    adv = group_advantages(values, [2, 2, 2], outcome, ig_exclude_zero=True, ig_weight=0.5, **kw)
    z = 1 / math.sqrt(1 / 6)  # outcome pool {0.5, 0, 1}: mean 0.5, population std sqrt(1/6)
    # IG pool without the exact 0: {1, 3} -> mean 2, std 1 -> -1, (excluded: 0), +1; x 0.5
    torch.testing.assert_close(
        adv.normalized[:, 0], torch.tensor([-0.5, 0.0, 0.5]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        adv.normalized[:, 1], torch.tensor([0.0, -0.5 * z, 0.5 * z]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        adv.returns[:, 0], torch.tensor([-0.5, -0.5 * z, 0.5 + 0.5 * z]), atol=1e-5, rtol=0
    )
    # defaults: the 0 stays in the pool {1, 0, 3}: mean 4/3
    plain = group_advantages(values, [2, 2, 2], outcome, **kw)
    sd = math.sqrt(((1 - 4 / 3) ** 2 + (4 / 3) ** 2 + (3 - 4 / 3) ** 2) / 3)
    want = torch.tensor([(1 - 4 / 3) / sd, -4 / 3 / sd, (3 - 4 / 3) / sd])
    torch.testing.assert_close(plain.normalized[:, 0], want, atol=1e-5, rtol=0)


def test_all_equal_group_share_by_hand():
    from igpo_agent.algo.advantages import all_equal_group_share

    outcome = torch.tensor([-2.0, -2.0, -2.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0])
    assert all_equal_group_share(outcome, 3) == pytest.approx(2 / 3)
    assert all_equal_group_share(torch.tensor([0.0, 1e-12]), 2) == 1.0
    with pytest.raises(ValueError, match="multiple of group_size"):
        all_equal_group_share(torch.zeros(5), 2)


def test_nonzero_token_share_by_hand():
    from igpo_agent.algo.advantages import nonzero_token_share

    returns = torch.tensor([[0.0, 1.5], [-0.2, 0.0]])
    tokens = torch.tensor([[10.0, 30.0], [20.0, 0.0]])  # the last slot is padding
    assert nonzero_token_share(returns, tokens) == pytest.approx(50 / 60)
    assert math.isnan(nonzero_token_share(returns, torch.zeros(2, 2)))


def test_exclusion_groups_and_zero_rows():
    from igpo_agent.algo.advantages import exclusion_groups, zero_rows

    flags = [False, True, False, False]
    assert exclusion_groups(flags, group_size=2) == [0, ("excluded", 1), 1, 1]
    assert exclusion_groups(flags, group_ids=["a", "a", "b", "a"]) == [0, ("excluded", 1), 1, 0]
    with pytest.raises(ValueError, match="whole number of groups"):
        exclusion_groups([False] * 3, group_size=2)
    values = torch.tensor([[-2.0, -1.0, -0.9], [-2.0, -0.5, -1.0], [-2.0, -1.5, -1.4]])
    values = torch.cat([values, torch.tensor([[-2.0, -1.2, -0.2]])])  # 3 turns: 2 IG values
    outcome = torch.tensor([1.0, 0.0, 0.5, 0.2])
    kw = dict(algo="igpo", norm="separate")
    adv = group_advantages(
        values, [3] * 4, outcome, group_ids=exclusion_groups(flags, [0] * 4), **kw
    )
    out = zero_rows(adv, flags)
    alone = group_advantages(values[[0, 2, 3]], [3] * 3, outcome[[0, 2, 3]], group_size=3, **kw)
    torch.testing.assert_close(out.returns[[0, 2, 3]], alone.returns)
    assert not out.returns[1].any() and not out.normalized[1].any()
    assert adv.returns[1].any()  # alone, its two IG values would still normalise to +-1
    torch.testing.assert_close(out.raw, adv.raw)
