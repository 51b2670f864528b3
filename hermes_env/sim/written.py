"""Written policies: a policy a person or a program wrote in a Python file, named ``path/to/file.py:Name``
wherever a policy name goes (``hermes-env evaluate --policy``, ``simulate --scheduler``, a bench's lists, a
task's heuristics, a planner's base: ``rollout:path/to/file.py:Name``).

The path holds no colon (``rollout:FILE.py:Name`` is then the planner family over it). ``Name`` is a class (or
a factory: any callable taking no argument) defined in the file; what it builds must be a peer of the
built-in heuristics of its decision kind, with the interface they use
(:mod:`hermes_env.sim.policies`): it subclasses the kind's base class and defines the kind's methods
(:data:`INTERFACES`; docs/tasks.md, "Written policies", says what each receives and may read). The file is
loaded with importlib from its path, once per version of the file (its modification time and size), under
a module name of its own; ``sys.path`` is left alone, so the file imports what an installed package may
(``hermes_env``, ``numpy``, ...) and nothing beside it. A missing file, a missing name, a file that fails
to import or an object of the wrong interface is one error naming the file, the name and what the decision
kind needs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from hermes_env.errors import ConfigError, require

SPEC = re.compile(r"^(?P<path>[^:]+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
# per kind: the base class (module, name) and the methods a written policy must define, at least one of them
INTERFACES: dict[str, tuple[str, str, tuple[str, ...], str]] = {
    "scheduler": ("hermes_env.sim.policies", "SchedulingPolicy", ("key", "select"),
                  "key(request, now) -> a sortable priority (lower first), or select(backend, waiting, now) -> an "
                  "index of waiting"),
    "router": ("hermes_env.sim.policies", "Router", ("route",),
               "route(backend, request, candidates, now) -> one of candidates"),
    "autoscaler": ("hermes_env.sim.policies", "Autoscaler", ("start", "decide"),
                   "start(sim, now) and/or decide(sim, now), ordering through sim.scale_up / sim.scale_down"),
    "prewarm": ("hermes_env.sim.policies", "PrewarmPolicy", ("start", "decide"),
                "start(sim, now) and/or decide(sim, now), ordering through sim.prewarm / sim.release"),
    "admission": ("hermes_env.sim.policies", "AdmissionPolicy", ("admit",),
                  "admit(sim, app, now) -> ADMIT, DEFER or REJECT"),
    "retention": ("hermes_env.sim.retention", "RetentionPolicy",
                  ("at_boundary", "after_pin", "victim_key", "pressure_plan"),
                  "at_boundary(replica, ctx, now) -> a Plan (and after_pin, victim_key, pressure_plan as needed)"),
}
_MODULES: dict[tuple[str, int, int], Any] = {}  # (resolved path, mtime_ns, size) -> the loaded module


class OtherKind(ConfigError):
    """The policy is not of the kind asked for (it does not subclass its base class)."""


def is_written(spec: Any) -> bool:
    """Whether ``spec`` names a written policy (``FILE.py:Name``)."""
    return isinstance(spec, str) and SPEC.match(spec) is not None


def base_class(kind: str) -> type:
    """The base class a written policy of ``kind`` subclasses."""
    module, name, _, _ = INTERFACES[kind]
    return getattr(importlib.import_module(module), name)


def needs(kind: str) -> str:
    """What a written policy of ``kind`` must be, in words (the fix of every loading error)."""
    module, name, _, methods = INTERFACES[kind]
    return f"a {kind} subclasses {module}.{name} and defines {methods}; see docs/tasks.md, Written policies"


def load_module(path: Path, kind: str, spec: str) -> Any:
    """The module of ``path``, executed once per version of the file, without touching ``sys.path``."""
    require(path.is_file(), kind, f"{spec!r}: no file {str(path)!r}",
            "give the path of a Python file (relative to the current directory), then :ClassName")
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key not in _MODULES:
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
        stem = re.sub(r"\W", "_", resolved.stem)
        module_name = f"hermes_env_written_{stem}_{digest}"
        loader_spec = importlib.util.spec_from_file_location(module_name, resolved)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look classes up there
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:  # the file's own error, in one line
            del sys.modules[module_name]
            raise ConfigError(kind, f"{spec!r}: {str(path)!r} failed to import ({type(err).__name__}: {err})",
                              "run the file with python to see the traceback") from None
        _MODULES[key] = module
    return _MODULES[key]


def make_written(kind: str, spec: str, **kwargs: Any) -> Any:
    """The policy ``spec`` (``FILE.py:Name``) names, checked against ``kind``'s interface; its ``name`` is
    ``spec`` (so summaries and tables say which file ran)."""
    match = SPEC.match(spec)
    require(match is not None, kind, f"{spec!r} is not a written policy", "name one as path/to/file.py:ClassName")
    path, name = Path(match["path"]), match["name"]
    module = load_module(path, kind, spec)
    defined = sorted(k for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
    require(hasattr(module, name), kind, f"{spec!r}: {str(path)!r} defines no {name!r}",
            f"define it there, or name one of its classes: {', '.join(defined) or 'none'}")
    factory = getattr(module, name)
    require(callable(factory), kind, f"{spec!r}: {name!r} is a {type(factory).__name__}, not a class or factory",
            needs(kind))
    base = base_class(kind)
    if isinstance(factory, type):  # a class: its interface is checked before it is built
        _check(kind, spec, factory, base)
    try:
        policy = factory(**kwargs)
    except Exception as err:
        raise ConfigError(kind, f"{spec!r}: {name}() failed ({type(err).__name__}: {err})",
                          "a written policy is built with no arguments: give its parameters defaults") from None
    _check(kind, spec, type(policy), base)
    policy.name = spec
    return policy


def _check(kind: str, spec: str, cls: type, base: type) -> None:
    """``cls`` subclasses ``base`` and defines at least one of the kind's methods itself (not the base's)."""
    methods = INTERFACES[kind][2]
    if not issubclass(cls, base):
        raise OtherKind(kind, f"{spec!r}: {cls.__name__} is not a {kind} (it does not subclass {base.__name__})",
                        needs(kind))
    own = [m for m in methods if callable(getattr(cls, m, None)) and getattr(cls, m) is not getattr(base, m, None)]
    require(bool(own), kind, f"{spec!r}: {cls.__name__} defines none of {', '.join(methods)}", needs(kind))



def kind_of(spec: str, field: str = "policy") -> str:
    """The decision kind of written policy ``spec``: the one whose interface it meets (the leaderboard places
    it on the tasks of that kind). Built once per kind; where it meets none, the error of the kind whose base
    it subclasses (what it lacks), else one naming every base class."""
    fits, errors = [], {}
    for kind in INTERFACES:
        try:
            make_written(kind, spec)
            fits.append(kind)
        except OtherKind:
            continue
        except ConfigError as err:  # a missing file or name, an import error, a missing method
            errors[kind] = err
    if fits:
        return fits[0]
    if errors:
        err = next(iter(errors.values()))
        raise ConfigError(field, err.problem, err.fix)
    bases = ", ".join(f"{m}.{n} ({k})" for k, (m, n, _, _) in INTERFACES.items())
    raise ConfigError(field, f"{spec!r} is a policy of no decision kind", f"subclass one of {bases}")
