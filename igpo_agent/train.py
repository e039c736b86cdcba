# Over 400 lines: the training loop read top to bottom in one file (the README points here).
"""``python -m igpo_agent.train``: IGPO (or GRPO) training of a search agent, top to bottom.

One step = sample ``questions_per_step`` questions -> roll out ``group_size`` episodes of
each (batched) -> score the gold answer's belief v_t at every turn boundary (IGPO only)
-> turn rewards and group-normalised advantages -> one clipped policy-gradient update of
the LoRA adapter. Metrics go to ``RUN_DIR/metrics.jsonl`` (and TensorBoard), rollouts to
``RUN_DIR/rollouts/``, checkpoints to ``RUN_DIR/checkpoints/`` and the final adapter to
``RUN_DIR/final/``. See ``--help`` for every option and ``configs/*.yaml`` for presets.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

import igpo_agent  # noqa: F401  (threading policy before torch loads)
from igpo_agent.algo.advantages import all_equal_group_share, nonzero_token_share
from igpo_agent.algo.rewards import mean_ig_per_turn
from igpo_agent.algo.stats import mean_ci, wilson_ci
from igpo_agent.config import (
    TrainConfig,
    load_config,
    resolve_ig_method,
    resolve_old_logprobs,
    resolve_tis,
)
from igpo_agent.evaluate import (
    eval_metrics,
    eval_subset,
    greedy_eval,
    results_table,
)
from igpo_agent.ig.live import LiveBeliefHook
from igpo_agent.ig.scorer import make_belief_scorer
from igpo_agent.learn.batch import training_rows
from igpo_agent.learn.learner import (
    LossSettings,
    belief_matrix,
    compute_advantages,
    policy_update,
    turn_token_counts,
)
from igpo_agent.model.policy import LoraSettings, Policy, configure_torch_threads, resolve_autocast
from igpo_agent.rollout.engines import Engine, make_engine
from igpo_agent.rollout.sampling import GenerationSettings, RolloutStats
from igpo_agent.run import distributed as D
from igpo_agent.run import logging_utils as K
from igpo_agent.run import search_health as SH
from igpo_agent.run.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    trainable_state_dict,
)
from igpo_agent.run.envs import env_kwargs_from, make_envs, question_count
from igpo_agent.run.export import batch_records
from igpo_agent.run.probe import probe_metrics, probe_records, run_probe, write_probe_records
from igpo_agent.run.reachable import reachable_indices
from igpo_agent.run.summary import (
    answer_flips,
    episode_record,
    flips_line,
    read_eval_records,
    retrieval_line,
    retrieval_metrics,
    run_summary,
    write_eval_records,
)


class QuestionSampler:
    """Epochs over a seeded permutation of question indices; its state is the data position."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the training QA set is empty")
        self.n, self.seed, self.epoch, self.cursor = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist()

    def next(self, k: int) -> list[int]:
        """The next ``k`` question indices (wrapping into a new shuffled epoch)."""
        out = []
        while len(out) < k:
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(self._perm[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(
                f"checkpoint sampled from {state['n']} questions, this QA set has {self.n}"
            )
        self.seed, self.epoch, self.cursor = (
            int(state["seed"]),
            int(state["epoch"]),
            int(state["cursor"]),
        )
        self._perm = self._permutation()


def lr_lambda(cfg: TrainConfig) -> Any:
    """Multiplier of the peak lr at optimiser step s: linear warmup, then the schedule."""

    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / (cfg.warmup_steps + 1)
        rest = max(cfg.steps - cfg.warmup_steps, 1)
        frac = min((s - cfg.warmup_steps) / rest, 1.0)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + float(np.cos(np.pi * frac)))
        if cfg.lr_schedule == "linear":
            return 1.0 - frac
        return 1.0

    return f


def ig_weight_at(cfg: TrainConfig, step: int) -> float:
    """The IG weight at ``step`` (1-based): ``ig_weight``, or linear to ``ig_weight_end``."""
    if cfg.ig_weight_end is None or cfg.steps <= 1:
        return cfg.ig_weight
    frac = min(max((step - 1) / (cfg.steps - 1), 0.0), 1.0)
    return cfg.ig_weight + frac * (cfg.ig_weight_end - cfg.ig_weight)


def run_eval(
    policy: Policy,
    cfg: TrainConfig,
    envs: list,
    label: str,
    step: int,
    engine: Engine | None = None,
) -> dict[str, float]:
    """Greedy episodes on the fixed eval subset (stratified by article, ``eval_seed``);
    prints the table with 95% intervals, the retrieval split and, after the first
    evaluation, how the answers moved since it.

    Returns the eval metrics and keeps one record per question (qid, f1, em, format_ok,
    gold_retrieved, ...) in ``RUN_DIR/eval/step-STEP.jsonl``, so that before and after can
    be compared question by question (:func:`igpo_agent.algo.stats.paired_diff_ci`).
    """
    trajs, res, subset = greedy_eval(
        policy,
        envs,
        cfg.eval_questions,
        protocol=cfg.protocol,
        seed=cfg.eval_seed,
        source=cfg.eval_qa,
        engine=engine,
        progress=label,
        max_new_tokens=cfg.max_new_tokens,
        max_context=cfg.max_context,
        answer_eos=cfg.answer_eos,
    )
    failed = SH.check_eval(trajs, cfg.max_search_failure_rate, label, cfg.retriever)
    records = [episode_record(t) for t in trajs]
    write_eval_records(cfg.run_dir, f"step-{step}", records)
    f1 = mean_ci([r["f1"] for r in records])
    fmt = wilson_ci(sum(not r["format_ok"] for r in records), len(records))
    lines = [
        f"\n[{label}] {subset.description}",
        results_table([res]),
        f"F1 {f1.fmt()}, format errors {fmt.fmt()} (%, 95% intervals: bootstrap / Wilson)",
        retrieval_line(records),
    ]
    metrics = {
        **eval_metrics(res),
        **retrieval_metrics(records),
        K.EVAL_N: float(res.n),
        K.EVAL_F1_CI_LOW: f1.low,
        K.EVAL_F1_CI_HIGH: f1.high,
        K.EVAL_FORMAT_CI_LOW: fmt.low,
        K.EVAL_FORMAT_CI_HIGH: fmt.high,
    }
    first = read_eval_records(cfg.run_dir, "step-0") if step > 0 else records
    if first:  # step 0 against itself: nothing changed yet (drawn as the flips' first point)
        flips = answer_flips(first, records)
        if step > 0:
            lines.append(f"since step 0: {flips_line(flips)}")
        metrics.update(
            {
                K.EVAL_CHANGED: flips["changed"],
                K.EVAL_BETTER: flips["better"],
                K.EVAL_WORSE: flips["worse"],
            }
        )
    print("\n".join(lines) + "\n")
    SH.report(label, failed, cfg.max_search_failure_rate)  # next to the scores, if any failed
    metrics.update(failed.eval_metrics())
    return metrics


class FixedProbe:
    """The fixed probe of a run (:mod:`igpo_agent.run.probe`): its question sample, drawn
    once from the training QA set, and how to run and log it."""

    def __init__(self, cfg: TrainConfig, envs: list, settings: GenerationSettings) -> None:
        self.cfg = cfg
        self.envs = envs
        self.subset = eval_subset(envs[0], cfg.probe_questions, cfg.probe_seed, cfg.train_qa)
        self.settings = settings  # the training rollouts' (same temperature, top-p, bounds)

    def due(self, step: int) -> bool:
        """Whether the probe runs after training step ``step`` (before training it always
        does, when it is on)."""
        every = self.cfg.probe_every
        return every > 0 and (step % every == 0 or step == self.cfg.steps)

    def run(self, engine: Engine, step: int) -> dict[str, float]:
        """Sample the probe, write its rollouts and return its ``probe/...`` metrics."""
        trajs = run_probe(
            engine,
            self.envs,
            self.subset.indices,
            group_size=self.cfg.group_size,
            settings=self.settings,
            protocol=self.cfg.protocol,
            seed=self.cfg.probe_seed,
        )
        records = probe_records(
            trajs, self.subset.indices, self.cfg.group_size, self.cfg.format_penalty
        )
        write_probe_records(self.cfg.run_dir, step, records)
        return probe_metrics(records, self.cfg.group_size)


def train(cfg: TrainConfig) -> dict[str, float]:
    """Train per ``cfg``; returns the last logged metrics (eval included).

    Under ``torchrun``/``accelerate launch`` each rank rolls out its share of the step's
    questions and the gradients are summed over ranks; rank 0 logs, evaluates and saves
    (:mod:`igpo_agent.run.distributed`, docs/DISTRIBUTED.md).
    """
    world = D.init_distributed(cfg.device)
    try:
        return _train(cfg, world)
    finally:
        D.destroy_distributed(world)


def _train(cfg: TrainConfig, world: D.DistInfo) -> dict[str, float]:
    D.check_divisible(cfg.questions_per_step, world)
    if world.enabled and cfg.dynamic_sampling != "off":
        raise ValueError(
            "dynamic_sampling keeps a different number of groups on each rank, which the "
            "data-parallel update does not support yet: run it in one process"
        )
    local_questions = cfg.sampled_questions_per_step // world.world_size
    configure_torch_threads(cfg.threads)
    seed_everything(cfg.seed)
    lora = None
    if not cfg.full_finetune and cfg.init_adapter is None:
        lora = LoraSettings(
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=tuple(cfg.lora_target_modules),
        )
    policy = Policy.load(
        cfg.model,
        lora=lora,
        device=D.rank_device(cfg.device, world),  # cuda:LOCAL_RANK under several GPU ranks
        dtype=cfg.dtype,
        init_adapter=cfg.init_adapter,
        seed=cfg.seed,
        reference_copy=cfg.full_finetune and cfg.kl_coef > 0,
        merge_init_adapter=cfg.init_adapter is not None and cfg.kl_reference == "init",
    )
    D.broadcast_params(policy.trainable_parameters(), world)  # identical start on every rank
    envs = make_envs(
        cfg.env_id,
        local_questions * cfg.group_size,
        cfg.max_turns,
        **env_kwargs_from(cfg, cfg.train_qa),
    )
    eval_envs = []
    if cfg.eval_questions != 0 and world.is_main:
        eval_envs = make_envs(
            cfg.env_id,
            max(1, min(cfg.eval_questions, cfg.eval_batch_size)),
            cfg.max_turns,
            **env_kwargs_from(cfg, cfg.eval_qa),
        )
    SH.preflight(envs[0], cfg.retriever)  # one real query: a dead backend stops the run here
    pool = list(range(question_count(envs[0])))  # the questions training samples from
    if cfg.train_reachable:
        pool = reachable_indices(cfg.env_id, env_kwargs_from(cfg, cfg.train_qa))
        if world.is_main:
            print(
                f"training on the {len(pool)} of {question_count(envs[0])} questions whose "
                "gold a search with the question retrieves (--train_reachable)"
            )
    sampler = QuestionSampler(len(pool), cfg.seed)
    gen = torch.Generator().manual_seed(D.rank_seed(cfg.seed, world.rank))
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    mini = cfg.ppo_mini_batch_size
    if mini is not None:
        D.check_divisible(mini, world)  # each rank takes its share of every mini-batch
    cast = resolve_autocast(cfg.autocast, policy.device, policy.dtype)
    fp32 = policy.dtype == torch.float32
    old_source = resolve_old_logprobs(cfg, weights_fp32=fp32, autocast=cast is not None)
    loss_settings = LossSettings(
        clip_eps=cfg.clip_eps,
        clip_eps_low=cfg.clip_ratio_low,
        clip_eps_high=cfg.clip_ratio_high,
        dual_clip=cfg.dual_clip,
        kl_coef=cfg.kl_coef,
        entropy_coef=cfg.entropy_coef,
        loss_agg=cfg.loss_agg,
        ppo_epochs=cfg.ppo_epochs,
        ppo_mini_batch_size=None if mini is None else mini // world.world_size,
        micro_batch_size=cfg.micro_batch_size,
        max_grad_norm=cfg.max_grad_norm,
        temperature=cfg.temperature,
        autocast=cast,
        old_logprobs=old_source,
        tis=resolve_tis(cfg, old_source),
        tis_cap=cfg.tis_cap,
    )
    if world.is_main and loss_settings.autocast is not None:
        print(f"update forwards under {loss_settings.autocast} autocast (--autocast float32: off)")
    if world.is_main and (old_source == "sampler" or loss_settings.tis):
        print(f"pi_old: {old_source}; truncated importance sampling: {loss_settings.tis}")
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_context=cfg.max_context,
        answer_eos=cfg.answer_eos,
    )

    start, rollouts_seen = 0, 0
    resume_from = None
    if cfg.resume:
        resume_from = latest_checkpoint(cfg.run_dir) if cfg.resume is True else cfg.resume
        if resume_from is None:
            print(f"--resume: no checkpoint in {cfg.run_dir}; starting fresh")
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, config=cfg.to_dict())
        sampler.load_state_dict(ckpt.data_state["sampler"])
        rollouts_seen = int(ckpt.data_state["rollouts_seen"])
        start = ckpt.step
        ckpt.rng["generators"], own_rng = D.split_rank_rng(ckpt.rng["generators"], world)
        ckpt.restore(
            model=policy.model, optimizer=optimizer, scheduler=scheduler, generators={"sample": gen}
        )
        D.restore_rank_rng(own_rng, gen)
        if world.is_main:
            print(f"resumed from {ckpt.path} at step {start}")
    engine = make_engine(
        cfg.engine, policy, seed=cfg.seed, dtype=cfg.vllm_dtype, threads=cfg.vllm_threads
    )
    if world.is_main:
        cfg.save_yaml(f"{cfg.run_dir}/config.yaml")
    logger = K.MetricsLogger(
        cfg.run_dir,
        tensorboard=cfg.tensorboard,
        total_steps=cfg.steps,
        enabled=world.is_main,
        resume_step=start if resume_from is not None else None,
    )
    dumper = K.RolloutDumper(cfg.run_dir, enabled=cfg.dump_rollouts_every > 0 and world.is_main)
    exporter = K.RolloutDumper(
        cfg.run_dir, enabled=cfg.export_batches_every > 0 and world.is_main, subdir="batches"
    )
    prefix, suffix = answer_wrapper(envs[0])
    ig_method = resolve_ig_method(cfg)
    live_ig = cfg.algo == "igpo" and ig_method == "live"
    scorer = make_belief_scorer(ig_method, policy, engine) if cfg.algo == "igpo" else None
    last: dict[str, float] = {}
    guard = SH.TrainerGuard(cfg, policy, optimizer, scheduler, gen, sampler, world)
    probe = FixedProbe(cfg, envs, settings) if cfg.probe_every and world.is_main else None
    if start == 0 and (cfg.eval_questions != 0 or cfg.probe_every):  # the same on every rank
        if eval_envs:
            with guard.evaluation(0, 0, logger):
                last = run_eval(policy, cfg, eval_envs, "before training", 0, engine)
        if probe is not None:
            print(f"[probe] {probe.subset.description}, G={cfg.group_size}")
            last.update(probe.run(engine, 0))
        if last:
            logger.log(0, {**last, K.ROLLOUTS_SEEN: 0})
        D.barrier(world)  # the other ranks wait for rank 0's evaluation and probe

    for step in range(start + 1, cfg.steps + 1):
        t_step = time.perf_counter()
        snap = guard.snapshot(rollouts_seen)  # what a resume of this step needs
        questions = [pool[i] for i in sampler.next(cfg.sampled_questions_per_step)]  # all ranks
        tasks = [{"index": i} for i in D.rank_slice(questions, world)]
        stats = RolloutStats()
        trajs = engine.rollout(
            envs,
            tasks,
            protocol=cfg.protocol,
            group_size=cfg.group_size,
            settings=settings,
            generator=gen,
            # env seeds by global rollout index: rank r's envs get the seeds one process would
            seed=cfg.seed * 1_000_003 + step * cfg.rollouts_per_step + world.rank * len(envs),
            stats=stats,
            belief_hook=LiveBeliefHook(policy.tokenizer) if live_ig else None,
        )
        rollouts_seen += len(trajs) * world.world_size
        failures = SH.step_failures(trajs, world)  # summed over ranks: one decision
        if failures.over(cfg.max_search_failure_rate):
            guard.stop_training(step, snap, failures, logger)  # checkpoint step - 1, raise

        t0 = time.perf_counter()
        if scorer is not None:  # live: scored in the rollout, its forwards are in ig_seconds
            values = belief_matrix(policy, trajs, prefix, suffix, scorer=scorer)
        else:  # GRPO: IG switched off (same code path, outcome only)
            values = torch.zeros(len(trajs), max(max(t.num_turns, 1) for t in trajs))
        ig_s = time.perf_counter() - t0 + stats.ig_seconds
        ig_weight = ig_weight_at(cfg, step)
        adv, outcome = compute_advantages(
            trajs,
            values,
            group_size=cfg.group_size,
            algo="grpo" if cfg.algo == "rft" else cfg.algo,  # rft: outcome groups, for the logs
            ig_mode=cfg.ig_mode,
            norm=cfg.norm,
            gamma=cfg.gamma,
            format_penalty=cfg.format_penalty,
            ig_turns=cfg.ig_turns,
            ig_weight=ig_weight,
            ig_exclude_zero=cfg.ig_exclude_zero,
            exclude=SH.excluded(trajs),  # a rollout with a failed search: out of its group
        )
        chosen = training_rows(  # rft targets, dynamic sampling's groups
            trajs,
            adv.returns,
            outcome,
            group_size=cfg.group_size,
            algo=cfg.algo,
            dynamic=cfg.dynamic_sampling,
            want=None if cfg.dynamic_sampling == "off" else cfg.questions_per_step,
            rft_min_f1=cfg.rft_min_f1,
            exclude=SH.excluded(trajs),  # ... and out of the loss
        )
        dp: dict[str, Any] = {"exclude": chosen.exclude}
        if world.enabled:  # global normalisers + summed gradients = the full-batch steps
            dp["global_count"] = lambda count: D.all_reduce_sum(count, world)
            dp["reduce_grads"] = lambda params: D.all_reduce_grads(params, world)
        batch = [trajs[i] for i in chosen.rows]
        loss_m, timing = {}, {"old_logprobs_s": 0.0, "update_s": 0.0}
        if batch:  # dynamic sampling may find no group with a signal
            loss_m, timing = policy_update(
                policy, optimizer, batch, chosen.returns, loss_settings, **dp
            )
        D.maybe_dump_trainable(policy.model, step, world)
        lr_now = scheduler.get_last_lr()[0]
        scheduler.step()
        timing["update_s"] += engine.sync_weights(policy)  # the new weights reach the engine

        n = len(trajs)
        metrics: dict[str, float] = {
            K.OUTCOME_F1: sum(t.answer_metrics.get("f1", 0.0) for t in trajs) / n,
            K.REWARD_MEAN: float(outcome.mean()),
            K.FORMAT_ERROR_RATE: sum(not (t.format_ok and t.answered) for t in trajs) / n,
            K.ANSWERED_RATE: sum(t.answered for t in trajs) / n,
            K.TURNS_PER_EPISODE: sum(t.num_turns for t in trajs) / n,
            K.SEARCHES_PER_EPISODE: sum(k == "search" for t in trajs for k in t.turn_kinds) / n,
            K.ROLLOUTS_SEEN: rollouts_seen,
            K.LEARNING_RATE: lr_now,
            K.TOKENS_PER_S: stats.tokens_per_second,
            K.GENERATION_S: stats.gen_seconds,
            K.RETRIEVAL_S: stats.env_seconds,
            K.INFO_GAIN_S: ig_s,
            K.OLD_LOGPROBS_S: timing["old_logprobs_s"],
            K.UPDATE_S: timing["update_s"],
            # the mechanism IGPO claims to fix: groups with no outcome signal, tokens with none
            K.ALL_EQUAL_GROUPS: all_equal_group_share(outcome, cfg.group_size),
            K.NONZERO_ADV_TOKENS: nonzero_token_share(
                adv.returns, turn_token_counts(trajs, adv.returns.shape[1])
            ),
        }
        if cfg.algo == "igpo":
            metrics[K.IG_WEIGHT] = ig_weight
        if cfg.dynamic_sampling != "off":
            metrics[K.SIGNAL_GROUPS] = chosen.signal_groups
            metrics[K.KEPT_GROUPS] = chosen.kept_groups
        if cfg.algo == "rft":
            metrics[K.RFT_KEPT] = chosen.rft_kept
        if cfg.algo == "igpo":
            for k, v in enumerate(mean_ig_per_turn(adv.ig, adv.turn_mask.sum(1)).tolist()):
                if v == v:  # not NaN
                    metrics[K.ig_turn_key(k)] = v
        for src, dst in (
            ("pg_loss", K.POLICY_LOSS),
            ("kl_loss", K.KL),
            ("entropy", K.ENTROPY),
            ("clipfrac", K.CLIPFRAC),
            ("approx_kl", K.APPROX_KL),
            ("loss", K.TOTAL_LOSS),
            ("grad_norm", K.GRAD_NORM),
            ("ratio_mean", K.RATIO_MEAN),
            ("ratio_min", K.RATIO_MIN),
            ("ratio_max", K.RATIO_MAX),
            ("clipfrac_lower", K.DUAL_CLIPFRAC),
            ("skipped_steps", K.SKIPPED_STEPS),
            ("skipped_rows", K.SKIPPED_ROWS),
            ("tis_weight_mean", K.TIS_WEIGHT_MEAN),
            ("tis_weight_max", K.TIS_WEIGHT_MAX),
            ("sampler_logp_diff", K.SAMPLER_LOGP_DIFF),
            ("optimizer_steps", K.OPTIMIZER_STEPS),
        ):
            if src in loss_m:
                metrics[dst] = loss_m[src]
        if world.enabled:
            metrics = _merge_rank_metrics(metrics, loss_m, world)
        metrics.update(failures.train_metrics())  # already global
        if cfg.dump_rollouts_every and step % cfg.dump_rollouts_every == 0:
            records = D.all_gather_objects(_rollout_records(trajs, adv, values), world)
            dumper.dump(step, [r for rank_records in records for r in rank_records])
        if cfg.export_batches_every and step % cfg.export_batches_every == 0:
            rows = batch_records(
                trajs,
                adv,
                values,
                outcome,
                step=step,
                algo=cfg.algo,
                temperature=cfg.temperature,
                rank=world.rank,
            )
            exporter.dump(step, [r for rs in D.all_gather_objects(rows, world) for r in rs])
        if cfg.eval_questions != 0 and cfg.eval_every and step % cfg.eval_every == 0:
            if step < cfg.steps:
                if eval_envs:
                    with guard.evaluation(step, rollouts_seen, logger, metrics):
                        metrics.update(
                            run_eval(policy, cfg, eval_envs, f"step {step}", step, engine)
                        )
                D.barrier(world)
        if probe is not None and probe.due(step):
            metrics.update(probe.run(engine, step))
        if world.enabled and cfg.probe_every:
            D.barrier(world)
        metrics[K.STEP_S] = time.perf_counter() - t_step
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(step, metrics)
        last = metrics
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            rank_rng = D.gather_rank_rng(gen, world)  # collective: every rank's streams
            if world.is_main:
                save_checkpoint(
                    cfg.run_dir,
                    step,
                    model_state=trainable_state_dict(policy.model),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    rng=capture_rng_state({"sample": gen, **rank_rng}),
                    data_state={"sampler": sampler.state_dict(), "rollouts_seen": rollouts_seen},
                    config=cfg.to_dict(),
                    keep=cfg.keep_checkpoints,
                )
            D.barrier(world)

    if cfg.eval_questions != 0 and cfg.steps > start:
        if eval_envs:
            with guard.evaluation(cfg.steps, rollouts_seen, logger, final=True):
                final_eval = run_eval(policy, cfg, eval_envs, "after training", cfg.steps, engine)
            logger.log(cfg.steps, {**final_eval, K.ROLLOUTS_SEEN: rollouts_seen})
            last = {**last, **final_eval}
        D.barrier(world)
    if world.is_main:
        summary = run_summary(cfg.run_dir, cfg.steps)
        if summary:
            print(summary)
        out = policy.save(f"{cfg.run_dir}/final")
        print(f"saved the trained policy to {out}; metrics in {cfg.run_dir}/metrics.jsonl")
    logger.close()
    for env in envs + eval_envs:
        env.close()
    return last


def _merge_rank_metrics(
    metrics: dict[str, float], loss_m: dict[str, float], world: D.DistInfo
) -> dict[str, float]:
    """One step record from every rank's: rollout means averaged (equal rollouts per rank),
    loss means weighted by each rank's action tokens, throughput summed, times maxed."""
    loss_keys = [K.POLICY_LOSS, K.KL, K.ENTROPY, K.CLIPFRAC, K.APPROX_KL, K.TOTAL_LOSS]
    loss_keys += [K.RATIO_MEAN, K.DUAL_CLIPFRAC, K.TIS_WEIGHT_MEAN, K.SAMPLER_LOGP_DIFF]
    per_rank = D.all_gather_objects((metrics, loss_m.get("num_tokens", 0.0)), world)
    tokens = [t for _, t in per_rank]
    merged = D.merge_metrics(
        [m for m, _ in per_rank],
        {k: tokens for k in loss_keys},
        sum_keys=(K.TOKENS_PER_S,),
        max_keys=(*K.TIME_SPLIT_KEYS, K.STEP_S, K.RATIO_MAX, K.SKIPPED_STEPS, K.TIS_WEIGHT_MAX),
        min_keys=(K.RATIO_MIN,),
    )
    merged[K.ROLLOUTS_SEEN] = metrics[K.ROLLOUTS_SEEN]  # already global, an int
    return merged


def answer_wrapper(env: Any) -> tuple[str, str]:
    """The answer prefix/suffix the agent emits, from a reset's ``info["protocol"]``; the
    information-gain scorer wraps the gold answer in exactly this text."""
    _, info = env.reset(options={"index": 0})
    proto = info.get("protocol") or {}
    if "answer_prefix" not in proto:
        raise RuntimeError(
            "the env did not report info['protocol']['answer_prefix'/'answer_suffix']; "
            "the information-gain reward needs the answer wrapper"
        )
    return proto["answer_prefix"], proto.get("answer_suffix", "")


def _rollout_records(trajs: list, adv: Any, values: torch.Tensor) -> list[dict[str, Any]]:
    from igpo_agent.run.logging_utils import rollout_record

    out = []
    for i, t in enumerate(trajs):
        n = t.num_turns
        out.append(
            rollout_record(
                t,
                adv.raw[i, :n].tolist(),
                adv.returns[i, :n].tolist(),
                beliefs=values[i, :n].tolist(),
                ig=adv.ig[i, :n].tolist(),
            )
        )
    return out


@SH.exit_on_outage  # a search backend outage: a clear message and exit status 3
def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``--config FILE.yaml`` then ``--field value`` overrides."""
    cfg = load_config(argv)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
