"""The retriever registry: specs, lazy entry points, installed plugins, and the env using them.

The entry-point tests install a real (fake) distribution: a ``*.dist-info`` folder with
``METADATA`` and ``entry_points.txt`` next to its module, on ``sys.path``, which is exactly
what ``importlib.metadata`` finds for a ``pip install``-ed package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import igpo_env  # noqa: F401  (registers the SearchQA-* ids)
from igpo_env.data import Document
from igpo_env.retrievers import (
    ENTRY_POINT_GROUP,
    Hit,
    RetrieverSpec,
    available_retrievers,
    make_retriever,
    register_retriever,
    registry,
    retriever_spec,
)
from igpo_env.serve import backend_kwargs, build_parser

REPO = Path(__file__).resolve().parents[3]
BUILTINS = ["bm25", "bm25-rank", "dense", "faiss-prebuilt", "http", "searxng", "serper"]

PLUGIN = '''
from igpo_env.retrievers import Hit, RetrieverSpec

CALLS = []


class Echo:
    """Answers every query with one hit that says what the backend was given."""

    name = "echo"

    def __init__(self, **kwargs):
        CALLS.append(kwargs)
        self.kwargs = kwargs

    def search(self, queries, k):
        text = repr(sorted(self.kwargs.items()))
        return [[Hit(doc_id="e0", title="Echo", text=text, score=1.0)] for _ in queries]


def make(**kwargs):
    return Echo(**kwargs)


SPEC = RetrieverSpec("{name}", "{module}:Echo", takes_corpus=True, description="echo")
WRONG_NAME = RetrieverSpec("other", "{module}:Echo")
NOT_A_SPEC = 42
'''


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test (directly or through entry points) end with it."""
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))


def _plugin(root: Path, module: str, name: str, entry_points: str | None = None) -> Path:
    """Write ``module.py`` (see PLUGIN) under ``root``; with ``entry_points``, also a
    ``{module}-0.1.dist-info`` that declares them in the igpo_env.retrievers group."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN.format(name=name, module=module), "utf-8")
    if entry_points is not None:
        info = root / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n", "utf-8"
        )
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n", "utf-8")
    return root


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make a uniquely named plugin module importable; forget it after the test."""
    made: list[str] = []

    def make(module: str, name: str, entry_points: str | None = None) -> str:
        monkeypatch.syspath_prepend(str(_plugin(tmp_path / module, module, name, entry_points)))
        made.append(module)
        return module

    yield make
    for module in made:
        sys.modules.pop(module, None)


# ----------------------------------------------------------------- specs and lookup


def test_builtin_specs_say_what_each_backend_takes() -> None:
    assert set(BUILTINS) <= set(available_retrievers())
    assert all(retriever_spec(n).takes_corpus is True for n in ["bm25", "bm25-rank", "dense"])
    prebuilt = retriever_spec("faiss-prebuilt")
    assert prebuilt.takes_corpus == prebuilt.corpus_kwarg == "corpus_path"
    assert retriever_spec("http").url_env == "IGPO_RETRIEVER_URL"
    assert retriever_spec("searxng").url_env == "IGPO_SEARXNG_URL"
    assert retriever_spec("serper").takes_corpus is False
    assert retriever_spec("serper").corpus_kwarg is None
    for name in BUILTINS:
        spec = retriever_spec(name)
        assert spec.name == name and spec.description
        assert spec.entry_point.startswith("igpo_env.retrievers.builtin:")


def test_lookup_and_listing_import_no_backend_code() -> None:
    """A fresh interpreter: importing igpo_env, listing and looking up specs imports neither
    the backend modules nor torch/FAISS; building bm25 imports bm25 but not dense."""
    code = textwrap.dedent(
        """
        import json, sys
        import igpo_env
        from igpo_env.retrievers import available_retrievers, retriever_spec
        available_retrievers(), [retriever_spec(n) for n in available_retrievers()]
        heavy = ["igpo_env.retrievers.builtin", "igpo_env.retrievers.bm25",
                 "igpo_env.retrievers.dense", "torch", "faiss", "bm25s"]
        before = [m for m in heavy if m in sys.modules]
        from igpo_env.data import Document
        from igpo_env.retrievers import make_retriever
        make_retriever("bm25", corpus=[Document("d0", "Paris", "Paris is in France.")])
        after = [m for m in heavy if m in sys.modules]
        print(json.dumps([before, after]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == []
    assert "igpo_env.retrievers.bm25" in after
    assert not {"igpo_env.retrievers.dense", "torch", "faiss"} & set(after)


def test_a_spec_whose_module_is_missing_fails_only_when_built() -> None:
    spec = register_retriever("ghost", "no_such_module_for_igpo:make", takes_corpus=True)
    assert retriever_spec("ghost") is spec and "ghost" in available_retrievers()
    with pytest.raises(ImportError, match="retriever 'ghost': cannot import module"):
        make_retriever("ghost")
    register_retriever("ghost-attr", "igpo_env.retrievers.base:no_such_factory")
    with pytest.raises(ImportError, match="has no attribute 'no_such_factory'"):
        make_retriever("ghost-attr")
    register_retriever("not-callable", "igpo_env.retrievers.registry:ENTRY_POINT_GROUP")
    with pytest.raises(TypeError, match="not a factory callable"):
        make_retriever("not-callable")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "", "entry_point": "a:b"}, ValueError, "non-empty str"),
        ({"name": "x", "entry_point": "no colon"}, ValueError, "package.module:attr"),
        ({"name": "x", "entry_point": 3}, TypeError, "package.module:attr"),
        ({"name": "x", "entry_point": "a:b", "takes_corpus": 1}, TypeError, "takes_corpus"),
        ({"name": "x", "entry_point": "a:b", "takes_corpus": "a b"}, TypeError, "takes_corpus"),
        ({"name": "x", "entry_point": "a:b", "url_env": ""}, TypeError, "url_env"),
    ],
)
def test_bad_specs_are_refused_when_declared(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RetrieverSpec(**kwargs)


def test_register_retriever_still_takes_a_plain_factory() -> None:
    seen: list[dict] = []

    def factory(**kw):
        seen.append(kw)
        return make_retriever("bm25", corpus=[Document("d0", "Paris", "Paris is in France.")])

    spec = register_retriever("mine", factory)  # the old two-argument form
    assert (spec.takes_corpus, spec.url_env, spec.entry_point) == (False, None, factory)
    hits = make_retriever("mine", flag=1).search(["Paris"], 1)
    assert seen == [{"flag": 1}] and hits[0][0].doc_id == "d0"


def test_unknown_names_list_the_choices_and_how_to_register() -> None:
    with pytest.raises(ValueError) as exc:
        make_retriever("elasticsearch")
    message = str(exc.value)
    assert "unknown retriever 'elasticsearch'" in message
    assert all(repr(n) in message for n in BUILTINS)
    assert "register_retriever" in message and ENTRY_POINT_GROUP in message
    assert "package.module:factory" in message


# ----------------------------------------------------------------- "module:attr" names


def test_module_attr_strings_name_a_factory_or_a_spec(plugin_module, env_kwargs) -> None:
    module = plugin_module("igpo_test_direct", "direct-echo")
    r = make_retriever(f"{module}:make", size=3)
    assert r.search(["q"], 1)[0][0].text == "[('size', 3)]"
    assert retriever_spec(f"{module}:make").takes_corpus is False
    assert retriever_spec(f"{module}:SPEC").name == "direct-echo"
    # a spec named directly declares its corpus: the env passes its corpus= through
    env = gym.make("SearchQA-v0", retriever=f"{module}:SPEC", **env_kwargs)
    env.reset(seed=0)
    obs = env.step("<search>anything</search>")[0]
    assert repr(env_kwargs["corpus"]) in obs
    env.close()
    with pytest.raises(ImportError, match="has no attribute 'nothing'"):
        make_retriever(f"{module}:nothing")
    with pytest.raises(TypeError, match="names a int"):
        make_retriever(f"{module}:NOT_A_SPEC")
    with pytest.raises(ValueError, match="must be 'package.module:attr'"):
        make_retriever("no module:x")


# ----------------------------------------------------------------- installed entry points


def test_installed_entry_points_are_found_by_name(plugin_module, env_kwargs) -> None:
    eps = "\n".join(
        [
            "fake = igpo_test_fake:SPEC",
            "fake-wrong = igpo_test_fake:WRONG_NAME",
            "fake-int = igpo_test_fake:NOT_A_SPEC",
        ]
    )
    module = plugin_module("igpo_test_fake", "fake", eps)
    # listed without importing the plugin
    assert {"fake", "fake-wrong", "fake-int"} <= set(available_retrievers())
    assert module not in sys.modules
    spec = retriever_spec("fake")
    assert spec.takes_corpus is True and "fake" in registry.retriever_specs()
    assert make_retriever("fake", corpus="c.jsonl").search(["q"], 3)[0][0].doc_id == "e0"
    # through gym.make: the env's corpus reaches the plugin like bm25's does
    env = gym.make("SearchQA-v0", retriever="fake", **env_kwargs)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<search>capital</search>")
    assert info["doc_ids"] == ["e0"] and repr(env_kwargs["corpus"]) in obs
    env.close()
    plugin = sys.modules[module]
    assert plugin.CALLS[-1] == {"corpus": env_kwargs["corpus"]}
    env = gym.make("SearchQA-v0", retriever="fake", qa=env_kwargs["qa"])
    assert env.unwrapped.retriever.kwargs == {"corpus": "default"}
    with pytest.raises(ValueError, match="names a RetrieverSpec called 'other'"):
        retriever_spec("fake-wrong")
    with pytest.raises(TypeError, match="must name an igpo_env.retrievers.RetrieverSpec"):
        retriever_spec("fake-int")


def test_a_broken_plugin_is_reported_only_when_asked_for(plugin_module) -> None:
    eps = "broken = igpo_test_missing_module:SPEC"
    plugin_module("igpo_test_broken", "broken", eps)
    assert "broken" in available_retrievers()
    make_retriever("bm25", corpus=[Document("d0", "Paris", "Paris is in France.")])
    with pytest.raises(ImportError, match="retriever 'broken': cannot load its entry point"):
        make_retriever("broken")


# ----------------------------------------------------------------- the env asks the spec


def test_a_user_backend_gets_what_its_spec_declares(monkeypatch, env_kwargs) -> None:
    got: list[dict] = []

    class Recorder:
        name = "recorder"

        def __init__(self, **kwargs):
            got.append(kwargs)

        def search(self, queries, k):
            return [[Hit("r0", "R", "recorded", 1.0)] for _ in queries]

    register_retriever("user-local", Recorder, takes_corpus=True)
    gym.make("SearchQA-v0", retriever="user-local", **env_kwargs)
    gym.make("SearchQA-v0", retriever="user-local", qa=env_kwargs["qa"])
    assert got == [{"corpus": env_kwargs["corpus"]}, {"corpus": "default"}]
    with pytest.raises(ValueError, match="url is for remote backends"):
        gym.make("SearchQA-v0", retriever="user-local", url="http://x", **env_kwargs)

    got.clear()
    register_retriever("user-file", Recorder, takes_corpus="corpus_file")
    gym.make("SearchQA-v0", retriever="user-file", **env_kwargs)
    gym.make("SearchQA-v0", retriever="user-file", qa=env_kwargs["qa"])
    assert got == [{"corpus_file": env_kwargs["corpus"]}, {}]
    with pytest.raises(ValueError, match="takes corpus= as the path of a JSONL file"):
        gym.make("SearchQA-v0", retriever="user-file", qa=env_kwargs["qa"], corpus="default")

    got.clear()
    register_retriever("user-remote", Recorder, url_env="IGPO_TEST_USER_URL")
    monkeypatch.setenv("IGPO_TEST_USER_URL", "http://from-env")
    gym.make("SearchQA-v0", retriever="user-remote", qa=env_kwargs["qa"])
    gym.make("SearchQA-v0", retriever="user-remote", qa=env_kwargs["qa"], url="http://arg")
    assert got == [{"url": "http://from-env"}, {"url": "http://arg"}]
    with pytest.raises(ValueError, match="has no corpus=.*'user-file', 'user-local'"):
        gym.make("SearchQA-v0", retriever="user-remote", **env_kwargs)
    with pytest.raises(ValueError, match="unknown retriever.*pass a Retriever instance"):
        gym.make("SearchQA-v0", retriever="nope", qa=env_kwargs["qa"])


def test_serve_cli_reads_the_spec() -> None:
    parser = build_parser()
    register_retriever("user-local", "x.y:z", takes_corpus=True)
    assert backend_kwargs(parser.parse_args(["--retriever", "user-local"])) == {"corpus": "default"}
    argv = ["--retriever", "bm25", "--corpus", "c.jsonl", "--index-dir", "ix"]
    assert backend_kwargs(parser.parse_args(argv)) == {"corpus": "c.jsonl", "index_dir": "ix"}
    register_retriever("user-file", "x.y:z", takes_corpus="corpus_file")
    argv = ["--retriever", "user-file", "--corpus", "c.jsonl"]
    assert backend_kwargs(parser.parse_args(argv)) == {"corpus_file": "c.jsonl"}
    with pytest.raises(ValueError, match="needs --corpus PATH"):
        backend_kwargs(parser.parse_args(["--retriever", "user-file"]))
    with pytest.raises(ValueError, match="reads no corpus"):
        backend_kwargs(parser.parse_args(["--retriever", "http"]))


# ----------------------------------------------------------------- the README example


def test_the_custom_retriever_example_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "custom_retriever.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "<information>Doc 1 (Title: " in proc.stdout and "Doc 3 (Title: " in proc.stdout
    example = (REPO / "examples" / "custom_retriever.py").read_text(encoding="utf-8")
    assert example in (REPO / "README.md").read_text(encoding="utf-8"), "README copy is stale"
