"""IGPO inside TRL: ``IGPOTrainer``, a ``GRPOTrainer`` whose advantages are IGPO's per-token ones.

TRL's GRPO gives every token of a completion one scalar advantage: the group-normalised
outcome. ``IGPOTrainer`` keeps TRL's whole loop (generation, the tool-calling loop,
reward functions, loss, logging) and replaces only that advantage, after TRL has scored the
rollouts, with IGPO's (docs/ALGORITHM.md)::

    from trl import GRPOConfig
    from igpo_agent.integrations.trl_igpo import IGPOConfig, IGPOTrainer
    from igpo_env.integrations.trl import (
        answer_reward, build_dataset, make_environment_factory, prepare_tokenizer)

    trainer = IGPOTrainer(
        model=model, processing_class=prepare_tokenizer(tokenizer),
        train_dataset=build_dataset("default:train"),        # has the "answers" column
        environment_factory=make_environment_factory("SearchQA-v0"),
        reward_funcs=answer_reward,                           # the outcome reward
        args=IGPOConfig(output_dir="out", num_generations=8, gamma=1.0, norm="separate"),
    )

Per generation batch, for each rollout:

1. turns = the maximal runs of model tokens in TRL's ``tool_mask`` (tool output is 0);
2. v_t = the trainer's current model's mean log-prob of ``answer_prefix + gold +
   answer_suffix``'s gold tokens after the prefix that ends where turn t starts (no grad;
   gold = the first alias in the dataset's ``answers_column``);
3. IG rewards, the outcome (the reward functions' weighted sum, or ``format_penalty`` for
   a truncated rollout or one with a failed tool call), the group normalisation ``norm``,
   discounted returns ``gamma`` and the ``ig_turns`` rule: igpo_agent's own functions
   (:mod:`igpo_agent.integrations.turns`). A rollout no reward function scored (TRL's
   unscorable: ``answer_reward`` returns None after a failed backend search) is left out
   of its group and gets advantage 0, as TRL does and as igpo_agent's trainer does;
4. every model token of turn t gets R_{i,t}: ``inputs["advantages"]`` becomes (B, T),
   which TRL's loss accepts as it is.

The knobs and their defaults are ``igpo_agent.config.TrainConfig``'s and are validated by
it. TRL's own ``scale_rewards`` / ``multi_objective_aggregation`` do not apply (IGPO
normalises itself) and must stay at their defaults. The loss is TRL's (``loss_type``,
``epsilon``, ``beta``...), not igpo_agent's dual-clip loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from igpo_agent.algo.advantages import TurnAdvantages, all_equal_group_share, nonzero_token_share
from igpo_agent.config import TrainConfig
from igpo_agent.integrations.turns import (
    IG_TURNS,
    RolloutTurns,
    rollout_turns,
    score_turn_beliefs,
    trl_turn_advantages,
    turn_token_advantages,
)
from igpo_agent.train import ig_weight_at
from igpo_env.protocol import Protocol

try:
    from accelerate.utils import gather_object
    from trl import GRPOConfig, GRPOTrainer
except ImportError as exc:  # pragma: no cover - exercised only without TRL
    raise ImportError(
        "igpo_agent.integrations.trl_igpo needs TRL: `pip install igpo[trl]` (or `pip install trl`)"
    ) from exc

__all__ = ["IGPOConfig", "IGPORecord", "IGPOTrainer"]

_DEFAULTS = TrainConfig()
_WRAPPER = {f.name: f.default for f in dataclasses.fields(Protocol)}
IG_METHODS: tuple[str, ...] = ("auto", "packed", "naive")
_ALGO_KNOBS = (  # IGPOConfig fields that are TrainConfig fields of the same name and meaning
    "algo",
    "ig_mode",
    "norm",
    "gamma",
    "ig_turns",
    "ig_weight",
    "ig_weight_end",
    "ig_exclude_zero",
    "format_penalty",
)


def _knob(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass
class IGPOConfig(GRPOConfig):
    """``GRPOConfig`` plus igpo_agent's algorithm knobs (same names, same defaults).

    Validated by ``igpo_agent.config.TrainConfig`` (same errors as ``python -m
    igpo_agent.train``). ``format_penalty=None`` keeps the reward functions' value for
    malformed rollouts too.
    """

    algo: str = _knob(_DEFAULTS.algo, "igpo (IG turn rewards + outcome) or grpo (outcome only).")
    ig_mode: str = _knob(_DEFAULTS.ig_mode, "log_prob_diff (paper v2) or prob_diff (v1).")
    norm: str = _knob(_DEFAULTS.norm, "separate or joint group z-normalisation.")
    gamma: float = _knob(_DEFAULTS.gamma, "Discount of turn rewards in the return, in [0, 1].")
    ig_turns: str = _knob(_DEFAULTS.ig_turns, "search (successful tool calls) or all.")
    ig_weight: float = _knob(_DEFAULTS.ig_weight, "Weight of the normalised IG rewards.")
    ig_weight_end: float | None = _knob(
        _DEFAULTS.ig_weight_end, "IG weight at the last step (linear schedule); none = fixed."
    )
    ig_exclude_zero: bool = _knob(_DEFAULTS.ig_exclude_zero, "Keep IG == 0 out of the pool.")
    format_penalty: float | None = _knob(
        _DEFAULTS.format_penalty, "Outcome of a truncated/invalid rollout; none = keep reward."
    )
    ig_method: str = _knob("auto", "How v_t is scored: auto (= packed), packed or naive.")
    answer_prefix: str = _knob(_WRAPPER["answer_prefix"], "Answer wrapper before the gold.")
    answer_suffix: str = _knob(_WRAPPER["answer_suffix"], "Answer wrapper after the gold.")
    answers_column: str = _knob("answers", "Dataset column with the gold answer(s).")

    def train_config(self, **over: Any) -> TrainConfig:
        """The ``TrainConfig`` holding these algorithm knobs (``format_penalty=None``: its
        default), with ``over`` on top; building it validates them."""
        knobs = {name: getattr(self, name) for name in _ALGO_KNOBS}
        if self.format_penalty is None:
            knobs["format_penalty"] = _DEFAULTS.format_penalty
        return dataclasses.replace(_DEFAULTS, **{**knobs, **over})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.train_config()  # raises igpo_agent's own errors for bad values
        if self.ig_turns not in IG_TURNS:  # TrainConfig checks it too; kept explicit
            raise ValueError(f"ig_turns must be one of {IG_TURNS}, got {self.ig_turns!r}")
        if self.ig_method not in IG_METHODS:
            raise ValueError(
                f"ig_method={self.ig_method!r}: the TRL path scores with one of {IG_METHODS} "
                "(live and vllm scoring exist only inside igpo_agent's own rollout engines)"
            )
        if not self.answer_prefix and not self.answer_suffix:
            raise ValueError("answer_prefix/answer_suffix: give the wrapper the agent answers in")


@dataclass(frozen=True)
class IGPORecord:
    """What the last generation batch computed (all rollouts of all processes; debugging).

    ``values[i]``: v_t per turn; ``rollouts[i]``: turn spans/kinds/truncation;
    ``advantages``: igpo_agent's :class:`TurnAdvantages`; ``outcome``: r^O (N,);
    ``ig_weight``: the IG weight used.
    """

    values: list[list[float]]
    rollouts: list[RolloutTurns]
    advantages: TurnAdvantages
    outcome: torch.Tensor
    ig_weight: float


def _gold(row: Mapping[str, Any], column: str) -> str:
    """The first gold alias of a dataset row."""
    if column not in row:
        raise KeyError(
            f"IGPO scores beliefs in the gold answer: the dataset needs a {column!r} column "
            f"(IGPOConfig.answers_column); the row has {sorted(row)}"
        )
    value = row[column]
    gold = value if isinstance(value, str) else (value[0] if len(value) else None)
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"row column {column!r} must hold a non-empty answer, got {value!r}")
    return gold


class IGPOTrainer(GRPOTrainer):
    """TRL ``GRPOTrainer`` with IGPO's per-turn information-gain advantages (module doc).

    Takes every ``GRPOTrainer`` argument; ``args`` must be an :class:`IGPOConfig`. After
    each generation batch :attr:`last_igpo` holds an :class:`IGPORecord`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(config, IGPOConfig):
            raise TypeError(
                f"IGPOTrainer needs args=IGPOConfig(...) (igpo_agent's knobs), got "
                f"{type(config).__name__}"
            )
        if config.loss_type == "vespo":
            raise ValueError("loss_type='vespo' weighs whole sequences; use a token-level loss")
        if config.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "IGPO normalises the reward functions' weighted sum itself: keep "
                "multi_objective_aggregation='sum_then_normalize'"
            )
        if config.scale_rewards not in ("group", True):
            raise ValueError("IGPO z-normalises per group itself: keep scale_rewards='group'")
        super().__init__(*args, **kwargs)
        self.last_igpo: IGPORecord | None = None
        self._igpo_batch: tuple[Any, ...] | None = None

    # TRL calls this once per generation batch with every rollout's decoded completion.
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: D401
        """TRL's rewards, recording what IGPO needs (rows, completions, ids, rewards)."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._igpo_batch = (inputs, completions, completion_ids_list, rewards)
        return rewards

    def _igpo_weight(self) -> float:
        """The IG weight of this step: fixed, or igpo_agent's linear schedule over max_steps."""
        schedule = self.args.train_config(steps=max(int(self.state.max_steps), 1))
        return float(ig_weight_at(schedule, int(self.state.global_step) + 1))

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's batch, with ``advantages`` replaced by IGPO's (B, T) per-token advantages."""
        self._igpo_batch = None
        output = super()._generate_and_score_completions(inputs)
        if self._igpo_batch is None:
            raise RuntimeError("TRL did not compute rewards for this batch; cannot apply IGPO")
        rows, completions, completion_ids, rewards_per_func = self._igpo_batch
        self._igpo_batch = None
        cfg = self.args
        mode = "train" if self.model.training else "eval"
        stop_ids = [*self.eos_token_ids, self._tokenizer.pad_token_id]
        tool_mask = output.get("tool_mask")
        local = [
            rollout_turns(
                ids,
                None if tool_mask is None else tool_mask[i, : len(ids)].tolist(),
                completions[i],
                stop_ids,
            )
            for i, ids in enumerate(completion_ids)
        ]
        masks = output["prompt_mask"].bool()
        prompt_ids = [r[m].tolist() for r, m in zip(output["prompt_ids"], masks, strict=True)]
        values = score_turn_beliefs(
            self.accelerator.unwrap_model(self.model),
            self._tokenizer,
            prompt_ids,
            completion_ids,
            local,
            [_gold(row, cfg.answers_column) for row in rows],
            answer_prefix=cfg.answer_prefix,
            answer_suffix=cfg.answer_suffix,
            method="packed" if cfg.ig_method == "auto" else cfg.ig_method,
        )
        # rewards_per_func holds every process's rollouts; gather the rest to match it
        all_values: list[list[float]] = gather_object(values)
        all_rollouts: list[RolloutTurns] = gather_object(local)
        weights = self.reward_weights.to(rewards_per_func.device)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        summed = (rewards_per_func * weights[None]).nansum(dim=1)
        summed = torch.where(scorable, summed, torch.full_like(summed, float("nan")))
        ig_weight = self._igpo_weight()
        adv, outcome = trl_turn_advantages(
            all_values,
            all_rollouts,
            summed.cpu(),
            group_size=self.num_generations if mode == "train" else self.num_generations_eval,
            algo=cfg.algo,
            ig_mode=cfg.ig_mode,
            norm=cfg.norm,
            gamma=cfg.gamma,
            ig_turns=cfg.ig_turns,
            ig_weight=ig_weight,
            ig_exclude_zero=cfg.ig_exclude_zero,
            format_penalty=cfg.format_penalty,
            exclude=(~scorable).tolist(),  # unscored (e.g. a failed backend search): left out
        )
        start = self.accelerator.process_index * len(completion_ids)
        returns = adv.returns[start : start + len(completion_ids)]
        width = output["completion_ids"].shape[1]
        token_adv = turn_token_advantages([r.spans for r in local], returns, width)
        output["advantages"] = token_adv.to(output["completion_ids"].device)
        self.last_igpo = IGPORecord(all_values, all_rollouts, adv, outcome, ig_weight)
        self._log_igpo(mode, all_rollouts, adv, outcome, ig_weight, ~scorable.cpu())
        return output

    def _log_igpo(
        self,
        mode: str,
        rollouts: list[RolloutTurns],
        adv: TurnAdvantages,
        outcome: torch.Tensor,
        ig_weight: float,
        unscored: torch.Tensor | None = None,
    ) -> None:
        """IGPO metrics, and TRL's per-rollout advantage log as each rollout's token mean.
        ``unscored`` (N,) bool: rollouts left out (their outcome is not in the mean)."""
        t_max = adv.returns.shape[1]
        tokens = torch.zeros(len(rollouts), t_max)
        for i, ro in enumerate(rollouts):
            for t, (a, b) in enumerate(ro.spans):
                tokens[i, t] = b - a
        per_rollout = (adv.returns * tokens).sum(1) / tokens.sum(1).clamp(min=1)
        n = len(rollouts)
        logged = self._logs["advantages"]
        for _ in range(min(n, len(logged))):  # TRL logged its own scalar advantages last
            logged.pop()
        logged.extend(per_rollout.tolist())
        ig = adv.ig[adv.is_ig]
        metrics = self._metrics[mode]
        metrics["igpo/ig_mean"].append(float(ig.mean()) if ig.numel() else math.nan)
        metrics["igpo/ig_turns_per_rollout"].append(float(adv.is_ig.sum()) / max(n, 1))
        metrics["igpo/turns_per_rollout"].append(sum(r.num_turns for r in rollouts) / max(n, 1))
        metrics["igpo/malformed"].append(sum(r.malformed for r in rollouts) / max(n, 1))
        scored = outcome if unscored is None else outcome[~unscored]
        metrics["igpo/outcome_mean"].append(float(scored.mean()) if scored.numel() else math.nan)
        metrics["igpo/unscored_rollouts"].append(0.0 if unscored is None else float(unscored.sum()))
        metrics["igpo/nonzero_advantage_tokens"].append(nonzero_token_share(adv.returns, tokens))
        group = self.num_generations if mode == "train" else self.num_generations_eval
        metrics["igpo/all_equal_outcome_groups"].append(all_equal_group_share(outcome, group))
        metrics["igpo/ig_weight"].append(float(ig_weight))
