"""The build's one hook: compile the simulator's hot modules with mypyc, from the same Python source.

pyproject.toml holds the metadata; this file only adds extension modules. The modules in ``COMPILED`` are
compiled by mypyc (a build requirement) when a C compiler is found, and ship beside their ``.py`` files, which
stay the only implementation: without a compiler, or with ``HERMES_ENV_COMPILE=0``, the same code runs
uncompiled. ``HERMES_ENV_COMPILE=1`` makes a missing compiler or mypyc an error (``make test`` sets it, so the
suite never passes on a pure build by accident). docs/performance.md says what is compiled and why.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The simulator's hot path, lowest layer first (docs/performance.md): kept in step with the compiled build by
# tests/test_compiled.py.
COMPILED = [
    "hermes_env/pdgraph/distributions.py",
    "hermes_env/pdgraph/sampling.py",
    "hermes_env/cluster/request.py",
    "hermes_env/cluster/prefix.py",
    "hermes_env/cluster/queue.py",
    "hermes_env/cluster/latency.py",
    "hermes_env/cluster/llm.py",
    "hermes_env/sim/engine.py",
    "hermes_env/sim/metrics.py",
    "hermes_env/sim/simulator.py",
    "hermes_env/envs/features.py",
]
# mypy checks the compiled modules strictly enough to compile them; the rest of the package is read for types
# only (its own errors are not the build's), and scipy has no stubs.
MYPY_OPTIONS = ["--python-version", "3.11", "--ignore-missing-imports", "--follow-imports=silent"]


def _compiler() -> str | None:
    """The C compiler Python was built with, if it is on this machine."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(cc)[0])


def ext_modules() -> list:
    """mypyc's extension modules, or none (a pure build) where compiling is off or impossible."""
    mode = os.environ.get("HERMES_ENV_COMPILE", "auto")
    if mode not in ("0", "1", "auto"):
        sys.exit(f"HERMES_ENV_COMPILE={mode!r}: use 0 (pure Python), 1 (compile or fail) or leave it unset (auto)")
    if mode == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        mypycify = None
    problem = "mypyc is not installed" if mypycify is None else None if _compiler() else "no C compiler found"
    if problem:
        if mode == "1":
            sys.exit(f"HERMES_ENV_COMPILE=1: {problem} (install mypy and a C compiler, or set HERMES_ENV_COMPILE=0)")
        print(f"hermes_env: {problem}; building pure Python", file=sys.stderr)
        return []
    # the modules' shared library inside the package (hermes_env/_compiled__mypyc), not at the top of
    # sys.path: a checkout's console scripts find it there too (a top-level one is on sys.path only in the root)
    return mypycify(MYPY_OPTIONS + COMPILED, opt_level="3", debug_level="0", group_name="hermes_env._compiled")


class BuildExt(build_ext):
    """Compiled modules built in place (``make compiled``, editable installs) carry the time of the build, not
    that of a cached object file, so that hermes_env tells a source edited since (hermes_env/_mypyc.py)."""

    def copy_file(self, infile: str, outfile: str, *args: object, **kwargs: object) -> tuple[str, bool]:
        result = super().copy_file(infile, outfile, *args, **kwargs)
        os.utime(outfile)  # also when the copy was skipped as up to date
        return result


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt})
