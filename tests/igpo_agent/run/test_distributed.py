"""Data-parallel training: 2 CPU ranks (gloo) under torchrun against one process.

- both ranks hold bit-identical adapter weights after every step;
- the 2-rank run (1 question per rank) equals a single-process run of the same global
  batch (2 questions x 2 rollouts) within float tolerance. Rollouts use a near-greedy
  temperature (1e-4): sampling draws one uniform per batch row from a per-process
  generator, so at temperature 1 a rank's rows cannot see the draws one process would
  give them; with a (numerically) one-hot softmax every draw picks the argmax, and the
  rest of the step (env seeds by global rollout index, beliefs, advantages, the summed
  gradient over the global normaliser) is checked exactly;
- rank 0 alone writes metrics (means over all 4 rollouts), rollouts and checkpoints;
- the pure helpers (splitting, seeds, metric merging) behave.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from igpo_agent.config import TrainConfig
from igpo_agent.run import distributed as D
from igpo_agent.train import train
from tests.fixtures import write_corpus, write_qa

ROOT = Path(__file__).resolve().parents[3]
DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("d3", "Nile", "The Nile is a major river in northeastern Africa, about 6,650 km long."),
    ("d4", "Jupiter", "Jupiter is the largest planet in the Solar System."),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "What is the capital of Germany?", ["Berlin"]),
    ("q3", "Which river is about 6,650 km long?", ["the Nile", "Nile"]),
    ("q4", "What is the largest planet in the Solar System?", ["Jupiter"]),
]
# the run both sides share: 2 questions x 2 rollouts per step, near-greedy rollouts
ARGS = {
    "questions_per_step": 2,
    "group_size": 2,
    "micro_batch_size": 2,
    "temperature": 1e-4,
    "steps": 2,
    "eval_questions": 0,
    "lr": 1e-2,
    "max_new_tokens": 12,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("dist_data")
    corpus = write_corpus(d / "corpus.jsonl", DOCS)
    qa = write_qa(d / "qa.jsonl", QA, dataset="fixture")
    return {"corpus": corpus, "train_qa": qa, "eval_qa": qa}


def _torchrun(
    model: Path, run: Path, data: dict[str, str], dump: Path, tmp: Path, *extra: str
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m igpo_agent.train`` (gloo on CPU), ranks dumping
    their trainable weights after every step into ``dump``."""
    args = ["-m", "igpo_agent.train", "--config", "configs/tiny_test.yaml"]
    args += ["--model", str(model), "--run_dir", str(run)]
    for k, v in {**ARGS, **data}.items():
        args += [f"--{k}", str(v)]
    args += extra  # last: overrides ARGS
    env = {"IGPO_CACHE": str(tmp / "cache"), D.DUMP_ENV: str(dump)}
    return _launch_two_ranks(args, env, timeout=240)


def _launch_two_ranks(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` from the repo root, one torch thread
    per rank, ``env`` added; it must exit 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _single_config(model: Path, run: Path, data: dict[str, str]) -> TrainConfig:
    from igpo_agent.config import read_yaml

    base = read_yaml(ROOT / "configs" / "tiny_test.yaml")
    base.update(model=str(model), run_dir=str(run), **ARGS, **data)
    return TrainConfig(**base)


@pytest.mark.slow
def test_two_ranks_match_each_other_and_one_process(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    dist_run, dist_dump = tmp_path / "dist", tmp_path / "dump_dist"
    res = _torchrun(tiny_smol_model_path, dist_run, data, dist_dump, tmp_path)
    assert res.stdout.count("saved the trained policy") == 1  # rank 0 alone saves

    monkeypatch.setenv(D.DUMP_ENV, str(tmp_path / "dump_single"))
    monkeypatch.setenv("IGPO_CACHE", str(tmp_path / "cache"))
    single_run = tmp_path / "single"
    train(_single_config(tiny_smol_model_path, single_run, data))

    before = None
    for step in (1, 2):
        r0 = load_file(str(dist_dump / f"rank0-step{step}.safetensors"))
        r1 = load_file(str(dist_dump / f"rank1-step{step}.safetensors"))
        one = load_file(str(tmp_path / "dump_single" / f"rank0-step{step}.safetensors"))
        assert r0.keys() == r1.keys() == one.keys() and r0
        for k in r0:
            torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=f"step {step} {k}")
            torch.testing.assert_close(r0[k], one[k], rtol=0, atol=1e-5, msg=f"step {step} {k}")
        if before is not None:  # the step really moved the adapter
            assert any(not torch.equal(before[k], r0[k]) for k in r0)
        before = r0

    final_d = load_file(str(dist_run / "final" / "adapter_model.safetensors"))
    final_s = load_file(str(single_run / "final" / "adapter_model.safetensors"))
    for k in final_s:
        torch.testing.assert_close(final_d[k], final_s[k], rtol=0, atol=1e-5, msg=k)

    rows = [json.loads(x) for x in (dist_run / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(x) for x in (single_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in single] == [0, 1, 2]
    # rank 0 alone runs the fixed probe (tiny_test: every step) while rank 1 waits
    assert all("probe/reward_mean" in r for r in rows)
    for a, b in zip(rows, single, strict=True):
        assert a["probe/reward_mean"] == pytest.approx(b["probe/reward_mean"], abs=1e-6)
    rows, single = rows[1:], single[1:]  # step 0 holds the probe only
    assert [r["charts/rollouts_seen"] for r in rows] == [4, 8]  # the global batch
    assert all(isinstance(r["charts/rollouts_seen"], int) for r in rows)
    for key in ("charts/turns_per_episode", "charts/reward_mean", "losses/policy"):
        for a, b in zip(rows, single, strict=True):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    dumped = (dist_run / "rollouts" / "step-2.jsonl").read_text().splitlines()
    assert len(dumped) == 4  # both ranks' rollouts, gathered on rank 0
    assert (dist_run / "checkpoints" / "latest").read_text().strip() == "step-2"


@pytest.mark.slow
def test_two_rank_resume_is_exact(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path
) -> None:
    """Sampling at temperature 1: rank 1 must get back its own generator, not rank 0's."""
    model, t1 = tiny_smol_model_path, ("--temperature", "1.0")
    straight, split = tmp_path / "straight", tmp_path / "split"
    _torchrun(model, straight, data, tmp_path / "d1", tmp_path, *t1)
    _torchrun(model, split, data, tmp_path / "d2", tmp_path, *t1, "--steps", "1")
    res = _torchrun(model, split, data, tmp_path / "d3", tmp_path, *t1, "--resume", "true")
    assert "resumed from" in res.stdout and "step-1" in res.stdout
    for rank in (0, 1):  # every rank continued exactly as the uninterrupted run
        a = load_file(str(tmp_path / "d1" / f"rank{rank}-step2.safetensors"))
        b = load_file(str(tmp_path / "d3" / f"rank{rank}-step2.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"rank {rank} {k}")
    a = (straight / "rollouts" / "step-2.jsonl").read_text()
    assert a == (split / "rollouts" / "step-2.jsonl").read_text()  # the same samples
    rows = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # step 0: the probe, kept across the resume


def test_questions_must_split_evenly() -> None:
    world = D.DistInfo(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert D.rank_slice([7, 8, 9, 10], world) == [9, 10]
    with pytest.raises(ValueError, match="multiple of 2"):
        D.check_divisible(3, world)
    D.check_divisible(3, D.DistInfo())


def test_not_launched_is_one_rank(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        D.init_distributed("cpu")
    # one rank: every collective is the identity
    assert D.all_reduce_sum(3.5, info) == 3.5
    assert D.all_gather_objects({"a": 1}, info) == [{"a": 1}]
    assert D.rank_device("auto", info) == "auto"


def test_rank_seeds() -> None:
    assert D.rank_seed(5, 0) == 5  # one-process runs keep their seed
    seeds = {D.rank_seed(5, r) for r in range(1, 8)}
    assert len(seeds) == 7 and 5 not in seeds
    assert D.rank_seed(5, 3) == D.rank_seed(5, 3)
    torch.Generator().manual_seed(D.rank_seed(5, 3))  # a valid torch seed


def test_merge_metrics() -> None:
    ranks = [{"a": 1.0, "loss": 2.0, "t": 3.0, "tps": 10.0}, {"a": 3.0, "loss": 5.0, "t": 1.0}]
    ranks[1]["tps"] = 30.0
    ranks[1]["only1"] = 7.0
    out = D.merge_metrics(ranks, {"loss": [1.0, 3.0]}, sum_keys=("tps",), max_keys=("t",))
    assert out == {"a": 2.0, "loss": pytest.approx(4.25), "t": 3.0, "tps": 40.0, "only1": 7.0}


def test_split_rank_rng() -> None:
    saved = {"sample": torch.zeros(2), "rank1/sample": torch.ones(2), "rank2/torch": torch.ones(1)}
    common, mine = D.split_rank_rng(saved, D.DistInfo(rank=1, world_size=3))
    assert set(common) == {"sample"} and set(mine) == {"sample"}
    assert torch.equal(mine["sample"], torch.ones(2))
    assert D.split_rank_rng(saved, D.DistInfo())[1] == {}
    with pytest.warns(UserWarning, match="no RNG streams for rank 3"):
        D.split_rank_rng(saved, D.DistInfo(rank=3, world_size=4))


_TEARDOWN_SCRIPT = """
import os
import sys
from igpo_agent.run import distributed as D

info = D.init_distributed("cpu")
import torch.distributed.nn  # what transformers does lazily while loading a tokenizer
D.all_gather_objects(info.rank, info)
D.barrier(info)
D.destroy_distributed(info)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(f"{sys.argv[1]}/rank{info.rank}.txt", "w") as f:
    f.write(" ".join(names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_destroy_frees_the_process_group(tmp_path: Path) -> None:
    """Once training ends no gloo thread is left to outlive the interpreter: such a thread,
    still releasing a finished collective's tensors, aborted rank 1 at exit in CI (here 3 of
    84 two-rank launches beside a CPU hog). A module imported after init that binds the group as a default argument (as
    torch.distributed.nn does) must not keep the process group alive past destroy."""
    script = tmp_path / "teardown.py"
    script.write_text(_TEARDOWN_SCRIPT)
    # a script's folder, not the cwd, leads sys.path: PYTHONPATH makes this checkout's code win
    _launch_two_ranks([str(script), str(tmp_path)], {"PYTHONPATH": str(ROOT)}, timeout=120)
    for rank in (0, 1):
        threads = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert threads and not any("gloo" in t for t in threads), f"rank {rank}: {threads}"
