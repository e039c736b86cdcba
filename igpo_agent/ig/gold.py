"""The gold answer as the scorer sees it: its tokens inside the agent's answer wrapper.

:func:`gold_spec` tokenises ``answer_prefix + gold + answer_suffix`` in one go and marks the
gold's tokens (:class:`GoldSpec`); :func:`gold_logprob_mean` is the mean log-prob of those
tokens that every scoring path (naive, packed, live, :mod:`igpo_agent.ig.beliefs` and
:mod:`igpo_agent.ig.live`) takes v_t to be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GoldSpec", "gold_logprob_mean", "gold_spec", "trajectory_gold_specs"]


@dataclass(frozen=True)
class GoldSpec:
    """The answer wrapper as token ids and which of them are the gold answer's tokens.

    ``ids`` tokenises ``answer_prefix + gold + answer_suffix`` in one go (as the agent
    would emit it); ``scored`` are the indices into ``ids`` of the tokens that are scored:
    every token whose character span overlaps the gold's characters. A token straddling
    the wrapper/gold boundary (e.g. ``">1"`` in ``<answer>1984``) contains gold characters,
    so it is scored: producing the gold requires producing that token. ``method`` says how
    the spans were found: ``"offsets"`` (fast tokenizer offset mapping) or ``"decode"``
    (cumulative decoding, for tokenizers without offsets).
    """

    gold: str
    ids: tuple[int, ...]
    scored: tuple[int, ...]
    method: str

    @property
    def context_len(self) -> int:
        """Wrapper tokens that must be fed as input: all up to (not incl.) the last scored one."""
        return self.scored[-1]


def _offset_spans(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _decode_spans(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Character spans by decoding growing prefixes of the ids.

    A token whose prefix does not decode to a prefix of ``text`` (e.g. half of a multi-byte
    character) is grouped with the following tokens until the text lines up again; every
    token of a group gets the group's span.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    if decode(ids) != text:
        raise ValueError(
            f"the tokenizer does not round-trip {text!r} (decodes to {decode(ids)!r}); "
            "cannot locate the gold answer's tokens without offsets: use a fast tokenizer"
        )
    spans: list[tuple[int, int]] = [(0, 0)] * len(ids)
    prev, pending = 0, []
    for k in range(len(ids)):
        pending.append(k)
        head = decode(ids[: k + 1])
        if text.startswith(head) and len(head) >= prev and "\ufffd" not in head[prev:]:
            for j in pending:
                spans[j] = (prev, len(head))
            prev, pending = len(head), []
    for j in pending:
        spans[j] = (prev, len(text))
    return ids, spans


def gold_spec(
    tokenizer: Any,
    gold: str,
    answer_prefix: str = "",
    answer_suffix: str = "",
    *,
    use_offsets: bool | None = None,
) -> GoldSpec:
    """Tokenise the wrapper with ``gold`` inside and mark the gold's tokens.

    ``use_offsets=None`` uses the offset mapping when the tokenizer is a fast one and falls
    back to cumulative decoding otherwise; ``True``/``False`` force one way (tests).
    """
    if not gold:
        raise ValueError("the gold answer is empty; every QA example needs a non-empty answer")
    text = answer_prefix + gold + answer_suffix
    start, end = len(answer_prefix), len(answer_prefix) + len(gold)
    if use_offsets is None:
        use_offsets = bool(getattr(tokenizer, "is_fast", False))
    ids, spans = (_offset_spans if use_offsets else _decode_spans)(tokenizer, text)
    scored = tuple(i for i, (a, b) in enumerate(spans) if b > a and a < end and b > start)
    if not scored:
        raise ValueError(f"no token of {text!r} covers the gold {gold!r}; check the tokenizer")
    if list(scored) != list(range(scored[0], scored[-1] + 1)):
        raise ValueError(f"the gold {gold!r} tokens are not contiguous in {ids}")
    return GoldSpec(
        gold=gold,
        ids=tuple(int(i) for i in ids),
        scored=scored,
        method="offsets" if use_offsets else "decode",
    )


def trajectory_gold_specs(
    tokenizer: Any, trajectories: Sequence[Any], answer_prefix: str, answer_suffix: str
) -> list[GoldSpec]:
    """The :class:`GoldSpec` of each trajectory's first gold alias (one per distinct gold)."""
    specs: dict[str, GoldSpec] = {}
    out = []
    for tr in trajectories:
        if not tr.answers:
            raise ValueError(f"trajectory {tr.qid!r} has no gold answers; IG needs one")
        gold = tr.answers[0]
        if gold not in specs:
            specs[gold] = gold_spec(tokenizer, gold, answer_prefix, answer_suffix)
        out.append(specs[gold])
    return out


def gold_logprob_mean(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean of log_softmax(logits)[targets]; logits (n, V), targets (n,) on their device.

    The one gold log-prob helper of every scoring path (naive, packed, live)."""
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])
    return float(lp.mean())
