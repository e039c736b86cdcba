# Over 400 lines: one dataclass, every option with its help text and validation in one place (the CLI and YAML read it).
"""The training configuration: one dataclass, a help text per field, YAML + CLI, validation.

``load_config(argv)`` reads ``--config FILE.yaml`` first, then applies ``--field value``
overrides (booleans as ``--flag`` / ``--no-flag`` / ``--flag false``; ``none`` clears an
optional field). Every field's help text is in its ``metadata["help"]`` and shows up in
``python -m igpo_agent.train --help``. ``TrainConfig.__post_init__`` rejects broken
combinations with a message that says what to change (TRL's habit), so a bad run fails
in the first second instead of after the model has loaded.

The defaults are the CPU path (a 135M model with LoRA on a 2-core machine); the paper's
reference settings live in ``configs/paper_7b_gpu.yaml``. This module imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ALGOS = ("igpo", "grpo")
IG_MODES = ("log_prob_diff", "prob_diff")
NORMS = ("separate", "joint")
IG_METHODS = ("auto", "live", "packed", "naive", "vllm")
ENGINES = ("hf", "vllm")
LOSS_AGGS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
LR_SCHEDULES = ("constant", "cosine", "linear")
DTYPES = ("auto", "float32", "bfloat16", "float16")
KL_REFERENCES = ("init", "base")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_TRUE = ("true", "1", "yes", "on", "y", "t")
_FALSE = ("false", "0", "no", "off", "n", "f")
_NONE = ("none", "null", "~", "")


def _f(default: Any, section: str, help: str) -> Any:
    """A dataclass field with its help text and CLI section (``--help`` groups by section)."""
    return field(default=default, metadata={"help": help, "section": section})


@dataclass
class TrainConfig:
    """Every knob of one IGPO / GRPO training run (see docs/ALGORITHM.md for the algorithm)."""

    # --- run ---
    run_dir: str = _f("runs/default", "run", "Folder for metrics, checkpoints, rollouts, plots.")
    seed: int = _f(0, "run", "Seed for python, numpy and torch; rollouts and data order follow it.")
    device: str = _f("auto", "run", "auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps.")
    dtype: str = _f("auto", "run", "auto (bf16 on cuda, fp32 on cpu), float32, bfloat16, float16.")
    threads: int | None = _f(None, "run", "torch CPU threads; none = all physical cores.")
    autocast: str = _f(
        "auto",
        "run",
        "Autocast dtype of the update's forward passes (pi_old, reference, policy): auto (bf16 "
        "on fp32 weights when the CPU/GPU computes bf16 natively), bfloat16, float32 (off). "
        "The loss and log-softmax stay fp32; rollouts and IG scoring never autocast.",
    )
    # --- model ---
    model: str = _f(
        "smollm2-135m-instruct", "model", "Model name known offline or a local HF model folder."
    )
    lora_r: int = _f(16, "model", "LoRA rank.")
    lora_alpha: float = _f(32.0, "model", "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "model", "Dropout on the LoRA input; 0 keeps rollouts exact.")
    lora_targets: str = _f(
        "q_proj,k_proj,v_proj,o_proj", "model", "Comma list of module names that get LoRA."
    )
    full_finetune: bool = _f(False, "model", "Train all weights instead of a LoRA adapter.")
    init_adapter: str | None = _f(None, "model", "Start from this saved adapter (e.g. after SFT).")
    # --- env ---
    env_id: str = _f("igpo_env:SearchQA-v0", "env", "Gymnasium id of the search-QA environment.")
    train_qa: str = _f("default:train", "env", "Training questions: default:SPLIT or a JSONL path.")
    eval_qa: str = _f("default:dev", "env", "Evaluation questions: default:SPLIT or a JSONL path.")
    corpus: str = _f("default", "env", "Corpus: 'default' or a JSONL(.gz) path.")
    retriever: str = _f("bm25", "env", "Retriever backend name (make_retriever) or an http URL.")
    top_k: int = _f(3, "env", "Documents returned per search.")
    doc_max_words: int = _f(64, "env", "Each retrieved document is cut to this many words.")
    max_turns: int = _f(4, "env", "Agent turns per episode before truncation.")
    protocol: str = _f("tags", "env", "Action format the env parses: tags or tool_call JSON.")
    format_penalty: float = _f(
        -2.0, "env", "Outcome reward of a malformed trajectory (lambda_fmt, <= 0)."
    )
    on_invalid: str = _f("continue", "env", "What the env does after an unparsable turn.")
    # --- rollout ---
    group_size: int = _f(4, "rollout", "G: rollouts per question; advantages normalise per group.")
    questions_per_step: int = _f(2, "rollout", "Questions per training step.")
    max_new_tokens: int = _f(96, "rollout", "Token budget of one agent turn.")
    temperature: float = _f(1.0, "rollout", "Sampling temperature (> 0).")
    top_p: float = _f(1.0, "rollout", "Nucleus sampling mass in (0, 1].")
    max_context: int | None = _f(None, "rollout", "Stop an episode past this many tokens.")
    engine: str = _f(
        "hf", "rollout", "Rollout engine: hf (transformers, default) or vllm (docs/VLLM.md)."
    )
    vllm_dtype: str = _f("bfloat16", "rollout", "vLLM engine dtype: bfloat16 or float32.")
    vllm_threads: int | None = _f(
        None, "rollout", "torch threads inside vLLM calls (CPU); none = every CPU."
    )
    # --- algorithm ---
    algo: str = _f("igpo", "algorithm", "igpo (IG turn rewards + outcome) or grpo (outcome only).")
    ig_mode: str = _f(
        "log_prob_diff", "algorithm", "IG reward: log_prob_diff (v2) or prob_diff (v1)."
    )
    norm: str = _f(
        "separate", "algorithm", "separate (IG and outcome z-scored apart) or joint (together)."
    )
    gamma: float = _f(1.0, "algorithm", "Discount of turn rewards in the return, in [0, 1].")
    ig_turns: str = _f(
        "search",
        "algorithm",
        "Turns that get IG: search (docs/ALGORITHM.md: turns that end in a search) or all (every turn "
        "before the last, malformed ones included).",
    )
    ig_method: str = _f(
        "auto",
        "algorithm",
        "How v_t is scored: live (from the rollout's KV cache, hf engine), packed (all turns "
        "in one forward after the rollout), naive (one forward per turn), vllm (engine "
        "prompt_logprobs); auto = live with engine hf, packed with engine vllm.",
    )
    ig_weight: float = _f(
        1.0, "algorithm", "Weight of the normalised IG rewards (the outcome's weight is 1)."
    )
    ig_weight_end: float | None = _f(
        None,
        "algorithm",
        "With a value, the IG weight moves linearly from ig_weight at step 1 to this at the "
        "last step (reference code's IG/outcome schedule); none keeps ig_weight.",
    )
    ig_exclude_zero: bool = _f(
        False,
        "algorithm",
        "Leave IG values that are exactly 0 out of the IG normalisation pool (reference code, "
        "Feb 2026).",
    )
    # --- loss ---
    clip_eps: float = _f(0.2, "loss", "PPO ratio clip epsilon.")
    clip_ratio_low: float | None = _f(
        None, "loss", "Lower clip: ratio >= 1 - clip_ratio_low; none = clip_eps."
    )
    clip_ratio_high: float | None = _f(
        None, "loss", "Upper clip: ratio <= 1 + clip_ratio_high (DAPO: 0.28); none = clip_eps."
    )
    dual_clip: float | None = _f(3.0, "loss", "Dual-clip constant c > 1 for negative advantages.")
    kl_coef: float = _f(0.001, "loss", "Weight of the low_var_kl loss to the reference policy.")
    kl_reference: str = _f(
        "init",
        "loss",
        "KL anchor with init_adapter: init (the warm-started policy training begins from: its "
        "adapter is merged into the base and a fresh adapter trained on top) or base (the base "
        "model with the adapter disabled).",
    )
    entropy_coef: float = _f(0.001, "loss", "Weight of the entropy bonus.")
    loss_agg: str = _f(
        "token-mean", "loss", "token-mean, seq-mean-token-sum or seq-mean-token-mean."
    )
    ppo_epochs: int = _f(1, "loss", "Passes over each rollout batch.")
    ppo_mini_batch_size: int | None = _f(
        None,
        "loss",
        "Trajectories per optimiser step: each rollout batch is split into mini-batches, one "
        "step each (reference Nov 2025: 32 of 512); none = the whole batch, one step.",
    )
    micro_batch_size: int = _f(4, "loss", "Trajectories per forward/backward (grad accumulation).")
    lr: float = _f(5e-5, "loss", "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "loss", "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "loss", "Gradient clipping norm (> 0).")
    warmup_steps: int = _f(0, "loss", "Linear warmup steps before the schedule.")
    lr_schedule: str = _f("constant", "loss", "constant, cosine or linear (decay to 0 at the end).")
    # --- loop ---
    steps: int = _f(8, "loop", "Training steps (one rollout batch + update each).")
    eval_every: int = _f(0, "loop", "Evaluate every N steps; 0: only before and after training.")
    eval_questions: int = _f(16, "loop", "Questions per evaluation (0: skip evaluation).")
    eval_batch_size: int = _f(
        16,
        "loop",
        "Evaluation episodes generated together (32 vs 16: only 3 percent faster on 2 CPU cores).",
    )
    save_every: int = _f(4, "loop", "Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = _f(3, "loop", "Keep the newest K checkpoints.")
    dump_rollouts_every: int = _f(
        1, "loop", "Write rollouts/step-N.jsonl every N steps (0: never)."
    )
    export_batches_every: int = _f(
        0,
        "loop",
        "Write batches/step-N.jsonl (token ids, action mask, per-token advantages for "
        "other trainers: docs/EXPORT.md) every N steps (0: never).",
    )
    log_every: int = _f(1, "loop", "Log metrics every N steps.")
    resume: bool | str = _f(
        False, "loop", "false, true (latest checkpoint in run_dir) or a checkpoint path."
    )
    tensorboard: bool = _f(True, "loop", "Also write TensorBoard scalars (if installed).")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _field_types()[f.name]))
        errors = validate(self)
        if errors:
            raise ValueError("invalid training config:\n  - " + "\n  - ".join(errors))

    # derived values ---------------------------------------------------------------------
    @property
    def rollouts_per_step(self) -> int:
        """Trajectories generated per step: questions_per_step * group_size."""
        return self.questions_per_step * self.group_size

    @property
    def lora_target_modules(self) -> list[str]:
        """``lora_targets`` split into module names."""
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    # serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (YAML/JSON-safe); ``from_dict`` inverts it exactly."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise an error naming the closest valid key."""
        check_keys(data)
        return cls(**data)

    def to_yaml(self) -> str:
        """The config as YAML text (field order kept)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save_yaml(self, path: str | Path) -> Path:
        """Write ``to_yaml()`` to ``path`` (parents created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path


def resolve_ig_method(cfg: TrainConfig) -> str:
    """The concrete IG scoring path: ``auto`` is ``live`` on the hf engine, else ``packed``."""
    if cfg.ig_method != "auto":
        return cfg.ig_method
    return "live" if cfg.engine == "hf" else "packed"


def validate(cfg: TrainConfig) -> list[str]:
    """Every problem with ``cfg`` as a message that says what to change (empty: valid)."""
    e: list[str] = []

    def choice(name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(cfg, name)
        if value not in allowed:
            e.append(f"{name}={value!r} is not one of {allowed}")

    for name, allowed in [
        ("algo", ALGOS),
        ("ig_mode", IG_MODES),
        ("norm", NORMS),
        ("ig_method", IG_METHODS),
        ("ig_turns", ("search", "all")),
        ("engine", ENGINES),
        ("vllm_dtype", ("bfloat16", "float32")),
        ("loss_agg", LOSS_AGGS),
        ("lr_schedule", LR_SCHEDULES),
        ("dtype", DTYPES),
        ("kl_reference", KL_REFERENCES),
        ("autocast", ("auto", "float32", "bfloat16")),
    ]:
        choice(name, allowed)
    if cfg.ig_method == "live" and cfg.engine != "hf":
        e.append("ig_method=live scores inside the hf engine's rollout: use packed or vllm")
    if cfg.ig_method == "vllm" and cfg.engine != "vllm":
        e.append("ig_method=vllm scores through the vLLM engine: set engine=vllm too")
    if cfg.vllm_threads is not None and cfg.vllm_threads < 1:
        e.append(f"vllm_threads={cfg.vllm_threads}: use a positive count or none")
    if not _DEVICE_RE.match(cfg.device):
        e.append(f"device={cfg.device!r}: use auto, cpu, mps, cuda or cuda:N")
    if cfg.threads is not None and cfg.threads < 1:
        e.append(f"threads={cfg.threads}: use a positive count or none")
    if cfg.seed < 0:
        e.append(f"seed={cfg.seed}: use a non-negative seed")
    if not cfg.model:
        e.append("model is empty: give a model name or a local model folder")
    if not cfg.full_finetune:
        if cfg.lora_r < 1:
            e.append(f"lora_r={cfg.lora_r}: use a rank >= 1 (or --full_finetune)")
        if cfg.lora_alpha <= 0:
            e.append(f"lora_alpha={cfg.lora_alpha}: use a positive alpha (commonly 2 * lora_r)")
        if not 0.0 <= cfg.lora_dropout < 1.0:
            e.append(f"lora_dropout={cfg.lora_dropout}: use a value in [0, 1)")
        if not cfg.lora_target_modules:
            e.append("lora_targets is empty: name modules, e.g. q_proj,k_proj,v_proj,o_proj")
    elif cfg.init_adapter is not None:
        e.append("init_adapter is set with full_finetune: drop one of them")
    for name in ("top_k", "doc_max_words", "max_turns", "max_new_tokens", "ppo_epochs"):
        if getattr(cfg, name) < 1:
            e.append(f"{name}={getattr(cfg, name)}: use a value >= 1")
    if cfg.format_penalty > 0:
        e.append(f"format_penalty={cfg.format_penalty}: a penalty is <= 0 (reference: -2.0)")
    if cfg.group_size < 2:
        e.append(
            f"group_size={cfg.group_size}: group normalisation needs >= 2 rollouts per "
            "question (a group of 1 always has advantage 0); use 4 or more"
        )
    if cfg.questions_per_step < 1:
        e.append(f"questions_per_step={cfg.questions_per_step}: use a value >= 1")
    if cfg.micro_batch_size < 1:
        e.append(f"micro_batch_size={cfg.micro_batch_size}: use a value >= 1")
    elif cfg.questions_per_step >= 1 and cfg.group_size >= 1:
        n = cfg.rollouts_per_step
        if n % cfg.micro_batch_size:
            fits = [d for d in range(1, n + 1) if n % d == 0]
            e.append(
                f"micro_batch_size={cfg.micro_batch_size} does not divide the "
                f"{n} rollouts per step (questions_per_step * group_size); use one of {fits}"
            )
    if cfg.ppo_mini_batch_size is not None:
        n = cfg.rollouts_per_step
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
    if cfg.max_context is not None and cfg.max_context <= cfg.max_new_tokens:
        e.append(
            f"max_context={cfg.max_context} must exceed max_new_tokens={cfg.max_new_tokens} "
            "(or be none for the model's limit)"
        )
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
    for name in (
        "eval_every",
        "eval_questions",
        "save_every",
        "dump_rollouts_every",
        "export_batches_every",
    ):
        if getattr(cfg, name) < 0:
            e.append(f"{name}={getattr(cfg, name)}: use 0 (off / only at the end) or more")
    if cfg.eval_batch_size < 1:
        e.append(f"eval_batch_size={cfg.eval_batch_size}: use a value >= 1")
    if cfg.log_every < 1:
        e.append(f"log_every={cfg.log_every}: use a value >= 1")
    if cfg.keep_checkpoints < 1:
        e.append(f"keep_checkpoints={cfg.keep_checkpoints}: keep at least 1")
    if isinstance(cfg.resume, str) and not cfg.resume:
        e.append("resume is an empty string: use false, true or a checkpoint path")
    return e


# --- types and coercion -------------------------------------------------------------------


def _field_types() -> dict[str, Any]:
    """Resolved type hints of TrainConfig (annotations are strings under __future__)."""
    global _TYPES
    if _TYPES is None:
        _TYPES = typing.get_type_hints(TrainConfig)
    return _TYPES


_TYPES: dict[str, Any] | None = None


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML, CLI text or Python) to field type ``tp``; clear errors."""
    args = typing.get_args(tp)
    is_union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    members = [a for a in args if a is not type(None)] if is_union else [tp]
    optional = is_union and type(None) in args
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise ValueError(f"{name} cannot be none; give a {_type_name(tp)}")
    if members == [bool, str]:  # resume: a switch or a path
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _parse_bool(value)
            except ValueError:
                return value
        raise ValueError(f"{name}={value!r}: give true, false or a path")
    (base,) = members
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
            raise ValueError
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # also parses YAML's "1e-5" (a string in YAML 1.1)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a valid {_type_name(tp)}") from None
    raise TypeError(f"unsupported field type {tp!r} for {name}")


def _metavar(tp: Any) -> str:
    """CLI placeholder: INT, FLOAT, STR, with '|NONE' for optional fields."""
    names = [a.__name__.upper() for a in typing.get_args(tp) or (tp,)]
    return "|".join(names).replace("NONETYPE", "NONE")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_keys(data: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming each unknown key and its closest valid field."""
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    problems = []
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            problems.append(f"unknown config key {key!r}{hint}")
    if problems:
        raise ValueError("\n".join(problems))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a config YAML file (empty file: {}); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    try:
        check_keys(data)
    except ValueError as err:
        raise ValueError(f"in {path}: {err}") from None
    return data


# --- command line -----------------------------------------------------------------------


def build_parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one ``--field`` per config field, grouped by section."""
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        description="Train a multi-turn search agent with IGPO (or GRPO).",
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of field: value (CLI flags override it).")
    groups: dict[str, argparse._ArgumentGroup] = {}
    types_ = _field_types()
    for f in dataclasses.fields(TrainConfig):
        section = f.metadata.get("section", "other")
        group = groups.setdefault(section, parser.add_argument_group(section))
        default = defaults.get(f.name, f.default)
        help_ = f.metadata.get("help", "")
        tp = types_[f.name]
        flags = [f"--{f.name}"]  # --init_adapter and --init-adapter both work
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        if tp is bool:
            group.add_argument(
                *flags,
                nargs="?",
                const=True,
                default=default,
                type=_parse_bool,
                metavar="BOOL",
                help=help_,
            )
            group.add_argument(
                f"--no-{f.name}",
                dest=f.name,
                action="store_const",
                const=False,
                help=argparse.SUPPRESS,
            )
        elif f.name == "resume":
            group.add_argument(*flags, nargs="?", const=True, default=default, help=help_)
            group.add_argument(
                f"--no-{f.name}",
                dest=f.name,
                action="store_const",
                const=False,
                help=argparse.SUPPRESS,
            )
        else:
            group.add_argument(*flags, default=default, metavar=_metavar(tp), help=help_)
    return parser


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``--config FILE.yaml`` then ``--field value`` overrides into a valid TrainConfig.

    ``argv=None`` reads ``sys.argv[1:]``. Unknown flags or YAML keys and invalid values
    raise ``SystemExit`` (argparse's exit code 2) with a message naming the fix.
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    base = build_parser()
    try:
        defaults = read_yaml(known.config) if known.config else {}
    except (OSError, ValueError) as err:
        base.error(str(err))
    parser = build_parser(defaults)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [f"--{f.name}" for f in dataclasses.fields(TrainConfig)] + ["--config"]
        msgs = []
        flagged = [tok for tok in unknown if tok.startswith("-")] or unknown
        for tok in flagged:
            close = difflib.get_close_matches(tok.split("=")[0], flags, n=1, cutoff=0.5)
            msgs.append(
                f"unknown argument {tok!r}" + (f" (did you mean {close[0]}?)" if close else "")
            )
        parser.error("; ".join(msgs))
    values = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        return TrainConfig(**values)
    except ValueError as err:
        parser.error(str(err))
    raise AssertionError("unreachable")  # parser.error exits
