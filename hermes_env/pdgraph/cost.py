"""Cost models: how many seconds of service an LLM stage's tokens cost on its backend.

The PDGraph speaks tokens for LLM stages and seconds for the others; remaining demand is measured in
seconds, so the caller supplies a :class:`CostModel`. ``hermes_env.cluster`` derives one from the
latency profile measured on a GPU; :class:`LinearTokenCost` is the plain first-order model
``overhead + prefill_per_token * prompt + decode_per_token * output`` for each backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hermes_env.errors import ConfigError, require
from hermes_env.validation import load_yaml


@runtime_checkable
class CostModel(Protocol):
    def llm_service_time(self, backend: str, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """Seconds of service for requests with these token counts (broadcast element-wise)."""
        ...


@dataclass(frozen=True)
class TokenCost:
    overhead: float
    prefill_per_token: float
    decode_per_token: float

    def __post_init__(self) -> None:
        for key in ("overhead", "prefill_per_token", "decode_per_token"):
            v = getattr(self, key)
            require(isinstance(v, int | float) and v >= 0, f"cost.{key}", f"must be a number >= 0, got {v!r}")


class LinearTokenCost:
    """Per-backend linear token costs. Every LLM backend must be listed: nothing is guessed."""

    def __init__(self, per_backend: Mapping[str, TokenCost], source: str = "") -> None:
        self.per_backend = dict(per_backend)
        self.source = source

    def llm_service_time(self, backend: str, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        require(backend in self.per_backend, f"cost.backends.{backend}", "has no token cost",
                f"add it to the cost model (known: {sorted(self.per_backend)})")
        c = self.per_backend[backend]
        return c.overhead + c.prefill_per_token * np.asarray(prompt_tokens) + c.decode_per_token * np.asarray(
            output_tokens)

    def fingerprint(self) -> dict[str, list[float]]:
        """What the service times depend on (the table cache's key: :mod:`hermes_env.pdgraph.tablecache`)."""
        return {name: [c.overhead, c.prefill_per_token, c.decode_per_token] for name, c in self.per_backend.items()}

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> LinearTokenCost:
        require(isinstance(spec, Mapping) and isinstance(spec.get("backends"), Mapping), "cost.backends",
                "must map backend names to {overhead, prefill_per_token, decode_per_token}")
        per_backend = {}
        for name, c in spec["backends"].items():
            require(isinstance(c, Mapping), f"cost.backends.{name}", "must be a mapping")
            missing = {"overhead", "prefill_per_token", "decode_per_token"} - set(c)
            if missing:
                raise ConfigError(f"cost.backends.{name}.{sorted(missing)[0]}", "is missing")
            per_backend[name] = TokenCost(c["overhead"], c["prefill_per_token"], c["decode_per_token"])
        return cls(per_backend, str(spec.get("source", "")))

    @classmethod
    def from_yaml(cls, path: str | Path) -> LinearTokenCost:
        return cls.from_dict(load_yaml(path, "cost"))
