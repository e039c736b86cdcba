"""The package layout's rules: front doors at the top, no module over ~400 lines unexplained,
imports only in the allowed direction between the subpackages."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import igpo_agent

PKG = Path(igpo_agent.__file__).resolve().parent
LIMIT = 400

FORBIDDEN = {  # subpackage -> subpackages none of its modules may import (lazy imports too)
    "rollout": ("ig",),  # the sampler knows nothing of IG: the caller passes a BeliefHook in
    "model": ("rollout", "ig"),  # both build on model/ (e.g. cache_is_reusable), not back
    "algo": ("model", "rollout", "ig", "learn", "run"),  # the math is pure
}


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


def imports(pkg: Path) -> Iterator[tuple[str, str]]:
    """(module, what it imports) for every import statement of every module under ``pkg``,
    those inside functions included; relative imports are resolved and ``from a import b``
    yields ``a.b`` (``b`` may be a submodule)."""
    for path in sorted(pkg.rglob("*.py")):
        parts = [pkg.name, *path.relative_to(pkg).with_suffix("").parts]
        package = parts[:-1]  # what a relative import of level 1 starts from
        module = ".".join(package if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                yield from ((module, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                yield from ((module, f"{target}.{alias.name}") for alias in node.names)


def forbidden_edges(pkg: Path) -> list[str]:
    """Every ``module -> import`` edge that breaks :data:`FORBIDDEN`, in file order."""
    edges = []
    for module, target in imports(pkg):
        src = module.split(".")
        for banned in FORBIDDEN.get(src[1] if len(src) > 2 else "", ()):
            prefix = f"{pkg.name}.{banned}"
            if target == prefix or target.startswith(prefix + "."):
                edges.append(f"{module} -> {target}")
    return edges


def test_subpackages_import_only_downwards():
    """rollout/ never imports ig/ (IG scoring reaches the episode loop as a hook the caller
    builds), model/ imports neither, algo/ none of the agent's packages."""
    edges = forbidden_edges(PKG)
    assert not edges, "imports against the layering:\n" + "\n".join(edges)


def package_cycles(pkg: Path) -> list[list[str]]:
    """Cycles in the graph of which subpackage imports which (each as a path a -> ... -> a)."""
    subs = {p.parent.name for p in pkg.glob("*/__init__.py")}
    graph: dict[str, set[str]] = {s: set() for s in subs}
    for module, target in imports(pkg):
        src, dst = module.split("."), target.split(".")
        if len(src) > 2 and len(dst) > 1 and dst[0] == pkg.name and dst[1] in subs:
            if src[1] != dst[1]:
                graph[src[1]].add(dst[1])
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its least name
                walk(nxt, [*path, nxt])

    for start in sorted(subs):
        walk(start, [start])
    return cycles


def test_subpackages_form_no_cycle():
    """The subpackages' imports form a DAG (ig/ <-> rollout/ was a cycle before #21)."""
    assert package_cycles(PKG) == []


def test_the_layering_check_reports_every_edge(tmp_path):
    """On a package shaped like the old cycle, every kind of edge is reported: absolute,
    lazy (inside a function), relative, and a subpackage imported by name."""
    pkg = tmp_path / "igpo_agent"
    for sub in ("rollout", "ig", "model"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "rollout" / "episodes.py").write_text(
        "from igpo_agent.ig.gold import GoldSpec\n"
        "from igpo_agent.rollout.sampling import x\n"
        "def f():\n    import igpo_agent.ig.live\n"
    )
    (pkg / "rollout" / "vllm_engine.py").write_text("from ..ig import beliefs\n")
    (pkg / "rollout" / "engines.py").write_text("from igpo_agent import ig, model\n")
    (pkg / "ig" / "live.py").write_text("from igpo_agent.rollout.sampling import x\n")
    (pkg / "model" / "loading.py").write_text("from . import kv_cache\n")
    assert package_cycles(pkg) == [["ig", "rollout", "ig"]]
    assert forbidden_edges(pkg) == [
        "igpo_agent.rollout.engines -> igpo_agent.ig",
        "igpo_agent.rollout.episodes -> igpo_agent.ig.gold.GoldSpec",
        "igpo_agent.rollout.episodes -> igpo_agent.ig.live",
        "igpo_agent.rollout.vllm_engine -> igpo_agent.ig.beliefs",
    ]
