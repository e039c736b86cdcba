"""What the wheel installs: the two packages and the shipped data, no top-level ``corpora``.

``corpora/`` (the data builders) sits at the repository root, as the design lays out, but is
a checkout tool: the wheel must not install it as a top-level module, while the data the env
reads at run time (``igpo_env/corpora/default/``) must travel inside ``igpo_env``. The slow
test builds the real wheel offline (``pip wheel --no-build-isolation --no-index``, with the
setuptools that torch already brings), installs it by unpacking it into a bare folder and
reads the default data from there, in a process that sees neither the checkout nor the
editable install.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "igpo_env" / "corpora" / "default"
# What the wheel is built from; corpora/ is copied too, so that leaving it out is tested.
SOURCES = ("pyproject.toml", "README.md", "igpo_env", "igpo_agent", "corpora")


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module that ``path`` imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_installed_packages_never_import_corpora() -> None:
    """igpo_env and igpo_agent must work without the checkout: corpora imports them, not back."""
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("igpo_env", "igpo_agent")
        for p in (ROOT / pkg).rglob("*.py")
        if "corpora" in _imported_roots(p)
    ]
    assert not offenders, f"modules of the installed packages import corpora: {offenders}"


def _build_wheel(tmp_path: Path) -> Path:
    """Build the project's wheel from a copy of its sources, offline; return the wheel's path."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "-w", str(dist), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_installs_no_corpora_module_and_carries_the_default_data(tmp_path: Path) -> None:
    """~5 s on 2 cores: build, list the top-level names, read the data from the unpacked wheel."""
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {n.split("/")[0] for n in names}
        assert {t for t in top if not t.endswith(".dist-info")} == {"igpo_env", "igpo_agent"}
        assert not any(n.split("/")[0] in ("corpora", "corpora.py") for n in names)
        shipped = sorted(p.name for p in DATA.iterdir() if p.is_file())
        assert {"MANIFEST.json", "corpus.jsonl.gz", "minilm_embeddings.npy"} <= set(shipped)
        for name in shipped:
            assert zf.read(f"igpo_env/corpora/default/{name}") == (DATA / name).read_bytes(), name
        target = tmp_path / "site"
        zf.extractall(target)

    # From an empty folder, without site's .pth files (so no editable finder), the wheel's
    # igpo_env before the environment's other packages: default_data_dir() must be inside it.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import importlib.util, json, igpo_env\n"
        "from igpo_env.data import default_data_dir, load_corpus, load_qa\n"
        "print(json.dumps({'pkg': igpo_env.__file__, 'data': str(default_data_dir()),\n"
        "    'dev': len(load_qa('default:dev')), 'docs': len(load_corpus('default')),\n"
        "    'corpora': importlib.util.find_spec('corpora') is not None}))\n"
    )
    path = os.pathsep.join([str(target), *site.getsitepackages()])
    env = {**os.environ, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(seen["pkg"]).is_relative_to(target)
    assert Path(seen["data"]) == target / "igpo_env" / "corpora" / "default"
    manifest = json.loads((DATA / "MANIFEST.json").read_text(encoding="utf-8"))
    assert seen["dev"] == manifest["counts"]["questions"]["dev"]
    assert seen["docs"] == manifest["counts"]["documents"]
    assert seen["corpora"] is False
