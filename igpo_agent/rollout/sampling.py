# Over 400 lines: the token loop with the KV-cache padding and row extraction only it uses, and the stats it counts.
"""The token sampling loop: one agent turn for a batch of episodes, with a KV cache.

Why our own loop rather than ``model.generate``: a turn must stop on a per-episode stop
string (``</search>``, ``</answer>``), record the sampling log-prob of every token, keep
each episode's KV cache across turns (observation tokens are appended to the cache, the
history is never re-prefilled) and drop finished rows from the batch as soon as they stop.

One call of :func:`generate_turn`:

1. **Prefill.** Every row brings the tokens not yet in its cache (``new_tokens``) and,
   optionally, the KV cache of everything before them (:class:`EpisodeCache`, positions
   ``0..L-1``). Past caches are left-padded to a common length, new tokens are left-padded
   to a common length, so a row looks like ``[pad | past | pad | new]``; the 2-D attention
   mask hides the pads and explicit ``position_ids`` continue each row from its own
   ``L``. Only the last position's logits are computed.
   If rows carry a ``gold``, the caller's ``after_prefill`` hook then scores them on top
   of that cache and must leave the cache as it found it (the live IG hook,
   :meth:`igpo_agent.ig.live.LiveBeliefHook.after_prefill`, feeds the answer wrapper's few
   tokens in one extra forward and crops the cache back). The sampler knows nothing of IG.
2. **Decode** one token per step for the rows still running, with the cache.
3. **Stop** a row at EOS, at its token budget, or when the decoded tail of its turn
   contains one of its stop strings (checked only when the new token could complete one,
   and only on the last few tokens' text). A stop string may end inside a token: the token
   is kept whole and nothing is cut; the environment parses the text. A stopped row leaves
   the batch at once (``batch_select_indices`` on the cache); if ``keep_cache`` its KV
   (pads removed) is handed back for the next turn.

The recorded log-prob of a sampled token is ``log_softmax(logits / temperature)`` at that
token, over the full vocabulary: the temperature-scaled policy, before the top-p filter
renormalises (top-p = 1 makes it exactly the sampling distribution). In greedy mode
(``temperature == 0``) it is ``log_softmax(logits)`` at the argmax.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from igpo_agent.model.kv_cache import cache_is_reusable, new_cache
from igpo_agent.model.loading import returned_cache, with_cache

__all__ = [
    "EpisodeCache",
    "GenerationSettings",
    "RolloutStats",
    "PrefillHook",
    "StopDetector",
    "TurnOutput",
    "TurnRequest",
    "eos_token_ids",
    "extract_row",
    "generate_turn",
    "model_max_context",
    "sample_tokens",
]


@dataclass
class GenerationSettings:
    """How turns are sampled during a rollout."""

    max_new_tokens: int = 96
    """Most tokens the agent may generate in one turn."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (argmax), for evaluation."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_context: int | None = None
    """Most tokens in an episode (prompt + all turns + observations); None: the model's
    ``max_position_embeddings``. An episode that would pass it ends with
    ``context_truncated=True``."""
    stop: tuple[str, ...] = ()
    """Extra stop strings, added to the env's ``info["protocol"]["stop"]``."""
    answer_eos: bool = False
    """End the answer turn at the end-of-sequence token instead of the answer wrapper's
    closing string: ``answer_suffix`` (``</answer>``) is not a stop string, so the agent
    must emit EOS after it, as a chat model ends its reply (a warm start trained with
    ``answer_eos`` does). Searches still end at their closing tag."""
    reuse_cache: bool = True
    """Keep each episode's KV cache across turns (append the observation to it) instead of
    re-prefilling the whole history every turn. Same tokens, less compute."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_context is not None and self.max_context < 2:
            raise ValueError(f"max_context must be >= 2 tokens or None, got {self.max_context}")
        self.stop = tuple(self.stop)


@dataclass
class EpisodeCache:
    """The KV cache of one episode's first ``length`` tokens: per layer (keys, values),
    each shaped (num_kv_heads, length, head_dim), no padding."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        """Number of cached tokens."""
        return 0 if not self.layers else int(self.layers[0][0].shape[1])


@dataclass
class TurnRequest:
    """One row of a turn: the tokens to feed and what is already cached before them."""

    new_tokens: list[int]
    """Tokens not yet in ``cache`` (at least one); the last one is where sampling starts."""
    max_new_tokens: int
    """This row's token budget for the turn (>= 1)."""
    stop: tuple[str, ...] = ()
    """Stop strings that end this row's turn."""
    cache: EpisodeCache | None = None
    """KV cache of the tokens before ``new_tokens`` (None: start from nothing)."""
    gold: Any = None
    """What ``generate_turn``'s ``after_prefill`` hook scores for this row after the prefill,
    from the live cache (the episode's ``BeliefHook.gold``; for live IG a ``GoldSpec``);
    None: no scoring."""


@dataclass
class TurnOutput:
    """What one row generated in a turn."""

    tokens: list[int]
    logprobs: list[float]
    finish: str
    """``"stop"`` (a stop string), ``"eos"`` or ``"length"`` (the row's budget)."""
    cache: EpisodeCache | None = None
    """KV of every token fed so far (context + ``tokens[:-1]``; the last sampled token has
    not been through the model yet) when ``keep_cache``; else None."""
    belief: float | None = None
    """v_t of the request's ``gold`` at the turn's start (None when not asked)."""


PrefillHook = Callable[
    [torch.nn.Module, DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor, list[Any]],
    tuple[list[float | None], int],
]
"""``generate_turn``'s ``after_prefill``: ``(model, kv, mask, next_pos, last_logits, golds)``
-> (one value per row, None where its gold is None; tokens it fed). Called right after the
prefill when a request carries a ``gold``: ``kv`` is the batch's cache (B rows, S columns),
``mask`` its (B, S) attention mask, ``next_pos`` (B,) each row's next position, ``last_logits``
(B, V) the prefill's last-position logits. It must leave ``kv`` as it found it."""


@dataclass
class RolloutStats:
    """Work done by every call that was given this object (accumulates): ``rollout_batch``
    (both engines), :func:`generate_turn`, ``shared_prefill``."""

    calls: int = 0
    episodes: int = 0
    turns: int = 0
    tokens_generated: int = 0
    prefill_tokens: int = 0  # tokens fed in prefill forwards (prompts, observations, re-prefills)
    forward_calls: int = 0
    decode_rows: int = 0  # sum of batch sizes over decode forwards
    gen_seconds: float = 0.0  # time inside the model (prefill + decode + sampling), IG excluded
    ig_seconds: float = 0.0  # the after_prefill hook scoring beliefs from the live cache
    ig_tokens: int = 0  # tokens that hook fed
    env_seconds: float = 0.0  # time inside env.reset / env.step
    context_truncated: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # per forward, every call
    last_batch_sizes: list[int] = field(default_factory=list)  # per forward, last rollout only

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of generation time."""
        return self.tokens_generated / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def as_metrics(self, prefix: str = "rollout/") -> dict[str, float]:
        """Flat, stable metric names for logging."""
        return {
            f"{prefix}episodes": float(self.episodes),
            f"{prefix}turns": float(self.turns),
            f"{prefix}tokens_generated": float(self.tokens_generated),
            f"{prefix}tokens_per_second": self.tokens_per_second,
            f"{prefix}gen_seconds": self.gen_seconds,
            f"{prefix}ig_seconds": self.ig_seconds,
            f"{prefix}env_seconds": self.env_seconds,
            f"{prefix}context_truncated": float(self.context_truncated),
        }


def model_max_context(model: torch.nn.Module) -> int:
    """The model's position limit (``config.max_position_embeddings``), or a clear error."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None and config is not None and hasattr(config, "get_text_config"):
        limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit is None:
        raise ValueError(
            "cannot read the model's max_position_embeddings: set GenerationSettings.max_context"
        )
    return int(limit)


def eos_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """Every token id that ends a turn as EOS: the tokenizer's and the generation config's."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    return sorted(ids)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row; return (tokens (B,), log-probs (B,)).

    Log-probs are ``log_softmax(logits / temperature)`` at the chosen token (greedy:
    ``log_softmax(logits)`` at the argmax), see the module docstring. Sampling is by inverse
    CDF with one uniform draw per row from ``generator`` (which may live on the CPU while
    the logits are on an accelerator), so a seeded generator gives reproducible draws.
    """
    logits = logits.float()  # (B, V)
    if not torch.isfinite(logits).any(dim=-1).all() or torch.isnan(logits).any():
        raise RuntimeError(
            "the model produced NaN or all-infinite logits: check the model weights/dtype "
            "(fp16 on CPU overflows; use float32 or bfloat16)"
        )
    if temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)  # (B, V)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)  # the first token always stays
    else:
        sorted_p, order = probs, None
    cdf = sorted_p.cumsum(dim=-1)  # (B, V)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((logits.shape[0], 1), generator=generator, device=gen_device)
    u = u.to(cdf.device, cdf.dtype) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)  # (B, 1)
    tokens = (order.gather(-1, idx) if order is not None else idx).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class StopDetector:
    """Per-row stop-string detection on the decoded tail of a turn.

    A stop string can only be completed by a token whose text contains its last character,
    so the tokenizer's vocabulary is decoded once into a boolean table of such tokens and
    only those rows decode their tail (the last ``window`` tokens of the turn).
    """

    _tables: dict[tuple[int, frozenset[str]], tuple[object, torch.Tensor]] = {}

    def __init__(self, tokenizer, stop_strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        stops = [s for s in stop_strings if s]
        self.window = max((len(s.encode("utf-8")) for s in stops), default=0) + 2
        last_chars = frozenset(s[-1] for s in stops)
        self.candidates = self._table(tokenizer, last_chars) if stops else None

    @classmethod
    def _table(cls, tokenizer, last_chars: frozenset[str]) -> torch.Tensor:
        key = (id(tokenizer), last_chars)
        hit = cls._tables.get(key)
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        wide = any(ord(c) > 127 for c in last_chars)  # a partial UTF-8 token decodes to U+FFFD
        table = torch.tensor(
            [any(c in t for c in last_chars) or (wide and "\ufffd" in t) for t in texts],
            dtype=torch.bool,
        )
        if len(cls._tables) > 8:
            cls._tables.clear()
        cls._tables[key] = (tokenizer, table)
        return table

    def could_stop(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which newly sampled tokens could complete a stop string."""
        if self.candidates is None:
            return torch.zeros(tokens.shape, dtype=torch.bool)
        tokens = tokens.cpu()
        ok = tokens < self.candidates.shape[0]
        out = torch.zeros(tokens.shape, dtype=torch.bool)
        out[ok] = self.candidates[tokens[ok]]
        return out

    def hit(self, turn_tokens: list[int], stop: Sequence[str]) -> bool:
        """True if the decoded tail of this turn contains one of ``stop``."""
        if not stop:
            return False
        tail = self.tokenizer.decode(turn_tokens[-self.window :])
        return any(s in tail for s in stop)


def _pad_past(
    caches: list[EpisodeCache | None], num_layers: int, ref: tuple[torch.Tensor, torch.Tensor]
) -> tuple[DynamicCache, int]:
    """Left-pad every row's past KV to the longest and stack them into one DynamicCache."""
    longest = max(c.length if c is not None else 0 for c in caches)
    k_ref, v_ref = ref  # (H, L, Dk), (H, L, Dv) from any row
    data = []
    for layer in range(num_layers):
        ks, vs = [], []
        for c in caches:
            n = c.length if c is not None else 0
            k = k_ref.new_zeros((k_ref.shape[0], longest, k_ref.shape[2]))
            v = v_ref.new_zeros((v_ref.shape[0], longest, v_ref.shape[2]))
            if n:
                k[:, longest - n :] = c.layers[layer][0]
                v[:, longest - n :] = c.layers[layer][1]
            ks.append(k)
            vs.append(v)
        data.append((torch.stack(ks), torch.stack(vs)))
    return new_cache(data), longest


def extract_row(cache: DynamicCache, row: int, keep: torch.Tensor) -> EpisodeCache:
    """One row's KV with the padded columns removed (``keep``: bool (S,))."""
    return EpisodeCache(
        layers=[
            (layer.keys[row][:, keep].clone(), layer.values[row][:, keep].clone())
            for layer in cache.layers
        ]
    )


@torch.no_grad()
def generate_turn(
    model: torch.nn.Module,
    tokenizer,
    requests: list[TurnRequest],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_ids: Sequence[int] = (),
    keep_cache: bool = False,
    stats: RolloutStats | None = None,
    after_prefill: PrefillHook | None = None,
) -> list[TurnOutput]:
    """Generate one turn for every request, batched; see the module docstring.

    ``after_prefill`` (:data:`PrefillHook`) scores the requests' ``gold`` after the prefill;
    its values come back as ``TurnOutput.belief``. Raises ValueError for an empty
    ``new_tokens``, a budget below 1, or a ``gold`` without a hook; a request with a cache
    needs ``keep_cache``-compatible models (full attention, DynamicCache).
    """
    if not requests:
        return []
    for r in requests:
        if not r.new_tokens:
            raise ValueError("each TurnRequest needs at least one new token to feed")
        if r.max_new_tokens < 1:
            raise ValueError(f"TurnRequest.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    stats = stats if stats is not None else RolloutStats()
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    bsz = len(requests)
    stop_all = sorted({s for r in requests for s in r.stop})
    detector = StopDetector(tokenizer, stop_all)
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long)

    # ---- prefill: rows = [pad | past | pad | new] ----
    past = [r.cache for r in requests]
    ref = next((c for c in past if c is not None and c.length), None)
    n_new = [len(r.new_tokens) for r in requests]
    width = max(n_new)
    pad_id = 0
    if ref is not None:
        kv, past_len = _pad_past(past, len(ref.layers), ref.layers[0])
    else:
        kv, past_len = new_cache(), 0
    input_ids = torch.full((bsz, width), pad_id, dtype=torch.long)
    mask = torch.zeros((bsz, past_len + width), dtype=torch.long)
    positions = torch.zeros((bsz, width), dtype=torch.long)
    for i, r in enumerate(requests):
        n_past = r.cache.length if r.cache is not None else 0
        input_ids[i, width - n_new[i] :] = torch.tensor(r.new_tokens, dtype=torch.long)
        mask[i, past_len - n_past : past_len] = 1
        mask[i, past_len + width - n_new[i] :] = 1
        positions[i, width - n_new[i] :] = torch.arange(n_past, n_past + n_new[i])
    next_pos = torch.tensor(
        [
            (r.cache.length if r.cache is not None else 0) + n
            for r, n in zip(requests, n_new, strict=True)
        ]
    )
    mask = mask.to(device)
    out = model(
        input_ids=input_ids.to(device),
        attention_mask=mask,
        position_ids=positions.to(device),
        **with_cache(kv),
        use_cache=True,
        logits_to_keep=1,
    )
    kv = returned_cache(out)
    stats.forward_calls += 1
    stats.prefill_tokens += sum(n_new)
    stats.batch_sizes.append(bsz)
    if keep_cache and not cache_is_reusable(kv):
        raise ValueError(
            "this model's cache is not a plain full-attention DynamicCache: "
            "set GenerationSettings.reuse_cache=False"
        )

    beliefs: list[float | None] = [None] * bsz
    t_belief = 0.0
    golds = [r.gold for r in requests]
    if any(g is not None for g in golds):
        if after_prefill is None:
            raise ValueError("a TurnRequest has a gold to score but no after_prefill hook")
        tb = time.perf_counter()
        beliefs, fed = after_prefill(model, kv, mask, next_pos, out.logits[:, -1, :], golds)
        t_belief = time.perf_counter() - tb
        stats.ig_seconds += t_belief
        stats.ig_tokens += fed

    rows = list(range(bsz))  # request index of each live batch row
    budgets = [r.max_new_tokens for r in requests]
    results: list[TurnOutput | None] = [None] * bsz
    toks: list[list[int]] = [[] for _ in range(bsz)]
    lps: list[list[float]] = [[] for _ in range(bsz)]
    logits = out.logits[:, -1, :]
    while True:
        new_tok, new_lp = sample_tokens(logits, temperature, top_p, generator)
        new_tok_cpu, new_lp_cpu = new_tok.cpu(), new_lp.cpu()
        is_eos = torch.isin(new_tok_cpu, eos) if eos.numel() else torch.zeros(len(rows), dtype=bool)
        maybe_stop = detector.could_stop(new_tok_cpu)
        tok_list, lp_list = new_tok_cpu.tolist(), new_lp_cpu.tolist()
        keep_rows: list[int] = []
        for b, req_i in enumerate(rows):
            toks[req_i].append(tok_list[b])
            lps[req_i].append(lp_list[b])
            finish = None
            if bool(is_eos[b]):
                finish = "eos"
            elif bool(maybe_stop[b]) and detector.hit(toks[req_i], requests[req_i].stop):
                finish = "stop"
            elif len(toks[req_i]) >= budgets[req_i]:
                finish = "length"
            if finish is None:
                keep_rows.append(b)
                continue
            row_cache = extract_row(kv, b, mask[b].bool()) if keep_cache else None
            results[req_i] = TurnOutput(
                toks[req_i], lps[req_i], finish, row_cache, belief=beliefs[req_i]
            )
        stats.tokens_generated += len(rows)
        if not keep_rows:
            break
        if len(keep_rows) < len(rows):  # finished rows leave the batch
            sel = torch.tensor(keep_rows, dtype=torch.long, device=device)
            kv.batch_select_indices(sel)
            mask = mask.index_select(0, sel)
            next_pos = next_pos.index_select(0, sel.cpu())
            new_tok = new_tok.index_select(0, sel.to(new_tok.device))
            rows = [rows[b] for b in keep_rows]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        out = model(
            input_ids=new_tok[:, None].to(device),
            attention_mask=mask,
            position_ids=next_pos[:, None].to(device),
            **with_cache(kv),
            use_cache=True,
        )
        kv = returned_cache(out)
        next_pos = next_pos + 1
        stats.forward_calls += 1
        stats.decode_rows += len(rows)
        stats.batch_sizes.append(len(rows))
        logits = out.logits[:, -1, :]
    stats.gen_seconds += time.perf_counter() - t0 - t_belief
    return [r for r in results if r is not None]
