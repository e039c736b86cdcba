"""Builders and recipes for the corpora and QA sets the environment reads (a checkout tool).

Not installed: the wheel holds ``igpo_env`` and ``igpo_agent`` only, and the data the env
reads at run time (``igpo_env/corpora/default/``) is package data of ``igpo_env``. These
modules write that data (``build`` + ``sources``, ``embed``) or fetch and check bigger sets
in the same formats (``wiki18``, ``flashrag``); they may import ``igpo_env``, never the other way round.
Run them from the repository root (``python -m corpora.build``) or as scripts
(``python corpora/build.py``); see ``corpora/README.md``.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The checkout's copy of the shipped data (igpo_env package data), which the builders write.
DEFAULT_DATA_DIR = REPO_ROOT / "igpo_env" / "corpora" / "default"
