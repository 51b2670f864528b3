"""Demand distributions of PDGraph stages.

Every distribution is non-negative, samples from a ``numpy.random.Generator`` and exposes the
few operations the analysis needs: ``cdf`` (for exact discretisation onto a lattice), ``ppf``
(for choosing the lattice horizon), ``mean`` and ``var``. ``Discrete`` and ``Deterministic``
are point-mass distributions and expose ``points()`` instead of a density.

Specs in YAML/dicts: ``{dist: lognormal, mean: 250, cv: 0.8}``; a bare number is deterministic.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from hermes_env._mypyc import mypyc_attr
from hermes_env.errors import ConfigError, require
from hermes_env.validation import as_number


@mypyc_attr(allow_interpreted_subclasses=True)
class Distribution(ABC):
    """A non-negative random quantity (seconds, tokens or a fan-out width)."""

    kind: str = ""
    is_discrete: bool = False

    @abstractmethod
    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        """Draw ``size`` samples (a float when ``size`` is None)."""

    @abstractmethod
    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(X <= x), vectorised."""

    @abstractmethod
    def ppf(self, q: float) -> float:
        """Smallest x with P(X <= x) >= q."""

    @property
    @abstractmethod
    def mean(self) -> float: ...

    @property
    @abstractmethod
    def var(self) -> float: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The spec that :func:`distribution_from_spec` turns back into this distribution."""

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Support points and probabilities of a discrete distribution."""
        raise TypeError(f"{self.kind} is continuous and has no point masses")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "dist")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distribution) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self))


@mypyc_attr(allow_interpreted_subclasses=True)
class Deterministic(Distribution):
    kind = "deterministic"
    is_discrete = True

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return self.value if size is None else np.full(size, self.value)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=float) >= self.value).astype(float)

    def ppf(self, q: float) -> float:
        return self.value

    @property
    def mean(self) -> float:
        return self.value

    @property
    def var(self) -> float:
        return 0.0

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([self.value]), np.array([1.0])

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "value": self.value}


@mypyc_attr(allow_interpreted_subclasses=True)
class Discrete(Distribution):
    """Point masses ``values`` with probabilities ``probs`` (an empirical distribution)."""

    kind = "discrete"
    is_discrete = True

    def __init__(self, values: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> None:
        v = np.asarray(values, dtype=float)
        p = np.asarray(probs, dtype=float)
        order = np.argsort(v, kind="stable")
        self.values, self.probs = v[order], p[order] / p.sum()
        self._cum = np.cumsum(self.probs)

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        idx = np.minimum(np.searchsorted(self._cum, rng.random(size), side="right"), len(self.values) - 1)
        return self.values[idx]

    def cdf(self, x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.values, np.asarray(x, dtype=float), side="right")
        return np.concatenate([[0.0], self._cum])[i]

    def ppf(self, q: float) -> float:
        return float(self.values[min(int(np.searchsorted(self._cum, q - 1e-12)), len(self.values) - 1)])

    @property
    def mean(self) -> float:
        return float(self.values @ self.probs)

    @property
    def var(self) -> float:
        return float(((self.values - self.mean) ** 2) @ self.probs)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        return self.values, self.probs

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "values": self.values.tolist(), "probs": self.probs.tolist()}


@mypyc_attr(allow_interpreted_subclasses=True)
class Exponential(Distribution):
    kind = "exponential"

    def __init__(self, mean: float) -> None:
        self._mean = float(mean)

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return rng.exponential(self._mean, size)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return -np.expm1(-np.maximum(np.asarray(x, dtype=float), 0.0) / self._mean)

    def ppf(self, q: float) -> float:
        return -self._mean * math.log1p(-q)

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def var(self) -> float:
        return self._mean**2

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "mean": self._mean}


@mypyc_attr(allow_interpreted_subclasses=True)
class HyperExponential(Distribution):
    """A mixture of exponentials: the classic high-variance (heavy-ish tailed) size model."""

    kind = "hyperexponential"

    def __init__(self, means: Sequence[float] | np.ndarray, probs: Sequence[float] | np.ndarray) -> None:
        self.means = np.asarray(means, dtype=float)
        self.probs = np.asarray(probs, dtype=float) / np.sum(probs)

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        branch = rng.choice(len(self.means), size=size, p=self.probs)
        return rng.exponential(self.means[branch])

    def cdf(self, x: np.ndarray) -> np.ndarray:
        x = np.maximum(np.asarray(x, dtype=float), 0.0)
        return 1.0 - np.exp(-x[..., None] / self.means) @ self.probs

    def ppf(self, q: float) -> float:
        lo, hi = 0.0, float(self.means.max()) * (-math.log1p(-q) + 1.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.cdf(np.array(mid)) < q else (lo, mid)
        return hi

    @property
    def mean(self) -> float:
        return float(self.means @ self.probs)

    @property
    def var(self) -> float:
        return float((2 * self.means**2) @ self.probs) - self.mean**2

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "means": self.means.tolist(), "probs": self.probs.tolist()}


@mypyc_attr(allow_interpreted_subclasses=True)
class _ScipyBacked(Distribution):
    """A continuous distribution whose CDF and quantiles come from a frozen scipy distribution, built
    (and scipy.stats imported, 0.4 to 0.9 s) only when a CDF or quantile is first asked for: sampling
    alone, as a headless FCFS run does, never needs it."""

    @cached_property
    def _frozen(self) -> Any:
        from scipy import stats

        return self._freeze(stats)

    def _freeze(self, stats: Any) -> Any:
        raise NotImplementedError

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return self._frozen.cdf(np.asarray(x, dtype=float))

    def ppf(self, q: float) -> float:
        if q <= 0.0:  # both subclasses live on [0, inf): the workload's validation asks this at load
            return 0.0
        return float(self._frozen.ppf(q))


@mypyc_attr(allow_interpreted_subclasses=True)
class LogNormal(_ScipyBacked):
    """ln X ~ Normal(mu, sigma). Specs may give ``mean`` and ``cv`` instead of mu and sigma."""

    kind = "lognormal"

    def __init__(self, mu: float, sigma: float) -> None:
        self.mu, self.sigma = float(mu), float(sigma)

    def _freeze(self, stats: Any) -> Any:
        return stats.lognorm(s=self.sigma, scale=math.exp(self.mu))

    @classmethod
    def from_mean_cv(cls, mean: float, cv: float) -> LogNormal:
        sigma2 = math.log1p(cv**2)
        return cls(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return rng.lognormal(self.mu, self.sigma, size)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    @property
    def var(self) -> float:
        return math.expm1(self.sigma**2) * self.mean**2

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "mu": self.mu, "sigma": self.sigma}


@mypyc_attr(allow_interpreted_subclasses=True)
class Gamma(_ScipyBacked):
    """Gamma(shape, scale). Specs may give ``mean`` and ``cv`` instead."""

    kind = "gamma"

    def __init__(self, shape: float, scale: float) -> None:
        self.shape, self.scale = float(shape), float(scale)

    def _freeze(self, stats: Any) -> Any:
        return stats.gamma(a=self.shape, scale=self.scale)

    @classmethod
    def from_mean_cv(cls, mean: float, cv: float) -> Gamma:
        shape = 1.0 / cv**2
        return cls(shape, mean / shape)

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        return rng.gamma(self.shape, self.scale, size)

    @property
    def mean(self) -> float:
        return self.shape * self.scale

    @property
    def var(self) -> float:
        return self.shape * self.scale**2

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "shape": self.shape, "scale": self.scale}


@mypyc_attr(allow_interpreted_subclasses=True)
class Histogram(Distribution):
    """Piecewise-uniform density over bins ``edges[i]..edges[i+1]`` with weights ``weights[i]``.

    This is what :func:`hermes_env.pdgraph.fit.fit_pdgraph` produces from measured demands.
    """

    kind = "histogram"

    def __init__(self, edges: Sequence[float] | np.ndarray, weights: Sequence[float] | np.ndarray) -> None:
        self.edges = np.asarray(edges, dtype=float)
        self.weights = np.asarray(weights, dtype=float) / np.sum(weights)
        self._cum = np.concatenate([[0.0], np.cumsum(self.weights)])

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray | float:
        u = rng.random(size)
        return np.interp(u, self._cum, self.edges)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(x, dtype=float), self.edges, self._cum, left=0.0, right=1.0)

    def ppf(self, q: float) -> float:
        return float(np.interp(q, self._cum, self.edges))

    @property
    def mean(self) -> float:
        mids = 0.5 * (self.edges[1:] + self.edges[:-1])
        return float(mids @ self.weights)

    @property
    def var(self) -> float:
        a, b = self.edges[:-1], self.edges[1:]
        second = (a * a + a * b + b * b) / 3.0
        return float(second @ self.weights) - self.mean**2

    def to_dict(self) -> dict[str, Any]:
        return {"dist": self.kind, "edges": self.edges.tolist(), "weights": self.weights.tolist()}


# Bounds that keep every derived quantity (lognormal sigma, gamma shape, lattice horizons) inside float
# range: a demand beyond 1e12 (seconds or tokens) or a coefficient of variation beyond 100 is a typo.
_HIGH = {"cv": 100.0, "sigma": 10.0}
_DEFAULT_HIGH = 1e12


def _number(spec: Mapping[str, Any], key: str, field: str, *, positive: bool = True) -> float:
    require(key in spec, f"{field}.{key}", "is missing", f"give a number for '{key}'")
    return as_number(spec[key], f"{field}.{key}", low=0.0, low_open=positive, high=_HIGH.get(key, _DEFAULT_HIGH))


def _vector(spec: Mapping[str, Any], key: str, field: str, *, positive: bool) -> np.ndarray:
    require(key in spec, f"{field}.{key}", "is missing", f"give a list of numbers for '{key}'")
    raw = spec[key]
    require(isinstance(raw, list | tuple) and len(raw) > 0, f"{field}.{key}", "must be a non-empty list")
    try:
        arr = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}.{key}", f"must contain numbers only, got {raw!r}") from None
    require(bool(np.all(np.isfinite(arr))) and bool(np.all(np.abs(arr) <= _DEFAULT_HIGH)), f"{field}.{key}",
            f"must contain finite numbers of at most {_DEFAULT_HIGH:g}")
    bad = arr <= 0 if positive else arr < 0
    require(not bad.any(), f"{field}.{key}", f"entries must be {'> 0' if positive else '>= 0'}, got {raw!r}")
    return arr


def _probabilities(spec: Mapping[str, Any], key: str, field: str, n: int) -> np.ndarray:
    p = _vector(spec, key, field, positive=False)
    require(len(p) == n, f"{field}.{key}", f"has {len(p)} entries but {n} are needed")
    require(
        abs(p.sum() - 1.0) <= 1e-6,
        f"{field}.{key}",
        f"sums to {p.sum():.6g}, not 1",
        "make the probabilities sum to 1",
    )
    return p


_KINDS = ("deterministic", "discrete", "exponential", "hyperexponential", "lognormal", "gamma", "histogram")


def distribution_from_spec(spec: Any, field: str = "distribution") -> Distribution:
    """Build a distribution from a YAML/dict spec, raising :class:`ConfigError` naming ``field``."""
    if isinstance(spec, Distribution):
        return spec
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return Deterministic(as_number(spec, field, low=0.0, high=_DEFAULT_HIGH))
    require(isinstance(spec, Mapping), field, f"must be a number or a mapping with 'dist', got {spec!r}")
    kind = spec.get("dist")
    require(kind in _KINDS, f"{field}.dist", f"unknown distribution {kind!r}", f"use one of {', '.join(_KINDS)}")
    if kind == "deterministic":
        return Deterministic(_number(spec, "value", field, positive=False))
    if kind == "discrete":
        values = _vector(spec, "values", field, positive=False)
        return Discrete(values, _probabilities(spec, "probs", field, len(values)))
    if kind == "exponential":
        if "rate" in spec:
            return Exponential(1.0 / _number(spec, "rate", field))
        return Exponential(_number(spec, "mean", field))
    if kind == "hyperexponential":
        means = _vector(spec, "means", field, positive=True)
        return HyperExponential(means, _probabilities(spec, "probs", field, len(means)))
    if kind in ("lognormal", "gamma"):
        cls = LogNormal if kind == "lognormal" else Gamma
        if "mean" in spec or "cv" in spec:
            return cls.from_mean_cv(_number(spec, "mean", field), _number(spec, "cv", field))
        if kind == "lognormal":
            require("mu" in spec, f"{field}.mu", "is missing", "give mu and sigma, or mean and cv")
            mu = as_number(spec["mu"], f"{field}.mu", low=-50.0, high=50.0)
            return LogNormal(mu, _number(spec, "sigma", field))
        require("shape" in spec, f"{field}.shape", "is missing", "give mean and cv, or shape and scale")
        return Gamma(_number(spec, "shape", field), _number(spec, "scale", field))
    edges = _vector(spec, "edges", field, positive=False)
    require(len(edges) >= 2 and bool(np.all(np.diff(edges) > 0)), f"{field}.edges", "must be >= 2 increasing numbers")
    weights = _vector(spec, "weights", field, positive=False)
    require(len(weights) == len(edges) - 1, f"{field}.weights", f"needs {len(edges) - 1} entries (one per bin)")
    require(weights.sum() > 0, f"{field}.weights", "must not all be zero")
    return Histogram(edges, weights)
