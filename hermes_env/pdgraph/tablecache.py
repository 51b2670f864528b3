"""An on-disk cache of the expensive tables of a :class:`~hermes_env.pdgraph.demand.DemandModel`.

Most of a demand model's construction is spent on two things that depend only on the PDGraph and the cost
model: the lattice horizon (found by tightening passes over the whole state space) and the Gittins table
(an index per state, pending copies and attained-service grid point). An agent session's 264 states take
about 9 s of CPU for them, and every new process (an environment, a bench worker, a test) paid it again.
Both are kept here, keyed by the *content* they are computed from:

* the PDGraph (its ``to_dict``), the cost model's :meth:`fingerprint` (a cost model without one is not
  cached), the lattice size and the attained grid;
* the code that computes them (the source of ``hermes_env.pdgraph`` and of the cost model's module), the
  numpy and scipy versions and the machine type, so that a code change or an FFT that rounds differently
  gives a new key instead of stale tables.

Loaded tables are bit-identical to computed ones (they are the stored float64 values); everything else
of a model is still computed, from the stored horizon, in one pass. Files are written to a temporary
name and renamed, so concurrent writers (parallel tests, bench workers) never expose a partial file; a
file that does not read back whole, or whose key or shapes disagree, is rebuilt and rewritten.

The directory is ``$HERMES_ENV_CACHE``, else ``$XDG_CACHE_HOME/hermes_env``, else ``~/.cache/hermes_env``;
``HERMES_ENV_CACHE=off`` disables the disk cache (every process then computes its tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import warnings
import zipfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "HERMES_ENV_CACHE"
FORMAT = 1  # bump when the layout of a stored part changes
_warned: set[str] = set()


def cache_dir() -> Path | None:
    """Where tables are kept (None: the disk cache is off)."""
    value = os.environ.get(ENV_VAR)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "false", "no") else Path(value).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "hermes_env"
    try:
        return Path.home() / ".cache" / "hermes_env"
    except RuntimeError:  # no home directory (a bare container): nowhere to keep them
        return None


@cache
def _source_digest(*modules: str) -> str:
    """A digest of the source of ``hermes_env.pdgraph`` and of the given modules' files."""
    import numpy
    import scipy

    digest = hashlib.sha256(f"{FORMAT} {numpy.__version__} {scipy.__version__} {platform.machine()}".encode())
    files = sorted(p for p in resources.files("hermes_env.pdgraph").iterdir() if p.name.endswith(".py"))
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    for module in modules:
        origin = getattr(sys.modules.get(module), "__file__", None)
        if origin and origin.endswith(".py"):
            digest.update(module.encode() + Path(origin).read_bytes())
    return digest.hexdigest()


def table_key(graph: Any, cost: Any, **settings: Any) -> str | None:
    """The cache key of ``graph``'s tables under ``cost`` and ``settings`` (None: not cacheable, because
    the cost model has no ``fingerprint``)."""
    if cost is None:
        fingerprint, module = None, None
    else:
        fingerprint = getattr(cost, "fingerprint", None)
        if fingerprint is None:
            return None
        fingerprint, module = fingerprint(), type(cost).__module__
    payload = json.dumps([graph.to_dict(), fingerprint, settings], sort_keys=True, default=repr)
    code = _source_digest(*(m for m in (module,) if m and m != "hermes_env.pdgraph.cost"))
    return hashlib.sha256(f"{code}\n{payload}".encode()).hexdigest()[:40]


def load(key: str | None, part: str) -> dict[str, np.ndarray] | None:
    """The arrays stored for ``key`` and ``part``, or None when there are none (or they do not read back
    whole, or were stored under another key)."""
    path = _path(key, part)
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}  # reading checks each member's CRC
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if str(arrays.pop("key", "")) != key:
        return None
    return arrays


def store(key: str | None, part: str, arrays: dict[str, np.ndarray]) -> None:
    """Keep ``arrays`` for ``key`` and ``part`` (written whole or not at all). A directory that cannot be
    written is reported once and the tables are simply not kept."""
    path = _path(key, part)
    if path is None:
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), **arrays)
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if str(path.parent) not in _warned:
            _warned.add(str(path.parent))
            warnings.warn(f"hermes_env cannot keep PDGraph tables in {path.parent} ({err}); they are recomputed "
                          f"in every process: set {ENV_VAR} to a writable directory, or to 'off'", stacklevel=3)


def _path(key: str | None, part: str) -> Path | None:
    directory = cache_dir()
    return None if key is None or directory is None else directory / f"{part}-{key}.npz"
