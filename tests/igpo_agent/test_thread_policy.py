"""The front doors set the OpenMP wait policy before torch loads, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.abc, os, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
import importlib
importlib.import_module(sys.argv[1])
print("at torch import:", seen.get("torch"))
"""


@pytest.mark.parametrize("module", ["igpo_agent.train", "igpo_agent.sft", "igpo_agent.evaluate"])
def test_wait_policy_is_set_before_torch_loads(module):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    res = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "at torch import: PASSIVE" in res.stdout
