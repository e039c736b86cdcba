"""vllm_beliefs without vLLM: an HF stand-in for the engine's ``prompt_logprobs`` gives the
re-encoded values, prompts shared by several boundaries are scored once, and values whose
gold tokens fell inside a "cached" prefix are rescored (the engine itself: tests/vllm)."""

from __future__ import annotations

import pytest
import torch

from igpo_agent.ig.beliefs import reencoded_beliefs
from igpo_agent.ig.gold import gold_spec
from igpo_agent.ig.vllm_beliefs import vllm_beliefs, vllm_trajectory_beliefs
from igpo_agent.rollout.trajectory import Span, Trajectory

torch.set_num_threads(1)


class HFPromptScorer:
    """``VLLMEngine.prompt_logprobs``' layout from an HF model; with ``read_prefix_cache``
    the first ``cached`` positions come back NaN, as vLLM leaves a cache hit's unset."""

    def __init__(self, model, tokenizer, cached: int) -> None:
        self.model, self.tokenizer, self.cached = model, tokenizer, cached
        self.calls: list[tuple[int, bool]] = []

    @torch.no_grad()
    def prompt_logprobs(self, seqs, *, read_prefix_cache=False):
        self.calls.append((len(seqs), read_prefix_cache))
        rows = []
        for seq in seqs:
            ids = torch.tensor([list(seq)])
            lp = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
            row = [0.0] + [float(lp[p - 1, seq[p]]) for p in range(1, len(seq))]
            if read_prefix_cache:
                row[: self.cached] = [float("nan")] * min(self.cached, len(row))
            rows.append(row)
        return rows


def test_values_equal_the_reencoded_ones(smol):
    model, tok, _ = smol
    seq = tok.encode("Question: who wrote the novel 1984? The author is a British writer.")
    seqs, bounds = [seq, seq, seq[:10]], [[3, 8, len(seq)], [3, 8, len(seq)], [4, 10]]
    specs = [gold_spec(tok, g, "<answer>", "</answer>") for g in ("Orwell", "Orwell", "Eric")]
    cached = 4 + specs[0].scored[0]  # b=3's first gold token is "cached", b=4's is not
    engine = HFPromptScorer(model, tok, cached=cached)
    got = vllm_beliefs(engine, seqs, bounds, specs)
    ref = reencoded_beliefs(model, seqs, bounds, specs, method="naive")
    for g, r in zip(got, ref, strict=True):
        assert g == pytest.approx(r, abs=1e-4)
    assert specs[2].scored[0] == specs[0].scored[0]  # same wrapper prefix
    assert engine.calls == [(5, True), (1, False)]  # 8 boundaries, 5 distinct; b=3 rescored


def test_trajectory_form_and_input_checks(smol):
    model, tok, _ = smol
    ids = tok.encode("Question: what is the capital of France? Answer here.")
    traj = Trajectory(
        question="q",
        answers=["Paris"],
        token_ids=ids,
        spans=[Span("prompt", 0, 5, -1), Span("action", 5, len(ids), 0)],
        sample_logprobs=[0.0] * len(ids),
    )
    engine = HFPromptScorer(model, tok, cached=0)
    got = vllm_trajectory_beliefs(engine, [traj], "<answer>", "</answer>")
    spec = gold_spec(tok, "Paris", "<answer>", "</answer>")
    ref = reencoded_beliefs(model, [ids], [traj.boundaries()], [spec], method="naive")
    assert got == [pytest.approx(ref[0], abs=1e-4)]
    with pytest.raises(ValueError, match="one entry per trajectory"):
        vllm_beliefs(engine, [ids], [], [spec])
