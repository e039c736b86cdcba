"""Read an options dataclass from YAML and the command line: coercion, parser, did-you-mean.

:func:`parse_options` is what every front door calls: ``--config FILE.yaml`` first, then
``--field value`` overrides (``--field-name`` works too; booleans as ``--flag`` /
``--no-flag`` / ``--flag false``; ``none`` clears an optional field; a list field repeats
its flag, and a repeated flag replaces the YAML list). Field help and ``--help`` sections
come from each field's metadata (:func:`igpo_agent.options.opt`); ``Literal`` fields become
argparse choices. Works on any dataclass whose constructor coerces and validates
(:class:`igpo_agent.options.Options`).

Why not a CLI library: tyro and jsonargparse build parsers from dataclasses too, but neither
keeps this project's flag forms (``--no-flag``, ``--flag none``, dash and underscore
spellings) or its did-you-mean messages for YAML keys without as much glue as this module;
this is argparse and PyYAML, both already dependencies.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

_TRUE = ("true", "1", "yes", "on", "y", "t")
_FALSE = ("false", "0", "no", "off", "n", "f")
_NONE = ("none", "null", "~", "")
T = TypeVar("T")


# --- types and coercion -------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass's fields (annotations are strings here)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def literal_values(tp: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field type; () for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def parse_bool(text: str) -> bool:
    """``true/yes/on/1`` or ``false/no/off/0`` (any case) as a bool; ValueError otherwise."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _members(tp: Any) -> tuple[list[Any], bool]:
    """The non-None members of a field type and whether None is allowed."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML, CLI text or Python) to field type ``tp``; clear errors."""
    members, optional = _members(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
        raise ValueError(f"{name} cannot be none; give a {_type_name(tp)}")
    if members == [bool, str]:  # a switch or a path (resume)
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return parse_bool(value)
            except ValueError:
                return value
        raise ValueError(f"{name}={value!r}: give true, false or a path")
    (base,) = members
    if typing.get_origin(base) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}={value!r} is not a list of strings")
        return [coerce(name, v, str) for v in items]
    if literal_values(base):  # membership is checked by Options.problems (all errors at once)
        base = str
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return parse_bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
            raise ValueError
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # also parses YAML's "1e-5" (a string in YAML 1.1)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a valid {_type_name(tp)}") from None
    raise TypeError(f"unsupported field type {tp!r} for {name}")


def _metavar(tp: Any) -> str:
    """CLI placeholder: INT, FLOAT, STR, with '|NONE' for optional fields."""
    names = [a.__name__.upper() for a in typing.get_args(tp) or (tp,)]
    return "|".join(names).replace("NONETYPE", "NONE")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# --- YAML and the command line ----------------------------------------------------------


def check_keys(cls: type, data: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming each unknown key and its closest valid field."""
    valid = [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            problems.append(f"unknown config key {key!r}{hint}")
    if problems:
        raise ValueError("\n".join(problems))


def read_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """The mapping in a config YAML file for ``cls`` (empty file: {}); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field: value")
    try:
        check_keys(cls, data)
    except ValueError as err:
        raise ValueError(f"in {path}: {err}") from None
    return data


def build_parser(
    cls: type,
    defaults: dict[str, Any] | None = None,
    *,
    prog: str | None = None,
    description: str = "",
) -> argparse.ArgumentParser:
    """An argparse parser with one ``--field`` per field of ``cls``, grouped by section."""
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of field: value (CLI flags override it).")
    groups: dict[str, argparse._ArgumentGroup] = {}
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        section = f.metadata.get("section", "other")
        group = groups.setdefault(section, parser.add_argument_group(section))
        default = defaults.get(
            f.name, f.default_factory() if callable(f.default_factory) else f.default
        )
        help_ = f.metadata.get("help", "")
        tp = hints[f.name]
        members, _ = _members(tp)
        flags = [f"--{f.name}"]  # --init_adapter and --init-adapter both work
        if "_" in f.name:
            flags.append(f"--{f.name.replace('_', '-')}")
        if tp is bool or members == [bool, str]:
            group.add_argument(
                *flags,
                nargs="?",
                const=True,
                default=default,
                type=parse_bool if tp is bool else None,
                metavar="BOOL" if tp is bool else "BOOL|PATH",
                help=help_,
            )
            group.add_argument(
                f"--no-{f.name}",
                dest=f.name,
                action="store_const",
                const=False,
                help=argparse.SUPPRESS,
            )
        elif typing.get_origin(members[0]) is list:  # absent from the namespace unless given
            shown = ", ".join(map(str, default)) if default else "none"
            group.add_argument(
                *flags,
                action="append",
                default=argparse.SUPPRESS,
                metavar="STR",
                help=f"{help_} (default: {shown})",
            )
        elif literal_values(tp):
            group.add_argument(*flags, default=default, choices=literal_values(tp), help=help_)
        else:
            group.add_argument(*flags, default=default, metavar=_metavar(tp), help=help_)
    return parser


def parse_options(
    cls: type[T],
    argv: list[str] | None = None,
    *,
    prog: str | None = None,
    description: str = "",
    base: dict[str, Any] | None = None,
) -> T:
    """Parse ``--config FILE.yaml`` then ``--field value`` overrides into a valid ``cls``.

    ``argv=None`` reads ``sys.argv[1:]``. Unknown flags or YAML keys and invalid values
    raise ``SystemExit`` (argparse's exit code 2) with a message naming the fix. A list
    field given on the command line replaces the YAML list. ``base``: values under the YAML
    file's and the flags' (e.g. the settings of the run an adapter came from).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        if base:
            check_keys(cls, base)
        defaults = {**(base or {}), **(read_yaml(known.config, cls) if known.config else {})}
    except (OSError, ValueError) as err:
        build_parser(cls, prog=prog, description=description).error(str(err))
    parser = build_parser(cls, defaults, prog=prog, description=description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [f"--{f.name}" for f in dataclasses.fields(cls)] + ["--config"]
        msgs = []
        flagged = [tok for tok in unknown if tok.startswith("-")] or unknown
        for tok in flagged:
            close = difflib.get_close_matches(tok.split("=")[0], flags, n=1, cutoff=0.5)
            msgs.append(
                f"unknown argument {tok!r}" + (f" (did you mean {close[0]}?)" if close else "")
            )
        parser.error("; ".join(msgs))
    values = {k: v for k, v in vars(args).items() if k != "config"}
    for name in _list_fields(cls) - set(values):  # a list flag not given: the YAML's or default
        if name in defaults:
            values[name] = defaults[name]
    try:
        return cls(**values)
    except ValueError as err:
        parser.error(str(err))
    raise AssertionError("unreachable")  # parser.error exits


def _list_fields(cls: type) -> set[str]:
    return {
        name
        for name, tp in field_types(cls).items()
        if typing.get_origin(_members(tp)[0][0]) is list
    }
