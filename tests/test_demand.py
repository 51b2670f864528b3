"""The exact analysis (DemandModel) against Monte Carlo simulation of the same PDGraphs."""

import itertools

import numpy as np
import pytest

from hermes_env.errors import ConfigError
from hermes_env.pdgraph import DemandModel, PDGraph, StateSpace, sample_remaining_demand
from hermes_env.pdgraph.library import TEMPLATE_NAMES, load_template
from hermes_env.pdgraph.sampling import sample_stage_run

pytestmark = pytest.mark.xdist_group("demand")  # its module-scoped set-up runs once, on one worker

N = 10_000
KS_CRITICAL = 1.63 / np.sqrt(N)  # one-sample Kolmogorov-Smirnov, 1% level


def lattice_ks(samples, dist, dt):
    """The Kolmogorov-Smirnov distance between samples and a lattice distribution, allowing the one
    lattice step by which the analysis may place a value (its stated resolution)."""
    x = np.sort(samples)
    n = len(x)
    above = np.arange(1, n + 1) / n - dist.cdf(x + dt)
    below = dist.cdf(x - dt) - np.arange(n) / n
    return max(float(above.max()), float(below.max()), 0.0)


@pytest.fixture(scope="module")
def models(cost):
    return {name: DemandModel(load_template(name), cost) for name in TEMPLATE_NAMES}


def progress_states(model):
    """The entry, a state in the middle with one copy half served, and the deepest state."""
    space = model.space
    mid = len(space) // 2
    copy = model.lattice.distribution(model.copy_pmf[mid])
    width = space.stage(mid).fanout
    pending = 1 if width is None else int(width.points()[0].max())
    return [
        (0, 0.0, None),
        (mid, float(copy.quantile(0.5)), pending),
        (len(space) - 1, 0.0, 1),
    ]


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_remaining_demand_agrees_with_sampling(models, cost, name):
    model = models[name]
    rng = np.random.default_rng(42)
    for state, attained, pending in progress_states(model):
        p = model.progress(model.space.stage(state).name, model.space.loop_counters(state), attained, pending)
        dist = model.remaining_demand(p)
        if pending is None:
            sampled = [sample_remaining_demand(model.space, state, rng, cost, 0.0, 1, fresh_width=True)
                       for _ in range(N)]
        else:
            sampled = [sample_remaining_demand(model.space, state, rng, cost, attained, pending) for _ in range(N)]
        sampled = np.asarray(sampled)
        assert lattice_ks(sampled, dist, model.lattice.dt) < KS_CRITICAL, (name, state)
        assert abs(dist.mean - sampled.mean()) < 4 * sampled.std() / np.sqrt(N) + model.lattice.dt
        assert dist.quantile(0.5) == pytest.approx(np.median(sampled), rel=0.05)
        assert model.overflow[state] < 1e-6


def simulate_next_use(space, state, backend, rng, cost):
    """Time (own service, copies in parallel) from issuing ``state``'s stage until the next request
    to ``backend``; None if it never comes."""
    elapsed = 0.0
    first = True
    while state != StateSpace.END:
        stage = space.stage(state)
        if stage.backend == backend and not first:
            return elapsed
        elapsed += float(sample_stage_run(space, state, rng).service_times(cost).max())
        first = False
        state = space.next_state(state, rng)
    return None


@pytest.mark.parametrize("name, backend", [
    ("react_agent", "api:web-search"), ("react_agent", "llm:llama3-8b"),
    ("code_generation", "tool:python-sandbox"), ("code_generation", "llm:llama3-8b"),
    ("fact_checking", "llm:llama3-8b"), ("map_reduce_summarisation", "llm:llama3-8b"),
])
def test_next_use_agrees_with_sampling(models, cost, name, backend):
    model = models[name]
    rng = np.random.default_rng(5)
    p = model.progress(model.graph.entry, copies_pending=1)  # the entry stage has been issued
    draws = [simulate_next_use(model.space, 0, backend, rng, cost) for _ in range(N)]
    used = np.array([d for d in draws if d is not None])
    forecast = model.next_use(p, backend)
    assert forecast.probability == pytest.approx(len(used) / N, abs=4 * np.sqrt(0.25 / N))
    if len(used) > 100:
        assert lattice_ks(used, forecast.time, model.lattice.dt) < 1.63 / np.sqrt(len(used))
    else:
        assert forecast.probability < 0.02


def test_next_use_before_issue_on_the_same_backend_is_now(models):
    model = models["rag"]
    nu = model.next_use(model.progress("embed"), "dnn:embedder")
    assert nu.probability == 1.0 and nu.time.mean == 0.0
    assert model.next_use(model.progress("embed", copies_pending=1), "dnn:embedder").probability < 1e-12


def brute_force_entropy(space, state):
    """Entropy (bits) of the remaining path with fan-out widths, by enumerating every path."""
    def paths(s):
        if s == StateSpace.END:
            yield 1.0
            return
        fan = space.stage(s).fanout
        widths = [(1.0,)] if fan is None else [(p,) for p in fan.points()[1]]
        for (pw,), (t, pt) in itertools.product(widths, zip(space.successors[s], space.probabilities[s], strict=True)):
            for rest in paths(int(t)):
                yield pw * pt * rest

    probs = np.array(list(paths(state)))
    assert probs.sum() == pytest.approx(1.0)
    return float(-(probs * np.log2(probs)).sum())


@pytest.mark.parametrize("name", ["code_generation", "react_agent", "multi_agent_debate", "fact_checking",
                                  "self_consistency", "map_reduce_summarisation"])
def test_structure_entropy_equals_path_enumeration(models, name):
    model = models[name]
    for state in (0, len(model.space) // 2):
        p = model.progress(model.space.stage(state).name, model.space.loop_counters(state))
        assert model.structure_entropy(p) == pytest.approx(brute_force_entropy(model.space, state), abs=1e-9)
        assert sum(model.uncertainty_reduction(p).values()) == pytest.approx(model.structure_entropy(p))


def test_uncertainty_reducing_stage_is_the_branching_one(models):
    model = models["code_generation"]
    reduction = model.uncertainty_reduction(model.progress("generate"))
    assert max(reduction, key=reduction.get) == "test"
    assert reduction["generate"] == 0.0  # generating resolves nothing: it always goes to test
    fact = models["fact_checking"].uncertainty_reduction(models["fact_checking"].progress("extract_claims"))
    assert max(fact, key=fact.get) == "search"  # the fan-out width (claims) is the only uncertainty


def test_gittins_table_matches_exact_index_on_its_grid(models):
    for name in ("code_generation", "map_reduce_summarisation", "react_agent"):
        model = models[name]
        table = model.gittins_table
        for state in range(len(model.space)):
            grid = table.grids[state]
            for attained in (grid[0], grid[len(grid) // 2], grid[-1]):
                for pending in (None, 1) if attained == 0 else (1,):
                    p = model.progress(model.space.stage(state).name, model.space.loop_counters(state),
                                       attained, pending)
                    assert model.gittins_index(p) == pytest.approx(model.gittins_index(p, exact=True), rel=1e-9)


def test_gittins_prefers_an_application_near_its_end(models):
    model = models["code_generation"]
    first = model.progress("generate")
    last_test = model.progress("test", {"test->repair": 3}, copies_pending=1)
    assert model.gittins_index(last_test) > model.gittins_index(first)
    assert model.remaining_demand(last_test).mean < model.remaining_demand(first).mean


def test_progress_is_validated(models):
    model = models["code_generation"]
    with pytest.raises(ConfigError, match="must be 0 before the stage is issued"):
        model.progress("test", attained=1.0)
    with pytest.raises(ConfigError, match="unreachable"):
        model.progress("generate", {"test->repair": 2})
    with pytest.raises(ConfigError) as err:
        model.progress("test", {"repair->test": 1})
    assert err.value.field == "progress.loops.repair->test"
    with pytest.raises(ValueError, match="exceeds every possible demand"):
        model.remaining_demand(model.progress("test", copies_pending=1, attained=1e6))


def test_a_cost_model_is_required_for_llm_stages():
    with pytest.raises(ConfigError) as err:
        DemandModel(load_template("rag"))
    assert err.value.field == "cost"
    tool_only = PDGraph.from_dict({"name": "t", "stages": [
        {"name": "a", "backend": "tool:x", "service_time": {"dist": "exponential", "mean": 1.0}}]})
    assert DemandModel(tool_only).remaining_demand(DemandModel(tool_only).progress("a")).mean == pytest.approx(
        1.0, rel=0.01)


def test_a_backend_the_graph_never_uses_is_never_next(cost):
    model = DemandModel(load_template("rag"), cost)
    p = model.progress(model.graph.entry)
    use = model.next_use(p, "tool:python-sandbox")
    assert use.probability == 0.0 and use.time is None and use.within(100.0) == 0.0
    full = model.lattice.convolve(model.duration_pmf[p.state], model._first_use_after("tool:python-sandbox")[p.state])
    assert full.sum() == 0.0  # what the backward pass it skips gives
