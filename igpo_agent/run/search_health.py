"""The search backend's health, as the trainer and the evaluator see it.

The env turns a failing backend into an observation (``search failed: ...``) and marks the
turn (``info["search_failed"]``), which is right for a Gymnasium user but would let a
learner train on an outage and an evaluator score one. This module is what the front
doors do about it (docs/ALGORITHM.md "Search backend failures"):

- :func:`preflight`: one real query before the first step or evaluation; a backend that
  does not answer stops the command with :class:`BackendUnavailable`, naming the retriever
  and what to do, before anything is trained or scored.
- :class:`SearchFailures`: failed searches of a batch of trajectories (count, rate, the
  rollouts they touched, the last message), pure; :func:`step_failures` sums it over
  data-parallel ranks. A rollout with a failed search is left out of the update
  (:func:`excluded`, ``compute_advantages(exclude=...)``, ``policy_update(exclude=...)``):
  out of its group's normalisation, its tokens masked out of the loss.
- Past ``max_search_failure_rate`` (failed / attempted searches of one step) the trainer
  stops: :meth:`TrainerGuard.stop_training` puts the RNG and data position back to
  before the step, checkpoints the last good step and raises :class:`TrainingOutage`,
  whose message says how to ``--resume``.
- :func:`check_eval`: an evaluation's failures are reported next to its scores; past
  the same threshold :class:`EvalRefused` is raised instead of a score.
  :meth:`TrainerGuard.evaluation` saves what training has when an in-run evaluation is
  refused.
- :func:`exit_on_outage` makes a front door's ``main`` print these errors without a
  traceback and return :data:`EXIT_CODE`.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

from igpo_agent.run import logging_utils as K

EXIT_CODE = 3
"""Exit status of a command stopped by the search backend (argparse errors exit 2)."""


class SearchOutage(RuntimeError):
    """The search backend failed badly enough that the command stopped (base class).

    ``metrics``: what was measured when it stopped (logged before raising)."""

    def __init__(self, message: str, metrics: Mapping[str, float] | None = None) -> None:
        super().__init__(message)
        self.metrics = dict(metrics or {})


class BackendUnavailable(SearchOutage):
    """The preflight query failed: nothing was trained or scored."""


class TrainingOutage(SearchOutage):
    """Too many searches of a training step failed; the last good step is checkpointed."""


class EvalRefused(SearchOutage):
    """Too many searches of an evaluation failed; no score was written."""


# --- accounting (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class SearchFailures:
    """Failed searches of a batch of trajectories.

    ``searches``: search turns attempted (turns the env parsed as a search);
    ``failures``: those whose backend failed; ``rollouts``: trajectories with at least one
    failure (left out of the update); ``last_error``: one failure's message ("" if none).
    """

    searches: int = 0
    failures: int = 0
    rollouts: int = 0
    last_error: str = ""

    @classmethod
    def of(cls, trajs: Sequence[Any]) -> SearchFailures:
        """Count the failures of ``trajs`` (``Trajectory.search_failures`` / ``search_error``)."""
        failed = [t for t in trajs if getattr(t, "search_failures", 0)]
        return cls(
            searches=sum(k == "search" for t in trajs for k in t.turn_kinds),
            failures=sum(t.search_failures for t in failed),
            rollouts=len(failed),
            last_error=failed[-1].search_error if failed else "",
        )

    @property
    def rate(self) -> float:
        """Failed / attempted searches (0.0 when there was no search)."""
        return self.failures / self.searches if self.searches else 0.0

    def over(self, max_rate: float) -> bool:
        """Past the threshold: more than ``max_rate`` of the searches failed."""
        return self.failures > 0 and self.rate > max_rate

    def describe(self) -> str:
        """``"3 of 8 searches failed (37.5%)"``."""
        return f"{self.failures} of {self.searches} searches failed ({100 * self.rate:.1f}%)"

    def train_metrics(self) -> dict[str, float]:
        """The step's ``charts/search_*`` metrics."""
        return {
            K.SEARCH_FAILURES: float(self.failures),
            K.SEARCH_FAILURE_RATE: self.rate,
            K.SEARCH_FAILED_ROLLOUTS: float(self.rollouts),
        }

    def eval_metrics(self) -> dict[str, float]:
        """An evaluation's ``eval/search_*`` metrics."""
        return {K.EVAL_SEARCH_FAILURES: float(self.failures), K.EVAL_SEARCH_FAILURE_RATE: self.rate}

    def result_fields(self) -> dict[str, Any]:
        """The fields ``evaluate --out`` adds to each dataset's entry in results.json."""
        return {
            "searches_attempted": self.searches,
            "search_failures": self.failures,
            "search_failure_rate": self.rate,
        }


def excluded(trajs: Sequence[Any]) -> list[bool]:
    """Which trajectories the update leaves out: those with a failed search."""
    return [bool(getattr(t, "search_failures", 0)) for t in trajs]


def step_failures(trajs: Sequence[Any], world: Any) -> SearchFailures:
    """:meth:`SearchFailures.of` summed over data-parallel ranks (collective), so that every
    rank sees the same rate and takes the same decision."""
    from igpo_agent.run import distributed as D

    local = SearchFailures.of(trajs)
    if not world.enabled:
        return local
    searches, failures, rollouts = (
        int(D.all_reduce_sum(v, world)) for v in (local.searches, local.failures, local.rollouts)
    )
    errors = [e for e in D.all_gather_objects(local.last_error, world) if e]
    return SearchFailures(searches, failures, rollouts, errors[-1] if errors else "")


# --- messages ---------------------------------------------------------------------------------


def what_to_do(retriever: str) -> str:
    """How to bring a backend back: start the server / check the URL, or the settings."""
    if retriever.startswith(("http://", "https://")):
        port = urlparse(retriever).port
        serve = "python -m igpo_env.serve --retriever bm25 --corpus default"
        serve += f" --port {port}" if port else ""
        return (
            f"start the retrieval server (e.g. `{serve}`; `/health` answers when it is up) "
            "or check the URL given to --retriever"
        )
    return (
        f"check the {retriever!r} backend's settings (--retriever, --corpus) and, for a "
        "remote one, that its server is up"
    )


def _limit(max_rate: float) -> str:
    return f"over --max_search_failure_rate {max_rate:g}"


# --- preflight --------------------------------------------------------------------------------


def preflight(env: Any, retriever: str, *, before: str = "training") -> None:
    """Send one real query (the first question of the env's QA set) to the env's backend.

    Raises :class:`BackendUnavailable` naming ``retriever`` (the ``--retriever`` value) and
    what to do when the backend fails or answers with the wrong number of result lists.
    Envs without ``unwrapped.retriever`` (not a SearchQA env) and replay-only caches (no
    backend to reach) are not checked. ``before`` names what did not start.
    """
    from igpo_env.retrievers.base import SearchError

    base = getattr(env, "unwrapped", env)
    backend = getattr(base, "retriever", None)
    if backend is None or getattr(backend, "replay_only", False):
        return
    examples = getattr(base, "examples", None) or ()
    query = examples[0].question if examples else "health check"
    try:
        results = backend.search([query], int(getattr(base, "top_k", 1)))
        if len(results) != 1:
            raise SearchError(f"{len(results)} result lists for 1 query")
    except SearchError as exc:
        raise BackendUnavailable(
            f"the search backend {retriever!r} did not answer a test query, so {before} did "
            f"not start (nothing was trained or scored):\n  {exc}\nTo fix: "
            f"{what_to_do(retriever)}, then run the same command again."
        ) from None


# --- evaluation -------------------------------------------------------------------------------


def check_eval(trajs: Sequence[Any], max_rate: float, label: str, retriever: str) -> SearchFailures:
    """An evaluation's failures (for :func:`report` next to its scores), or
    :class:`EvalRefused` past the threshold (its ``metrics`` hold the counts).
    ``retriever`` is the ``--retriever`` value, named in the refusal."""
    f = SearchFailures.of(trajs)
    if f.over(max_rate):
        raise EvalRefused(
            f"evaluation [{label}] refused: {f.describe()}, {_limit(max_rate)}; its scores "
            f"would measure the search backend {retriever!r}, not the agent, so none was "
            f"written.\n  last error: {f.last_error}\nTo fix: {what_to_do(retriever)}.",
            f.eval_metrics(),
        )
    return f


def report(label: str, f: SearchFailures, max_rate: float) -> None:
    """Print :func:`failure_note` when any search of the evaluation failed."""
    if f.failures:
        print(failure_note(label, f, max_rate))


def failure_notes(failures: Mapping[str, SearchFailures], max_rate: float) -> str:
    """:func:`failure_note` of every entry with a failure, one per line ("" when none)."""
    return "".join(failure_note(k, f, max_rate) + "\n" for k, f in failures.items() if f.failures)


def failure_note(label: str, f: SearchFailures, max_rate: float) -> str:
    """The line shown next to scores that include failed searches."""
    return (
        f"WARNING [{label}]: {f.describe()}; the scores include the episodes they touched "
        f"(limit --max_search_failure_rate {max_rate:g}). Last error: {f.last_error}"
    )


# --- the trainer's stops ----------------------------------------------------------------------


@dataclass
class TrainerGuard:
    """The trainer's objects an outage stop needs to save a resumable checkpoint.

    Built once before the loop; :meth:`snapshot` at the start of every step, before its
    rollouts; :meth:`stop_training` when a step's failure rate is over the limit;
    :meth:`evaluation` around an in-run evaluation.
    """

    cfg: Any
    policy: Any
    optimizer: Any
    scheduler: Any
    gen: Any
    sampler: Any
    world: Any

    def snapshot(self, rollouts_seen: int) -> dict[str, Any]:
        """The RNG streams and data position before a step (what resuming it needs)."""
        from igpo_agent.run.checkpoint import capture_rng_state

        return {
            "rng": capture_rng_state({"sample": self.gen}),
            "sampler": self.sampler.state_dict(),
            "rollouts_seen": rollouts_seen,
        }

    def save(self, step: int, rollouts_seen: int, *, collective: bool = True) -> Path | None:
        """The trainer's checkpoint of ``step`` (as its loop writes it); returns the folder
        on the main rank. ``collective=False`` when only rank 0 is here (an in-run
        evaluation): the other ranks' RNG streams are then not saved (resume warns)."""
        from igpo_agent.run import distributed as D
        from igpo_agent.run.checkpoint import (
            capture_rng_state,
            save_checkpoint,
            trainable_state_dict,
        )

        rank_rng = D.gather_rank_rng(self.gen, self.world) if collective else {}
        path = None
        if self.world.is_main:
            path = save_checkpoint(
                self.cfg.run_dir,
                step,
                model_state=trainable_state_dict(self.policy.model),
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                rng=capture_rng_state({"sample": self.gen, **rank_rng}),
                data_state={"sampler": self.sampler.state_dict(), "rollouts_seen": rollouts_seen},
                config=self.cfg.to_dict(),
                keep=self.cfg.keep_checkpoints,
            )
        if collective:
            D.barrier(self.world)
        return path

    def resume_hint(self) -> str:
        """The command that continues this run."""
        return f"python -m igpo_agent.train --config {self.cfg.run_dir}/config.yaml --resume true"

    def evaluate_hint(self, adapter: Any) -> str:
        """The command that scores the saved policy on this run's evaluation questions."""
        c = self.cfg
        cmd = f"python -m igpo_agent.evaluate --model {c.model} --adapter {adapter}"
        cmd += f" --qa {c.eval_qa} --questions {c.eval_questions} --retriever {c.retriever}"
        return cmd + ("" if c.corpus == "default" else f" --corpus {c.corpus}")

    def stop_training(
        self, step: int, snap: Mapping[str, Any], failures: SearchFailures, logger: Any
    ) -> NoReturn:
        """Stop at ``step`` before its update: restore the pre-step RNG and data position
        (``snap``), checkpoint step - 1, log the step's failures and raise TrainingOutage."""
        from igpo_agent.run.checkpoint import restore_rng_state

        restore_rng_state(snap["rng"], {"sample": self.gen})
        self.sampler.load_state_dict(snap["sampler"])
        path = self.save(step - 1, int(snap["rollouts_seen"]))
        logger.log(step, failures.train_metrics())
        logger.close()
        where = path or f"{self.cfg.run_dir}/checkpoints/step-{step - 1}"
        raise TrainingOutage(
            f"search backend outage at step {step}: {failures.describe()}, "
            f"{_limit(self.cfg.max_search_failure_rate)} (retriever {self.cfg.retriever!r}).\n"
            f"  last error: {failures.last_error}\n"
            f"No update was made from step {step}'s rollouts. The state after step {step - 1} "
            f"(the last good step) is checkpointed in {where}.\n"
            f"To fix: {what_to_do(self.cfg.retriever)}; then continue with\n"
            f"  {self.resume_hint()}",
            failures.train_metrics(),
        )

    @contextlib.contextmanager
    def evaluation(
        self,
        step: int,
        rollouts_seen: int,
        logger: Any,
        metrics: Mapping[str, float] | None = None,
        *,
        final: bool = False,
    ) -> Iterator[None]:
        """Around an in-run evaluation at ``step``: when it is refused, log ``metrics``
        (the step's training metrics, not yet logged) with the eval's failure counts, save
        what training has (step's checkpoint; ``final``: the trained policy to
        ``RUN_DIR/final``; step 0: nothing) and re-raise with how to go on."""
        try:
            yield
        except EvalRefused as exc:
            logger.log(step, {**(metrics or {}), **exc.metrics})
            logger.close()
            run = self.cfg.run_dir
            if final:
                out = self.policy.save(f"{run}/final") if self.world.is_main else f"{run}/final"
                after = (
                    f"Training finished: the trained policy is saved to {out}. Evaluate it "
                    f"when the backend is back:\n  {self.evaluate_hint(out)}"
                )
            elif step == 0:
                after = "Nothing was trained; run the same command again when the backend is back."
            else:
                path = self.save(step, rollouts_seen, collective=False)
                after = (
                    f"The state after step {step} is checkpointed in "
                    f"{path or f'{run}/checkpoints/step-{step}'}; when the backend is back, "
                    f"continue with\n  {self.resume_hint()}"
                )
            raise EvalRefused(f"{exc}\n{after}", exc.metrics) from None


# --- front doors ------------------------------------------------------------------------------


def exit_on_outage(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a front door's ``main``: a :class:`SearchOutage` is printed to stderr (no
    traceback) and the command returns :data:`EXIT_CODE`."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except SearchOutage as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CODE

    return wrapped
