import numpy as np
import pytest

from hermes_env.errors import ConfigError
from hermes_env.pdgraph import distribution_from_spec

SPECS = [
    {"dist": "deterministic", "value": 2.5},
    {"dist": "discrete", "values": [1, 2, 5], "probs": [0.2, 0.5, 0.3]},
    {"dist": "exponential", "mean": 2.0},
    {"dist": "exponential", "rate": 0.5},
    {"dist": "hyperexponential", "means": [0.5, 10.0], "probs": [0.9, 0.1]},
    {"dist": "lognormal", "mean": 3.0, "cv": 0.8},
    {"dist": "lognormal", "mu": 0.2, "sigma": 0.5},
    {"dist": "gamma", "mean": 3.0, "cv": 0.5},
    {"dist": "gamma", "shape": 2.0, "scale": 1.5},
    {"dist": "histogram", "edges": [0, 1, 3, 6], "weights": [1, 2, 1]},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["dist"])
def test_moments_cdf_and_ppf_agree_with_samples(spec):
    d = distribution_from_spec(spec)
    x = np.asarray(d.sample(np.random.default_rng(0), 200_000))
    assert abs(x.mean() - d.mean) <= 4 * np.sqrt(d.var / x.size) + 1e-12
    assert x.var() == pytest.approx(d.var, rel=0.05, abs=1e-12)
    for q in (0.1, 0.5, 0.9):
        assert np.mean(x <= d.ppf(q)) == pytest.approx(q, abs=0.01) or d.is_discrete
        assert float(d.cdf(np.array(d.ppf(q)))) >= q - 1e-9
    assert distribution_from_spec(d.to_dict()) == d


def test_mean_cv_parameterisation():
    for kind in ("lognormal", "gamma"):
        d = distribution_from_spec({"dist": kind, "mean": 250, "cv": 0.6})
        assert d.mean == pytest.approx(250)
        assert np.sqrt(d.var) / d.mean == pytest.approx(0.6)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"dist": "weibull", "mean": 1}, "x.dist"),
        ({"dist": "exponential"}, "x.mean"),
        ({"dist": "gamma", "mean": 2, "cv": -1}, "x.cv"),
        ({"dist": "discrete", "values": [1, 2], "probs": [0.5, 0.6]}, "x.probs"),
        ({"dist": "hyperexponential", "means": [1, 2], "probs": [1.0]}, "x.probs"),
        ({"dist": "histogram", "edges": [0, 2, 1], "weights": [1, 1]}, "x.edges"),
        ({"dist": "lognormal", "mean": "big", "cv": 1}, "x.mean"),
        (-3, "x"),
        ("fast", "x"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(ConfigError) as err:
        distribution_from_spec(spec, "x")
    assert err.value.field == field


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["dist"])
def test_a_scalar_draw_is_the_same_draw_as_an_array_of_one(spec):
    """PDGraph sampling draws one copy's tokens as a scalar (its hot path) and several as an array: the same
    seed must give the same application either way, so both forms consume the generator alike."""
    d = distribution_from_spec(spec)
    scalar, array = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(50):
        one = d.sample(scalar)
        assert np.ndim(one) == 0
        assert float(one) == float(d.sample(array, 1)[0])
    assert scalar.random() == array.random()  # and the generators are left in the same state
