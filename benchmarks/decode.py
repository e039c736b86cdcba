"""Where a decode step's time goes, against this machine's own ceilings.

    python benchmarks/decode.py                 # SmolLM2-135M, 16 rows, 300-token cache
    python benchmarks/decode.py --rows 8 --cache 600 --threads 2
    python benchmarks/decode.py --quick         # tiny random model, seconds

One decode step of the rollout (a batch of ``--rows`` episodes, each with a
``--cache``-token KV cache, LoRA r=16 on q/k/v/o as in ``configs/cpu_demo.yaml``, fp32,
eager, the rollout's KV cache) is timed and profiled by operator type (weight matmuls,
attention, ``torch.cat``, the rest). Next to it, two ceilings measured here in the same process: the
memory bandwidth of one big tensor copy and the matmul rate of one large square product,
which give the step's floor: reading every weight once, or doing its FLOPs at that rate,
whichever is slower. Side by side, A B A B: the same steps with transformers'
``DynamicCache`` (``torch.cat`` of the whole cache every step) and with the rollout's
grow-in-place cache (:mod:`igpo_agent.model.kv_cache`); the logits are compared bit for
bit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import load_policy, machine_line, print_table  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from igpo_agent.model.kv_cache import new_cache  # noqa: E402
from igpo_agent.model.loading import returned_cache, with_cache  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=16, help="episodes decoded together")
    p.add_argument("--cache", type=int, default=300, help="tokens already in each row's cache")
    p.add_argument("--steps", type=int, default=24, help="decode steps timed per variant")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--model", default="smollm2", help="smollm2 or tiny")
    p.add_argument("--quick", action="store_true", help="tiny model, 4 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.cache = "tiny", 4, 64
    return args


@torch.no_grad()
def decode_steps(
    model: torch.nn.Module,
    rows: int,
    cache: int,
    steps: int,
    around: Any = None,
    kv: Any = None,
) -> tuple[float, Any]:
    """Prefill ``rows`` x ``cache`` tokens (some rows left-padded) into ``kv`` (default: a
    transformers ``DynamicCache``), then time ``steps`` greedy decode steps (inside the
    context manager ``around`` when given, e.g. a profiler); returns (seconds per step,
    stacked logits)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40000, (rows, cache), generator=g)
    mask = torch.ones(rows, cache, dtype=torch.long)
    mask[: rows // 4, : cache // 10] = 0  # padded rows, as in a batch of different lengths
    kv = DynamicCache() if kv is None else kv
    out = model(input_ids=ids, attention_mask=mask, **with_cache(kv), use_cache=True)
    kv, logits = returned_cache(out), []
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    with around if around is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            out = model(input_ids=tok, attention_mask=mask, **with_cache(kv), use_cache=True)
            kv = returned_cache(out)
            logits.append(out.logits[:, -1])
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        secs = (time.perf_counter() - t0) / steps
    return secs, torch.stack(logits)


def op_split(model: torch.nn.Module, rows: int, cache: int) -> dict[str, float]:
    """Milliseconds per decode step by operator kind (torch.profiler, 3 steps, the rollout's
    grow-in-place cache)."""
    from torch.profiler import ProfilerActivity, profile

    groups: dict[str, Callable[[str], bool]] = {
        "matmul": lambda n: n in ("aten::mm", "aten::addmm", "aten::bmm"),
        "attention": lambda n: "scaled_dot_product" in n,
        "torch.cat": lambda n: n == "aten::cat",
    }
    prof = profile(activities=[ProfilerActivity.CPU])
    decode_steps(model, rows, cache, 3, around=prof, kv=new_cache())  # the rollout's cache
    split = dict.fromkeys([*groups, "other"], 0.0)
    for ev in prof.key_averages():
        kind = next((k for k, f in groups.items() if f(ev.key)), "other")
        split[kind] += ev.self_cpu_time_total / 1e3 / 3
    split["total"] = sum(split.values())
    return split


def ceilings(threads: int) -> tuple[float, float]:
    """(memory bandwidth GB/s of a 256 MB copy, fp32 GFLOP/s of a 1536^3 matmul), this process."""
    src = torch.randn(64 * 1024 * 1024)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(src)
    bw = 3 * 2 * src.numel() * 4 / (time.perf_counter() - t0) / 1e9  # read + write
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    flops = 3 * 2 * 1536**3 / (time.perf_counter() - t0) / 1e9
    return bw, flops


def main(argv: list[str] | None = None) -> int:
    """Print the decode step's split, its floor, and the cat-free cache's side-by-side ratio."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    model = load_policy(args.model, lora=True).model.eval()  # LoRA r=16 on q/k/v/o
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    bw, peak = ceilings(args.threads)
    floor_mem = n_bytes / (bw * 1e9)
    floor_flop = 2 * n_params * args.rows / (peak * 1e9)
    split = op_split(model, args.rows, args.cache)
    print(
        f"decode step: {args.model} fp32 + LoRA r=16, {args.rows} rows, {args.cache}-token "
        f"cache, {args.threads} thread(s)"
    )
    print_table(
        ["part", "ms/step", "share"],
        [[k, v, f"{100 * v / split['total']:.0f}%"] for k, v in split.items()],
    )
    print(
        f"ceilings here: copy {bw:.1f} GB/s, matmul {peak:.0f} GFLOP/s; weights "
        f"{n_bytes / 1e6:.0f} MB -> floor {1e3 * max(floor_mem, floor_flop):.0f} ms/step "
        f"(memory {1e3 * floor_mem:.0f} ms, FLOPs {1e3 * floor_flop:.0f} ms) = "
        f"{args.rows / max(floor_mem, floor_flop):.0f} tok/s at {args.rows} rows, attention "
        "not counted"
    )
    rows = []
    caches = {
        "torch.cat (transformers DynamicCache)": DynamicCache,
        "grow in place (new_cache)": new_cache,
    }
    times: dict[str, list[float]] = {name: [] for name in caches}
    logits = {}
    for _ in range(2):  # A B A B
        for name, make in caches.items():
            sec, logits[name] = decode_steps(model, args.rows, args.cache, args.steps, kv=make())
            times[name].append(sec)
    base = min(times["torch.cat (transformers DynamicCache)"])
    for name, ts in times.items():
        rows.append([name, 1e3 * min(ts), args.rows / min(ts), base / min(ts)])
    print_table(["KV cache", "ms/step", "tok/s", "speed-up"], rows)
    a, b = logits.values()
    print(f"same logits bit for bit: {torch.equal(a, b)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
