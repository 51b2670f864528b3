"""The Gittins index of a discrete size distribution.

For a job with attained service ``a`` and size ``S`` (support ``s_1 < ... < s_K``, probabilities ``p_i``)

    G(a) = max_{d > 0}  P(S - a <= d | S > a) / E[min(S - a, d) | S > a].

Between support points the numerator is flat and the denominator grows, so the maximum is at some
``d = s_j - a``; prefix sums over the points above ``a`` give every candidate ratio at once, O(K).
Serving the highest index minimises mean completion time when sizes are unknown but their
distribution is known (Gittins 1989; Aalto, Ayesta and Righter 2009 for the M/G/1 queue).
Sanity checks: exponential sizes give the rate at every ``a`` (no order helps); a known size ``s``
gives ``1 / (s - a)``, i.e. SRPT.
"""

from __future__ import annotations

import numpy as np


def gittins_index(support: np.ndarray, probs: np.ndarray, attained: float = 0.0) -> float:
    """The Gittins index of one discrete distribution at attained service ``attained``."""
    return float(gittins_index_batch(np.asarray(support)[None, :], np.asarray(probs)[None, :],
                                     np.array([attained]))[0])


def gittins_quantum(support: np.ndarray, probs: np.ndarray, attained: float = 0.0) -> float:
    """The service quantum ``d*`` at which the index's maximum is reached."""
    ratios, r = _ratios(np.asarray(support, dtype=float)[None, :], np.asarray(probs, dtype=float)[None, :],
                        np.array([attained], dtype=float))
    return float(r[0, np.argmax(ratios[0])])


def gittins_index_batch(support: np.ndarray, probs: np.ndarray, attained: np.ndarray) -> np.ndarray:
    """Indices of B distributions at once: ``support``/``probs`` are (B, K), rows ascending and
    zero-padded in ``probs``; ``attained`` is (B,). A row with no mass above its attained service
    gets ``nan`` (the job should have finished)."""
    ratios, _ = _ratios(np.asarray(support, dtype=float), np.asarray(probs, dtype=float),
                        np.asarray(attained, dtype=float))
    return np.max(ratios, axis=1)


def _ratios(support: np.ndarray, probs: np.ndarray, attained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alive = (support > attained[:, None]) & (probs > 0)
    q = np.where(alive, probs, 0.0)
    mass = q.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = q / mass
        r = np.where(alive, support - attained[:, None], 0.0)
        cdf = np.cumsum(q, axis=1)
        expected = np.cumsum(q * r, axis=1) + r * (1.0 - cdf)  # E[min(R, r_j)]
        ratios = np.where(alive, cdf / expected, -np.inf)
    ratios[mass[:, 0] <= 0] = np.nan
    return ratios, r
