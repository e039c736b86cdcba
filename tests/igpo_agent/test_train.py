"""End-to-end trainer tests on a tiny random model and a small fixture corpus.

- the CLI runs as a subprocess and leaves metrics, rollouts, checkpoints and an adapter;
- resume is exact: 2 steps + resume for 1 == 3 steps straight;
(that updates change every LoRA parameter and no base one is in test_learner.py).
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
from igpo_agent.run.export import exported_steps, read_batch
from igpo_agent.train import QuestionSampler, lr_lambda, train
from tests.fixtures import tiny_train_kwargs, write_corpus, write_qa

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ("d1", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("d2", "Berlin", "Berlin is the capital of Germany and its largest city."),
    ("d3", "Nile", "The Nile is a major river in northeastern Africa, about 6,650 km long."),
    (
        "d4",
        "Everest",
        "Mount Everest is Earth's highest mountain above sea level, in the Himalayas.",
    ),
    (
        "d5",
        "Jupiter",
        "Jupiter is the fifth planet from the Sun and the largest in the Solar System.",
    ),
]
QA = [
    ("q1", "What is the capital of France?", ["Paris"]),
    ("q2", "What is the capital of Germany?", ["Berlin"]),
    ("q3", "Which river is about 6,650 km long?", ["the Nile", "Nile"]),
    ("q4", "What is the largest planet in the Solar System?", ["Jupiter"]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("train_data")
    corpus = write_corpus(d / "corpus.jsonl", DOCS)
    qa = write_qa(d / "qa.jsonl", QA, dataset="fixture")
    return {"corpus": corpus, "train_qa": qa, "eval_qa": qa}


def _config(model: Path, run_dir: Path, data: dict[str, str], **over) -> TrainConfig:
    kw = tiny_train_kwargs(model, data["corpus"], data["train_qa"], run_dir=str(run_dir))
    kw.update(eval_qa=data["eval_qa"], max_new_tokens=12, steps=3, save_every=1)
    return TrainConfig(**{**kw, **over})


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def test_cli_smoke(tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "igpo_agent.train", "--config", "configs/tiny_test.yaml"]
    cmd += ["--model", str(tiny_smol_model_path), "--run_dir", str(run), "--steps", "2"]
    cmd += ["--corpus", data["corpus"], "--train_qa", data["train_qa"]]
    cmd += ["--eval_qa", data["eval_qa"], "--export_batches_every", "2"]
    env = {**os.environ, "IGPO_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "before training" in res.stdout and "after training" in res.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "losses/policy" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for key in ("charts/outcome_f1", "losses/kl", "time/info_gain_s", "charts/rollouts_seen"):
        assert key in train_rows[-1]
    assert any("eval/f1" in r for r in rows)
    assert (run / "rollouts" / "step-2.jsonl").is_file()
    assert list(exported_steps(run)) == [2]  # every 2nd step, read back and checked
    batch = read_batch(exported_steps(run)[2])
    assert len(batch) == 2 and {r["algo"] for r in batch} == {"igpo"}
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-2"
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_bad_config_names_the_fix(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "igpo_agent.train", "--group_size", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "group_size" in res.stderr


def test_resume_is_exact(tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(_config(tiny_smol_model_path, straight, data, steps=3))
    split = tmp_path / "split"
    train(_config(tiny_smol_model_path, split, data, steps=2))
    train(_config(tiny_smol_model_path, split, data, steps=3, resume=True))
    a, b = _adapter(straight), _adapter(split)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "losses/policy" in r] == [1, 2, 3]


def test_sampler_epochs_and_state() -> None:
    s = QuestionSampler(5, seed=1)
    first = s.next(5)
    assert sorted(first) == list(range(5))
    state = s.state_dict()
    nxt = s.next(7)
    s2 = QuestionSampler(5, seed=1)
    s2.load_state_dict(state)
    assert s2.next(7) == nxt
    assert sorted(nxt[:5]) == list(range(5))


def test_lr_schedules() -> None:
    cfg = TrainConfig(steps=10, warmup_steps=2, lr_schedule="linear")
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(1 / 3) and f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.0)
    cos = lr_lambda(TrainConfig(steps=4, lr_schedule="cosine"))
    assert cos(0) == pytest.approx(1.0) and cos(2) == pytest.approx(0.5)


def test_live_ig_trains_like_packed(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path
) -> None:
    """ig_method=live (scored inside the rollout) and packed (after it) give the same
    beliefs and the same updates; live reports its scoring time as the IG time."""
    runs = {}
    for method in ("live", "packed"):
        run = tmp_path / method
        train(_config(tiny_smol_model_path, run, data, steps=2, ig_method=method))
        runs[method] = run
    for step in (1, 2):
        rows = {
            m: [
                json.loads(x)
                for x in (r / "rollouts" / f"step-{step}.jsonl").read_text().splitlines()
            ]
            for m, r in runs.items()
        }
        for a, b in zip(rows["live"], rows["packed"], strict=True):
            assert a["beliefs"] == pytest.approx(b["beliefs"], abs=1e-4)
            assert len(a["beliefs"]) >= 1
    a, b = _adapter(runs["live"]), _adapter(runs["packed"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=k)
    metrics = [json.loads(x) for x in (runs["live"] / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time/info_gain_s"] > 0 for r in metrics if "losses/policy" in r)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dynamic_sampling_trains_on_groups_with_a_signal(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path
) -> None:
    cfg = _config(
        tiny_smol_model_path,
        tmp_path / "run",
        data,
        steps=2,
        save_every=0,
        dynamic_sampling="advantage",
        oversample=2,
        ig_turns="all",  # the random model never searches: IG on every turn but the last
    )
    train(cfg)
    rows = [r for r in _rows(tmp_path / "run") if "charts/kept_groups" in r]
    assert len(rows) == 2
    for r in rows:
        assert 0 <= r["charts/kept_groups"] <= min(r["charts/signal_groups"], 2)
    assert rows[-1]["charts/rollouts_seen"] == 2 * (2 * 2) * 2  # every sampled rollout counts


def test_rft_never_imitates_a_rollout_below_the_bar(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path
) -> None:
    """The random model never answers right: RFT keeps nothing and the adapter stays put."""
    init = _config(tiny_smol_model_path, tmp_path / "zero", data, steps=0, eval_questions=0)
    train(init)
    cfg = _config(tiny_smol_model_path, tmp_path / "rft", data, algo="rft", steps=2, save_every=0)
    train(cfg)
    rows = [r for r in _rows(tmp_path / "rft") if "charts/rft_kept_rollouts" in r]
    assert [r["charts/rft_kept_rollouts"] for r in rows] == [0.0, 0.0]
    a = load_file(str(tmp_path / "zero" / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "rft" / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_reachable_samples_only_reachable_questions(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("IGPO_CACHE_DIR", str(tmp_path / "cache"))
    qa = [*QA, ("q5", "Who painted the Mona Lisa?", ["Leonardo da Vinci"])]  # in no document
    train_qa = write_qa(tmp_path / "qa.jsonl", qa, dataset="fixture")
    cfg = _config(
        tiny_smol_model_path,
        tmp_path / "run",
        {**data, "train_qa": train_qa},
        train_reachable=True,
        steps=2,
        top_k=1,
    )
    from igpo_agent.run.envs import env_kwargs_from
    from igpo_agent.run.reachable import reachable_indices

    reach = reachable_indices(cfg.env_id, env_kwargs_from(cfg, cfg.train_qa), progress=False)
    assert 0 < len(reach) < len(qa)
    train(cfg)
    qids = {qa[i][0] for i in reach}
    seen = set()
    for f in (tmp_path / "run" / "rollouts").glob("step-*.jsonl"):
        seen |= {json.loads(x)["qid"] for x in f.read_text().splitlines()}
    assert seen and seen <= qids


def test_sampler_pi_old_trains_like_recompute_and_auto_picks_it_in_fp32(
    tiny_smol_model_path: Path, data: dict[str, str], tmp_path: Path, capsys
) -> None:
    """Two optimiser steps a batch in fp32 with no autocast: pi_old from the sampler's
    records (no pi_old forward) trains the adapter recompute trains, to float rounding;
    old_logprobs=auto takes the records there (docs/ALGORITHM.md "Policy loss")."""
    runs = {}
    for mode in ("recompute", "sampler", "auto"):
        run = tmp_path / mode
        cfg = _config(
            tiny_smol_model_path,
            run,
            data,
            steps=2,
            save_every=0,
            ppo_mini_batch_size=2,  # of 4 rollouts: two steps, pi_old matters on the second
            autocast="float32",
            old_logprobs=mode,
            ig_turns="all",
        )
        train(cfg)
        runs[mode] = run
        if mode == "auto":
            assert (
                "pi_old: sampler; truncated importance sampling: False" in capsys.readouterr().out
            )
    rec, samp, auto = (_adapter(runs[m]) for m in ("recompute", "sampler", "auto"))
    for k in rec:
        torch.testing.assert_close(samp[k], rec[k], rtol=0, atol=1e-5, msg=k)
        assert torch.equal(auto[k], samp[k]), k  # the same path, bit for bit
    rows = {m: [r for r in _rows(runs[m]) if "losses/policy" in r] for m in runs}
    for r in rows["recompute"]:  # recomputed vs recorded pi_old, logged every step
        assert r["losses/sampler_logp_diff"] < 1e-5
        assert abs(r["losses/tis_weight_mean"] - 1) < 1e-5
    assert all("losses/sampler_logp_diff" not in r for r in rows["sampler"])
