# Over 400 lines: the episode recorder both engines share and the HF rollout loop that drives it.
"""Run G episodes per question, batched, and record them as token spans.

:func:`rollout_batch` drives ``len(tasks) * group_size`` Gymnasium envs at once. Every
round, each episode still running generates its next turn; all of them are decoded
together by :func:`igpo_agent.rollout.sampling.generate_turn`; the texts go to ``env.step``; the
episodes that ended leave the batch. What is recorded is data written at generation time,
never recovered by scanning text:

- ``token_ids = prompt | action_0 | obs_0 | action_1 | ... | action_{T-1}``: the prompt as
  ``prompt_fn`` tokenised it, each action exactly the ids that were sampled (stop token
  kept whole, EOS kept when it ended the turn), each observation
  ``tokenizer.encode(obs_text, add_special_tokens=False)``.
- Nothing is inserted between turns (Search-R1 style): the environment's observation text
  carries its own leading/trailing newlines (``"\\n\\n<information>...</information>\\n\\n"``),
  and the next action is sampled right after it.
- Prompts shared by several episodes (the G rollouts of a question) are prefilled once
  and their KV cache is shared (``reuse_cache=True``; :mod:`igpo_agent.rollout.prefix_cache`).
- ``spans``: one ``prompt`` span (turn -1), then per turn ``t`` an ``action`` span and,
  unless the episode ended at that turn, an ``observation`` span with turn ``t``. They are
  contiguous and cover every token.
- ``sample_logprobs``: the sampling log-prob of each action token (see
  :mod:`igpo_agent.rollout.sampling`), 0.0 for prompt and observation tokens.
- ``turn_texts[t]`` is the decoded action (special tokens skipped) given to ``env.step``;
  ``turn_kinds[t]`` is ``info["action"]``; ``env_rewards[t]`` the step reward;
  ``observations[t]`` the text of observation span ``t`` (one per observation span).
- ``beliefs``: given a ``belief_hook`` (:class:`~igpo_agent.rollout.belief_hook.BeliefHook`,
  built by the caller; live IG's is :class:`igpo_agent.ig.live.LiveBeliefHook`), v_t at
  every boundary b_t (the start of each turn), scored by the hook from the live KV cache
  right after that turn's prefill; one value per turn. Without a hook, none.
- ``answered``: the episode terminated on a valid answer; ``outcome_f1``: that step's
  reward; ``answer_text`` / ``answer_metrics``: the env's ``info["answer"]`` and
  ``info["metrics"]`` of that step; ``dataset``: ``info["dataset"]``; ``article``:
  ``info["article"]``; ``gold_retrieved``: some search turn's ``info["gold_retrieved"]``
  (a document the agent read held a gold alias); ``format_ok``: every turn was valid;
  ``truncated``: the env's turn limit hit, or the context guard fired.
- ``search_failures`` / ``search_error``: how many turns the env reported
  ``info["search_failed"]`` for, and the last ``info["search_error"]`` (a backend outage,
  which the trainer and evaluator account for apart from the agent's own failures).

Context guard: an episode never holds more than ``max_context`` tokens. A turn's budget is
``min(max_new_tokens, max_context - len(tokens))``; an observation is appended only if at
least one token of room is left after it. When the guard stops an episode (prompt too
long, turn cut by the limit, or observation that does not fit) it ends with
``context_truncated=True`` and ``truncated=True``; the unfitting observation is dropped so
the trajectory still ends with an action.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

from igpo_agent.rollout.belief_hook import BeliefHook
from igpo_agent.rollout.prefix_cache import shared_prefill
from igpo_agent.rollout.sampling import (
    EpisodeCache,
    GenerationSettings,
    RolloutStats,
    TurnRequest,
    eos_token_ids,
    generate_turn,
    model_max_context,
)
from igpo_agent.rollout.trajectory import Span, Trajectory

__all__ = [
    "Episode",
    "GenerationSettings",
    "RolloutStats",
    "check_group_layout",
    "end_context",
    "record_turn",
    "rollout_batch",
    "start_episode",
    "start_episodes",
]

log = logging.getLogger(__name__)

PromptFn = Callable[[str], list[int]]


@dataclass
class Episode:
    """The running state of one env's episode: the episode recorder every engine shares.

    An engine starts episodes with :func:`start_episode`, generates each turn its own way,
    and hands the sampled tokens to :func:`record_turn` (which steps the env and appends
    the observation); :func:`end_context` ends an episode at the context limit. The HF
    loop here and the vLLM engine record identical trajectories through these three.
    """

    env: gym.Env
    traj: Trajectory
    stop: tuple[str, ...]
    pending: list[int]  # tokens not yet through the model (cache reuse)
    cache: EpisodeCache | None = None
    done: bool = False
    gold: Any = None  # the belief hook's gold for this episode, scored at every turn start


def stop_strings(
    info: dict[str, Any], extra: Sequence[str], answer_eos: bool = False
) -> tuple[str, ...]:
    """The strings that end a turn: the env's ``info["protocol"]["stop"]`` plus ``extra``;
    with ``answer_eos`` the answer wrapper's closing string is not one (the turn ends at EOS)."""
    protocol = info.get("protocol") or {}
    stops = list(protocol.get("stop") or []) + list(extra)
    drop = protocol.get("answer_suffix") if answer_eos else None
    return tuple(dict.fromkeys(s for s in stops if s and s != drop))


def end_context(ep: Episode, why: str) -> None:
    """End ``ep`` because its context is full (``context_truncated`` and ``truncated``)."""
    ep.traj.context_truncated = True
    ep.traj.truncated = True
    ep.done = True
    ep.cache = None
    log.debug("episode %s stopped by the context guard: %s", ep.traj.qid, why)


def start_episode(
    env: gym.Env,
    options: dict[str, Any],
    seed: int | None,
    group: int,
    prompt_fn: PromptFn,
    settings: GenerationSettings,
    max_context: int,
    belief_hook: BeliefHook | None = None,
) -> Episode:
    """Reset ``env`` for one episode and record its prompt (``prompt_fn(obs)``) as span -1.

    ``belief_hook.gold(answers, reset info)`` sets what is scored at every turn start. An
    over-long prompt ends the episode at once (:func:`end_context`).
    """
    obs, info = env.reset(seed=seed, options=options)
    if "answers" not in info:
        raise KeyError(
            "the env's reset info has no 'answers': rollouts need the gold answers in "
            "info['answers'] (igpo_env's SearchQA envs provide them)"
        )
    prompt = [int(t) for t in prompt_fn(obs)]
    if not prompt:
        raise ValueError("prompt_fn returned no tokens: it must tokenise the env's prompt text")
    traj = Trajectory(
        question=str(info.get("question", options.get("question", ""))),
        answers=[str(a) for a in info["answers"]],
        token_ids=list(prompt),
        spans=[Span("prompt", 0, len(prompt), -1)],
        sample_logprobs=[0.0] * len(prompt),
        group=group,
        qid=str(info.get("qid", "")),
        dataset=str(info.get("dataset", "")),
        article=str(info.get("article") or ""),
    )
    stops = stop_strings(info, settings.stop, settings.answer_eos)
    ep = Episode(env, traj, stops, pending=list(prompt))
    if belief_hook is not None:
        ep.gold = belief_hook.gold(traj.answers, info)
    if len(prompt) >= max_context:
        end_context(ep, f"prompt of {len(prompt)} tokens >= max_context {max_context}")
    return ep


def check_group_layout(envs: Sequence[gym.Env], tasks: Sequence[Any], group_size: int) -> None:
    """Env ``i`` runs task ``i // group_size``: there must be exactly ``len(tasks) * G`` envs."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(envs) != len(tasks) * group_size:
        raise ValueError(
            f"need len(tasks) * group_size = {len(tasks)} * {group_size} envs, got {len(envs)}"
        )


def start_episodes(
    envs: Sequence[gym.Env],
    tasks: Sequence[dict[str, Any]],
    *,
    group_size: int,
    seed: int | None,
    prompt_fn: PromptFn,
    settings: GenerationSettings,
    max_context: int,
    stats: RolloutStats,
    belief_hook: BeliefHook | None = None,
) -> list[Episode]:
    """:func:`start_episode` for every env (env ``i``: task ``i // group_size``, seed
    ``seed + i``); the resets' time goes to ``stats.env_seconds``."""
    t0 = time.perf_counter()
    episodes = [
        start_episode(
            env,
            dict(tasks[i // group_size]),
            None if seed is None else seed + i,
            i // group_size,
            prompt_fn,
            settings,
            max_context,
            belief_hook,
        )
        for i, env in enumerate(envs)
    ]
    stats.env_seconds += time.perf_counter() - t0
    return episodes


def record_turn(
    ep: Episode,
    tokens: list[int],
    logprobs: list[float],
    cut_by_context: bool,
    tokenizer: Any,
    max_context: int,
    reuse: bool,
    stats: RolloutStats,
) -> None:
    """Append one action, step the env, append its observation or end the episode."""
    traj = ep.traj
    turn = traj.num_turns
    start = len(traj.token_ids)
    traj.token_ids.extend(tokens)
    traj.sample_logprobs.extend(logprobs)
    traj.spans.append(Span("action", start, len(traj.token_ids), turn))
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    traj.turn_texts.append(text)

    t0 = time.perf_counter()
    obs, reward, terminated, truncated, info = ep.env.step(text)
    stats.env_seconds += time.perf_counter() - t0
    action = str(info.get("action", "invalid"))
    valid = bool(info.get("valid", action != "invalid"))
    traj.turn_kinds.append(action)
    traj.env_rewards.append(float(reward))
    traj.gold_retrieved = traj.gold_retrieved or bool(info.get("gold_retrieved", False))
    traj.format_ok = traj.format_ok and valid
    if info.get("search_failed"):
        traj.search_failures += 1
        traj.search_error = str(info.get("search_error") or "search failed")
    if terminated or truncated:
        traj.answered = bool(terminated and action == "answer" and valid)
        traj.outcome_f1 = float(reward) if traj.answered else 0.0
        if traj.answered:
            traj.answer_text = str(info.get("answer") or "")
            traj.answer_metrics = {k: float(v) for k, v in (info.get("metrics") or {}).items()}
        traj.truncated = bool(truncated and not traj.answered)
        ep.done, ep.cache = True, None
        return
    if cut_by_context:
        end_context(ep, "the turn was cut at max_context")
        return
    obs_ids = tokenizer.encode(obs, add_special_tokens=False)
    if len(traj.token_ids) + len(obs_ids) + 1 > max_context:
        end_context(ep, f"an observation of {len(obs_ids)} tokens does not fit")
        return
    start = len(traj.token_ids)
    traj.token_ids.extend(obs_ids)
    traj.sample_logprobs.extend([0.0] * len(obs_ids))
    traj.spans.append(Span("observation", start, len(traj.token_ids), turn))
    traj.observations.append(obs)
    ep.pending = (tokens[-1:] + obs_ids) if reuse else list(traj.token_ids)


def _share_prompts(model: torch.nn.Module, episodes: list[Episode], stats: RolloutStats) -> None:
    """Prefill each prompt that several episodes share once (:mod:`igpo_agent.rollout.prefix_cache`).

    The G episodes of a question start from the same prompt tokens; they get one shared
    KV cache of ``prompt[:-1]`` and feed only the prompt's last token in their first turn.
    """
    groups: dict[tuple[int, ...], list[Episode]] = {}
    for ep in episodes:
        if not ep.done and ep.cache is None and len(ep.pending) >= 2:
            groups.setdefault(tuple(ep.pending), []).append(ep)
    shared = [key for key, eps in groups.items() if len(eps) > 1]
    if not shared:
        return
    t0 = time.perf_counter()
    caches = shared_prefill(model, shared, stats)
    stats.gen_seconds += time.perf_counter() - t0
    for key, cache in zip(shared, caches or [], strict=False):
        for ep in groups[key]:
            ep.cache, ep.pending = cache, [key[-1]]


def rollout_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_fn: PromptFn,
    envs: Sequence[gym.Env],
    tasks: Sequence[dict[str, Any]],
    *,
    group_size: int,
    settings: GenerationSettings | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    stats: RolloutStats | None = None,
    belief_hook: BeliefHook | None = None,
) -> list[Trajectory]:
    """Run ``group_size`` episodes of every task, all batched; one Trajectory per env.

    Args:
        model: a causal LM (transformers, possibly peft-wrapped), in eval mode.
        tokenizer: its tokenizer (``encode``, ``decode``, ``batch_decode``, ``len``).
        prompt_fn: the env's prompt text -> prompt token ids (chat template or plain).
        envs: ``len(tasks) * group_size`` envs, reused between calls; env ``i`` runs task
            ``i // group_size`` (so the G rollouts of a question are adjacent).
        tasks: the ``options`` passed to ``env.reset`` for each question, e.g.
            ``{"index": 3}`` or ``{"question": q, "answers": [...]}``.
        group_size: G, rollouts per question.
        settings: sampling settings (default :class:`GenerationSettings()`).
        generator: the ``torch.Generator`` used for sampling (reproducible runs).
        seed: if given, env ``i`` is reset with ``seed + i``.
        stats: a :class:`RolloutStats` to accumulate counters and timings into.
        belief_hook: records ``Trajectory.beliefs`` (v_t at every turn start, from the live
            KV cache; IGPO's ``ig_method="live"``, :class:`igpo_agent.ig.live.LiveBeliefHook`).

    Returns:
        Trajectories in env order; ``Trajectory.group`` is the task index.
    """
    settings = settings or GenerationSettings()
    stats = stats if stats is not None else RolloutStats()
    check_group_layout(envs, tasks, group_size)
    max_context = settings.max_context or model_max_context(model)
    eos = eos_token_ids(model, tokenizer)
    episodes = start_episodes(
        envs,
        tasks,
        group_size=group_size,
        seed=seed,
        prompt_fn=prompt_fn,
        settings=settings,
        max_context=max_context,
        stats=stats,
        belief_hook=belief_hook,
    )
    was_training = model.training
    model.eval()

    turn_stats = RolloutStats()  # this call's work, added to ``stats`` at the end
    try:
        if settings.reuse_cache:
            _share_prompts(model, episodes, turn_stats)
        while active := [ep for ep in episodes if not ep.done]:
            budgets = [
                min(settings.max_new_tokens, max_context - len(ep.traj.token_ids)) for ep in active
            ]
            requests = [
                TurnRequest(
                    new_tokens=ep.pending,
                    max_new_tokens=budget,
                    stop=ep.stop,
                    cache=ep.cache if settings.reuse_cache else None,
                    gold=ep.gold,
                )
                for ep, budget in zip(active, budgets, strict=True)
            ]
            outputs = generate_turn(
                model,
                tokenizer,
                requests,
                temperature=settings.temperature,
                top_p=settings.top_p,
                generator=generator,
                eos_ids=eos,
                keep_cache=settings.reuse_cache,
                stats=turn_stats,
                after_prefill=belief_hook.after_prefill if belief_hook is not None else None,
            )
            for ep, out, budget in zip(active, outputs, budgets, strict=True):
                ep.cache = out.cache
                if out.belief is not None:
                    ep.traj.beliefs.append(out.belief)
                cut = out.finish == "length" and budget < settings.max_new_tokens
                record_turn(
                    ep,
                    out.tokens,
                    out.logprobs,
                    cut,
                    tokenizer,
                    max_context,
                    settings.reuse_cache,
                    stats,
                )
                stats.turns += 1
    finally:
        if was_training:
            model.train()

    trajectories = [ep.traj for ep in episodes]
    stats.calls += 1
    stats.episodes += len(trajectories)
    stats.tokens_generated += turn_stats.tokens_generated
    stats.prefill_tokens += turn_stats.prefill_tokens
    stats.forward_calls += turn_stats.forward_calls
    stats.decode_rows += turn_stats.decode_rows
    stats.gen_seconds += turn_stats.gen_seconds
    stats.ig_seconds += turn_stats.ig_seconds
    stats.ig_tokens += turn_stats.ig_tokens
    stats.context_truncated += sum(t.context_truncated for t in trajectories)
    stats.last_batch_sizes = list(turn_stats.batch_sizes)
    log.debug(
        "rollout: %d episodes, %d tokens, %.1f tok/s",
        len(trajectories),
        turn_stats.tokens_generated,
        stats.tokens_per_second,
    )
    return trajectories
