import numpy as np
import pytest

from hermes_env.pdgraph import Exponential, gittins_index, gittins_index_batch, gittins_quantum
from hermes_env.pdgraph.lattice import Lattice


def brute_force(support, probs, attained, grid):
    """max over every d on a dense grid (not only support points) of P(R <= d) / E[min(R, d)]."""
    alive = support > attained
    r, q = support[alive] - attained, probs[alive] / probs[alive].sum()
    best = 0.0
    for d in grid:
        best = max(best, q[r <= d].sum() / (q * np.minimum(r, d)).sum())
    return best


def test_exponential_index_is_the_rate_at_any_attained_service():
    lat = Lattice(0.001, 40_000)
    pmf = lat.continuous(Exponential(2.0))
    for a in (0.0, 0.5, 2.0, 6.0):
        assert gittins_index(lat.values, pmf, a) == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("s, a", [(3.0, 0.0), (3.0, 1.25), (10.0, 9.5)])
def test_known_size_gives_srpt(s, a):
    assert gittins_index(np.array([s]), np.array([1.0]), a) == pytest.approx(1.0 / (s - a))
    assert gittins_quantum(np.array([s]), np.array([1.0]), a) == pytest.approx(s - a)


def test_small_discrete_distributions_match_brute_force():
    rng = np.random.default_rng(7)
    for _ in range(200):
        k = rng.integers(1, 6)
        support = np.sort(rng.choice(np.arange(1, 20), size=k, replace=False)).astype(float)
        probs = rng.dirichlet(np.ones(k))
        attained = float(rng.uniform(0, support[-1] - 0.1))
        grid = np.linspace(1e-3, support[-1], 4000)
        grid = np.union1d(grid, support - attained)
        expected = brute_force(support, probs, attained, grid[grid > 0])
        assert gittins_index(support, probs, attained) == pytest.approx(expected, rel=1e-9)


def test_batch_agrees_with_single_and_handles_padding():
    support = np.array([[1.0, 4.0, 9.0], [2.0, 5.0, 0.0]])
    probs = np.array([[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]])
    attained = np.array([0.5, 3.0])
    batch = gittins_index_batch(support, probs, attained)
    assert batch[0] == pytest.approx(gittins_index(support[0], probs[0], 0.5))
    assert batch[1] == pytest.approx(1.0 / 2.0)  # only the point 5 remains: SRPT on 5 - 3
    assert np.isnan(gittins_index_batch(support[:1], probs[:1], np.array([9.0]))[0])


def test_a_job_that_survives_a_short_mode_loses_priority():
    # two-point size: likely short, rarely long; once past the short point only the long remains
    support, probs = np.array([1.0, 20.0]), np.array([0.9, 0.1])
    assert gittins_index(support, probs, 0.0) > gittins_index(support, probs, 1.5)
    assert gittins_index(support, probs, 1.5) == pytest.approx(1 / 18.5)
