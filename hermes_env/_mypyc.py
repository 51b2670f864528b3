"""What the compiled build needs of the one source (setup.py compiles some modules with mypyc; docs/performance.md).

``HERMES_ENV_PURE=1`` runs the Python source even where compiled modules are installed; in a source checkout
whose compiled modules are older than their source (an edit not yet rebuilt), the source runs too, with a
warning: a compiled module never stands in for code that has changed. It is all or nothing, since compiled
modules call each other's native classes directly.

``mypyc_attr`` without a runtime dependency: mypyc reads the decorator from the source when it compiles a
module; in the pure build it does nothing.

A compiled class that is copied, pickled or subclassed outside the compiled modules says
``allow_interpreted_subclasses=True``: its instances are then made by ``cls.__new__(cls)`` without
``__init__``, as in Python, which copy, pickle and snapshots need. (mypyc 1.19's narrower
``serializable=True`` would do, but its classes skip ``__init__`` when called: ``Request(...)`` comes back
empty.) A class whose code reads or writes its ``__dict__`` says ``native_class=False``. docs/performance.md.
"""

from __future__ import annotations

import copy
import importlib.machinery
import os
import sys
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr as mypyc_attr
else:

    def mypyc_attr(*attrs: str, **kwattrs: Any) -> Any:
        return lambda cls: cls


def slot_names(cls: type) -> tuple[str, ...]:
    """The attributes of a class with ``__slots__``: a class compiled by mypyc keeps no ``__slots__`` and lists
    them in ``__mypyc_attrs__``."""
    return getattr(cls, "__mypyc_attrs__", None) or cls.__slots__  # type: ignore[attr-defined]


def attributes(obj: Any) -> dict[str, Any]:
    """An object's attributes by name: its ``__dict__``, and for a class compiled by mypyc (whose instances have
    no ``__dict__``, or one holding only what an interpreted subclass adds) the attributes it declares."""
    names = getattr(type(obj), "__mypyc_attrs__", ())
    found = {name: getattr(obj, name) for name in names if name != "__dict__" and hasattr(obj, name)}
    return {**found, **getattr(obj, "__dict__", {})}


def set_attributes(obj: Any, state: dict[str, Any]) -> None:
    """Set ``obj``'s attributes to ``state`` (what :func:`attributes` gave): by name for a class compiled by
    mypyc (no ``__dict__``), else its ``__dict__`` replaced."""
    if hasattr(type(obj), "__mypyc_attrs__"):
        for name, value in state.items():
            setattr(obj, name, value)
    else:
        obj.__dict__.clear()
        obj.__dict__.update(state)


PACKAGE = Path(__file__).parent
SUBPACKAGES = ("pdgraph", "cluster", "sim", "envs")  # where setup.py's compiled modules live


def compiled_modules() -> list[str]:
    """The package's modules with a compiled extension beside their source (none in a pure build)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return sorted(f"hermes_env.{sub}.{path.name[: -len(suffix)]}" for sub in SUBPACKAGES
                  for path in (PACKAGE / sub).glob(f"*{suffix}"))


def running_compiled() -> list[str]:
    """The package's modules imported from compiled extensions (not their shared library,
    ``hermes_env._compiled__mypyc``)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(name for name, module in list(sys.modules.items())
                  if name.startswith("hermes_env.") and not name.endswith("__mypyc")
                  and str(getattr(module, "__file__", "")).endswith(suffixes))


class _SourceOnly:
    """A meta-path finder that imports the package's modules from their ``.py`` files alone."""

    loaders = (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if path is None or not name.startswith("hermes_env."):
            return None
        for entry in path:
            spec = importlib.machinery.FileFinder(entry, self.loaders).find_spec(name)
            if spec is not None and spec.loader is not None:
                return spec
        return None


def _stale() -> list[str]:
    """Compiled modules of a source checkout (setup.py beside the package) older than their source."""
    if not (PACKAGE.parent / "setup.py").exists():
        return []  # an installed build: its files were written together
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return [f"{sub}/{ext.name[: -len(suffix)]}.py" for sub in SUBPACKAGES for ext in (PACKAGE / sub).glob(f"*{suffix}")
            if ext.with_name(ext.name[: -len(suffix)] + ".py").stat().st_mtime > ext.stat().st_mtime]


def choose_build() -> None:
    """Import the package's modules from source where ``HERMES_ENV_PURE=1`` asks, or compiled ones are stale."""
    pure = os.environ.get("HERMES_ENV_PURE") == "1"
    stale = [] if pure else _stale()
    if stale:
        warnings.warn(f"hermes_env: compiled modules older than their source ({', '.join(stale)}): running the "
                      "Python source; rebuild them with `make compiled` (or delete the .so files)", stacklevel=3)
    if (pure or stale) and not any(isinstance(finder, _SourceOnly) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceOnly())  # type: ignore[arg-type]
    elif compiled_modules():
        copy._deepcopy_dispatch[types.BuiltinMethodType] = _deepcopy_builtin_method  # type: ignore[attr-defined]


def _deepcopy_builtin_method(method: Any, memo: dict) -> Any:
    """A deep copy of a compiled class's bound method is bound to the copy of its instance, as Python copies a
    method (``copy._deepcopy_method``): a snapshot's events then call the copied replica, not the original.
    Other built-in methods stay shared, as copy has them (atomic)."""
    owner = getattr(method, "__self__", None)
    if owner is None or not hasattr(type(owner), "__mypyc_attrs__"):
        return method
    return getattr(copy.deepcopy(owner, memo), method.__name__)
