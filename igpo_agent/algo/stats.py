"""Uncertainty of the numbers a run reports (pure numpy): bootstrap and Wilson intervals.

A learning claim needs its interval: 16 evaluation questions or 8 rollouts a step cannot
tell better from worse, and these functions say by how much they cannot. All intervals
are two-sided at ``level`` (default 95%); bootstrap resamples are seeded, so a report is
reproducible.

- :func:`mean_ci`: percentile bootstrap of a mean (e.g. dev F1 over questions).
- :func:`paired_diff_ci`: percentile bootstrap of mean(b - a) over paired items (the same
  questions scored by two policies): far tighter than comparing two separate intervals.
- :func:`wilson_ci`: the Wilson score interval of a rate (e.g. format errors k of n).
- :func:`min_detectable_difference`: the smallest true mean difference a paired
  comparison of this size and spread resolves with the given power (a power line).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 5000


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval and the sample size behind it."""

    value: float
    low: float
    high: float
    n: int

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"12.3 [9.8, 14.9]"`` (scaled, e.g. to percent)."""
        v, lo, hi = (x * scale for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    def excludes_zero(self) -> bool:
        """Whether 0 lies outside the interval (a difference resolved at this level)."""
        return self.low > 0 or self.high < 0


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_ci(
    xs: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean of ``xs`` with a percentile-bootstrap interval (items resampled with replacement).

    Naive equivalent: ``means = [mean(choices(xs, k=len(xs))) for _ in range(resamples)]``,
    then the ``(1-level)/2`` and ``(1+level)/2`` quantiles of ``means``.
    """
    _check_level(level)
    x = np.asarray(xs, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("mean_ci needs a non-empty 1-D sequence")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    lo, hi = _percentile_interval(x[idx].mean(1), level)
    return Interval(float(x.mean()), lo, hi, int(x.size))


def paired_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """mean(b - a) over paired items with a paired percentile-bootstrap interval.

    ``a[i]`` and ``b[i]`` must score the same item (question) under two policies; the
    items are resampled together, so item difficulty cancels out.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in shape: {x.shape} vs {y.shape}")
    return mean_ci(y - x, level=level, resamples=resamples, seed=seed)


def wilson_ci(k: int, n: int, *, level: float = 0.95) -> Interval:
    """The rate k/n with its Wilson score interval (sound at 0/n and n/n, unlike k/n +- z*se).

    ``lo, hi = (p + z^2/2n -+ z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``.
    """
    _check_level(level)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    z = _normal_quantile(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def min_detectable_difference(
    diffs: Sequence[float], *, level: float = 0.95, power: float = 0.8
) -> float:
    """The smallest true mean of paired differences that a two-sided test at ``level``
    detects with probability ``power``, given the spread of the observed ``diffs``:

    ``(z_{(1+level)/2} + z_{power}) * sd(diffs) / sqrt(n)`` (normal approximation; sample
    sd with n - 1). With 95% and 80% that is ``2.80 * sd / sqrt(n)``. 0.0 when every
    difference is equal (nothing varied, so no spread to estimate).
    """
    _check_level(level)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or d.size < 2:
        raise ValueError("min_detectable_difference needs at least two paired differences")
    if np.all(d == d[0]):
        return 0.0
    z = _normal_quantile(0.5 + level / 2) + _normal_quantile(power)
    return float(z * d.std(ddof=1) / math.sqrt(d.size))


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (bisection on erf; exact to ~1e-12)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
