"""Intervals against hand computations and naive loops."""

from __future__ import annotations

import random

import pytest

from igpo_agent.algo.stats import mean_ci, paired_diff_ci, wilson_ci


def test_wilson_by_hand():
    # k=8, n=96 at 95% (z = 1.959964): the textbook Wilson formula
    ci = wilson_ci(8, 96)
    assert ci.value == pytest.approx(8 / 96)
    assert ci.low == pytest.approx(0.04284, abs=5e-5)
    assert ci.high == pytest.approx(0.15590, abs=5e-5)
    zero = wilson_ci(0, 16)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.19360, abs=5e-5)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)


def test_mean_ci_matches_a_naive_bootstrap_loop():
    xs = [0.0, 0.0, 0.5, 1.0, 0.0, 0.25, 0.0, 1.0]
    ci = mean_ci(xs, resamples=4000, seed=1)
    rnd = random.Random(7)
    means = sorted(sum(rnd.choices(xs, k=len(xs))) / len(xs) for _ in range(4000))
    assert ci.value == pytest.approx(sum(xs) / len(xs))
    assert ci.low == pytest.approx(means[int(0.025 * 4000)], abs=0.04)
    assert ci.high == pytest.approx(means[int(0.975 * 4000)], abs=0.04)
    const = mean_ci([0.3] * 5)
    assert const.low == pytest.approx(0.3) and const.high == pytest.approx(0.3)


def test_pairing_cancels_item_difficulty():
    rnd = random.Random(0)
    hard = [rnd.random() for _ in range(64)]
    a = hard
    b = [x + 0.05 for x in hard]  # every item improves by 0.05
    d = paired_diff_ci(a, b)
    assert d.value == pytest.approx(0.05) and d.high - d.low < 1e-9 and d.excludes_zero()
    unpaired_width = mean_ci(b).high - mean_ci(b).low
    assert unpaired_width > 0.1  # separate intervals would overlap and resolve nothing
    with pytest.raises(ValueError, match="paired"):
        paired_diff_ci([1.0], [1.0, 2.0])


def test_min_detectable_difference_by_hand():
    from igpo_agent.algo.stats import min_detectable_difference

    # diffs [1, -1, 0, 0]: sample sd sqrt(2/3), n 4; z_0.975 + z_0.8 = 1.95996 + 0.84162
    want = (1.959964 + 0.841621) * (2 / 3) ** 0.5 / 2
    assert min_detectable_difference([1, -1, 0, 0]) == pytest.approx(want, rel=1e-5)
    assert min_detectable_difference([0.2, 0.2, 0.2]) == 0.0
    # four times the questions halve it
    assert min_detectable_difference([1, -1, 0, 0] * 4) < want / 1.9
    with pytest.raises(ValueError, match="two paired"):
        min_detectable_difference([1.0])
    with pytest.raises(ValueError, match="power"):
        min_detectable_difference([1, 0], power=1.0)
