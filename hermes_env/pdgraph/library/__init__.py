"""The application library: PDGraph templates of real LLM applications.

Each template is a YAML file beside this module whose ``sources`` list gives the public origin of
every number (or says plainly where a number is a modelling choice). See docs/applications.md.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from hermes_env.errors import require
from hermes_env.pdgraph.graph import PDGraph

TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(
    p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml")))


@cache
def load_template(name: str) -> PDGraph:
    """The library's PDGraph called ``name`` (one of :data:`TEMPLATE_NAMES`)."""
    require(name in TEMPLATE_NAMES, "template", f"unknown template {name!r}", f"use one of {list(TEMPLATE_NAMES)}")
    return PDGraph.from_yaml(resources.files(__name__) / f"{name}.yaml")


__all__ = ["TEMPLATE_NAMES", "load_template"]
