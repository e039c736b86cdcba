# Over 400 lines: one on-disk checkpoint format: atomic write, resume, prune and RNG state, which must agree.
"""Atomic checkpoints and exact resume.

Layout of one run::

    RUN_DIR/checkpoints/
      latest                  text file: "step-N" (replaced atomically)
      step-N/
        model.safetensors     the trainable parameters (LoRA adapter or full weights)
        optimizer.pt          optimizer.state_dict()
        scheduler.pt          scheduler.state_dict() (absent when there is none)
        trainer_state.pt      {"step", "rng", "data_state"}
        config.yaml           the config that produced the run (nanoGPT habit)
        meta.json             step, time, file list; written last = "complete" marker

A checkpoint is written into ``step-N.tmp/``, every file is fsynced, the folder is renamed
to ``step-N/`` with ``os.replace`` and only then is ``latest`` updated, so a crash at any
moment leaves either the previous checkpoint or the new one, never a torn one. Older
``step-*`` folders beyond ``keep`` are pruned afterwards. Everything but the weights is
loaded with ``torch.load(weights_only=True)``: no pickled code runs at resume.

Exact resume needs every source of randomness: ``capture_rng_state`` records python's
``random``, numpy's global state, torch's CPU (and CUDA) generators and any
``torch.Generator`` the trainer owns (e.g. the sampling generator).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """Everything one checkpoint holds, as loaded (tensors on CPU)."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    rng: dict[str, Any]
    data_state: dict[str, Any]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def restore(
        self,
        *,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        generators: dict[str, torch.Generator] | None = None,
    ) -> None:
        """Load the saved states into live objects (any of them may be omitted).

        ``model`` gets the trainable parameters copied in place (``load_trainable_state``);
        RNG states are restored last so that nothing after this call perturbs them.
        """
        if model is not None:
            load_trainable_state(model, self.model_state)
        if optimizer is not None:
            if self.optimizer_state is None:
                raise ValueError(f"{self.path} holds no optimizer state; start a fresh optimizer")
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None:
            if self.scheduler_state is None:
                raise ValueError(f"{self.path} holds no scheduler state; build a fresh one")
            scheduler.load_state_dict(self.scheduler_state)
        restore_rng_state(self.rng, generators)


# --- RNG --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global state and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Snapshot python, numpy, torch CPU/CUDA and the named generators' states.

    The result holds only lists, ints, floats, strings and tensors, so it round-trips
    through ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Put back the states captured by ``capture_rng_state`` (named generators included).

    A generator named in ``generators`` but absent from ``state`` (or the reverse) is
    reported with a warning: resume is then not exact, but the run can continue.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"checkpoint holds CUDA RNG states for {len(cuda_states)} device(s) but "
                f"{torch.cuda.device_count()} are visible: CUDA sampling will not repeat exactly",
                stacklevel=2,
            )
    saved = state.get("generators", {})
    generators = generators or {}
    for name, gen in generators.items():
        if name in saved:
            gen.set_state(saved[name])
        else:
            warnings.warn(f"no saved state for generator {name!r}; it keeps its seed", stacklevel=2)
    extra = sorted(set(saved) - set(generators))
    if extra:
        warnings.warn(f"saved generator states {extra} were not restored: pass them", stacklevel=2)


# --- model state ------------------------------------------------------------------------


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad`` (LoRA adapter or all weights), detached."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's trainable parameters in place; names must match.

    Raises ``KeyError`` listing missing/unexpected names (a checkpoint of another model or
    LoRA layout) and ``ValueError`` on a shape mismatch.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not fit the model's trainable parameters: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''} (same model, lora_r, lora_targets "
            "and full_finetune as the saved run?)"
        )
    with torch.no_grad():
        for name, p in params.items():
            src = state[name]
            if src.shape != p.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(src.shape)} != {tuple(p.shape)}")
            p.copy_(src.to(device=p.device, dtype=p.dtype))


# --- files ------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _state_dict(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    return obj.state_dict()


def checkpoints_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``step-N/`` with ``meta.json``), oldest first; ``.tmp`` ignored."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    rng: dict[str, Any],
    data_state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write ``RUN_DIR/checkpoints/step-{step}/`` atomically, point ``latest`` at it, prune.

    ``optimizer`` / ``scheduler`` are objects with ``state_dict()``, plain state dicts, or
    None. ``rng`` comes from ``capture_rng_state``; ``data_state`` is the sampler's state
    (anything ``torch.save`` stores with plain types and tensors). Returns the folder.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: keep at least the checkpoint being written")
    if step < 0:
        raise ValueError(f"step={step}: use a non-negative step")
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    if tmp.exists():  # left by a crashed earlier write of the same step
        shutil.rmtree(tmp)
    tmp.mkdir()

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
    files = ["model.safetensors"]
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"step": str(step)})
    opt_state = _state_dict(optimizer)
    if opt_state is not None:
        torch.save(opt_state, tmp / "optimizer.pt")
        files.append("optimizer.pt")
    sched_state = _state_dict(scheduler)
    if sched_state is not None:
        torch.save(sched_state, tmp / "scheduler.pt")
        files.append("scheduler.pt")
    torch.save(
        {"format": FORMAT_VERSION, "step": step, "rng": rng, "data_state": data_state},
        tmp / "trainer_state.pt",
    )
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    files += ["trainer_state.pt", "config.yaml"]
    meta = {
        "format": FORMAT_VERSION,
        "step": step,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "num_tensors": len(tensors),
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "torch": torch.__version__,
        "files": files + ["meta.json"],
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for name in meta["files"]:
        _fsync_file(tmp / name)
    _fsync_dir(tmp)

    if final.exists():  # re-saving a step (e.g. after resume): swap the old one out
        old = root / f"step-{step}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    _write_text_atomic(root / LATEST, final.name + "\n")
    _prune(root, run_dir, keep, final)
    return final


def _prune(root: Path, run_dir: str | Path, keep: int, current: Path) -> None:
    complete = [p for p in list_checkpoints(run_dir) if p != current]
    newer_first = sorted(complete, key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for p in newer_first[keep - 1 :]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob("step-*.tmp"):  # stale partial writes of other steps
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (``latest`` pointer, else a scan), or None."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        cand = root / name
        if _STEP_RE.match(name) and (cand / "meta.json").is_file():
            return cand
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _resolve(path_or_run_dir: str | Path) -> Path:
    path = Path(path_or_run_dir)
    if (path / "meta.json").is_file():
        return path
    for run_dir in (path, path.parent):  # a run dir, or its checkpoints/ folder
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"no complete checkpoint at {path}: pass a run dir with {CHECKPOINT_DIR}/step-N/ "
        "or a step-N folder (a step-N.tmp folder is an interrupted write and is ignored)"
    )


def load_checkpoint(
    path_or_run_dir: str | Path,
    *,
    config: dict[str, Any] | None = None,
    ignore_keys: tuple[str, ...] = ("resume", "steps"),
) -> Checkpoint:
    """Load a checkpoint folder, or the latest one of a run dir, onto the CPU.

    With ``config`` (the current run's ``to_dict()``), keys whose values differ from the
    saved config are reported in one warning (``ignore_keys`` are expected to differ).
    """
    path = _resolve(path_or_run_dir)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')} != {FORMAT_VERSION}")
    model_state = load_file(str(path / "model.safetensors"), device="cpu")
    opt = path / "optimizer.pt"
    sched = path / "scheduler.pt"
    trainer = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    saved_config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    ckpt = Checkpoint(
        path=path,
        step=int(trainer["step"]),
        model_state=model_state,
        optimizer_state=torch.load(opt, map_location="cpu", weights_only=True)
        if opt.is_file()
        else None,
        scheduler_state=torch.load(sched, map_location="cpu", weights_only=True)
        if sched.is_file()
        else None,
        rng=trainer["rng"],
        data_state=trainer["data_state"],
        config=saved_config,
        meta=meta,
    )
    if config is not None:
        warn_config_diff(saved_config, config, ignore_keys=ignore_keys, where=str(path))
    return ckpt


def warn_config_diff(
    saved: dict[str, Any],
    current: dict[str, Any],
    *,
    ignore_keys: tuple[str, ...] = (),
    where: str = "checkpoint",
) -> dict[str, tuple[Any, Any]]:
    """Warn once listing every key whose value differs (saved -> current); return them."""
    keys = list(saved) + [k for k in current if k not in saved]
    diff = {
        k: (saved.get(k), current.get(k))
        for k in keys
        if k not in ignore_keys and saved.get(k) != current.get(k)
    }
    if diff:
        lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        msg = (
            f"resuming from {where} with a different config ({lines}); the run continues "
            "with the current values"
        )
        warnings.warn(msg, stacklevel=2)
    return diff
