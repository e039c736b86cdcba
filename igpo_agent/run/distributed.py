"""Data-parallel training over ``torchrun`` / ``accelerate launch`` ranks (docs/DISTRIBUTED.md).

How one step stays equal to single-process training of the same global batch:

- Every rank draws the same ``questions_per_step`` questions (same seeded sampler) and
  rolls out its own contiguous share (:func:`rank_slice`). A rank holds *whole groups*
  (questions are split, never the G rollouts of one question), so group normalisation,
  turn rewards and advantages are computed locally and need no communication.
- The loss normaliser (action tokens, or sequences) is summed over ranks
  (:func:`all_reduce_sum`) and every rank divides by that global count; the gradients are
  then **summed** over ranks (:func:`all_reduce_grads`, not averaged), which gives exactly
  the full-batch gradient. Clipping and the optimiser step follow the all-reduce, so every
  rank takes the same step and the adapters stay identical (checked by the tests).
- All ranks start from rank 0's trainable weights (:func:`broadcast_params`).

Outside a launcher (no ``WORLD_SIZE`` in the environment) everything is a no-op for one
rank. Backend: ``nccl`` when the run uses CUDA (each rank on ``cuda:LOCAL_RANK``), else
``gloo``.
"""

from __future__ import annotations

import datetime
import importlib
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")

DUMP_ENV = "IGPO_DEBUG_DUMP_DIR"
"""When set, every rank writes its trainable weights after every step to
``$IGPO_DEBUG_DUMP_DIR/rank{R}-step{S}.safetensors`` (tests compare the ranks)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; ``world_size == 1`` means not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where tensors for collectives live: the rank's GPU under nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from e


def wants_cuda(device: str) -> bool:
    """Whether a ``device`` setting (auto, cpu, cuda, cuda:N, mps) ends up on CUDA."""
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def init_distributed(device: str = "auto", *, timeout_s: float = 3600.0) -> DistInfo:
    """Join the process group that ``torchrun`` (or ``accelerate launch``) set up.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``
    through ``env://``). Without ``WORLD_SIZE`` > 1 it returns a one-rank ``DistInfo`` and
    touches nothing. On CUDA it selects ``cuda:LOCAL_RANK`` before joining (nccl needs it).
    ``timeout_s`` bounds how long ranks wait for each other, e.g. at the barrier while
    rank 0 evaluates: make it longer than the slowest evaluation.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world}: launch with torchrun --nproc_per_node N (N >= 1)")
    if world == 1:
        return DistInfo()
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    cuda = wants_cuda(device)
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available; use --device cpu")
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible: "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        # torch.distributed.nn binds ``group.WORLD`` into its functions' default arguments
        # when first imported, and transformers imports it lazily (loading a tokenizer). Left
        # until after init, that import holds the process group for good: destroy then cannot
        # free it, gloo's worker threads outlive the interpreter and a rank can abort at exit
        # ("terminate called without an active exception"). Imported now, the defaults are None.
        importlib.import_module("torch.distributed.nn")

        kw: dict[str, Any] = {}
        if cuda:
            kw["device_id"] = torch.device("cuda", local)
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kw,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, backend=backend)


def destroy_distributed(info: DistInfo) -> None:
    """Leave the process group (end of training); no-op for one rank."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, info: DistInfo) -> str:
    """The device string for this rank: ``cuda:LOCAL_RANK`` for auto/cuda under several
    ranks, so that no two ranks share a GPU; anything else unchanged."""
    if info.enabled and info.backend == "nccl" and device in ("auto", "cuda"):
        return f"cuda:{info.local_rank}"
    return device


def check_divisible(questions_per_step: int, info: DistInfo) -> None:
    """Questions are split across ranks whole: ``questions_per_step`` must divide evenly."""
    if questions_per_step % info.world_size:
        raise ValueError(
            f"questions_per_step={questions_per_step} cannot be split over {info.world_size} "
            f"ranks: use a multiple of {info.world_size} (each rank rolls out "
            "questions_per_step / world_size questions)"
        )


def rank_slice(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's contiguous share of a step's items (``len`` must divide evenly)."""
    check_divisible(len(items), info)
    k = len(items) // info.world_size
    return list(items[info.rank * k : (info.rank + 1) * k])


def rank_seed(seed: int, rank: int) -> int:
    """Sampling seed of ``rank``: ``seed`` itself on rank 0 (one-rank runs are unchanged),
    an independent stream derived from (seed, rank) elsewhere."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one rank)."""
    if info.enabled:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """The sum of ``value`` over ranks (float64; the value itself for one rank)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.comm_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(
    params: Sequence[torch.nn.Parameter], info: DistInfo, *, bucket_numel: int = 1 << 25
) -> None:
    """Sum every parameter's ``.grad`` over ranks, in place (one flat buffer per dtype,
    ``bucket_numel`` elements at most per collective).

    Summing, not averaging, is right when each rank divided its loss by the *global*
    normaliser (module docstring). A rank that produced no gradient for a parameter
    (e.g. no action token in its share) contributes zeros; a parameter without a gradient
    on every rank keeps ``grad=None`` (the optimiser skips it, as in one process).
    """
    if not info.enabled or not params:
        return
    dev = info.comm_device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
    dist.all_reduce(has, op=dist.ReduceOp.SUM)
    live = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in live:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in group:
            bucket.append(p)
            size += p.grad.numel()
            if size >= bucket_numel:
                _reduce_bucket(bucket, dev)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket, dev)


def _reduce_bucket(bucket: list[torch.nn.Parameter], dev: torch.device) -> None:
    flat = torch.cat([p.grad.reshape(-1).to(dev) for p in bucket])  # (sum numel,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in bucket:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@torch.no_grad()
def broadcast_params(params: Sequence[torch.nn.Parameter], info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` into every rank's (identical start)."""
    if not info.enabled:
        return
    for p in params:
        buf = p.data.to(info.comm_device)
        dist.broadcast(buf, src=src)
        if buf.data_ptr() != p.data.data_ptr():
            p.data.copy_(buf)


def merge_metrics(
    per_rank: Sequence[Mapping[str, float]],
    weights: Mapping[str, Sequence[float]] | None = None,
    *,
    sum_keys: Sequence[str] = (),
    max_keys: Sequence[str] = (),
    min_keys: Sequence[str] = (),
) -> dict[str, float]:
    """One record from the ranks' metric dicts (pure).

    Each key is averaged over the ranks that report it (weighted by ``weights[key]`` where
    given, e.g. the token counts behind a loss mean); ``sum_keys`` are added (throughput)
    and ``max_keys`` take the maximum (wall times: the step waits for the slowest rank),
    ``min_keys`` the minimum.
    With equal rollouts per rank, the mean of per-rank means is the global mean.
    """
    weights = weights or {}
    keys: list[str] = []
    for m in per_rank:
        keys += [k for k in m if k not in keys]
    out: dict[str, float] = {}
    for k in keys:
        vals = [(r, float(m[k])) for r, m in enumerate(per_rank) if k in m]
        if k in sum_keys:
            out[k] = sum(v for _, v in vals)
        elif k in max_keys:
            out[k] = max(v for _, v in vals)
        elif k in min_keys:
            out[k] = min(v for _, v in vals)
        else:
            w = [float(weights[k][r]) if k in weights else 1.0 for r, _ in vals]
            total = sum(w)
            out[k] = (
                sum(wi * v for wi, (_, v) in zip(w, vals, strict=True)) / total if total else 0.0
            )
    return out


# --- exact resume: each rank's own RNG streams ------------------------------------------


def _rank_rng(gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"sample": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


class _SavedState:
    """A state captured on another rank, with the ``get_state()`` of a generator, so that
    ``capture_rng_state`` stores it in the checkpoint's generator table as it is."""

    def __init__(self, state: torch.Tensor) -> None:
        self._state = state

    def get_state(self) -> torch.Tensor:
        return self._state


def gather_rank_rng(gen: torch.Generator, info: DistInfo) -> dict[str, Any]:
    """Ranks 1..N-1's RNG streams (sampling generator, torch CPU, current CUDA device) as
    ``{"rank{R}/sample": state-holder, ...}``, to pass with rank 0's generators to
    ``capture_rng_state`` (rank 0's own streams are the checkpoint's usual ones).
    Collective: every rank calls it; empty for one rank."""
    if not info.enabled:
        return {}
    states = all_gather_objects(_rank_rng(gen), info)
    return {
        f"rank{r}/{k}": _SavedState(v) for r, s in enumerate(states) if r > 0 for k, v in s.items()
    }


def split_rank_rng(
    saved: Mapping[str, torch.Tensor], info: DistInfo
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the checkpoint's generator table without per-rank entries, this rank's own states
    from it); rank 0 and one-rank runs get an empty second dict."""
    common = {k: v for k, v in saved.items() if not k.startswith("rank")}
    mine = {}
    prefix = f"rank{info.rank}/"
    if info.rank > 0:
        mine = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        if not mine:
            warnings.warn(
                f"the checkpoint holds no RNG streams for rank {info.rank} (saved with fewer "
                "ranks?): this rank restarts its sampling from rank 0's state, so the resumed "
                "run is valid but not an exact continuation",
                stacklevel=2,
            )
    return common, mine


def restore_rank_rng(mine: Mapping[str, torch.Tensor], gen: torch.Generator) -> None:
    """Put back a rank's own streams (after the checkpoint's common restore)."""
    if "sample" in mine:
        gen.set_state(mine["sample"])
    if "torch" in mine:
        torch.set_rng_state(mine["torch"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])


def maybe_dump_trainable(model: torch.nn.Module, step: int, info: DistInfo) -> Path | None:
    """With ``$IGPO_DEBUG_DUMP_DIR`` set, write this rank's trainable weights after ``step``
    (to check that ranks stay identical); otherwise nothing."""
    root = os.environ.get(DUMP_ENV)
    if not root:
        return None
    from safetensors.torch import save_file

    path = Path(root) / f"rank{info.rank}-step{step}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        n: p.detach().to("cpu").contiguous().clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    save_file(tensors, str(path))
    return path
