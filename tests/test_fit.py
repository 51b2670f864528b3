import numpy as np
import pytest

from hermes_env.errors import ConfigError
from hermes_env.pdgraph import DemandModel, fit_pdgraph, sample_realisation
from hermes_env.pdgraph.library import load_template

N_TRACES = 10_000
TOLERANCE = 0.02  # |fitted - true| for every transition probability and fan-out width probability


def transitions(graph):
    return {(s.name, t.to): t for s in graph.stages for t in s.next}


@pytest.mark.parametrize("name", ["code_generation", "react_agent", "fact_checking", "multi_agent_debate",
                                  "self_consistency", "map_reduce_summarisation"])
def test_fit_recovers_structure_probabilities_and_demands(cost, name):
    true = load_template(name)
    rng = np.random.default_rng(11)
    space = true.state_space()
    traces = [sample_realisation(space, rng).to_trace() for _ in range(N_TRACES)]
    fitted = fit_pdgraph(traces, name=f"{name}-fitted")

    assert fitted.entry == true.entry
    assert {s.name: s.backend for s in fitted.stages} == {s.name: s.backend for s in true.stages}
    expected, got = transitions(true), transitions(fitted)
    assert set(got) == {k for k, t in expected.items() if t.p > 0}
    for key, t in got.items():
        assert t.p == pytest.approx(expected[key].p, abs=TOLERANCE), key
        assert t.max_iterations == expected[key].max_iterations, key
        assert t.on_limit == expected[key].on_limit, key

    for s_true in true.stages:
        s_fit = fitted.stage(s_true.name)
        if s_true.fanout is not None:
            tv, tp = s_true.fanout.points()
            fv, fp = s_fit.fanout.points()
            assert np.array_equal(tv, fv) and np.allclose(tp, fp, atol=TOLERANCE)
        if s_true.is_llm:
            assert s_fit.prompt_growth_per_iteration == pytest.approx(s_true.prompt_growth_per_iteration, abs=15)
            assert s_fit.output_tokens.mean == pytest.approx(s_true.output_tokens.mean, rel=0.03)
        else:
            assert s_fit.service_time.mean == pytest.approx(s_true.service_time.mean, rel=0.03)

    # the fitted application demands what the true one does
    start_true, start_fit = DemandModel(true, cost), DemandModel(fitted, cost)
    m_true = start_true.remaining_demand(start_true.progress(true.entry)).mean
    m_fit = start_fit.remaining_demand(start_fit.progress(fitted.entry)).mean
    assert m_fit == pytest.approx(m_true, rel=0.03)


def test_bad_traces_are_named():
    with pytest.raises(ConfigError, match="is empty"):
        fit_pdgraph([], name="x")
    step = {"stage": "a", "backend": "tool:x", "service_time": [1.0]}
    with pytest.raises(ConfigError) as err:
        fit_pdgraph([[step], [dict(step, backend="tool:y")]], name="x")
    assert err.value.field == "traces[1][0].backend"
    with pytest.raises(ConfigError, match="different stages"):
        fit_pdgraph([[step], [dict(step, stage="b")]], name="x")
    with pytest.raises(ConfigError, match="negative"):
        fit_pdgraph([[dict(step, service_time=[-1.0])]], name="x")
