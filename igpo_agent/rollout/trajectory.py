"""The record of one episode, as token ids exactly as they were sampled or appended.

Turn boundaries and masks are data written during generation (ALGORITHM "The episode":
no chat-template string scanning, no re-tokenisation). A trajectory is a flat token list
plus spans that say which tokens are the prompt, which the agent generated in turn ``t``
(trainable), and which are the environment's observation after turn ``t`` (masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SpanKind = Literal["prompt", "action", "observation"]


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of kind ``kind``; ``turn`` is the 0-based agent turn (-1: prompt)."""

    kind: SpanKind
    start: int
    end: int
    turn: int


@dataclass
class Trajectory:
    """One rollout of one question.

    ``token_ids`` = prompt | action_0 | obs_0 | action_1 | obs_1 | ... | action_{T-1}.
    ``sample_logprobs`` holds, for every token, the log-prob under the sampling policy
    (0.0 where the token was not sampled). ``turn_kinds[t]`` is ``"search"``,
    ``"answer"`` or ``"invalid"`` as the env parsed it. ``search_failures`` counts the
    searches whose backend failed (the env's ``info["search_failed"]``): such a rollout
    measures the outage, not the agent, and the trainer leaves it out of its update.
    """

    question: str
    answers: list[str]
    token_ids: list[int] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)
    turn_kinds: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    env_rewards: list[float] = field(default_factory=list)
    outcome_f1: float = 0.0  # the env's answer score (0.0 when never answered)
    answered: bool = False  # ended with a parsed answer
    format_ok: bool = True  # every turn parsed as a valid action
    truncated: bool = False  # hit the turn limit without answering
    context_truncated: bool = False  # stopped because the model's context was full
    search_failures: int = 0  # searches whose backend failed (info["search_failed"])
    search_error: str = ""  # the last failed search's message ("" when none failed)
    group: int = 0  # index of the question within the batch
    qid: str = ""
    dataset: str = ""  # the env's info["dataset"]
    article: str = ""  # the env's info["article"]: the question's source article, if known
    gold_retrieved: bool = False  # a search turn's info["gold_retrieved"]: gold in a document
    answer_text: str = ""  # the agent's final answer as the env parsed it ("" if none)
    answer_metrics: dict[str, float] = field(default_factory=dict)  # env's em/f1/cover_em
    beliefs: list[float] = field(default_factory=list)  # v_t per boundary, scored live (or [])

    @property
    def num_turns(self) -> int:
        """Number of agent turns T (>= 1 for any rollout that generated anything)."""
        return sum(1 for s in self.spans if s.kind == "action")

    @property
    def prompt_len(self) -> int:
        """Number of prompt tokens."""
        return sum(s.end - s.start for s in self.spans if s.kind == "prompt")

    def action_mask(self) -> list[int]:
        """1 for tokens the agent generated (trainable), 0 for prompt and observation tokens."""
        mask = [0] * len(self.token_ids)
        for s in self.spans:
            if s.kind == "action":
                mask[s.start : s.end] = [1] * (s.end - s.start)
        return mask

    def token_turns(self) -> list[int]:
        """Turn index of each generated token, -1 for prompt and observation tokens."""
        out = [-1] * len(self.token_ids)
        for s in self.spans:
            if s.kind == "action":
                out[s.start : s.end] = [s.turn] * (s.end - s.start)
        return out

    def boundaries(self) -> list[int]:
        """Prefix lengths b_0..b_{T-1} at which the belief v_t is scored (ALGORITHM "Turn reward").

        b_0 is the end of the prompt; b_t (t >= 1) is the end of turn t's action plus its
        observation, i.e. where turn t+1 starts. The final turn gets the outcome, not IG,
        so there is no boundary after it.
        """
        starts = [s.start for s in self.spans if s.kind == "action"]
        return starts  # turn t starts exactly where the prefix after turns < t ends

    def success(self) -> bool:
        """Answered, well-formed, with a positive score."""
        return self.answered and self.format_ok and self.outcome_f1 > 0
