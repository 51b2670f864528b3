"""Discrete distributions of seconds, and the uniform lattice on which the analysis convolves them.

The analysis represents every demand as a probability mass function on the lattice
``0, dt, 2 dt, ..., (n - 1) dt``: sums of independent demands are then convolutions (FFT), mixtures
are weighted sums, and a max of independent copies is a power of the CDF. Point masses are split
between the two neighbouring lattice points so that means are preserved exactly. A continuous
distribution puts the mass of ``((k - 1) dt, k dt]`` on point ``k``, so that its CDF is exact at
every lattice point; this matters for the Gittins index, whose best quantum can be one step long
(rounding to the nearest point instead would inflate the index of an exponential size by 1.5x at
zero attained service), and costs at most ``dt / 2`` of upward bias in the mean. Mass beyond the
horizon is kept on the last point, so a caller can check that it is tiny.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hermes_env.pdgraph.distributions import Distribution


@dataclass(frozen=True)
class DiscreteDistribution:
    """A distribution on finitely many points: ``support`` (ascending) and ``probs`` (sum 1)."""

    support: np.ndarray
    probs: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.support @ self.probs)

    @property
    def var(self) -> float:
        return float(((self.support - self.mean) ** 2) @ self.probs)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var))

    @cached_property
    def _cumulative(self) -> np.ndarray:
        """``[0, P(X <= support[0]), ..., 1]``, computed once (forecasts read it at every decision)."""
        return np.concatenate([[0.0], np.cumsum(self.probs)])

    def cdf(self, x: float | np.ndarray) -> np.ndarray:
        return self._cumulative[np.searchsorted(self.support, x, side="right")]

    def quantile(self, q: float | np.ndarray) -> np.ndarray:
        """Smallest support point whose CDF reaches ``q``."""
        idx = np.searchsorted(self._cumulative[1:], np.asarray(q) - 1e-12, side="left")
        return self.support[np.minimum(idx, len(self.support) - 1)]

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.choice(self.support, size=size, p=self.probs)

    def __repr__(self) -> str:
        return f"DiscreteDistribution(points={len(self.support)}, mean={self.mean:.6g}, std={self.std:.6g})"


class Lattice:
    """A uniform grid ``k * dt`` for ``k < n``, with the pmf operations the analysis needs."""

    def __init__(self, dt: float, n: int, upper: bool = False) -> None:
        if not (dt > 0 and n >= 2):
            raise ValueError(f"lattice needs dt > 0 and n >= 2, got dt={dt}, n={n}")
        self.dt, self.n, self.upper = float(dt), int(n), upper
        self.values = np.arange(n) * self.dt

    def delta(self, x: float = 0.0) -> np.ndarray:
        return self.points(np.array([x]), np.array([1.0]))

    def points(self, values: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Point masses split linearly between neighbouring lattice points (mean-preserving); on an
        ``upper`` lattice moved up to the next point instead, so that every distribution built on it
        stochastically dominates the true one (continuous ones always are: their CDF is exact at the points)."""
        if self.upper:
            pos = np.clip(np.ceil(np.asarray(values, dtype=float) / self.dt - 1e-9), 0, self.n - 1).astype(np.int64)
            return np.bincount(pos, probs, minlength=self.n)[: self.n]
        pos = np.clip(np.asarray(values, dtype=float) / self.dt, 0, self.n - 1)
        lo = np.floor(pos).astype(np.int64)
        frac = pos - lo
        hi = np.minimum(lo + 1, self.n - 1)
        pmf = np.bincount(lo, probs * (1 - frac), minlength=self.n)
        pmf += np.bincount(hi, probs * frac, minlength=self.n)
        return pmf[: self.n]

    def continuous(self, dist: Distribution) -> np.ndarray:
        if dist.is_discrete:
            return self.points(*dist.points())
        cdf = dist.cdf(self.values)
        pmf = np.diff(np.concatenate([[0.0], cdf]))
        pmf[-1] += 1.0 - cdf[-1]
        return np.maximum(pmf, 0.0)

    def convolve(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The pmf of the sum; mass past the horizon stays on the last point."""
        from scipy.signal import fftconvolve  # imported when first needed: keeps `import hermes_env` light

        full = fftconvolve(a, b)
        out = np.maximum(full[: self.n], 0.0)
        out[-1] += max(float(full[self.n :].sum()), 0.0)
        return out

    def convolve_many(self, rows: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Convolve each row of ``rows`` (m, n) with ``b``: one FFT of ``b`` serves them all."""
        size = 2 * self.n
        full = np.fft.irfft(np.fft.rfft(rows, size, axis=1) * np.fft.rfft(b, size), size, axis=1)
        out = np.maximum(full[:, : self.n], 0.0)
        out[:, -1] += np.maximum(full[:, self.n :].sum(axis=1), 0.0)
        return out

    def power(self, a: np.ndarray, k: int) -> np.ndarray:
        """The pmf of the sum of ``k`` independent copies (k >= 0)."""
        result, base = self.delta(0.0), a
        while k:
            if k & 1:
                result = self.convolve(result, base)
            k >>= 1
            if k:
                base = self.convolve(base, base)
        return result

    def residual(self, a: np.ndarray, attained: float) -> np.ndarray:
        """The pmf of ``S - attained`` given ``S > attained`` (mean-preserving shift)."""
        if attained <= 0:
            return a
        shift = attained / self.dt
        keep = np.nonzero((np.arange(self.n) > shift) & (a > 0))[0]
        mass = a[keep].sum()
        if mass <= 0:
            raise ValueError(f"attained service {attained:.6g}s exceeds every possible demand of this stage")
        return self.points(keep * self.dt - attained, a[keep] / mass)

    def max_iid(self, a: np.ndarray, width_values: np.ndarray, width_probs: np.ndarray) -> np.ndarray:
        """The pmf of the max of a random number of independent copies (a fan-out's duration)."""
        cdf = np.minimum(np.cumsum(a), 1.0)
        mixed = sum(p * cdf ** int(w) for w, p in zip(width_values, width_probs, strict=True))
        return np.diff(np.concatenate([[0.0], mixed]))

    def distribution(self, pmf: np.ndarray) -> DiscreteDistribution:
        """Drop empty points and normalise."""
        nz = np.nonzero(pmf > 1e-15)[0]
        p = pmf[nz]
        return DiscreteDistribution(self.values[nz].copy(), p / p.sum())

    def mean(self, pmf: np.ndarray) -> float:
        return float(self.values @ pmf)
