"""Frozen-dataclass settings to and from TOML tables: the machinery behind profile files.

:func:`from_table` builds (or, given a base, overrides) a tree of frozen dataclasses from a TOML table in the
same nesting; every key is checked against the dataclass's fields and every value against the field's type
hint before the dataclass's own ``__post_init__`` checks run, so a bad file fails with the key's dotted name
and what it accepts, before anything is computed. :func:`to_toml` writes a tree back, completely (TOML has no
null: ``None`` is written and read as the string ``"none"``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

NONE = "none"  # TOML has no null


class ConfigError(ValueError):
    """A settings file or table is not valid; the message names the key and what it accepts."""


def from_table(cls: type, table: Mapping[str, Any], base: Any = None, where: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``table``: ``base`` with the table's keys overridden, or, without a
    base, built from the table alone (fields with defaults may be left out). Nested dataclass fields take nested
    tables."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown key {dotted!r}; valid keys{' in [' + where + ']' if where else ''}: "
                              f"{', '.join(fields)}")
        sub = _dataclass_of(hints[key])
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{dotted} must be a table ([{dotted}]) with keys: "
                                  f"{', '.join(f.name for f in dataclasses.fields(sub))}")
            values[key] = from_table(sub, value, None if base is None else getattr(base, key), dotted)
        else:
            values[key] = coerce(value, hints[key], dotted)
    try:
        return cls(**values) if base is None else dataclasses.replace(base, **values)
    except TypeError as e:  # a required field left out
        missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise ConfigError(f"[{where or 'top level'}]: missing keys {', '.join(missing) or '?'} ({e})") from None
    except ValueError as e:  # the dataclass's own checks, their Python words in TOML's spelling
        raise ConfigError(f"[{where or 'top level'}]: {toml_spelling(str(e))}") from None


_PY_WORDS = {"None": f'"{NONE}"', "True": "true", "False": "false"}


def toml_spelling(message: str) -> str:
    """A dataclass's error message as a TOML file's reader needs it: ``None`` as ``"none"``, ``True``/``False`` as
    ``true``/``false`` (the checks are written once, in Python, for files and code alike)."""
    return re.sub(r"\b(None|True|False)\b", lambda m: _PY_WORDS[m.group(1)], message)


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field holds (``T`` or ``T | None``), else None."""
    args = typing.get_args(hint) if _is_union(hint) else (hint,)
    found = [a for a in args if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def describe(hint: Any) -> str:
    """A type hint in words, for error messages: ``int or "none"``, ``list of float``."""
    if _is_union(hint):
        return " or ".join(f'"{NONE}"' if a is type(None) else describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of ({describe(args[0])})"
        return f"list [{', '.join(describe(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` (as TOML parsed it) as the field's type ``hint``; lists become tuples, ``"none"`` None."""
    bad = ConfigError(f"{key} = {value!r}: expected {describe(hint)}")
    if _is_union(hint):
        args = typing.get_args(hint)
        if value == NONE and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(value, a, key)
                except ConfigError:
                    pass
        raise bad
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list):
            raise bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise bad


def to_toml(obj: Any, header: str = "") -> str:
    """Every field of the dataclass tree ``obj`` as TOML that :func:`from_table` reads back to an equal tree."""
    lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
    _emit(obj, "", lines)
    return "\n".join(lines).strip() + "\n"


def _emit(obj: Any, prefix: str, lines: list[str]) -> None:
    subs, own = [], []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            subs.append((f.name, v))
        else:
            own.append(f"{f.name} = {_value(v)}")
    if prefix and own:
        lines += ["", f"[{prefix}]"]
    lines += own
    for name, v in subs:
        _emit(v, f"{prefix}.{name}" if prefix else name, lines)


def _value(v: Any) -> str:
    if v is None:
        return json.dumps(NONE)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) as TOML")
