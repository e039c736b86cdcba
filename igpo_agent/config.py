"""The training configuration: the trainer's options on top of the shared groups, validated.

``load_config(argv)`` reads ``--config FILE.yaml`` first, then applies ``--field value``
overrides (booleans as ``--flag`` / ``--no-flag`` / ``--flag false``; ``none`` clears an
optional field): :func:`igpo_agent.cli.parse_options`, the reader every front door
uses. Every field's help text shows up in ``python -m igpo_agent.train --help``.
``TrainConfig.__post_init__`` rejects broken combinations with a message that says what to
change (TRL's habit), so a bad run fails in the first second instead of after the model
has loaded.

The defaults are the CPU path (a 135M model with LoRA on a 2-core machine); the paper's
reference settings live in ``configs/paper_7b_gpu.yaml``. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from igpo_agent import cli
from igpo_agent.choices import (
    Autocast,
    DynamicSampling,
    IGMethod,
    IGMode,
    IGTurns,
    KLReference,
    LossAgg,
    LRSchedule,
    NormMode,
    OldLogprobs,
    TISMode,
    TrainAlgo,
)
from igpo_agent.options import (
    EnvOptions,
    EvalOptions,
    GenerationOptions,
    LoraOptions,
    ModelOptions,
    SearchHealthOptions,
    opt,
)


@dataclass
class TrainConfig(
    SearchHealthOptions, GenerationOptions, EnvOptions, EvalOptions, LoraOptions, ModelOptions
):
    """Every knob of one IGPO / GRPO training run (see docs/ALGORITHM.md for the algorithm).

    The model, LoRA, env, evaluation and generation fields come from the shared groups in
    :mod:`igpo_agent.options` (the same ones ``sft`` and ``evaluate`` use); the rest are the
    trainer's own."""

    kind: ClassVar[str] = "training config"

    # --- run ---
    run_dir: str = opt("runs/default", "run", "Folder for metrics, checkpoints, rollouts, plots.")
    seed: int = opt(
        0, "run", "Seed for python, numpy and torch; rollouts and data order follow it."
    )
    autocast: Autocast = opt(
        "auto",
        "run",
        "Autocast dtype of the update's forward passes (pi_old, reference, policy): auto (bf16 "
        "on fp32 weights when the CPU/GPU computes bf16 natively), bfloat16, float32 (off). "
        "The loss and log-softmax stay fp32; rollouts and IG scoring never autocast.",
    )
    # --- model ---
    full_finetune: bool = opt(False, "model", "Train all weights instead of a LoRA adapter.")
    init_adapter: str | None = opt(None, "model", "Start from this saved adapter (e.g. after SFT).")
    # --- env ---
    train_qa: str = opt(
        "default:train", "env", "Training questions: default:SPLIT or a JSONL path."
    )
    train_reachable: bool = opt(
        False,
        "env",
        "Train only on questions whose gold answer a search with the question itself "
        "retrieves (at this top_k and doc_max_words; computed once and cached, "
        "igpo_agent.run.reachable). The probe keeps sampling the whole training set.",
    )
    # --- rollout ---
    group_size: int = opt(4, "rollout", "G: rollouts per question; advantages normalise per group.")
    questions_per_step: int = opt(2, "rollout", "Questions per training step.")
    dynamic_sampling: DynamicSampling = opt(
        "off",
        "rollout",
        "DAPO's dynamic sampling: roll out oversample x questions_per_step questions and "
        "train on the first questions_per_step groups with a signal: outcome (outcomes not "
        "all equal) or advantage (any non-zero advantage, IG included); off trains on all.",
    )
    oversample: int = opt(
        2, "rollout", "With dynamic_sampling: questions sampled per trained question (>= 1)."
    )
    temperature: float = opt(1.0, "rollout", "Sampling temperature (> 0).")
    top_p: float = opt(1.0, "rollout", "Nucleus sampling mass in (0, 1].")
    # --- algorithm ---
    algo: TrainAlgo = opt(
        "igpo",
        "algorithm",
        "igpo (IG turn rewards + outcome), grpo (outcome only) or rft (rejection-sampling "
        "fine-tuning: supervised steps on the rollouts that score rft_min_f1).",
    )
    rft_min_f1: float = opt(
        1.0, "algorithm", "With algo=rft: the F1 a well-formed rollout needs to be imitated."
    )
    ig_mode: IGMode = opt(
        "log_prob_diff", "algorithm", "IG reward: log_prob_diff (v2) or prob_diff (v1)."
    )
    norm: NormMode = opt(
        "separate", "algorithm", "separate (IG and outcome z-scored apart) or joint (together)."
    )
    gamma: float = opt(1.0, "algorithm", "Discount of turn rewards in the return, in [0, 1].")
    ig_turns: IGTurns = opt(
        "search",
        "algorithm",
        "Turns that get IG: search (docs/ALGORITHM.md: turns that end in a search) or all (every turn "
        "before the last, malformed ones included).",
    )
    ig_method: IGMethod = opt(
        "auto",
        "algorithm",
        "How v_t is scored: live (from the rollout's KV cache, hf engine), packed (all turns "
        "in one forward after the rollout), naive (one forward per turn), vllm (engine "
        "prompt_logprobs); auto = live with engine hf, packed with engine vllm.",
    )
    ig_weight: float = opt(
        1.0, "algorithm", "Weight of the normalised IG rewards (the outcome's weight is 1)."
    )
    ig_weight_end: float | None = opt(
        None,
        "algorithm",
        "With a value, the IG weight moves linearly from ig_weight at step 1 to this at the "
        "last step (reference code's IG/outcome schedule); none keeps ig_weight.",
    )
    ig_exclude_zero: bool = opt(
        False,
        "algorithm",
        "Leave IG values that are exactly 0 out of the IG normalisation pool (reference code, "
        "Feb 2026).",
    )
    # --- loss ---
    clip_eps: float = opt(0.2, "loss", "PPO ratio clip epsilon.")
    clip_ratio_low: float | None = opt(
        None, "loss", "Lower clip: ratio >= 1 - clip_ratio_low; none = clip_eps."
    )
    clip_ratio_high: float | None = opt(
        None, "loss", "Upper clip: ratio <= 1 + clip_ratio_high (DAPO: 0.28); none = clip_eps."
    )
    dual_clip: float | None = opt(3.0, "loss", "Dual-clip constant c > 1 for negative advantages.")
    kl_coef: float = opt(0.001, "loss", "Weight of the low_var_kl loss to the reference policy.")
    kl_reference: KLReference = opt(
        "init",
        "loss",
        "KL anchor with init_adapter: init (the warm-started policy training begins from: its "
        "adapter is merged into the base and a fresh adapter trained on top) or base (the base "
        "model with the adapter disabled).",
    )
    entropy_coef: float = opt(0.001, "loss", "Weight of the entropy bonus.")
    loss_agg: LossAgg = opt(
        "token-mean", "loss", "token-mean, seq-mean-token-sum or seq-mean-token-mean."
    )
    ppo_epochs: int = opt(1, "loss", "Passes over each rollout batch.")
    ppo_mini_batch_size: int | None = opt(
        None,
        "loss",
        "Trajectories per optimiser step: each rollout batch is split into mini-batches, one "
        "step each (reference Nov 2025: 32 of 512); none = the whole batch, one step.",
    )
    micro_batch_size: int = opt(4, "loss", "Trajectories per forward/backward (grad accumulation).")
    old_logprobs: OldLogprobs = opt(
        "auto",
        "loss",
        "pi_old before several optimiser steps: recompute (a no-grad forward) or sampler (the "
        "rollout's recorded log-probs, no forward); auto = sampler with engine hf, fp32 "
        "weights and autocast off (where the two agree to ~1e-6), else recompute.",
    )
    tis: TISMode = opt(
        "auto",
        "loss",
        "Truncated importance sampling: weight each token's PG loss by min(pi_old / "
        "pi_sampler, tis_cap) (verl/TRL's vLLM correction); auto = on with engine vllm.",
    )
    tis_cap: float = opt(2.0, "loss", "Upper bound of the TIS weights (>= 1; verl/TRL: 2).")
    lr: float = opt(5e-5, "loss", "Peak learning rate (AdamW).")
    weight_decay: float = opt(0.0, "loss", "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "loss", "Gradient clipping norm (> 0).")
    warmup_steps: int = opt(0, "loss", "Linear warmup steps before the schedule.")
    lr_schedule: LRSchedule = opt(
        "constant", "loss", "constant, cosine or linear (decay to 0 at the end)."
    )
    # --- loop ---
    steps: int = opt(8, "loop", "Training steps (one rollout batch + update each).")
    eval_every: int = opt(0, "loop", "Evaluate every N steps; 0: only before and after training.")
    probe_every: int = opt(
        4,
        "probe",
        "Run the fixed probe (the same training questions, G rollouts each at the training "
        "temperature, the same seeds every time: the learning curve) before training, every "
        "N steps and at the end; 0: never.",
    )
    probe_questions: int = opt(
        16, "probe", "Training questions in the probe (a sample stratified by article)."
    )
    probe_seed: int = opt(
        0, "probe", "Seed of the probe's question sample, sampling generator and env seeds."
    )
    save_every: int = opt(4, "loop", "Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = opt(3, "loop", "Keep the newest K checkpoints.")
    dump_rollouts_every: int = opt(
        1, "loop", "Write rollouts/step-N.jsonl every N steps (0: never)."
    )
    export_batches_every: int = opt(
        0,
        "loop",
        "Write batches/step-N.jsonl (token ids, action mask, per-token advantages for "
        "other trainers: docs/EXPORT.md) every N steps (0: never).",
    )
    log_every: int = opt(1, "loop", "Log metrics every N steps.")
    resume: bool | str = opt(
        False, "loop", "false, true (latest checkpoint in run_dir) or a checkpoint path."
    )
    tensorboard: bool = opt(True, "loop", "Also write TensorBoard scalars (if installed).")

    # derived values ---------------------------------------------------------------------
    @property
    def sampled_questions_per_step(self) -> int:
        """Questions rolled out per step: questions_per_step, x oversample with dynamic sampling."""
        if self.dynamic_sampling == "off":
            return self.questions_per_step
        return self.questions_per_step * self.oversample

    @property
    def rollouts_per_step(self) -> int:
        """Trajectories generated per step: sampled_questions_per_step * group_size."""
        return self.sampled_questions_per_step * self.group_size

    def _check(self, e: list[str]) -> None:
        _check_train(self, e)


def resolve_ig_method(cfg: TrainConfig) -> str:
    """The concrete IG scoring path: ``auto`` is ``live`` on the hf engine, else ``packed``."""
    if cfg.ig_method != "auto":
        return cfg.ig_method
    return "live" if cfg.engine == "hf" else "packed"


def resolve_old_logprobs(cfg: TrainConfig, *, weights_fp32: bool, autocast: bool) -> str:
    """pi_old before several optimiser steps: ``recompute`` or ``sampler``. ``auto`` is
    ``sampler`` only where the sampler computes what the learner's forward would (hf
    engine, fp32 weights, no autocast: records = recomputed to ~2e-6 nats); vLLM's kernels
    or bf16 move them by ~1e-2."""
    if cfg.old_logprobs != "auto":
        return cfg.old_logprobs
    exact = cfg.engine == "hf" and weights_fp32 and not autocast
    return "sampler" if exact else "recompute"


def resolve_tis(cfg: TrainConfig, old_logprobs: str) -> bool:
    """Whether truncated importance sampling weights the loss: ``auto`` = on with the vLLM
    engine, unless pi_old is the sampler's records (the weights would all be 1)."""
    if cfg.tis != "auto":
        return cfg.tis == "on"
    return cfg.engine == "vllm" and old_logprobs == "recompute"


def _check_train(cfg: TrainConfig, e: list[str]) -> None:
    """The trainer's own checks (the shared groups check their fields themselves)."""
    if cfg.ppo_epochs < 1:
        e.append(f"ppo_epochs={cfg.ppo_epochs}: use a value >= 1")
    if cfg.ig_method == "live" and cfg.engine != "hf":
        e.append("ig_method=live scores inside the hf engine's rollout: use packed or vllm")
    if cfg.ig_method == "vllm" and cfg.engine != "vllm":
        e.append("ig_method=vllm scores through the vLLM engine: set engine=vllm too")
    if cfg.seed < 0:
        e.append(f"seed={cfg.seed}: use a non-negative seed")
    if cfg.full_finetune and cfg.init_adapter is not None:
        e.append("init_adapter is set with full_finetune: drop one of them")
    if cfg.group_size < 2:
        e.append(
            f"group_size={cfg.group_size}: group normalisation needs >= 2 rollouts per "
            "question (a group of 1 always has advantage 0); use 4 or more"
        )
    if cfg.questions_per_step < 1:
        e.append(f"questions_per_step={cfg.questions_per_step}: use a value >= 1")
    if cfg.oversample < 1:
        e.append(f"oversample={cfg.oversample}: use a value >= 1 (1: filter without extra)")
    if not 0 < cfg.rft_min_f1 <= 1:
        e.append(f"rft_min_f1={cfg.rft_min_f1}: use a value in (0, 1]")
    if cfg.micro_batch_size < 1:
        e.append(f"micro_batch_size={cfg.micro_batch_size}: use a value >= 1")
    elif cfg.questions_per_step >= 1 and cfg.group_size >= 1:
        n = cfg.questions_per_step * cfg.group_size  # the most a step trains on
        if n % cfg.micro_batch_size:
            fits = [d for d in range(1, n + 1) if n % d == 0]
            e.append(
                f"micro_batch_size={cfg.micro_batch_size} does not divide the "
                f"{n} rollouts per step (questions_per_step * group_size); use one of {fits}"
            )
    if cfg.tis == "on" and cfg.old_logprobs == "sampler":
        e.append(
            "tis=on with old_logprobs=sampler: pi_old would be the sampler's own records, so "
            "every weight is 1; use old_logprobs=recompute (or auto) with tis"
        )
    if not cfg.tis_cap >= 1:
        e.append(f"tis_cap={cfg.tis_cap}: use a cap >= 1 (verl/TRL: 2.0)")
    if cfg.ppo_mini_batch_size is not None:
        n = cfg.questions_per_step * cfg.group_size
        if cfg.ppo_mini_batch_size < 1 or n % cfg.ppo_mini_batch_size:
            fits = [d for d in range(1, n + 1) if n % d == 0]
            e.append(
                f"ppo_mini_batch_size={cfg.ppo_mini_batch_size} does not divide the {n} "
                f"rollouts per step into equal optimiser steps; use one of {fits} or none"
            )
    for name in ("clip_ratio_low", "clip_ratio_high"):
        v = getattr(cfg, name)
        if v is not None and not 0 < v < (1 if name == "clip_ratio_low" else float("inf")):
            e.append(f"{name}={v}: use a value in (0, 1) for low, > 0 for high, or none")
    if not cfg.temperature > 0:
        e.append(f"temperature={cfg.temperature}: sampling needs a temperature > 0")
    if not 0 < cfg.top_p <= 1:
        e.append(f"top_p={cfg.top_p}: use a value in (0, 1]")
    if not 0.0 <= cfg.gamma <= 1.0:
        e.append(f"gamma={cfg.gamma}: use a discount in [0, 1] (reference: 1.0)")
    if not cfg.clip_eps > 0:
        e.append(f"clip_eps={cfg.clip_eps}: use a positive clip (reference: 0.2)")
    if cfg.dual_clip is not None and not cfg.dual_clip > 1:
        e.append(f"dual_clip={cfg.dual_clip}: use c > 1 (reference: 3.0) or none to disable")
    for name in ("kl_coef", "entropy_coef", "weight_decay"):
        if getattr(cfg, name) < 0:
            e.append(f"{name}={getattr(cfg, name)}: use a value >= 0")
    if not cfg.lr > 0:
        e.append(f"lr={cfg.lr}: use a positive learning rate (LoRA: ~1e-5..1e-4)")
    if not cfg.max_grad_norm > 0:
        e.append(f"max_grad_norm={cfg.max_grad_norm}: use a positive norm (reference: 1.0)")
    if cfg.steps < 0:
        e.append(f"steps={cfg.steps}: use 0 (evaluate only) or more")
    if cfg.warmup_steps < 0:
        e.append(f"warmup_steps={cfg.warmup_steps}: use a value >= 0")
    elif cfg.steps > 0 and cfg.warmup_steps > cfg.steps:
        e.append(f"warmup_steps={cfg.warmup_steps} exceeds steps={cfg.steps}: lower it")
    if cfg.probe_questions < 1:
        e.append(f"probe_questions={cfg.probe_questions}: use a value >= 1 (probe_every=0: off)")
    if cfg.probe_seed < 0:
        e.append(f"probe_seed={cfg.probe_seed}: use a non-negative seed")
    for name in (
        "probe_every",
        "eval_every",
        "save_every",
        "dump_rollouts_every",
        "export_batches_every",
    ):
        if getattr(cfg, name) < 0:
            e.append(f"{name}={getattr(cfg, name)}: use 0 (off / only at the end) or more")
    if cfg.log_every < 1:
        e.append(f"log_every={cfg.log_every}: use a value >= 1")
    if cfg.keep_checkpoints < 1:
        e.append(f"keep_checkpoints={cfg.keep_checkpoints}: keep at least 1")
    if isinstance(cfg.resume, str) and not cfg.resume:
        e.append("resume is an empty string: use false, true or a checkpoint path")


# --- the command line (thin wrappers over igpo_agent.cli for TrainConfig) ----------------


def check_keys(data: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming each unknown key and its closest TrainConfig field."""
    cli.check_keys(TrainConfig, data)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a training config YAML file; clear errors otherwise."""
    return cli.read_yaml(path, TrainConfig)


DESCRIPTION = "Train a multi-turn search agent with IGPO (or GRPO)."


def build_parser(defaults: dict[str, Any] | None = None):  # noqa: ANN201 (argparse type)
    """The ``python -m igpo_agent.train`` parser: one ``--field`` per TrainConfig field."""
    return cli.build_parser(
        TrainConfig, defaults, prog="python -m igpo_agent.train", description=DESCRIPTION
    )


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``--config FILE.yaml`` then ``--field value`` overrides into a valid TrainConfig.

    ``argv=None`` reads ``sys.argv[1:]``. Unknown flags or YAML keys and invalid values
    raise ``SystemExit`` (argparse's exit code 2) with a message naming the fix.
    """
    return cli.parse_options(
        TrainConfig, argv, prog="python -m igpo_agent.train", description=DESCRIPTION
    )
