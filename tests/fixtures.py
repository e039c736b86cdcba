"""Test helpers: small corpus and QA files in the formats the env reads; loading a saved
tiny model; the two prompt templates (chat template, plain text) rollouts are tested with.

Corpus rows are FlashRAG/Search-R1 ``{"id", "contents": '"Title"\\ntext'}``; QA rows are
``{"id", "question", "golden_answers"[, "dataset"]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Two documents and their two questions: the small world several learner tests roll out in.
PARIS_NILE_DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France."),
    ("d2", "Nile", "The Nile is a major river in northeastern Africa."),
]
PARIS_NILE_QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "Which river?", ["Nile"]),
]


def paris_nile_rollouts(
    policy: Any, envs: Sequence[Any], seed: int, temperature: float = 1.0
) -> list:
    """Two rollouts of each Paris/Nile question (8 new tokens a turn, tags protocol), seeded."""
    import torch

    from igpo_agent.model.prompts import policy_prompt_fn
    from igpo_agent.rollout.episodes import rollout_batch
    from igpo_agent.rollout.sampling import GenerationSettings

    return rollout_batch(
        policy.model,
        policy.tokenizer,
        policy_prompt_fn(policy, "tags"),
        envs,
        [{"index": 0}, {"index": 1}],
        group_size=2,
        settings=GenerationSettings(max_new_tokens=8, temperature=temperature),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
    )


def write_corpus(path: Path, docs: Iterable[tuple[str, str, str]]) -> str:
    """Write ``(id, title, text)`` documents as a JSONL corpus; returns the path as str."""
    path.write_text(
        "".join(json.dumps({"id": i, "contents": f'"{t}"\n{x}'}) + "\n" for i, t, x in docs)
    )
    return str(path)


def write_qa(
    path: Path, rows: Iterable[tuple[str, str, Sequence[str]]], dataset: str | None = None
) -> str:
    """Write ``(id, question, answers)`` rows as a FlashRAG QA file; returns the path as str."""
    lines = []
    for i, q, a in rows:
        row = {"id": i, "question": q, "golden_answers": list(a)}
        if dataset is not None:
            row["dataset"] = dataset
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    return str(path)


def load_model(path: Any, dtype: Any = None) -> Any:
    """A saved causal LM in eval mode (fp32 unless ``dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    return model.eval()


def chat_prompt_fn(tokenizer: Any) -> Any:
    """Prompt text -> ids through the tokenizer's chat template (one user turn)."""

    def fn(text: str) -> list[int]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return fn


def plain_prompt_fn(tokenizer: Any) -> Any:
    """Prompt text -> ids as a plain ``User: ... Assistant:`` transcript (no template)."""
    return lambda text: tokenizer.encode(f"User: {text}\n\nAssistant:")


def tiny_train_kwargs(model: Any, corpus: str, qa: str, **over: Any) -> dict[str, Any]:
    """``TrainConfig`` keyword arguments of a seconds-long CPU run of a tiny model on a
    fixture corpus and QA file (trained and evaluated on it), ``over`` replacing any."""
    base: dict[str, Any] = dict(
        model=str(model),
        corpus=corpus,
        train_qa=qa,
        eval_qa=qa,
        device="cpu",
        dtype="float32",
        threads=1,
        lora_r=4,
        lora_alpha=8,
        lora_targets="q_proj,v_proj",
        top_k=2,
        doc_max_words=16,
        max_turns=2,
        group_size=2,
        questions_per_step=2,
        max_new_tokens=10,
        micro_batch_size=2,
        lr=1e-2,
        steps=2,
        eval_questions=0,
        save_every=0,
        tensorboard=False,
    )
    return {**base, **over}


TINY_CPU_GRPO: dict[str, Any] = dict(
    num_generations=3,
    learning_rate=1e-2,
    use_cpu=True,
    bf16=False,
    activation_checkpointing=False,
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    shuffle_dataset=False,
    seed=0,
)
"""``GRPOConfig`` settings the TRL tests share: a seeded CPU run in fp32, no logging
backends, no checkpoints (each test adds its output_dir, steps, batch and lengths)."""
