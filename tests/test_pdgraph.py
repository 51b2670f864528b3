import copy

import numpy as np
import pytest

from hermes_env.errors import ConfigError
from hermes_env.pdgraph import PDGraph, sample_realisation
from hermes_env.pdgraph.library import TEMPLATE_NAMES, load_template

BASE = {
    "name": "app",
    "stages": [
        {"name": "plan", "backend": "llm:llama3-8b", "prompt_tokens": 100, "output_tokens": 50,
         "next": [{"to": "act", "p": 0.7}, {"to": "end", "p": 0.3}]},
        {"name": "act", "backend": "tool:python-sandbox", "service_time": {"dist": "exponential", "mean": 1.0},
         "next": [{"to": "plan", "p": 0.5, "max_iterations": 3}, {"to": "end", "p": 0.5}]},
    ],
}


def edited(path, value):
    spec = copy.deepcopy(BASE)
    target = spec
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return spec


@pytest.mark.parametrize(
    "spec, field",
    [
        (edited(["stages", 0, "next", 0, "p"], 0.6), "stage 'plan'.next"),
        (edited(["stages", 1, "next", 0, "max_iterations"], KeyError), "stage 'act'.next[to=plan]"),
        (edited(["stages", 0, "backend"], "gpu:llama"), "stage 'plan'.backend"),
        (edited(["stages", 0, "prompt_tokens"], KeyError), "stage 'plan'.prompt_tokens"),
        (edited(["stages", 1, "prompt_tokens"], 10), "stage 'act'.prompt_tokens"),
        (edited(["stages", 1, "service_time"], KeyError), "stage 'act'.service_time"),
        (edited(["stages", 0, "next", 0, "to"], "nowhere"), "stage 'plan'.next[0].to"),
        (edited(["stages", 0, "fanout"], {"dist": "discrete", "values": [1.5, 2], "probs": [0.5, 0.5]}),
         "stage 'plan'.fanout"),
        (edited(["stages", 0, "fanout"], {"dist": "exponential", "mean": 2}), "stage 'plan'.fanout"),
        (edited(["stages", 1, "name"], "plan"), "stage 'plan'.name"),
        (edited(["entry"], "act2"), "pdgraph.entry"),
        (edited(["stages", 0, "colour"], "red"), "stage 'plan'.colour"),
        (edited(["stages", 1, "next", 0, "max_iterations"], 0), "stage 'act'.next[0].max_iterations"),
        (edited(["stages", 1, "next", 0, "p"], 1.5), "stage 'act'.next[0].p"),
    ],
)
def test_invalid_graphs_name_stage_and_field(spec, field):
    with pytest.raises(ConfigError) as err:
        PDGraph.from_dict(spec)
    assert err.value.field == field, str(err.value)


def test_unreachable_stage_is_named():
    spec = copy.deepcopy(BASE)
    spec["stages"].append({"name": "orphan", "backend": "api:web-search", "service_time": 1.0})
    with pytest.raises(ConfigError, match="unreachable") as err:
        PDGraph.from_dict(spec)
    assert err.value.field == "stage 'orphan'"


def test_loop_edge_must_close_a_cycle_and_bound_needs_an_exit():
    spec = edited(["stages", 0, "next"], [{"to": "act", "p": 0.5, "max_iterations": 2}, {"to": "end", "p": 0.5}])
    with pytest.raises(ConfigError, match="does not lead back"):
        PDGraph.from_dict(spec)
    spec = edited(["stages", 1, "next"], [{"to": "plan", "p": 1.0, "max_iterations": 2}])
    with pytest.raises(ConfigError, match="on_limit") as err:
        PDGraph.from_dict(spec)
    assert err.value.field == "stage 'act'.next[0].on_limit"


def test_unknown_backend_against_the_cluster():
    with pytest.raises(ConfigError, match="unknown backend") as err:
        PDGraph.from_dict(BASE, known_backends={"llm:llama3-8b"})
    assert err.value.field == "stage 'act'.backend"
    assert PDGraph.from_dict(BASE, known_backends={"llm:llama3-8b", "tool:python-sandbox"}).name == "app"


def test_yaml_round_trip_preserves_the_graph():
    for name in TEMPLATE_NAMES:
        g = load_template(name)
        import yaml

        assert PDGraph.from_dict(yaml.safe_load(g.to_yaml())) == g


def test_loop_counter_bounds_and_renormalisation():
    g = PDGraph.from_dict(BASE)
    space = g.state_space()
    # plan/act per iteration 0..3 of the loop act->plan: 4 plans + 4 acts
    assert len(space) == 8
    last_act = space.state_id("act", {"act->plan": 3})
    assert space.successors[last_act].tolist() == [-1]  # loop closed, exit renormalised to 1
    rng = np.random.default_rng(3)
    repeats = [sum(r.stage == "act" for r in sample_realisation(space, rng).runs) for _ in range(20_000)]
    # P(k acts): act entered w.p. 0.7 each time plan runs; after an act, loop back w.p. 0.5 (at most 3 times)
    p_more = 0.7 * 0.5
    expected = [0.3] + [0.7 * p_more ** (k - 1) * 0.5 * 0.3 / 0.3 / 1 for k in range(1, 4)]
    expected[1:] = [0.7 * (p_more ** (k - 1)) * (1 - 0.5 + 0.5 * 0.3) for k in range(1, 4)]
    expected.append(0.7 * p_more**3)
    counts = np.bincount(repeats, minlength=5) / len(repeats)
    assert np.allclose(counts, expected, atol=0.01)


def test_library_has_the_applications_the_issue_asks_for():
    assert set(TEMPLATE_NAMES) >= {
        "code_generation", "react_agent", "rag", "multi_agent_debate", "map_reduce_summarisation",
        "self_consistency", "fact_checking", "lora_chat", "single_request",
    }
    for name in TEMPLATE_NAMES:
        g = load_template(name)
        assert g.sources and g.description, name
        assert g.state_space().stage(0).name == g.entry
