"""Plots of a run's ``metrics.jsonl``: ``python -m igpo_agent.plot RUN_DIR [--out DIR]``.

Writes ``overview.png`` (every panel whose metrics exist) plus one PNG per panel into
``RUN_DIR/plots`` (or ``--out``). ``--compare NAME=RUN_DIR ...`` overlays evaluation F1
against rollouts seen for several runs (IGPO vs GRPO) into one PNG. Matplotlib runs with
the Agg backend: no display is needed.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from igpo_agent.run import logging_utils as lu  # noqa: E402

Series = dict[str, tuple[list[float], list[float]]]
_IG_RE = re.compile(r"^" + re.escape(lu.IG_TURN_PREFIX) + r"(\d+)$")


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, the metric keys drawn as lines, and the file stem."""

    name: str
    title: str
    keys: tuple[str, ...]
    ylabel: str = ""
    smooth: bool = False  # per-step rollout statistics: draw a rolling mean over the raw points


PANELS = (
    Panel(
        "probe",
        "Fixed probe: same questions and seeds (95% CI)",
        (lu.PROBE_REWARD, lu.PROBE_F1, lu.PROBE_PASS_AT_1, lu.PROBE_PASS_AT_G),
        "per rollout / question",
    ),
    Panel(
        "reward",
        "Training reward (new questions each step)",
        (lu.OUTCOME_F1, lu.REWARD_MEAN),
        "per rollout",
        True,
    ),
    Panel(
        "eval", "Greedy evaluation (95% CI)", (lu.EVAL_F1, lu.EVAL_EM, lu.EVAL_COVER_EM), "score"
    ),
    Panel(
        "retrieval",
        "Eval F1 by whether a document held the gold (95% CI)",
        (lu.EVAL_F1_RETRIEVED, lu.EVAL_F1_NOT_RETRIEVED, lu.EVAL_GOLD_RETRIEVED),
        "F1 / share",
    ),
    Panel(
        "flips",
        "Eval answers vs the first evaluation",
        (lu.EVAL_CHANGED, lu.EVAL_BETTER, lu.EVAL_WORSE),
        "questions",
    ),
    Panel(
        "format",
        "Format errors (eval: 95% CI)",
        (lu.FORMAT_ERROR_RATE, lu.EVAL_FORMAT_ERROR_RATE),
        "rate",
        True,
    ),
    Panel("turns", "Turns per episode", (lu.TURNS_PER_EPISODE, lu.SEARCHES_PER_EPISODE), "", True),
    Panel(
        "signal",
        "Where the learning signal is",
        (lu.ALL_EQUAL_GROUPS, lu.NONZERO_ADV_TOKENS),
        "share",
        True,
    ),
    Panel("ratio", "PPO ratio pi / pi_old", (lu.RATIO_MIN, lu.RATIO_MEAN, lu.RATIO_MAX), ""),
    Panel("ig", "Information gain per turn", (), "mean IG"),  # keys found at run time
    Panel("kl", "KL", (lu.KL, lu.APPROX_KL), "nats"),
    Panel("entropy", "Entropy", (lu.ENTROPY,), "nats / token"),
    Panel("clipfrac", "Clip fraction", (lu.CLIPFRAC,), "fraction"),
    Panel("loss", "Policy loss", (lu.POLICY_LOSS,), ""),
    Panel("time", "Time per step (stacked)", lu.TIME_SPLIT_KEYS, "seconds"),
)


ERROR_BARS = {
    lu.PROBE_REWARD: (lu.PROBE_REWARD_CI_LOW, lu.PROBE_REWARD_CI_HIGH),
    lu.EVAL_F1_RETRIEVED: (lu.EVAL_F1_RETRIEVED_CI_LOW, lu.EVAL_F1_RETRIEVED_CI_HIGH),
    lu.EVAL_F1_NOT_RETRIEVED: (lu.EVAL_F1_NOT_RETRIEVED_CI_LOW, lu.EVAL_F1_NOT_RETRIEVED_CI_HIGH),
    lu.EVAL_F1: (lu.EVAL_F1_CI_LOW, lu.EVAL_F1_CI_HIGH),
    lu.EVAL_FORMAT_ERROR_RATE: (lu.EVAL_FORMAT_CI_LOW, lu.EVAL_FORMAT_CI_HIGH),
}
"""Metrics drawn with their 95% interval as error bars: key -> (low key, high key)."""


def smoothing_window(n: int) -> int:
    """Steps in the rolling mean of an ``n``-step series: about a quarter of the run,
    between 2 and 10; 1 (no smoothing) below 4 steps."""
    return 1 if n < 4 else max(2, min(10, round(n / 4)))


def rolling_mean(ys: Sequence[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start).

    Naive equivalent: ``[mean(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]``.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def series(records: Sequence[dict[str, Any]]) -> Series:
    """Per metric key, the (steps, values) where the value is a finite number."""
    out: Series = {}
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in rec.items():
            if key in ("step", "wall_s") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(float(step))
                ys.append(float(value))
    return out


def ig_keys(data: Series) -> list[str]:
    """``charts/ig_turn_k`` keys present, ordered by k."""
    found = [(int(m.group(1)), k) for k in data if (m := _IG_RE.match(k))]
    return [k for _, k in sorted(found)]


def _panel_keys(panel: Panel, data: Series) -> list[str]:
    keys = ig_keys(data) if panel.name == "ig" else list(panel.keys)
    return [k for k in keys if k in data]


def _label(key: str) -> str:
    m = _IG_RE.match(key)
    return f"turn {m.group(1)}" if m else key.split("/", 1)[-1]


def _draw(ax: Any, panel: Panel, data: Series, keys: list[str]) -> None:
    if panel.name == "time":
        steps = sorted({s for k in keys for s in data[k][0]})
        stacks = []
        for k in keys:
            by_step = dict(zip(*data[k], strict=True))
            stacks.append([by_step.get(s, 0.0) for s in steps])
        ax.stackplot(steps, stacks, labels=[_label(k) for k in keys], alpha=0.8)
    else:
        for k in keys:
            xs, ys = data[k]
            marker = "o" if len(xs) < 30 else None
            w = smoothing_window(len(xs)) if panel.smooth and not k.startswith("eval/") else 1
            if k in ERROR_BARS and all(b in data for b in ERROR_BARS[k]):
                lo = dict(zip(*data[ERROR_BARS[k][0]], strict=True))
                hi = dict(zip(*data[ERROR_BARS[k][1]], strict=True))
                err = [
                    [y - lo.get(x, y) for x, y in zip(xs, ys, strict=True)],
                    [hi.get(x, y) - y for x, y in zip(xs, ys, strict=True)],
                ]
                ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=4, label=_label(k))
            elif w > 1:
                (line,) = ax.plot(xs, ys, marker=marker, markersize=2, alpha=0.3, linewidth=0.8)
                ax.plot(
                    xs,
                    rolling_mean(ys, w),
                    color=line.get_color(),
                    linewidth=2,
                    label=f"{_label(k)} (mean of {w} steps)",
                )
            else:
                ax.plot(xs, ys, marker=marker, markersize=3, label=_label(k))
    if panel.name == "ig":
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    if panel.ylabel:
        ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``overview.png`` and one PNG per available panel; return the paths.

    Raises ``FileNotFoundError`` without a metrics file and ``ValueError`` when it holds
    no plottable numbers.
    """
    run_dir = Path(run_dir)
    records = lu.read_metrics(run_dir)
    data = series(records)
    if not data:
        raise ValueError(
            f"{run_dir / lu.METRICS_FILE} holds no numeric metrics yet: "
            "let the run log at least one step"
        )
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    todo = [(p, keys) for p in PANELS if (keys := _panel_keys(p, data))]
    if not todo:
        raise ValueError(f"{run_dir}: none of the known metrics ({', '.join(lu.METRICS)}) found")
    paths = []
    cols = 2 if len(todo) > 1 else 1
    rows = math.ceil(len(todo) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), squeeze=False)
    for ax, (panel, keys) in zip(axes.flat, todo, strict=False):
        _draw(ax, panel, data, keys)
    for ax in list(axes.flat)[len(todo) :]:
        ax.set_visible(False)
    fig.suptitle(f"{run_dir.name}: {len(records)} records")
    fig.tight_layout()
    paths.append(out / "overview.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    for panel, keys in todo:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        _draw(ax, panel, data, keys)
        fig.tight_layout()
        paths.append(out / f"{panel.name}.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def eval_curve(
    records: Sequence[dict[str, Any]], y_key: str = lu.EVAL_F1, x_key: str = lu.ROLLOUTS_SEEN
) -> tuple[list[float], list[float]]:
    """(rollouts seen, eval F1) points of one run.

    An eval record without ``x_key`` takes the latest ``x_key`` logged at or before its
    step (0 before any training), since evaluation and training are logged separately.
    """
    seen_at: dict[float, float] = {}
    for rec in records:
        x = rec.get(x_key)
        if isinstance(x, (int, float)) and isinstance(rec.get("step"), (int, float)):
            seen_at[float(rec["step"])] = float(x)
    known = sorted(seen_at.items())
    xs, ys = [], []
    for rec in records:
        y, step = rec.get(y_key), rec.get("step")
        if not isinstance(y, (int, float)) or not isinstance(step, (int, float)):
            continue
        x = rec.get(x_key)
        if not isinstance(x, (int, float)):
            prior = [v for s, v in known if s <= step]
            x = prior[-1] if prior else 0.0
        xs.append(float(x))
        ys.append(float(y))
    return xs, ys


def plot_comparison(
    runs: dict[str, Path],
    out_png: str | Path,
    *,
    y_key: str = lu.EVAL_F1,
    x_key: str = lu.ROLLOUTS_SEEN,
) -> Path:
    """Overlay ``y_key`` (eval F1) against ``x_key`` (rollouts seen) for several runs."""
    if not runs:
        raise ValueError("plot_comparison needs at least one NAME -> RUN_DIR")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    for name, run_dir in runs.items():
        xs, ys = eval_curve(lu.read_metrics(run_dir), y_key=y_key, x_key=x_key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=4, label=name)
            drawn += 1
    if not drawn:
        plt.close(fig)
        raise ValueError(f"no run has {y_key!r} records: evaluate during training (eval_every)")
    ax.set_xlabel(x_key.split("/", 1)[-1].replace("_", " "))
    ax.set_ylabel(y_key)
    ax.set_title(f"{y_key} vs {x_key.split('/', 1)[-1].replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m igpo_agent.plot", description="Plot a run's metrics.jsonl to PNGs."
    )
    parser.add_argument("run_dir", nargs="?", help="Run folder holding metrics.jsonl.")
    parser.add_argument("--out", help="Output folder (default RUN_DIR/plots) or PNG (--compare).")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="NAME=RUN_DIR",
        help="Overlay eval F1 vs rollouts seen for these runs into one PNG.",
    )
    args = parser.parse_args(argv)
    try:
        if args.compare:
            runs = {}
            for item in args.compare:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    parser.error(f"--compare takes NAME=RUN_DIR, got {item!r}")
                runs[name] = Path(path)
            out = Path(args.out or "comparison.png")
            print(plot_comparison(runs, out))
            return 0
        if not args.run_dir:
            parser.error("give a RUN_DIR (or --compare NAME=RUN_DIR ...)")
        for path in plot_run(args.run_dir, args.out):
            print(path)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
