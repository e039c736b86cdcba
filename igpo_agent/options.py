"""The option groups the front doors share, and the base class that validates them.

Every front door (``python -m igpo_agent.train``, ``.sft``, ``.evaluate``) describes its
knobs as one dataclass: the groups here that it needs (model, LoRA, env, evaluation,
generation) plus its own fields, read from YAML and the command line by
:func:`igpo_agent.cli.parse_options`. A shared field therefore has one type, one default
and one help text whichever front door shows it. Fields typed with a ``Literal`` from
:mod:`igpo_agent.choices` accept only its values. Constructing a config coerces each value
to its field's type and runs every ``_check`` in the class hierarchy; all problems are
reported at once, each with what to change.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from igpo_agent.choices import DEFAULT_FORMAT_PENALTY, Dtype, Engine, VllmDtype
from igpo_agent.cli import check_keys, coerce, field_types, literal_values

OptionsT = TypeVar("OptionsT", bound="Options")


def opt(default: Any, section: str, help: str) -> Any:
    """A config field with its help text and ``--help`` section."""
    if isinstance(default, list):
        return field(
            default_factory=lambda: list(default), metadata={"help": help, "section": section}
        )
    return field(default=default, metadata={"help": help, "section": section})


class Options:
    """Base of the option groups and front-door configs: coercion, validation, YAML.

    A subclass adds checks by defining ``_check(self, errors)``; every class in the MRO that
    defines one runs, base classes first, so a front door's config validates its groups too.
    """

    kind: ClassVar[str] = "config"

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), hints[f.name]))
        errors = self.problems()
        if errors:
            raise ValueError(f"invalid {self.kind}:\n  - " + "\n  - ".join(errors))

    def problems(self) -> list[str]:
        """Every problem with this config as a message that says what to change."""
        errors: list[str] = []
        for name, tp in field_types(type(self)).items():
            allowed = literal_values(tp)
            if allowed and getattr(self, name) not in allowed:
                errors.append(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        for klass in reversed(type(self).__mro__):
            check = klass.__dict__.get("_check")
            if check is not None:
                check(self, errors)
        return errors

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (YAML/JSON-safe); ``from_dict`` inverts it exactly."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[OptionsT], data: dict[str, Any]) -> OptionsT:
        """Build from a dict; unknown keys raise an error naming the closest valid key."""
        check_keys(cls, data)
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


# --- the shared groups -------------------------------------------------------------------


@dataclass
class ModelOptions(Options):
    """Which model, where it runs, in what precision."""

    model: str = opt(
        "smollm2-135m-instruct", "model", "Model name known offline or a local HF model folder."
    )
    device: str = opt(
        "auto", "model", "auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps."
    )
    dtype: Dtype = opt("auto", "model", "Weights dtype; auto = bf16 on cuda, fp32 on cpu.")
    threads: int | None = opt(
        None,
        "model",
        "torch CPU threads; none = 1 on CPU (the fastest for small batches on the 2-core "
        "reference machine; leaves a core to retrieval), torch's choice on CUDA.",
    )

    def _check(self, e: list[str]) -> None:
        if not re.match(r"^(auto|cpu|mps|cuda(:\d+)?)$", self.device):
            e.append(f"device={self.device!r}: use auto, cpu, mps, cuda or cuda:N")
        if self.threads is not None and self.threads < 1:
            e.append(f"threads={self.threads}: use a positive count or none")
        if not self.model:
            e.append("model is empty: give a model name or a local model folder")


@dataclass
class LoraOptions(Options):
    """The LoRA adapter that is trained."""

    lora_r: int = opt(16, "model", "LoRA rank.")
    lora_alpha: float = opt(32.0, "model", "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = opt(0.0, "model", "Dropout on the LoRA input; 0 keeps rollouts exact.")
    lora_targets: str = opt(
        "q_proj,k_proj,v_proj,o_proj", "model", "Comma list of module names that get LoRA."
    )

    @property
    def lora_target_modules(self) -> list[str]:
        """``lora_targets`` split into module names."""
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    def _check(self, e: list[str]) -> None:
        if getattr(self, "full_finetune", False):
            return
        if self.lora_r < 1:
            hint = " (or --full_finetune)" if hasattr(self, "full_finetune") else ""
            e.append(f"lora_r={self.lora_r}: use a rank >= 1{hint}")
        if self.lora_alpha <= 0:
            e.append(f"lora_alpha={self.lora_alpha}: use a positive alpha (commonly 2 * lora_r)")
        if not 0.0 <= self.lora_dropout < 1.0:
            e.append(f"lora_dropout={self.lora_dropout}: use a value in [0, 1)")
        if not self.lora_target_modules:
            e.append("lora_targets is empty: name modules, e.g. q_proj,k_proj,v_proj,o_proj")


@dataclass
class EnvOptions(Options):
    """The search-QA environment every episode runs in (passed to ``gym.make``)."""

    env_id: str = opt("igpo_env:SearchQA-v0", "env", "Gymnasium id of the search-QA environment.")
    corpus: str = opt("default", "env", "Corpus: 'default' or a JSONL(.gz) path.")
    retriever: str = opt(
        "bm25",
        "env",
        "Retriever: a registered name (bm25, dense, searxng, ...), package.module:factory, "
        "or an http(s) URL of a /retrieve server.",
    )
    top_k: int = opt(3, "env", "Documents returned per search.")
    doc_max_words: int = opt(64, "env", "Each retrieved document is cut to this many words.")
    max_turns: int = opt(4, "env", "Agent turns per episode before truncation.")
    protocol: str = opt("tags", "env", "Action format the env parses: tags or tool_call JSON.")
    format_penalty: float = opt(
        DEFAULT_FORMAT_PENALTY,
        "env",
        "Outcome reward of a malformed trajectory (lambda_fmt, <= 0).",
    )
    on_invalid: str = opt("continue", "env", "What the env does after an unparsable turn.")

    def _check(self, e: list[str]) -> None:
        for name in ("top_k", "doc_max_words", "max_turns"):
            if getattr(self, name) < 1:
                e.append(f"{name}={getattr(self, name)}: use a value >= 1")
        if self.format_penalty > 0:
            e.append(
                f"format_penalty={self.format_penalty}: a penalty is <= 0 "
                f"(reference: {DEFAULT_FORMAT_PENALTY})"
            )


@dataclass
class EvalSeedOptions(Options):
    """Which questions an evaluation plays (:mod:`igpo_agent.run.subsets`)."""

    eval_seed: int = opt(
        0,
        "eval",
        "Seed of the evaluation subset (stratified by article): the same seed draws the "
        "same questions in every evaluation and every run, whatever the training seed.",
    )

    def _check(self, e: list[str]) -> None:
        if self.eval_seed < 0:
            e.append(f"eval_seed={self.eval_seed}: use a non-negative seed")


@dataclass
class EvalOptions(EvalSeedOptions):
    """The greedy dev evaluation a training front door runs before and after training."""

    eval_qa: str = opt(
        "default:dev", "eval", "Evaluation questions: default:SPLIT or a JSONL path."
    )
    eval_questions: int = opt(
        32,
        "eval",
        "Questions per evaluation: a fixed sample stratified by article (eval_seed); "
        "0: skip evaluation.",
    )
    eval_batch_size: int = opt(
        16,
        "eval",
        "Evaluation episodes generated together (32 vs 16: only 3 percent faster on 2 CPU cores).",
    )

    def _check(self, e: list[str]) -> None:
        if self.eval_questions < 0:
            e.append(f"eval_questions={self.eval_questions}: use 0 (skip) or more")
        if self.eval_batch_size < 1:
            e.append(f"eval_batch_size={self.eval_batch_size}: use a value >= 1")


@dataclass
class GenerationOptions(Options):
    """How agent turns are generated."""

    max_new_tokens: int = opt(96, "generation", "Token budget of one agent turn.")
    engine: Engine = opt(
        "hf", "generation", "Rollout engine: hf (transformers) or vllm (docs/VLLM.md)."
    )
    vllm_dtype: VllmDtype = opt("bfloat16", "generation", "vLLM engine dtype.")
    vllm_threads: int | None = opt(
        None, "generation", "torch threads inside vLLM calls (CPU); none = every CPU."
    )
    max_context: int | None = opt(None, "generation", "Stop an episode past this many tokens.")
    answer_eos: bool = opt(
        False,
        "generation",
        "The answer turn ends with the end-of-sequence token after </answer> (trained by sft, "
        "sampled by train and evaluate), as a chat model ends its reply; off: it ends at "
        "</answer>. A warm start and the runs from it should agree.",
    )

    def _check(self, e: list[str]) -> None:
        if self.max_new_tokens < 1:
            e.append(f"max_new_tokens={self.max_new_tokens}: use a value >= 1")
        if self.vllm_threads is not None and self.vllm_threads < 1:
            e.append(f"vllm_threads={self.vllm_threads}: use a positive count or none")
        if self.max_context is not None and self.max_context <= self.max_new_tokens:
            e.append(
                f"max_context={self.max_context} must exceed max_new_tokens="
                f"{self.max_new_tokens} (or be none for the model's limit)"
            )


@dataclass
class SearchHealthOptions(Options):
    """What the trainer and the evaluator tolerate from the search backend
    (:mod:`igpo_agent.run.search_health`)."""

    max_search_failure_rate: float = opt(
        0.25,
        "env",
        "Stop when more than this share of a training step's searches fail (the last good step "
        "is checkpointed for --resume; below it, rollouts with a failed search are left out of "
        "the update) or of an evaluation's (no score is written); 0 stops at any failure, "
        "1 never.",
    )

    def _check(self, e: list[str]) -> None:
        if not 0.0 <= self.max_search_failure_rate <= 1.0:
            e.append(
                f"max_search_failure_rate={self.max_search_failure_rate}: use a share in [0, 1]"
            )
