"""Fixed, seeded question subsets stratified by article: what every evaluation and probe plays.

A QA file in file order is grouped by source article (the shipped dev split is 4 SQuAD
articles, 511 of its 1,123 questions about Nikola Tesla, first), so "the first N questions"
measure one article. :func:`stratified_indices` instead draws N questions with each
stratum's share of N proportional to its share of the file (largest-remainder rounding),
chosen within a stratum by a permutation seeded by ``(seed, stratum name)``. The draw
depends only on the strata, N and the seed: the same subset for every evaluation of a run,
and across runs that use the same seed, whatever the training seed. Pure functions; the
strata come from :func:`igpo_agent.run.envs.question_strata`.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Questions per stratum for a sample of ``n`` of ``sum(sizes)``: proportional shares,
    floors first, then the largest remainders (ties: the larger stratum, then the name).

    Every stratum gets at most its size; the counts add up to ``min(n, total)``.
    """
    total = sum(sizes.values())
    if n < 0:
        raise ValueError(f"n={n}: use a non-negative sample size")
    if n >= total:
        return dict(sizes)
    counts = {k: n * v // total for k, v in sizes.items()}  # exact integer arithmetic
    remainders = {k: n * v % total for k, v in sizes.items()}
    left = n - sum(counts.values())
    order = sorted(sizes, key=lambda k: (-remainders[k], -sizes[k], k))
    for k in order[:left]:
        counts[k] += 1
    return counts


def _stratum_seed(seed: int, name: str) -> list[int]:
    return [int(seed), zlib.crc32(name.encode("utf-8"))]


def stratified_indices(strata: Sequence[str], n: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``n`` questions stratified by ``strata[i]`` (sorted).

    ``n <= 0`` or ``n >= len(strata)`` takes every question.
    """
    if n <= 0 or n >= len(strata):
        return list(range(len(strata)))
    members: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        members.setdefault(s, []).append(i)
    counts = allocate({k: len(v) for k, v in members.items()}, n)
    chosen: list[int] = []
    for name, idx in members.items():
        k = counts[name]
        if k:
            perm = np.random.default_rng(_stratum_seed(seed, name)).permutation(len(idx))
            chosen += [idx[j] for j in perm[:k]]
    return sorted(chosen)


def composition(strata: Sequence[str], indices: Sequence[int]) -> list[tuple[str, int]]:
    """``(stratum, count)`` of the chosen indices, largest first (then by name)."""
    counts = Counter(strata[i] for i in indices)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def describe(
    strata: Sequence[str], indices: Sequence[int], *, source: str, seed: int, top: int = 8
) -> str:
    """One line naming the subset: size, source, seed and its composition by stratum."""
    comp = composition(strata, indices)
    shown = ", ".join(f"{name or '(none)'} {k}" for name, k in comp[:top])
    more = f", +{len(comp) - top} more" if len(comp) > top else ""
    kind = "all" if len(indices) == len(strata) else f"stratified sample (seed {seed})"
    return (
        f"{len(indices)} of {len(strata)} questions from {source}, {kind}, "
        f"{len(comp)} strata: {shown}{more}"
    )
