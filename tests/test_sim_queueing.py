"""Single-server special cases against queueing theory (long runs, a few percent)."""

import math

import pytest

from hermes_env.sim import ExperimentConfig, Simulation


def one_tool_experiment(service, rate, servers, n):
    return ExperimentConfig.from_dict({
        "cluster": {"tool_backends": [{"name": "tool:server", "instances": 1, "capacity": servers}]},
        "workload": {
            "num_applications": n,
            "arrivals": {"process": "poisson", "rate": rate},
            "applications": [{"template": {"name": "job", "stages": [
                {"name": "serve", "backend": "tool:server", "service_time": service}]}}],
        },
    })


def mean_sojourn(service, rate, servers=1, n=80_000, seed=1):
    result = Simulation(one_tool_experiment(service, rate, servers, n), seed=seed).run()
    rows = result.rows[n // 10:]  # drop the warm-up tenth
    return sum(r["completion_time"] for r in rows) / len(rows)


def test_mm1_mean_sojourn():
    lam, mu = 0.7, 1.0
    assert mean_sojourn({"dist": "exponential", "mean": 1 / mu}, lam) == pytest.approx(1 / (mu - lam), rel=0.05)


@pytest.mark.parametrize("service, second_moment", [
    ({"dist": "deterministic", "value": 1.0}, 1.0),
    ({"dist": "gamma", "mean": 1.0, "cv": 0.5}, 1.25),
    ({"dist": "hyperexponential", "means": [0.5, 3.0], "probs": [0.8, 0.2]}, 0.8 * 2 * 0.25 + 0.2 * 2 * 9),
])
def test_mg1_pollaczek_khinchine(service, second_moment):
    lam, mean = 0.6, 1.0
    rho = lam * mean
    expected = mean + lam * second_moment / (2 * (1 - rho))
    assert mean_sojourn(service, lam) == pytest.approx(expected, rel=0.05)


def erlang_c(c, a):
    """P(wait) in M/M/c with offered load a = lambda / mu."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_mmc_erlang_c():
    c, lam, mu = 3, 2.4, 1.0
    expected = erlang_c(c, lam / mu) / (c * mu - lam) + 1 / mu
    assert mean_sojourn({"dist": "exponential", "mean": 1 / mu}, lam, servers=c) == pytest.approx(expected, rel=0.05)
