"""Belief values v_t for every turn boundary of a trajectory (ALGORITHM "Turn reward", "Cost").

    v_t = mean_j log pi(g_j | token_ids[:b_t], W_prefix, g_<j)

where g is the first gold alias's tokens inside the answer wrapper the agent itself would
emit (``answer_prefix + gold + answer_suffix``, e.g. ``<answer>`` ... ``</answer>``), and
b_t are ``Trajectory.boundaries()``. Only the gold's tokens are scored; the differences
(``log_prob_diff`` / ``prob_diff``) are taken in ``rewards.py``.

Two implementations that must agree (tested to 1e-4):

- ``"naive"`` (the reference): one forward pass per boundary over ``prefix + wrapper``.
- ``"packed"`` (default): one forward pass per micro-batch of trajectories. Each row holds
  the trajectory once (up to its last boundary) followed by one copy of the wrapper per
  boundary; a 4-D attention mask lets copy t see only tokens ``< b_t`` and itself
  (causally), and its position ids continue from b_t. Only the logits that predict gold
  tokens are computed (``logits_to_keep``). Cost: the trajectory is encoded once instead of
  once per turn (~T times fewer tokens for T turns).

transformers 5 passes a 4-D mask through unchanged (``masking_utils``: "If the mask is
already 4D, simply return as-is") to the attention function; we build it additive
(0 = attend, dtype min = blocked) in the model's dtype, which the ``eager`` path adds to the
scores and ``sdpa`` accepts as ``attn_mask``. Flash-attention kernels ignore such masks,
so the packed path refuses them (use ``method="naive"`` there).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from igpo_agent.ig.gold import GoldSpec, gold_logprob_mean, trajectory_gold_specs

Method = Literal["packed", "naive"]
_PACKED_ATTENTION = ("sdpa", "eager")


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _scoring_mode(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _supports_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def validate_inputs(
    seqs: Sequence[Sequence[int]],
    boundaries: Sequence[Sequence[int]],
    golds: Sequence[GoldSpec],
) -> None:
    """Raise a ValueError naming the fix unless the scoring inputs line up: one boundary
    list and one gold per sequence, boundaries ascending within the sequence, and no empty
    prefix asked to predict the first gold token. Every scoring path checks its inputs with
    it (the re-encoding ones here, :mod:`igpo_agent.ig.vllm_beliefs`)."""
    if not len(seqs) == len(boundaries) == len(golds):
        raise ValueError(
            f"seqs ({len(seqs)}), boundaries ({len(boundaries)}) and golds ({len(golds)}) "
            "must have one entry per trajectory"
        )
    for i, (seq, bounds, gold) in enumerate(zip(seqs, boundaries, golds, strict=True)):
        last = 0
        for b in bounds:
            if not last <= b <= len(seq):
                raise ValueError(
                    f"trajectory {i}: boundaries {list(bounds)} must be ascending and within "
                    f"its {len(seq)} tokens"
                )
            last = b
        if bounds and bounds[0] == 0 and gold.scored[0] == 0:
            raise ValueError(
                f"trajectory {i}: an empty prefix cannot predict the first gold token; "
                "give the prompt at least one token"
            )


# ---------------------------------------------------------------------------- naive
def _naive(model: Any, seqs, boundaries, golds) -> list[list[float]]:
    device, _ = _device_dtype(model)
    out: list[list[float]] = []
    for seq, bounds, gold in zip(seqs, boundaries, golds, strict=True):
        scored = torch.tensor(gold.scored)
        targets = torch.tensor([gold.ids[j] for j in gold.scored], device=device)
        values = []
        keep = gold.context_len + 1  # logits of the last prefix token and the wrapper
        kwargs = {"logits_to_keep": keep} if _supports_logits_to_keep(model) else {}
        for b in bounds:
            ids = list(seq[:b]) + list(gold.ids[: gold.context_len])
            logits = model(
                input_ids=torch.tensor([ids], device=device), use_cache=False, **kwargs
            ).logits[0]  # (keep or len(ids), V)
            rows = b + scored - 1 - (len(ids) - logits.shape[0])
            values.append(gold_logprob_mean(logits[rows], targets))
        out.append(values)
    return out


# ---------------------------------------------------------------------------- packed
@dataclass
class _Row:
    """One trajectory laid out for the packed pass (unpadded)."""

    ids: list[int]
    pos: list[int]  # position id of each token
    seg: list[int]  # -1: trajectory; t: copy of the wrapper for boundary t
    limit: list[int]  # for copy tokens: b_t (copy sees trajectory tokens < b_t)
    predictors: list[
        list[int]
    ]  # per boundary: row index of the logits that predict each gold token
    targets: list[int]  # gold token ids (same for every boundary)


def _layout(seq: Sequence[int], bounds: Sequence[int], gold: GoldSpec) -> _Row:
    n = max(bounds)
    ids, pos = list(seq[:n]), list(range(n))
    seg, limit = [-1] * n, [0] * n
    copy = list(gold.ids[: gold.context_len])
    predictors = []
    for t, b in enumerate(bounds):
        base = len(ids)
        ids += copy
        pos += [b + j for j in range(len(copy))]
        seg += [t] * len(copy)
        limit += [b] * len(copy)
        # gold token j is predicted by wrapper token j-1, or by the last prefix token when j == 0
        predictors.append([base + j - 1 if j > 0 else b - 1 for j in gold.scored])
    return _Row(ids, pos, seg, limit, predictors, [gold.ids[j] for j in gold.scored])


def packed_attention_mask(
    pos: torch.Tensor,
    seg: torch.Tensor,
    limit: torch.Tensor,
    doc: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive 4-D mask (B, 1, L, L) for packed rows; pos/seg/limit/doc are (B, L).

    ``doc`` numbers the trajectories sharing a row (-1 = padding); tokens of different
    trajectories never see each other. Within one: query q may see key k when both are
    trajectory tokens (seg -1) and pos_k <= pos_q; when both are in the same wrapper copy
    and pos_k <= pos_q; or when q is in a copy, k is a trajectory token and pos_k < limit_q
    (= b_t). Every token sees itself, so padding rows stay finite.
    """
    pq, pk = pos[:, :, None], pos[:, None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    same_doc = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
    same_seg = (sq == sk) & (pk <= pq)
    into_prefix = (sq >= 0) & (sk == -1) & (pk < limit[:, :, None])
    eye = torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)[None]
    allowed = (same_doc & (same_seg | into_prefix)) | eye  # (B, L, L)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=pos.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _pack_bins(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: indices grouped so each bin's total is <= the longest length.

    Several short trajectories share one row instead of being padded to the longest, and
    no row grows past the longest one (attention cost stays ~ L_max^2 per row).
    """
    capacity = max(lengths)
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def _micro_batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group row indices (longest first) so that rows x padded length <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _packed_batch(model: Any, rows: list[list[_Row]], padding_side: str) -> list[list[list[float]]]:
    """One forward over ``rows`` (each a list of trajectory layouts sharing a row)."""
    device, dtype = _device_dtype(model)
    widths = [sum(len(r.ids) for r in row) for row in rows]
    length = max(widths)
    shape = (len(rows), length)
    ids = torch.zeros(shape, dtype=torch.long)  # pad id 0: padding is masked out anyway
    pos = torch.zeros(shape, dtype=torch.long)
    seg = torch.full(shape, -2, dtype=torch.long)
    limit = torch.zeros(shape, dtype=torch.long)
    doc = torch.full(shape, -1, dtype=torch.long)
    starts: list[list[int]] = []  # row index where each member starts
    for i, (row, width) in enumerate(zip(rows, widths, strict=True)):
        at = length - width if padding_side == "left" else 0
        starts.append([])
        for d, r in enumerate(row):
            sl = slice(at, at + len(r.ids))
            ids[i, sl], pos[i, sl] = torch.tensor(r.ids), torch.tensor(r.pos)
            seg[i, sl], limit[i, sl] = torch.tensor(r.seg), torch.tensor(r.limit)
            doc[i, sl] = d
            starts[-1].append(at)
            at += len(r.ids)
    mask = packed_attention_mask(pos, seg, limit, doc, dtype)
    wanted = sorted(
        {
            at + p
            for row, row_starts in zip(rows, starts, strict=True)
            for r, at in zip(row, row_starts, strict=True)
            for ps in r.predictors
            for p in ps
        }
    )
    kwargs: dict[str, Any] = {}
    if _supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = torch.tensor(wanted, dtype=torch.long, device=device)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=pos.to(device),
        use_cache=False,
        **kwargs,
    ).logits  # (B, K, V) with logits_to_keep, else (B, L, V)
    column = {p: k for k, p in enumerate(wanted)} if kwargs else None
    out = []
    for i, (row, row_starts) in enumerate(zip(rows, starts, strict=True)):
        out.append([])
        for r, at in zip(row, row_starts, strict=True):
            targets = torch.tensor(r.targets, device=logits.device)
            values = []
            for ps in r.predictors:
                idx = [column[at + p] if column is not None else at + p for p in ps]
                values.append(gold_logprob_mean(logits[i, idx], targets))
            out[-1].append(values)
    return out


def _packed(model, seqs, boundaries, golds, max_tokens, padding_side) -> list[list[float]]:
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in _PACKED_ATTENTION:
        raise ValueError(
            f"the packed belief pass needs attn_implementation in {_PACKED_ATTENTION}, the "
            f"model uses {impl!r}: load it with attn_implementation='sdpa' or use method='naive'"
        )
    out: list[list[float]] = [[] for _ in seqs]
    todo = [i for i, b in enumerate(boundaries) if len(b)]
    if not todo:
        return out
    layouts = [_layout(seqs[i], boundaries[i], golds[i]) for i in todo]
    bins = _pack_bins([len(r.ids) for r in layouts])
    widths = [sum(len(layouts[j].ids) for j in b) for b in bins]
    for batch in _micro_batches(widths, max_tokens):
        rows = [[layouts[j] for j in bins[b]] for b in batch]
        for b, row_values in zip(batch, _packed_batch(model, rows, padding_side), strict=True):
            for j, values in zip(bins[b], row_values, strict=True):
                out[todo[j]] = values
    return out


# ---------------------------------------------------------------------------- public
def reencoded_beliefs(
    model: Any,
    seqs: Sequence[Sequence[int]],
    boundaries: Sequence[Sequence[int]],
    golds: Sequence[GoldSpec],
    *,
    method: Method = "packed",
    max_tokens_per_batch: int | None = None,
    padding_side: Literal["left", "right"] = "left",
) -> list[list[float]]:
    """v_t for every boundary of every trajectory, under ``model`` with no gradient.

    ``seqs[i]`` are trajectory i's token ids, ``boundaries[i]`` its ascending prefix
    lengths b_0..b_{T-1} (``Trajectory.boundaries()``), ``golds[i]`` its ``GoldSpec``.
    Returns ``values[i][t]`` = mean log-prob of the gold tokens after ``seqs[i][:b_t]`` and
    the wrapper prefix. The model is put in eval mode for the call and restored after.

    Packed path: short trajectories share a row (no row longer than the longest packed
    trajectory), and ``max_tokens_per_batch`` bounds rows x padded length per forward; the
    attention also holds B x heads x L^2 scores. ``None`` picks by device: one row per
    forward on CPU (measured fastest: batching rows there only adds memory traffic),
    16384 tokens on CUDA.
    """
    validate_inputs(seqs, boundaries, golds)
    if method not in ("packed", "naive"):
        raise ValueError(f"unknown method {method!r}; choose 'packed' or 'naive'")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if max_tokens_per_batch is None:
        device, _ = _device_dtype(model)
        max_tokens_per_batch = 16384 if device.type == "cuda" else 1
    with _scoring_mode(model):
        if method == "naive":
            return _naive(model, seqs, boundaries, golds)
        return _packed(model, seqs, boundaries, golds, max_tokens_per_batch, padding_side)


def reencoded_trajectory_beliefs(
    policy: Any,
    trajectories: Sequence[Any],
    answer_prefix: str,
    answer_suffix: str,
    *,
    method: Method = "packed",
    max_tokens_per_batch: int | None = None,
) -> list[list[float]]:
    """``reencoded_beliefs`` for ``Trajectory`` objects under ``policy.model`` (the rollout policy).

    Uses each trajectory's first gold alias and ``boundaries()``; the wrapper strings come
    from the env's ``info["protocol"]``. Returns one list of T values per trajectory.
    """
    return reencoded_beliefs(
        policy.model,
        [tr.token_ids for tr in trajectories],
        [tr.boundaries() for tr in trajectories],
        trajectory_gold_specs(policy.tokenizer, trajectories, answer_prefix, answer_suffix),
        method=method,
        max_tokens_per_batch=max_tokens_per_batch,
    )
