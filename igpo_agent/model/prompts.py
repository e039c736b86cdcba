"""The agent's system prompt, per protocol.

The environment's prompt text already carries the protocol instructions, an example and
the question (``igpo_env.protocol.Protocol.prompt``), so the system prompt only sets the
role. Templating (chat template or plain) is ``Policy.prompt_ids``'s job; a rollout gets
a ``prompt_fn(user_text) -> ids`` such as :func:`policy_prompt_fn`'s, applied once per
episode (turns and observations are then appended as ids, never through a template).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["SYSTEM_PROMPTS", "policy_prompt_fn", "system_prompt"]

SYSTEM_PROMPTS: dict[str, str] = {
    "tags": (
        "You are a careful research assistant. Answer the question by searching when you "
        "need facts, using exactly the tags the instructions describe."
    ),
    "tool_call": (
        "You are a careful research assistant. Answer the question by calling the "
        "web_search tool when you need facts, in the format the instructions describe."
    ),
}


def system_prompt(protocol: str | None = None) -> str:
    """The system prompt for a protocol name (``info["protocol"]["name"]``); tags by default."""
    if protocol is not None and protocol not in SYSTEM_PROMPTS:
        raise ValueError(
            f"no system prompt for protocol {protocol!r}; known: {list(SYSTEM_PROMPTS)}"
        )
    return SYSTEM_PROMPTS[protocol or "tags"]


def policy_prompt_fn(
    policy: Any, protocol: str | None = "tags", system: str | None = None
) -> Callable[[str], list[int]]:
    """``user_text -> ids`` through ``policy.prompt_ids`` with the protocol's system prompt
    (``system`` overrides it; ``protocol=None`` and no ``system``: no system message)."""
    text = system if system is not None else (system_prompt(protocol) if protocol else None)

    def prompt_ids(user_text: str) -> list[int]:
        return policy.prompt_ids(user_text, text)

    return prompt_ids
