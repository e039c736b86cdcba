"""Checkpoints: exact round trip of every state, exact resume, atomicity, pruning."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from igpo_agent.run.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_trainable_state,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    trainable_state_dict,
)

torch.set_num_threads(1)


def _draw(gen: torch.Generator) -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.normal(size=2).tolist(),
        torch.rand(3).tolist(),
        torch.rand(2, generator=gen).tolist(),
        torch.multinomial(torch.ones(10), 4, generator=gen).tolist(),
    )


class Tiny(torch.nn.Module):
    """A frozen base plus a trainable head, with dropout so torch's RNG matters."""

    def __init__(self) -> None:
        super().__init__()
        self.base = torch.nn.Linear(4, 8)
        self.base.requires_grad_(False)
        self.head = torch.nn.Linear(8, 1)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.base(x))))


class Sampler:
    """A data-order sampler with its own generator, like the trainer's question sampler."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen, self.pos = n, torch.Generator().manual_seed(seed), 0
        self.perm = torch.randperm(n, generator=self.gen).tolist()

    def next_batch(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.gen).tolist(), 0
            out.append(self.perm[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"perm": list(self.perm), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = list(state["perm"]), state["pos"]


def _make(seed: int = 0):
    torch.manual_seed(0)
    model = Tiny()  # the frozen "pretrained" base is the same in every process
    torch.manual_seed(seed)
    model.head.reset_parameters()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    sampler = Sampler(7, seed)
    return model, opt, sched, sampler


def _train_step(model, opt, sched, sampler, data_x, data_y) -> None:
    idx = sampler.next_batch(3)
    noise = torch.randn(3, 4) * 0.01 + np.random.rand() * 0.01 + random.random() * 0.01
    loss = ((model(data_x[idx] + noise) - data_y[idx]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def _save(run_dir, step, model, opt, sched, sampler, keep=3, config=None):
    return save_checkpoint(
        run_dir,
        step,
        model_state=trainable_state_dict(model),
        optimizer=opt,
        scheduler=sched,
        rng=capture_rng_state({"sampler": sampler.gen}),
        data_state=sampler.state_dict(),
        config=config or {"lr": 0.01, "steps": 3},
        keep=keep,
    )


def test_rng_capture_restore_repeats_numbers():
    gen = torch.Generator().manual_seed(123)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draw(gen)  # move away from the seeds (also leaves a cached gaussian in python/numpy)
    state = capture_rng_state({"g": gen})
    first = _draw(gen)
    _draw(gen)
    restore_rng_state(state, {"g": gen})
    assert _draw(gen) == first


def test_seed_everything_repeats():
    gen = torch.Generator().manual_seed(0)
    seed_everything(11)
    first = _draw(gen)[:5]
    seed_everything(11)
    assert _draw(gen)[:5] == first
    seed_everything(12)
    assert _draw(gen)[:5] != first


def test_round_trip_of_every_state(tmp_path):
    data_x, data_y = torch.randn(7, 4), torch.randn(7, 1)
    model, opt, sched, sampler = _make()
    for _ in range(2):
        _train_step(model, opt, sched, sampler, data_x, data_y)
    config = {"lr": 0.01, "algo": "igpo", "dual_clip": None, "resume": False}
    rng = capture_rng_state({"sampler": sampler.gen})
    path = save_checkpoint(
        tmp_path,
        2,
        model_state=trainable_state_dict(model),
        optimizer=opt,
        scheduler=sched,
        rng=rng,
        data_state=sampler.state_dict(),
        config=config,
    )
    assert path == tmp_path / "checkpoints" / "step-2"
    expected_draw = _draw(sampler.gen)

    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 2 and ckpt.path == path and ckpt.config == config
    assert set(ckpt.model_state) == {"head.weight", "head.bias"}  # frozen base not saved
    for name, tensor in trainable_state_dict(model).items():
        assert torch.equal(ckpt.model_state[name], tensor)
    saved_opt = ckpt.optimizer_state
    for key, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(saved_opt["state"][key][k]), torch.as_tensor(v))
    assert saved_opt["param_groups"] == opt.state_dict()["param_groups"]
    assert ckpt.scheduler_state == sched.state_dict()
    assert ckpt.data_state == sampler.state_dict()
    restore_rng_state(ckpt.rng, {"sampler": sampler.gen})
    assert _draw(sampler.gen) == expected_draw


def test_resume_is_exact(tmp_path):
    """Train 3 steps straight == train 2, checkpoint, rebuild everything, load, train 1."""
    data_x, data_y = torch.randn(7, 4), torch.randn(7, 1)
    model, opt, sched, sampler = _make()
    random.seed(5), np.random.seed(5)
    for _ in range(3):
        _train_step(model, opt, sched, sampler, data_x, data_y)
    straight = {k: v.clone() for k, v in trainable_state_dict(model).items()}

    model, opt, sched, sampler = _make()
    random.seed(5), np.random.seed(5)
    for _ in range(2):
        _train_step(model, opt, sched, sampler, data_x, data_y)
    _save(tmp_path, 2, model, opt, sched, sampler)
    for _ in range(4):  # the crashed process keeps going and perturbs every RNG
        _train_step(model, opt, sched, sampler, data_x, data_y)

    model, opt, sched, sampler = _make(seed=99)  # fresh process, different head init
    ckpt = load_checkpoint(tmp_path)
    sampler.load_state_dict(ckpt.data_state)
    ckpt.restore(model=model, optimizer=opt, scheduler=sched, generators={"sampler": sampler.gen})
    _train_step(model, opt, sched, sampler, data_x, data_y)
    for name, tensor in trainable_state_dict(model).items():
        assert torch.equal(tensor, straight[name]), name
    assert sched.last_epoch == 3


def test_interrupted_write_is_ignored(tmp_path):
    model, opt, sched, sampler = _make()
    _save(tmp_path, 4, model, opt, sched, sampler)
    # a crash mid-write of step 5: partial folder, no meta.json, pointer not yet moved
    partial = tmp_path / "checkpoints" / "step-5.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path).name == "step-4"
    assert load_checkpoint(tmp_path).step == 4
    with pytest.raises(FileNotFoundError, match="interrupted write"):
        load_checkpoint(partial)
    # a pointer to a folder that is gone (deleted by hand): fall back to scanning
    (tmp_path / "checkpoints" / "latest").write_text("step-9\n")
    assert latest_checkpoint(tmp_path).name == "step-4"
    # the next save of the same step clears the stale partial write
    _save(tmp_path, 5, model, opt, sched, sampler)
    assert not partial.exists() and latest_checkpoint(tmp_path).name == "step-5"


def test_keep_last_k(tmp_path):
    model, opt, sched, sampler = _make()
    stale = tmp_path / "checkpoints" / "step-1.tmp"
    stale.mkdir(parents=True)
    for step in (2, 4, 6, 8, 10):
        _save(tmp_path, step, model, opt, sched, sampler, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-8", "step-10"]
    assert not stale.exists()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-10"
    assert load_checkpoint(tmp_path / "checkpoints").step == 10  # checkpoints/ dir also works


def test_resave_same_step_replaces(tmp_path):
    model, opt, sched, sampler = _make()
    _save(tmp_path, 3, model, opt, sched, sampler)
    with torch.no_grad():
        model.head.bias.fill_(7.0)
    _save(tmp_path, 3, model, opt, sched, sampler)
    assert load_checkpoint(tmp_path).model_state["head.bias"].item() == 7.0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if "step" in p.name] == ["step-3"]


def test_config_difference_warns_with_keys(tmp_path):
    model, opt, sched, sampler = _make()
    _save(tmp_path, 1, model, opt, sched, sampler, config={"lr": 0.01, "steps": 3, "algo": "igpo"})
    with pytest.warns(UserWarning, match=r"lr: 0.01 -> 0.02.*algo: 'igpo' -> 'grpo'"):
        load_checkpoint(tmp_path, config={"lr": 0.02, "steps": 9, "algo": "grpo"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only `steps` differs: expected, no warning
        load_checkpoint(tmp_path, config={"lr": 0.01, "steps": 9, "algo": "igpo"})


def test_load_into_wrong_model_is_clear(tmp_path):
    model, opt, sched, sampler = _make()
    _save(tmp_path, 1, model, opt, sched, sampler)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(KeyError, match="missing.*unexpected"):
        load_trainable_state(other, load_checkpoint(tmp_path).model_state)
    bad = {"head.weight": torch.zeros(2, 8), "head.bias": torch.zeros(1)}
    with pytest.raises(ValueError, match="head.weight: checkpoint shape"):
        load_trainable_state(model, bad)


def test_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="keep=0"):
        save_checkpoint(
            tmp_path,
            1,
            model_state={},
            optimizer=None,
            scheduler=None,
            rng={},
            data_state={},
            config={},
            keep=0,
        )
