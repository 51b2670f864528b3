"""Reading and checking configuration values: YAML files, the keys of a mapping, numbers.

Every failure raises :class:`~hermes_env.errors.ConfigError` naming the field and the fix, so that the
command line can print one line and exit 2 instead of a traceback. The YAML reader is PyYAML's safe
loader with three changes that a user of a config file expects:

* a syntax error names the file, line and column;
* a key given twice in one mapping is an error (PyYAML silently keeps the last value);
* numbers in exponent notation without a dot (``2e-1``, ``1e5``) are numbers, as in YAML 1.2 and JSON
  (PyYAML follows YAML 1.1 and reads them as strings).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml

from hermes_env.errors import ConfigError, require

_MISSING: Any = object()


class _Loader(yaml.SafeLoader):
    """The safe loader, with duplicate keys refused and exponent-notation floats read as numbers."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key, line, seen[key])
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; ``source`` names it in errors (a file path)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a subclass of SafeLoader)
    except _DuplicateKey as dup:
        raise ConfigError(f"{source}: line {dup.line}", f"key {dup.key!r} is given twice (first on line {dup.first})",
                          "keep one of them: YAML would silently use the last") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else source
        raise ConfigError(where, f"is not valid YAML: {err.problem or err.context}",
                          "correct the YAML syntax there") from None
    except yaml.YAMLError as err:
        raise ConfigError(source, f"is not valid YAML: {err}", "correct the YAML syntax") from None


def load_yaml(path: str | Path, field: str = "config") -> Any:
    """Read a YAML file; a missing file is an error naming ``field``."""
    path = Path(path)
    require(path.is_file(), field, f"no file {str(path)!r}")
    return parse_yaml(path.read_text(), str(path))


def check_keys(spec: Any, allowed: Collection[str], where: str) -> None:
    """``spec`` is a mapping whose keys are all in ``allowed``."""
    require(isinstance(spec, Mapping), where, f"must be a mapping, got {type(spec).__name__}")
    unknown = sorted(str(k) for k in set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", "is not a known field", f"use {', '.join(sorted(allowed))}")


def _describe(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return f"the text {value!r}"
        return f"the text {value!r} (quoted, or written in a form YAML reads as text)"
    return f"{value!r} ({type(value).__name__})"


def as_number(value: Any, field: str, *, low: float | None = None, high: float | None = None,
              low_open: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a float: a real number (not a bool, not a string), not NaN, finite unless
    ``allow_inf`` (then only +inf), within ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    require(isinstance(value, int | float) and not isinstance(value, bool), field,
            f"must be a number, got {_describe(value)}", "write a plain number such as 0.5 or 2e-1")
    value = float(value)
    require(not math.isnan(value), field, "is NaN", "give a number")
    if math.isinf(value):
        require(allow_inf and value > 0, field, f"must be finite, got {value}", "give a finite number")
        return value
    if low is not None:
        ok = value > low if low_open else value >= low
        require(ok, field, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None:
        require(value <= high, field, f"must be <= {high:g}, got {value:g}")
    return value


def as_integer(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int: an integer (not a bool, not a float such as 2.0) within ``[low, high]``."""
    require(isinstance(value, int) and not isinstance(value, bool), field,
            f"must be an integer, got {_describe(value)}", "write a whole number without a decimal point")
    if low is not None:
        require(value >= low, field, f"must be >= {low}, got {value}")
    if high is not None:
        require(value <= high, field, f"must be <= {high}, got {value}")
    return int(value)


def number(spec: Mapping[str, Any], key: str, where: str, default: Any = _MISSING, **bounds: Any) -> float:
    """``spec[key]`` checked by :func:`as_number` (``default`` when absent; required without one)."""
    if key not in spec:
        require(default is not _MISSING, f"{where}.{key}", "is missing", "give a number")
        return default
    return as_number(spec[key], f"{where}.{key}", **bounds)


def integer(spec: Mapping[str, Any], key: str, where: str, default: Any = _MISSING, **bounds: Any) -> int:
    """``spec[key]`` checked by :func:`as_integer` (``default`` when absent; required without one)."""
    if key not in spec:
        require(default is not _MISSING, f"{where}.{key}", "is missing", "give an integer")
        return default
    return as_integer(spec[key], f"{where}.{key}", **bounds)


def choice(spec: Mapping[str, Any], key: str, where: str, options: Collection[str], default: Any = _MISSING) -> str:
    """``spec[key]``, one of ``options``."""
    if key not in spec:
        require(default is not _MISSING, f"{where}.{key}", "is missing", f"use one of {', '.join(options)}")
        return default
    value = spec[key]
    require(value in options, f"{where}.{key}", f"must be one of {', '.join(map(str, options))}, got {value!r}")
    return value


def flag(spec: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> bool:
    """``spec[key]``, a boolean (true/false in YAML; not 0/1, not a string)."""
    if key not in spec:
        require(default is not _MISSING, f"{where}.{key}", "is missing", "give true or false")
        return default
    value = spec[key]
    require(isinstance(value, bool), f"{where}.{key}", f"must be true or false, got {_describe(value)}")
    return value


def check_output(path: Path, field: str, folder: bool) -> None:
    """``path`` can be written before any work starts: a folder (``folder``) or a file, not the other kind,
    under a writable folder (the nearest one that exists: missing folders are created)."""
    kind, other = ("folder", "file") if folder else ("file", "folder")
    require(not (path.is_file() if folder else path.is_dir()), field, f"{str(path)!r} is a {other}",
            f"name a {kind} to write")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path or folder:
        require(existing.is_dir(), field, f"{str(existing)!r} is a file, so no {kind} can be made under it",
                "choose another path")
    require(os.access(existing, os.W_OK), field, f"{str(existing)!r} is not writable",
            f"name a {kind} you can write")
