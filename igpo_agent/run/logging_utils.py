# Over 400 lines: every metric key with its description, the logger and the dumps, defined once.
"""Metrics logging: one JSON line per record, TensorBoard scalars, a progress bar, rollout dumps.

Metric names are stable, CleanRL style (``charts/...``, ``losses/...``, ``perf/...``,
``time/...``, ``eval/...``) and defined once here as constants with a description each
(``METRICS``), so the trainer, the plots and any reader agree on spelling.

``RUN_DIR/metrics.jsonl`` is the source of truth: ``{"step": N, "wall_s": ..., KEY: value}``
per line, flushed line by line, NaN/inf written as ``null``. TensorBoard (``RUN_DIR/tb``)
is a mirror written only when ``tensorboard`` is installed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# --- metric keys ---------------------------------------------------------------------------
OUTCOME_F1 = "charts/outcome_f1"
REWARD_MEAN = "charts/reward_mean"
FORMAT_ERROR_RATE = "charts/format_error_rate"
ANSWERED_RATE = "charts/answered_rate"
TURNS_PER_EPISODE = "charts/turns_per_episode"
SEARCHES_PER_EPISODE = "charts/searches_per_episode"
ROLLOUTS_SEEN = "charts/rollouts_seen"
LEARNING_RATE = "charts/learning_rate"
IG_TURN_PREFIX = "charts/ig_turn_"
POLICY_LOSS = "losses/policy"
KL = "losses/kl"
ENTROPY = "losses/entropy"
CLIPFRAC = "losses/clipfrac"
APPROX_KL = "losses/approx_kl"
TOTAL_LOSS = "losses/total"
GRAD_NORM = "losses/grad_norm"
RATIO_MEAN = "losses/ratio_mean"
RATIO_MIN = "losses/ratio_min"
RATIO_MAX = "losses/ratio_max"
DUAL_CLIPFRAC = "losses/dual_clipfrac"
SKIPPED_STEPS = "losses/skipped_steps"
SKIPPED_ROWS = "losses/skipped_rows"
TIS_WEIGHT_MEAN = "losses/tis_weight_mean"
TIS_WEIGHT_MAX = "losses/tis_weight_max"
SAMPLER_LOGP_DIFF = "losses/sampler_logp_diff"
OPTIMIZER_STEPS = "losses/optimizer_steps"
ALL_EQUAL_GROUPS = "charts/all_equal_outcome_groups"
NONZERO_ADV_TOKENS = "charts/nonzero_advantage_tokens"
SIGNAL_GROUPS = "charts/signal_groups"  # dynamic sampling: sampled groups with a signal
KEPT_GROUPS = "charts/kept_groups"  # ... and the ones the update trained on
RFT_KEPT = "charts/rft_kept_rollouts"  # rft: rollouts imitated this step
IG_WEIGHT = "charts/ig_weight"
SEARCH_FAILURES = "charts/search_failures"
SEARCH_FAILURE_RATE = "charts/search_failure_rate"
SEARCH_FAILED_ROLLOUTS = "charts/search_failed_rollouts"
TOKENS_PER_S = "perf/tokens_per_s"
GENERATION_S = "time/generation_s"
RETRIEVAL_S = "time/retrieval_s"
INFO_GAIN_S = "time/info_gain_s"
OLD_LOGPROBS_S = "time/old_logprobs_s"
UPDATE_S = "time/update_s"
STEP_S = "time/step_s"
EVAL_F1 = "eval/f1"
EVAL_EM = "eval/em"
EVAL_COVER_EM = "eval/cover_em"
EVAL_FORMAT_ERROR_RATE = "eval/format_error_rate"
EVAL_N = "eval/n"
EVAL_F1_CI_LOW = "eval/f1_ci_low"
EVAL_F1_CI_HIGH = "eval/f1_ci_high"
EVAL_FORMAT_CI_LOW = "eval/format_error_ci_low"
EVAL_FORMAT_CI_HIGH = "eval/format_error_ci_high"
EVAL_GOLD_RETRIEVED = "eval/gold_retrieved_rate"
EVAL_F1_RETRIEVED = "eval/f1_retrieved"
EVAL_F1_RETRIEVED_CI_LOW = "eval/f1_retrieved_ci_low"
EVAL_F1_RETRIEVED_CI_HIGH = "eval/f1_retrieved_ci_high"
EVAL_F1_NOT_RETRIEVED = "eval/f1_not_retrieved"
EVAL_F1_NOT_RETRIEVED_CI_LOW = "eval/f1_not_retrieved_ci_low"
EVAL_F1_NOT_RETRIEVED_CI_HIGH = "eval/f1_not_retrieved_ci_high"
EVAL_CHANGED = "eval/answers_changed"
EVAL_BETTER = "eval/answers_better"
EVAL_WORSE = "eval/answers_worse"
PROBE_REWARD = "probe/reward_mean"
PROBE_REWARD_CI_LOW = "probe/reward_ci_low"
PROBE_REWARD_CI_HIGH = "probe/reward_ci_high"
PROBE_F1 = "probe/f1"
PROBE_PASS_AT_1 = "probe/pass@1"
PROBE_PASS_AT_G = "probe/pass@G"
PROBE_FORMAT_ERROR_RATE = "probe/format_error_rate"
PROBE_QUESTIONS = "probe/questions"
PROBE_GROUP_SIZE = "probe/group_size"
EVAL_SEARCH_FAILURES = "eval/search_failures"
EVAL_SEARCH_FAILURE_RATE = "eval/search_failure_rate"

TIME_SPLIT_KEYS = (GENERATION_S, RETRIEVAL_S, INFO_GAIN_S, OLD_LOGPROBS_S, UPDATE_S)
"""The parts of one step's wall time (stacked in the plots; ``time/step_s`` is the total)."""


def ig_turn_key(turn: int) -> str:
    """``charts/ig_turn_{turn}``: mean IG reward of turn index ``turn`` (0-based)."""
    if turn < 0:
        raise ValueError(f"turn={turn}: turn indices start at 0")
    return f"{IG_TURN_PREFIX}{turn}"


METRICS: dict[str, str] = {
    OUTCOME_F1: "mean outcome F1 of the step's rollouts (answer vs gold aliases)",
    REWARD_MEAN: "mean outcome reward incl. the format penalty",
    FORMAT_ERROR_RATE: "fraction of rollouts with a malformed turn or no answer",
    ANSWERED_RATE: "fraction of rollouts that ended with an answer",
    TURNS_PER_EPISODE: "mean agent turns per rollout",
    SEARCHES_PER_EPISODE: "mean search calls per rollout",
    ROLLOUTS_SEEN: "cumulative rollouts generated for training (x axis of comparisons)",
    LEARNING_RATE: "learning rate used at this step",
    IG_TURN_PREFIX + "{k}": "mean raw information gain of turn k (before normalisation)",
    POLICY_LOSS: "clipped policy-gradient loss",
    KL: "low_var_kl to the reference policy",
    ENTROPY: "mean token entropy of the policy on trained tokens",
    CLIPFRAC: "fraction of tokens whose ratio was clipped",
    APPROX_KL: "approximate KL old -> new policy (PPO diagnostics)",
    TOTAL_LOSS: "policy + kl_coef * kl - entropy_coef * entropy",
    GRAD_NORM: "gradient norm before clipping (mean over the step's optimiser steps)",
    RATIO_MEAN: "mean PPO ratio pi/pi_old over trained tokens (1 on the first mini-batch)",
    RATIO_MIN: "smallest PPO ratio of the step",
    RATIO_MAX: "largest PPO ratio of the step",
    DUAL_CLIPFRAC: "fraction of tokens where the dual clip (negative advantages) acted",
    SKIPPED_STEPS: "optimiser steps skipped because the gradient norm was not finite",
    SKIPPED_ROWS: "rollouts whose advantage is 0 everywhere: no forward or backward (no KL/entropy term)",
    TIS_WEIGHT_MEAN: "mean TIS weight min(pi_old / pi_sampler, tis_cap) over trained tokens "
    "(applied with --tis on; reported whenever pi_old and the sampler's records both exist)",
    TIS_WEIGHT_MAX: "largest TIS weight of the step (tis_cap at most)",
    SAMPLER_LOGP_DIFF: "mean |pi_old - recorded sampler log-prob| per trained token "
    "(absent when pi_old is the records themselves)",
    OPTIMIZER_STEPS: "optimiser steps taken on this rollout batch (epochs x mini-batches)",
    ALL_EQUAL_GROUPS: "share of groups whose outcome rewards are all equal (no GRPO signal)",
    SIGNAL_GROUPS: "dynamic sampling: sampled groups with a signal (outcome or advantage)",
    KEPT_GROUPS: "dynamic sampling: groups the update trained on (questions_per_step at most)",
    RFT_KEPT: "rft: rollouts that scored rft_min_f1 and were imitated",
    NONZERO_ADV_TOKENS: "share of trained tokens with a non-zero advantage",
    IG_WEIGHT: "weight of the normalised IG rewards at this step",
    SEARCH_FAILURES: "searches of the step whose backend failed (all ranks)",
    SEARCH_FAILURE_RATE: "failed / attempted searches of the step (0 without searches)",
    SEARCH_FAILED_ROLLOUTS: "rollouts with a failed search, left out of the update",
    TOKENS_PER_S: "generated tokens per second of rollout time",
    GENERATION_S: "seconds spent sampling agent turns",
    RETRIEVAL_S: "seconds spent in the retriever",
    INFO_GAIN_S: "seconds spent scoring information gain",
    OLD_LOGPROBS_S: "seconds spent computing old/reference log-probs",
    UPDATE_S: "seconds spent in forward/backward/optimizer",
    STEP_S: "wall seconds of the whole step",
    EVAL_F1: "evaluation mean F1",
    EVAL_EM: "evaluation exact match",
    EVAL_COVER_EM: "evaluation cover exact match (gold contained in the answer)",
    EVAL_FORMAT_ERROR_RATE: "evaluation fraction of malformed episodes",
    EVAL_N: "evaluation questions",
    EVAL_F1_CI_LOW: "lower end of the 95% bootstrap interval of evaluation F1",
    EVAL_F1_CI_HIGH: "upper end of the 95% bootstrap interval of evaluation F1",
    EVAL_FORMAT_CI_LOW: "lower end of the 95% Wilson interval of the eval format-error rate",
    EVAL_FORMAT_CI_HIGH: "upper end of the 95% Wilson interval of the eval format-error rate",
    EVAL_GOLD_RETRIEVED: "evaluation share of questions where a retrieved document held a gold alias",
    EVAL_F1_RETRIEVED: "evaluation F1 on the questions whose retrieved documents held the gold",
    EVAL_F1_RETRIEVED_CI_LOW: "lower end of the 95% bootstrap interval of eval/f1_retrieved",
    EVAL_F1_RETRIEVED_CI_HIGH: "upper end of the 95% bootstrap interval of eval/f1_retrieved",
    EVAL_F1_NOT_RETRIEVED: "evaluation F1 on the questions where no retrieved document held it",
    EVAL_F1_NOT_RETRIEVED_CI_LOW: "lower end of the 95% interval of eval/f1_not_retrieved",
    EVAL_F1_NOT_RETRIEVED_CI_HIGH: "upper end of the 95% interval of eval/f1_not_retrieved",
    EVAL_CHANGED: "evaluation answers that differ from the run's first evaluation (count)",
    EVAL_BETTER: "evaluation questions whose F1 rose since the run's first evaluation (count)",
    EVAL_WORSE: "evaluation questions whose F1 fell since the run's first evaluation (count)",
    PROBE_REWARD: "fixed probe: mean outcome reward (format penalty included) of its rollouts",
    PROBE_REWARD_CI_LOW: "lower end of the 95% bootstrap interval (over questions) of the probe",
    PROBE_REWARD_CI_HIGH: "upper end of the 95% bootstrap interval (over questions) of the probe",
    PROBE_F1: "fixed probe: mean answer F1 of its rollouts",
    PROBE_PASS_AT_1: "fixed probe: share of rollouts with an exact-match answer",
    PROBE_PASS_AT_G: "fixed probe: share of questions with an exact match in any of G rollouts",
    PROBE_FORMAT_ERROR_RATE: "fixed probe: share of rollouts malformed or unanswered",
    PROBE_QUESTIONS: "fixed probe: training questions it samples",
    PROBE_GROUP_SIZE: "fixed probe: rollouts per question (G)",
    EVAL_SEARCH_FAILURES: "evaluation searches whose backend failed",
    EVAL_SEARCH_FAILURE_RATE: "failed / attempted evaluation searches",
}

POSTFIX_KEYS: dict[str, str] = {
    OUTCOME_F1: "f1",
    KL: "kl",
    TOKENS_PER_S: "tok/s",
    EVAL_F1: "eval_f1",
    PROBE_REWARD: "probe",
}
"""Metrics shown on the progress bar, with their short labels."""

METRICS_FILE = "metrics.jsonl"
_TB_NOTICE_SHOWN = False


def to_json_number(key: str, value: Any) -> float | int | None:
    """A metric value as a JSON number; NaN/inf -> None. Tensors/numpy scalars unwrap.

    Raises ``TypeError`` naming the key for values that are not numbers (strings, lists).
    """
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            raise TypeError(f"metric {key!r} is not a scalar: {value!r}") from None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None:
        return None
    raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (or a run dir holding one), in file order.

    A truncated last line (the process died mid-write) is skipped with a warning.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}: train a run first (it writes one)")
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i + 1}: skipping unreadable line", stacklevel=2)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


class MetricsLogger:
    """Append metrics to ``RUN_DIR/metrics.jsonl`` (+ TensorBoard), with a tqdm progress bar.

    ``log(step, metrics)`` may be called several times per step (train metrics, then eval);
    the bar moves to ``step`` and its postfix shows the latest ``POSTFIX_KEYS``. With
    ``resume_step`` set, records past that step (written by a crashed run after its last
    checkpoint) are dropped from the file first, so the log matches the resumed history;
    without it, an existing ``metrics.jsonl`` is moved to ``metrics.jsonl.prev``.
    ``enabled=False`` makes every method a no-op (e.g. non-main processes).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool,
        total_steps: int,
        enabled: bool = True,
        resume_step: int | None = None,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._fh = None
        self._tb = None
        self._bar = None
        self._postfix: dict[str, str] = {}
        self._t0 = time.perf_counter()
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.is_file() and self.path.stat().st_size:
            # a fresh run in an old run dir starts a new log; the old one is kept aside
            os.replace(self.path, self.path.with_name(METRICS_FILE + ".prev"))
        self._fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            self._tb = _make_tb_writer(self.run_dir / "tb")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps,
                initial=max(resume_step or 0, 0),
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

    def _truncate_after(self, step: int) -> None:
        keep = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write one record for ``step``; returns it as written (None for NaN/inf)."""
        if not self.enabled:
            return {}
        if self._fh is None:
            raise RuntimeError("MetricsLogger is closed; create a new one to log again")
        record: dict[str, Any] = {"step": int(step), "wall_s": time.perf_counter() - self._t0}
        for key, value in metrics.items():
            if key in ("step", "wall_s"):
                raise ValueError(f"metric key {key!r} is reserved; rename it")
            record[str(key)] = to_json_number(str(key), value)
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "wall_s") and value is not None:
                    self._tb.add_scalar(key, value, global_step=int(step))
            self._tb.flush()
        if self._bar is not None:
            for key, label in POSTFIX_KEYS.items():
                if record.get(key) is not None:
                    self._postfix[label] = f"{record[key]:.3g}"
            if step > self._bar.n:
                self._bar.update(min(step, self._bar.total or step) - self._bar.n)
            self._bar.set_postfix(self._postfix, refresh=True)
        return record

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        """Flush and close the file, TensorBoard writer and bar (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_tb_writer(log_dir: Path) -> Any:
    """A SummaryWriter, or None (with a one-time notice) when tensorboard is missing."""
    global _TB_NOTICE_SHOWN
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _TB_NOTICE_SHOWN:
            print(
                "note: tensorboard is not installed, so only metrics.jsonl is written "
                "(pip install tensorboard to get TensorBoard logs)",
                file=sys.stderr,
            )
            _TB_NOTICE_SHOWN = True
        return None
    return SummaryWriter(log_dir=str(log_dir))


# --- rollouts --------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, tensors/numpy -> lists/numbers, tuples -> lists."""
    if hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def rollout_record(
    traj: Any,
    turn_rewards: Iterable[float] | None = None,
    turn_advantages: Iterable[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The dump record of one ``Trajectory``: question, answers, per-turn text/kind/reward.

    ``turn_rewards`` / ``turn_advantages`` are per turn (length = number of turns);
    ``extra`` keys (e.g. ``ig=[...]``) are added as they are.
    """
    n = len(traj.turn_texts)
    rewards = list(turn_rewards) if turn_rewards is not None else [None] * n
    advs = list(turn_advantages) if turn_advantages is not None else [None] * n
    if len(rewards) != n or len(advs) != n:
        raise ValueError(
            f"{n} turns but {len(rewards)} rewards and {len(advs)} advantages: pass one per turn"
        )
    turns = [
        {
            "text": traj.turn_texts[t],
            "kind": traj.turn_kinds[t] if t < len(traj.turn_kinds) else None,
            "observation": traj.observations[t] if t < len(traj.observations) else None,
            "reward": rewards[t],
            "advantage": advs[t],
        }
        for t in range(n)
    ]
    return {
        "qid": traj.qid,
        "group": traj.group,
        "question": traj.question,
        "answers": list(traj.answers),
        "outcome_f1": traj.outcome_f1,
        "answered": traj.answered,
        "format_ok": traj.format_ok,
        "truncated": traj.truncated,
        "context_truncated": traj.context_truncated,
        "search_failures": getattr(traj, "search_failures", 0),
        "num_tokens": len(traj.token_ids),
        "turns": turns,
        **extra,
    }


class RolloutDumper:
    """Writes a step's records to ``RUN_DIR/SUBDIR/step-N.jsonl``, one record per line.

    ``rollouts/`` holds the readable dumps (text, per-turn rewards); ``batches/`` the
    token-level export of :mod:`igpo_agent.run.export`.
    """

    def __init__(
        self, run_dir: str | Path, *, enabled: bool = True, subdir: str = "rollouts"
    ) -> None:
        self.dir = Path(run_dir) / subdir
        self.enabled = enabled

    def dump(self, step: int, records: Iterable[Mapping[str, Any]]) -> Path | None:
        """Write the records (plain dicts, e.g. from ``rollout_record``) atomically."""
        if not self.enabled:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step-{int(step)}.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                if not isinstance(rec, Mapping):
                    raise TypeError(f"rollout records must be dicts, got {type(rec).__name__}")
                fh.write(json.dumps(_clean(rec), ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
        return path
