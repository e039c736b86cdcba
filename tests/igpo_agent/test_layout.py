"""The package layout's rules: front doors at the top, no module over ~400 lines unexplained."""

from __future__ import annotations

from pathlib import Path

import igpo_agent

PKG = Path(igpo_agent.__file__).resolve().parent
LIMIT = 400


def test_long_modules_say_why_at_their_top():
    unexplained = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if len(p.read_text().splitlines()) > LIMIT
        and not p.read_text().startswith("# Over 400 lines: ")
    ]
    assert not unexplained, f"over {LIMIT} lines with no reason at the top: {unexplained}"


def test_front_doors_stay_at_the_top():
    for name in ("train", "sft", "evaluate", "plot", "config"):
        assert (PKG / f"{name}.py").is_file()
    subpackages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert {"algo", "ig", "rollout", "model", "run", "learn", "integrations"} <= subpackages


def test_top_level_is_the_designs():
    """The repository's top level as the design lays it out (corpora/ beside the packages)."""
    root = PKG.parent
    for name in ("igpo_env", "igpo_agent", "corpora", "benchmarks", "tests"):
        assert (root / name).is_dir(), name
    for name in ("pyproject.toml", "README.md", "corpora/README.md"):
        assert (root / name).is_file(), name


def test_readme_map_names_every_module():
    """README's "Map of the code" stays true: each module of both packages and of the
    corpora/ builders is named there."""
    readme = (PKG.parent / "README.md").read_text()
    start = readme.index("## Map of the code")
    text = readme[start : readme.index("\n## ", start + 1)]
    missing = []
    for pkg in (PKG, PKG.parent / "igpo_env", PKG.parent / "corpora"):
        for p in pkg.rglob("*.py"):
            if p.name == "__init__.py" or "__pycache__" in p.parts:
                continue
            if p.stem not in text and p.name not in text:
                missing.append(str(p.relative_to(PKG.parent)))
    assert not missing, f"modules missing from README's map of the code: {missing}"
