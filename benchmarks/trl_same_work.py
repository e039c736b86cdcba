"""The pure parts of ``vs_trl.py``'s same-work comparison (issue #21).

- :func:`trl_completion_bound`: the ``GRPOConfig.max_completion_length`` that leaves TRL's
  per-turn budget (``generation_kwargs={"max_new_tokens": N}``) as the only bound on model
  tokens, as this trainer's ``max_new_tokens`` is.
- :func:`adapter_answer_eos` / :func:`warm_start_warning`: whether the warm start was
  trained to end its answer with EOS (``python -m igpo_agent.sft --answer_eos``), without
  which TRL's completions run to their bound and the two sides do not do the same work.
- :func:`summarize`: per (arm, dtype), the timed steps (warm-up excluded), sampled tokens
  a step, seconds per 1,000 trained tokens, peak RSS, and the TRL / arm ratios paired by
  repetition with their spread; :func:`token_mismatches` names the arms whose sampled
  tokens differ from TRL's by more than :data:`TOKEN_TOLERANCE`.

Plain lists and dicts in, plain rows out, so the tests check them without a model.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOKEN_TOLERANCE = 0.10
"""Sampled tokens a step may differ by this share from TRL's before a row is flagged."""

ARM_ORDER = ("trl", "igpo", "grpo", "igpo-vllm")


def tool_tokens_bound(top_k: int, doc_max_words: int) -> int:
    """An upper bound on one tool response's tokens: 3 tokens a word for ``top_k`` documents
    of ``doc_max_words`` words, plus 128 for titles and the chat template's tool wrapper.
    Generous on purpose: it only has to keep TRL's completion bound from binding first."""
    return 3 * top_k * doc_max_words + 128


def trl_completion_bound(
    turn_tokens: int, model_turns: int, tool_calls: int, tool_tokens: int
) -> int:
    """TRL's ``max_completion_length`` for a per-turn budget of ``turn_tokens``.

    In TRL 1.16's tool loop (``GRPOTrainer._tool_call_loop``) every ``generate`` call takes
    ``max_new_tokens`` from ``generation_kwargs`` (it overrides the default, which is
    ``max_completion_length``), while ``max_completion_length`` bounds the whole completion,
    tool responses included: a tool result that would pass it is dropped and the next turn
    is cut to fit. So with this bound (every model turn at its budget plus every tool
    response at its bound) the per-turn budget is the only one that can stop a turn.
    """
    return model_turns * turn_tokens + tool_calls * tool_tokens


def adapter_answer_eos(adapter: str | Path | None) -> tuple[bool | None, Path | None]:
    """``answer_eos`` as the run that made ``adapter`` recorded it, and the file it came from.

    An RL run's ``config.yaml`` (found as ``igpo_agent.run.handover`` finds it: the adapter
    folder or its parent) or a warm start's ``sft_args.json`` (``igpo_agent.sft`` writes it
    beside the adapter). ``(None, None)`` when neither exists or neither names the field.
    """
    if not adapter:
        return None, None
    from igpo_agent.run.handover import find_run_config

    config = find_run_config(adapter)
    if config is not None:
        import yaml

        data = yaml.safe_load(config.read_text()) or {}
        if isinstance(data, dict) and "answer_eos" in data:
            return bool(data["answer_eos"]), config
    for folder in (Path(adapter), Path(adapter).parent):
        path = folder / "sft_args.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if "answer_eos" in data:
                return bool(data["answer_eos"]), path
    return None, None


def warm_start_warning(adapter: str | Path | None, model: str) -> str | None:
    """A warning line when the comparison is not fair for want of an EOS-trained warm start
    (``model == "tiny"`` is a smoke run: no warning); None when ``answer_eos`` is on."""
    if model == "tiny":
        return None
    if not adapter:
        return (
            "warning: no --init-adapter: SmolLM2 without an EOS-trained warm start runs TRL's "
            "answer turns to their budget; make one with `python -m igpo_agent.sft "
            "--answer_eos --out runs/sft_eos` for a same-work comparison"
        )
    value, source = adapter_answer_eos(adapter)
    if value:
        return None
    said = "off" if value is False else "unknown (no config.yaml or sft_args.json names it)"
    where = f" in {source}" if source else ""
    return (
        f"warning: the warm start {adapter} has answer_eos {said}{where}: its answers need not "
        "end at EOS, so both sides may run answer turns to their budget; the comparison is "
        "only fair with a warm start from `python -m igpo_agent.sft --answer_eos`"
    )


def timed(values: Sequence[float], warmup: int) -> list[float]:
    """The values of the timed steps: all but the first ``warmup`` (at least one kept)."""
    return list(values[warmup:]) or list(values[-1:])


def spread(values: Sequence[float]) -> str:
    """``"median [min-max]"`` of ratios over repetitions (``"-"`` for none)."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x [{min(values):.2f}-{max(values):.2f}]"


def run_summary(rec: dict[str, Any]) -> dict[str, float]:
    """One run's timed steps: median s/step, sampled tokens a step, s per 1,000 trained tokens.

    Trained tokens are the sampled tokens the loss mask covers: model tokens only, tool and
    observation tokens excluded on both sides (``trained_tokens``, else ``generated_tokens``
    for records made before the field existed)."""
    warmup = int(rec.get("warmup_steps", 0))
    steps = timed(rec["step_s"], warmup)
    sampled = timed(rec["generated_tokens"], warmup)
    trained = timed(rec.get("trained_tokens") or rec["generated_tokens"], warmup)
    return {
        "steps": len(steps),
        "s_per_step": statistics.median(steps),
        "sampled_per_step": sum(sampled) / len(sampled),
        "s_per_ktok": 1000 * sum(steps) / sum(trained) if sum(trained) else float("nan"),
    }


def summarize(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Table headers and rows per (arm, dtype), TRL / arm ratios paired by repetition.

    ``tokens vs TRL`` is the arm's sampled tokens a step over TRL's (pooled over runs), marked
    ``!`` past :data:`TOKEN_TOLERANCE`; the two time ratios are the median over repetitions
    with their min-max: ``s/step`` (TRL's median s/step over the arm's) and ``s/1k tok``
    (TRL's seconds per 1,000 trained tokens over the arm's: above 1 means the arm is faster
    per token).
    """
    per: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    rss: dict[tuple[str, str], float] = {}
    for r in records:
        key = (r["arm"], r["dtype"])
        per.setdefault(key, {})[int(r.get("rep", 0))] = run_summary(r)
        rss[key] = max(rss.get(key, 0.0), float(r["peak_rss_mb"]))
    order = sorted(per, key=lambda k: (k[1], ARM_ORDER.index(k[0]) if k[0] in ARM_ORDER else 99))
    headers = ["arm", "dtype", "runs", "timed steps", "median s/step", "range", "sampled tok/step"]
    headers += ["s/1k tok", "peak GiB", "tokens vs TRL", "s/step TRL/arm", "s/1k tok TRL/arm"]
    rows = []
    for arm, dtype in order:
        runs = per[arm, dtype]
        medians = [s["s_per_step"] for s in runs.values()]
        steps = sum(s["steps"] for s in runs.values())
        sampled = sum(s["sampled_per_step"] * s["steps"] for s in runs.values()) / steps
        ktok = statistics.median(s["s_per_ktok"] for s in runs.values())
        ref = per.get(("trl", dtype), {})
        token_ratio, step_ratios, ktok_ratios = "-", [], []
        if ref:
            ref_steps = sum(s["steps"] for s in ref.values())
            ref_sampled = sum(s["sampled_per_step"] * s["steps"] for s in ref.values()) / ref_steps
            ratio = sampled / ref_sampled if ref_sampled else float("inf")
            token_ratio = f"{ratio:.2f}" + ("!" if abs(ratio - 1) > TOKEN_TOLERANCE else "")
            for rep, s in runs.items():
                if rep in ref:
                    step_ratios.append(ref[rep]["s_per_step"] / s["s_per_step"])
                    ktok_ratios.append(ref[rep]["s_per_ktok"] / s["s_per_ktok"])
        rows.append(
            [
                arm,
                dtype,
                len(runs),
                steps,
                statistics.median(medians),
                f"{min(medians):.0f}-{max(medians):.0f}",
                sampled,
                ktok,
                rss[arm, dtype] / 1024,
                token_ratio,
                spread(step_ratios),
                spread(ktok_ratios),
            ]
        )
    return headers, rows


def token_mismatches(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A warning line for every row whose sampled tokens differ from TRL's past the tolerance."""
    col = list(headers).index("tokens vs TRL")
    return [
        f"warning: {row[0]} {row[1]} sampled {row[col].rstrip('!')}x TRL's tokens a step "
        f"(more than {TOKEN_TOLERANCE:.0%} off): the two sides did not do the same work, so "
        "read s/1k tok, not s/step"
        for row in rows
        if str(row[col]).endswith("!")
    ]
