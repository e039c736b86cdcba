"""The pure parts of vs_trl.py's same-work comparison (benchmarks/trl_same_work.py): the
completion bound, the warm start's answer_eos, and the ratio / spread / token-match table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import trl_same_work as S  # noqa: E402


def _rec(arm: str, rep: int, steps: list[float], tokens: list[float], rss: float = 2048) -> dict:
    return {
        "arm": arm,
        "dtype": "fp32",
        "rep": rep,
        "warmup_steps": 1,
        "step_s": steps,
        "generated_tokens": tokens,
        "trained_tokens": tokens,
        "peak_rss_mb": rss,
    }


def _row(headers: list[str], rows: list[list[Any]], arm: str) -> dict[str, Any]:
    return dict(zip(headers, next(r for r in rows if r[0] == arm), strict=True))


def test_completion_bound_leaves_the_turn_budget_binding() -> None:
    tool = S.tool_tokens_bound(top_k=3, doc_max_words=100)
    assert tool == 1028
    assert S.trl_completion_bound(128, model_turns=3, tool_calls=2, tool_tokens=tool) == 2440


def test_summary_drops_the_warmup_and_pairs_ratios_by_rep() -> None:
    records = [
        # the warm-up step (first) is huge and must not count
        _rec("trl", 0, [100.0, 10.0, 10.0], [999.0, 100.0, 100.0], rss=4096),
        _rec("igpo", 0, [100.0, 5.0, 5.0], [999.0, 100.0, 100.0]),
        _rec("trl", 1, [100.0, 12.0, 12.0], [999.0, 100.0, 100.0]),
        _rec("igpo", 1, [100.0, 3.0, 3.0], [999.0, 100.0, 100.0]),
    ]
    headers, rows = S.summarize(records)
    trl, igpo = _row(headers, rows, "trl"), _row(headers, rows, "igpo")
    assert [r[0] for r in rows] == ["trl", "igpo"]
    assert trl["timed steps"] == 4 and trl["median s/step"] == 11.0
    assert trl["sampled tok/step"] == 100.0 and trl["peak GiB"] == 4.0
    assert trl["s/1k tok"] == pytest.approx(110.0)  # median of 100 and 120 s per 1k tokens
    assert trl["tokens vs TRL"] == "1.00" and trl["s/step TRL/arm"] == "1.00x [1.00-1.00]"
    # rep 0: 10 / 5 = 2x, rep 1: 12 / 3 = 4x -> median 3x, spread 2-4
    assert igpo["s/step TRL/arm"] == "3.00x [2.00-4.00]"
    assert igpo["s/1k tok TRL/arm"] == "3.00x [2.00-4.00]"
    assert igpo["range"] == "3-5"
    assert S.token_mismatches(headers, rows) == []


def test_token_mismatch_is_flagged_past_ten_percent() -> None:
    records = [
        _rec("trl", 0, [9.0, 10.0], [0.0, 1000.0]),
        _rec("igpo", 0, [9.0, 5.0], [0.0, 880.0]),  # 12% fewer
        _rec("grpo", 0, [9.0, 5.0], [0.0, 950.0]),  # 5% fewer: the same work
    ]
    headers, rows = S.summarize(records)
    assert _row(headers, rows, "igpo")["tokens vs TRL"] == "0.88!"
    assert _row(headers, rows, "grpo")["tokens vs TRL"] == "0.95"
    # per token: TRL 10 s / 1k, igpo 5 / 0.88 = 5.68 s / 1k -> 1.76x
    assert _row(headers, rows, "igpo")["s/1k tok TRL/arm"] == "1.76x"
    lines = S.token_mismatches(headers, rows)
    assert len(lines) == 1 and lines[0].startswith("warning: igpo fp32 sampled 0.88x")


def test_summary_without_trl_and_old_records() -> None:
    old = {"arm": "igpo", "dtype": "bf16", "step_s": [4.0, 6.0], "generated_tokens": [50, 70]}
    headers, rows = S.summarize([{**old, "peak_rss_mb": 1024}])  # no warmup_steps: all timed
    row = _row(headers, rows, "igpo")
    assert row["timed steps"] == 2 and row["sampled tok/step"] == 60
    assert row["tokens vs TRL"] == "-" and row["s/step TRL/arm"] == "-"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sft_args.json": json.dumps({"answer_eos": True})}, True),
        ({"sft_args.json": json.dumps({"answer_eos": False})}, False),
        ({"sft_args.json": json.dumps({"lr": 1e-4})}, None),
        ({"config.yaml": "answer_eos: true\n"}, True),
        ({}, None),
    ],
)
def test_adapter_answer_eos(tmp_path: Path, files: dict[str, str], expected: bool | None) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    value, source = S.adapter_answer_eos(tmp_path)
    assert value is expected
    assert (source is None) == (expected is None)
    warning = S.warm_start_warning(tmp_path, "smollm2")
    assert (warning is None) == bool(expected)
    if warning:
        assert "--answer_eos" in warning


def test_warm_start_warning_cases(tmp_path: Path) -> None:
    assert S.warm_start_warning(None, "tiny") is None  # the smoke run needs none
    assert "no --init-adapter" in (S.warm_start_warning(None, "smollm2") or "")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("answer_eos: false\n")  # an RL run's adapter: RUN/final
    assert "answer_eos off" in (S.warm_start_warning(run / "final", "smollm2") or "")
