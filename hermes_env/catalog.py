"""The named configs shipped with the package: experiments, clusters, workloads, cost models, bench and
train configs, found by name (``contended``, ``h100-measured``) or given as a path.

They live in the repository's ``configs/`` folder, which the wheel installs as the package
``hermes_env.configs``; both an editable and a regular install read them through
:mod:`importlib.resources`, so a name works from any working directory. A source tree imported without
an install (``PYTHONPATH=.``, or a Ray worker started in a checkout) has no ``hermes_env.configs``
package; it reads the same folder, beside the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hermes_env.errors import require

KINDS = ("experiments", "clusters", "workloads", "costs", "bench", "train", "tasks")


def config_root() -> Path:
    """The folder of the named configs (the installed ``hermes_env.configs`` package, or a source
    tree's ``configs/``)."""
    try:
        root = Path(str(resources.files("hermes_env.configs")))
    except ModuleNotFoundError:  # a source tree, not installed: its configs/ sits beside the package
        root = Path(__file__).resolve().parent.parent / "configs"
        require(root.is_dir(), "hermes_env.configs", f"is not installed and {root} does not exist",
                "install hermes_env (pip install .) or run from a complete checkout")
    require(root.is_dir(), "hermes_env.configs", f"is not a folder on disk ({root})",
            "install hermes_env as a regular or editable package, not from a zip file")
    return root


def names(kind: str) -> list[str]:
    """The config names of one kind (``experiments``, ``bench``, ...)."""
    require(kind in KINDS, "kind", f"unknown config kind {kind!r}", f"use one of {KINDS}")
    folder = config_root() / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_path(kind: str, name_or_path: str | Path, field: str = "config") -> Path:
    """A config file: ``name_or_path`` as a path when it names a YAML file (``.yaml``/``.yml``) or an
    existing file, else the packaged config of that name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        require(path.is_file(), field, f"no file {str(path)!r}")
        return path
    packaged = config_root() / kind / f"{name_or_path}.yaml"
    require(packaged.is_file(), field, f"no {kind[:-1] if kind.endswith('s') else kind} config named "
            f"{str(name_or_path)!r}", f"use a YAML path or one of {names(kind)}")
    return packaged
