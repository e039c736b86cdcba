"""Answer metrics for open-domain QA: normalisation, EM, F1, cover-EM, max over aliases.

Pure functions over strings, no I/O. Two normalisation modes:

``"squad"`` (default) is the official SQuAD v1.1 evaluation script, step for step:
lowercase, delete every ``string.punctuation`` character, replace the whole words
``a``/``an``/``the`` with a space, collapse whitespace. F1 is computed over token
*multisets* (``Counter`` intersection), so repeated tokens count as often as they occur.

``"igpo"`` is the reference IGPO / DeepResearcher reward code. It differs in three ways:
1. punctuation is replaced by a *space* rather than deleted (``"o'neil"`` -> ``"o neil"``),
2. articles are kept,
3. F1 is computed over unique token *sets* (``"new new york"`` == ``"new york"``).
Exact match there is string equality after that normalisation.

Edge cases follow both scripts: F1 is 0.0 whenever either normalised side is empty (so
``f1("", "")`` is 0.0, as SQuAD v1.1 computes it), while EM of two empty strings is 1.0
(plain string equality). Gold answers come from the data loader and are never empty, but a
gold of only articles (``"The"``) normalises to ``""`` in ``"squad"`` mode. Cover-EM is 0.0
for an empty normalised gold (the empty string is "contained" in anything and must not score).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

Mode = Literal["squad", "igpo"]
MODES: tuple[str, ...] = ("squad", "igpo")
METRICS: tuple[str, ...] = ("em", "f1", "cover_em")

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT_TO_SPACE = str.maketrans({p: " " for p in string.punctuation})


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown normalization {mode!r}; choose one of {MODES}")


def normalize_answer(s: str, mode: Mode = "squad") -> str:
    """Normalise an answer string for comparison (see the module docstring for the modes)."""
    _check_mode(mode)
    text = str(s).lower()
    if mode == "squad":
        text = "".join(ch for ch in text if ch not in _PUNCT)
        text = _ARTICLES.sub(" ", text)
    else:
        text = text.translate(_PUNCT_TO_SPACE)
    return " ".join(text.split())


def exact_match(pred: str, gold: str, mode: Mode = "squad") -> float:
    """1.0 when the normalised prediction equals the normalised gold, else 0.0."""
    return float(normalize_answer(pred, mode) == normalize_answer(gold, mode))


def f1_score(pred: str, gold: str, mode: Mode = "squad") -> float:
    """Token-level F1 between prediction and gold (multiset in ``squad``, set in ``igpo``)."""
    p_toks = normalize_answer(pred, mode).split()
    g_toks = normalize_answer(gold, mode).split()
    if mode == "squad":
        num_same = sum((Counter(p_toks) & Counter(g_toks)).values())
        n_pred, n_gold = len(p_toks), len(g_toks)
    else:
        p_set, g_set = set(p_toks), set(g_toks)
        num_same = len(p_set & g_set)
        n_pred, n_gold = len(p_set), len(g_set)
    if num_same == 0:
        return 0.0
    precision = num_same / n_pred
    recall = num_same / n_gold
    return 2 * precision * recall / (precision + recall)


def cover_em(pred: str, gold: str, mode: Mode = "squad") -> float:
    """1.0 when the normalised gold occurs in the normalised prediction as whole tokens.

    ``cover_em("he was born in paris france", "Paris")`` is 1.0; ``"parisian"`` does not
    cover ``"paris"``. An empty normalised gold never covers anything.
    """
    p_toks = normalize_answer(pred, mode).split()
    g_toks = normalize_answer(gold, mode).split()
    if not g_toks or len(g_toks) > len(p_toks):
        return 0.0
    n = len(g_toks)
    return float(any(p_toks[i : i + n] == g_toks for i in range(len(p_toks) - n + 1)))


MetricFn = Callable[[str, str, Mode], float]

_METRIC_FNS: dict[str, MetricFn] = {"em": exact_match, "f1": f1_score, "cover_em": cover_em}


def metric_fn(name: str) -> MetricFn:
    """The metric function called ``name`` (``"em"``, ``"f1"`` or ``"cover_em"``)."""
    if name not in _METRIC_FNS:
        raise ValueError(f"unknown metric {name!r}; choose one of {METRICS}")
    return _METRIC_FNS[name]


def max_over_aliases(
    fn: MetricFn, pred: str, golds: Iterable[str] | str, mode: Mode = "squad"
) -> float:
    """The best ``fn(pred, gold, mode)`` over all gold aliases (0.0 when there are none)."""
    if isinstance(golds, str):
        golds = [golds]
    return max((fn(pred, g, mode) for g in golds), default=0.0)


def score_answer(pred: str, golds: Iterable[str] | str, mode: Mode = "squad") -> dict[str, float]:
    """``{"em", "f1", "cover_em"}``, each the maximum over the gold aliases."""
    _check_mode(mode)
    golds = [golds] if isinstance(golds, str) else list(golds)
    return {name: max_over_aliases(fn, pred, golds, mode) for name, fn in _METRIC_FNS.items()}
