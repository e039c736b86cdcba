"""The retriever registry: backend names -> :class:`RetrieverSpec` (what to build, what it takes).

Modelled on Gymnasium's env registry (``gymnasium.envs.registration.EnvSpec``): a spec names
its factory by an ``"module:attr"`` entry point string that is imported only when the
backend is built, so registering one (and importing ``igpo_env``) imports no backend code,
and torch/FAISS load only for the dense backends. The spec also tells the environment how to
configure the backend: whether it reads the env's ``corpus=`` and which environment variable
holds its server's URL.

A backend is found by name in this order:

1. a spec registered in this process: the built-ins (:data:`BUILTIN_SPECS`) and every
   :func:`register_retriever` call;
2. a Python entry point of an installed distribution in the group ``igpo_env.retrievers``
   (:data:`ENTRY_POINT_GROUP`) whose name is the backend name and whose value is the
   ``"module:attr"`` of a :class:`RetrieverSpec` object with that same name; it is imported
   on the first lookup of that name, then registered;
3. a name containing ``":"`` is itself an entry point string, ``"package.module:attr"``:
   ``attr`` is a :class:`RetrieverSpec` or a factory (a factory gets
   ``takes_corpus=False``; point at a spec to declare a corpus or a URL variable).

A factory is any callable ``factory(**kwargs) -> Retriever`` (a class works);
``make_retriever(name, **kwargs)`` calls it with the keyword arguments as given.
"""

from __future__ import annotations

import importlib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from igpo_env.retrievers.base import Retriever

ENTRY_POINT_GROUP = "igpo_env.retrievers"
"""The ``[project.entry-points]`` group in which installed packages declare backends."""

Factory = Callable[..., Retriever]

_ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class RetrieverSpec:
    """How to build one retrieval backend and how the environment configures it.

    ``name``: the backend name (``gym.make(..., retriever=name)``, ``make_retriever(name)``).
    ``entry_point``: ``"module:attr"`` of the factory, imported only when a backend is
    built (``"module:Class.method"`` works too), or the factory itself.
    ``takes_corpus``: ``False`` (the backend reads no corpus: a remote server holds the
    documents); ``True`` (the env passes its ``corpus=`` through as ``corpus=``:
    ``"default"`` when not given, a JSONL path, or a list of Document, like ``bm25``); or a
    keyword name (the env passes its ``corpus=``, which must then be a JSONL file path,
    under that name, and nothing when not given, like ``faiss-prebuilt``'s
    ``corpus_path``).
    ``url_env``: the environment variable the env reads the server URL from when no
    ``url=`` is given (``IGPO_RETRIEVER_URL`` for ``http``); None for none.
    ``description``: one line for listings and error messages.
    """

    name: str
    entry_point: str | Factory
    takes_corpus: bool | str = False
    url_env: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError(
                f"a retriever name must be a non-empty str without outer spaces, got {self.name!r}"
            )
        if isinstance(self.entry_point, str):
            if not _ENTRY_POINT_RE.match(self.entry_point):
                raise ValueError(
                    f"retriever {self.name!r}: entry_point must be 'package.module:attr' or a "
                    f"callable, got {self.entry_point!r}"
                )
        elif not callable(self.entry_point):
            raise TypeError(
                f"retriever {self.name!r}: entry_point must be 'package.module:attr' or a "
                f"callable, got {type(self.entry_point).__name__}"
            )
        corpus = self.takes_corpus
        if not isinstance(corpus, bool) and not (isinstance(corpus, str) and corpus.isidentifier()):
            raise TypeError(
                f"retriever {self.name!r}: takes_corpus must be True, False or the name of the "
                f"keyword argument that gets the corpus path, got {corpus!r}"
            )
        if self.url_env is not None and (not isinstance(self.url_env, str) or not self.url_env):
            raise TypeError(f"retriever {self.name!r}: url_env must be None or a variable name")
        if not isinstance(self.description, str):
            raise TypeError(f"retriever {self.name!r}: description must be a str")

    @property
    def corpus_kwarg(self) -> str | None:
        """The keyword argument that receives the env's corpus, or None."""
        if self.takes_corpus is True:
            return "corpus"
        return self.takes_corpus or None

    def load(self) -> Factory:
        """Import the factory (the first call imports its module)."""
        factory = load_entry_point(self.entry_point, self.name)
        if not callable(factory):
            raise TypeError(
                f"retriever {self.name!r}: entry point {self.entry_point!r} is a "
                f"{type(factory).__name__}, not a factory callable"
            )
        return factory

    def make(self, **kwargs: Any) -> Retriever:
        """Build the backend: ``factory(**kwargs)``."""
        return self.load()(**kwargs)


_B = "igpo_env.retrievers.builtin:"
BUILTIN_SPECS: tuple[RetrieverSpec, ...] = (
    RetrieverSpec("bm25", _B + "make_bm25", takes_corpus=True, description="bm25s BM25 (default)"),
    RetrieverSpec("bm25-rank", _B + "make_bm25_rank", takes_corpus=True, description="rank-bm25"),
    RetrieverSpec("dense", _B + "make_dense", takes_corpus=True, description="MiniLM + FAISS"),
    RetrieverSpec(
        "faiss-prebuilt",
        _B + "make_faiss_prebuilt",
        takes_corpus="corpus_path",
        description="a prebuilt FAISS index as-is (Search-R1's e5_Flat.index)",
    ),
    RetrieverSpec(
        "http",
        _B + "make_http",
        url_env="IGPO_RETRIEVER_URL",
        description="a Search-R1 /retrieve server (e.g. python -m igpo_env.serve)",
    ),
    RetrieverSpec(
        "searxng", _B + "make_searxng", url_env="IGPO_SEARXNG_URL", description="SearxNG (web)"
    ),
    RetrieverSpec("serper", _B + "make_serper", description="Serper.dev Google results (web)"),
)
"""The built-in backends, one spec each; none of their modules is imported here."""

_SPECS: dict[str, RetrieverSpec] = {spec.name: spec for spec in BUILTIN_SPECS}


def register_retriever(
    name: str,
    entry_point: str | Factory,
    *,
    takes_corpus: bool | str = False,
    url_env: str | None = None,
    description: str = "",
) -> RetrieverSpec:
    """Make ``make_retriever(name, **kw)`` and ``gym.make(..., retriever=name)`` build a
    backend with the factory ``entry_point`` (a callable, or ``"module:attr"`` imported on
    first use); the keywords are the :class:`RetrieverSpec` fields. A name registered again
    is replaced. Returns the spec."""
    spec = RetrieverSpec(name, entry_point, takes_corpus, url_env, description)
    _SPECS[name] = spec
    return spec


def retriever_spec(name: str) -> RetrieverSpec:
    """The spec of a backend name: registered, from an installed entry point, or an
    ``"package.module:attr"`` string (see the module docstring). Unknown names raise a
    ``ValueError`` that lists the names and how to add one."""
    if not isinstance(name, str):
        raise TypeError(f"a retriever name must be a str, got {type(name).__name__}")
    spec = _SPECS.get(name)
    if spec is not None:
        return spec
    if ":" in name:
        return _spec_from_string(name)
    spec = _spec_from_entry_points(name)
    if spec is None:
        raise ValueError(
            f"unknown retriever {name!r}; choose one of {available_retrievers()}, pass "
            "'package.module:factory', or register your own with "
            "igpo_env.retrievers.register_retriever (or an entry point in the group "
            f"{ENTRY_POINT_GROUP!r}; see docs/RETRIEVAL.md, 'Adding a retriever')"
        )
    return spec


def make_retriever(name: str, **kwargs: Any) -> Retriever:
    """Build a retrieval backend by name (``bm25``, ``bm25-rank``, ``dense``, ``http``, ...)."""
    return retriever_spec(name).make(**kwargs)


def available_retrievers() -> list[str]:
    """Names accepted by :func:`make_retriever`: registered ones and those of installed
    entry points (listed without importing them); ``"module:attr"`` strings work too."""
    return sorted(set(_SPECS) | {ep.name for ep in _entry_points()})


def retriever_specs() -> dict[str, RetrieverSpec]:
    """The specs registered so far, by name (installed entry points appear once looked up)."""
    return dict(_SPECS)


def load_entry_point(entry_point: str | Callable[..., Any], name: str) -> Any:
    """The object an ``"module:attr"`` string names (a callable is returned as is); errors
    name the retriever and the entry point."""
    if not isinstance(entry_point, str):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"retriever {name!r}: cannot import module {module_name!r} of its entry point "
            f"{entry_point!r}: {exc}"
        ) from exc
    try:
        return operator.attrgetter(attr)(module)
    except AttributeError as exc:
        raise ImportError(
            f"retriever {name!r}: module {module_name!r} has no attribute {attr!r} "
            f"(entry point {entry_point!r})"
        ) from exc


def _spec_from_string(name: str) -> RetrieverSpec:
    """The spec of ``"package.module:attr"`` (attr: a RetrieverSpec, or a factory)."""
    if not _ENTRY_POINT_RE.match(name):
        raise ValueError(
            f"unknown retriever {name!r}; a name with ':' must be 'package.module:attr' "
            "(a RetrieverSpec or a factory)"
        )
    target = load_entry_point(name, name)
    if isinstance(target, RetrieverSpec):
        return target
    if not callable(target):
        raise TypeError(
            f"retriever {name!r} names a {type(target).__name__}; it must name a factory "
            "callable or an igpo_env.retrievers.RetrieverSpec"
        )
    return RetrieverSpec(name, target)


def _entry_points(name: str | None = None) -> list[Any]:
    """Installed entry points of :data:`ENTRY_POINT_GROUP` (only ``name``'s when given)."""
    from importlib.metadata import entry_points

    selection = {"group": ENTRY_POINT_GROUP} | ({} if name is None else {"name": name})
    return list(entry_points(**selection))


def _spec_from_entry_points(name: str) -> RetrieverSpec | None:
    """Load, check and register the installed entry point called ``name`` (None: none)."""
    found = _entry_points(name)
    if not found:
        return None
    ep = found[0]
    where = f"entry point {ep.name} = {ep.value!r} (group {ENTRY_POINT_GROUP!r})"
    try:
        target = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"retriever {name!r}: cannot load its {where}: {exc}") from exc
    if not isinstance(target, RetrieverSpec):
        raise TypeError(
            f"{where} must name an igpo_env.retrievers.RetrieverSpec, got a {type(target).__name__}"
        )
    if target.name != name:
        raise ValueError(f"{where} names a RetrieverSpec called {target.name!r}; use one name")
    _SPECS[name] = target
    return target
