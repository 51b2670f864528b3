"""Trace-driven workloads (issue 13): exact replay, fitted generators, malformed files, agent sessions."""

import numpy as np
import pytest
import yaml

from hermes_env.cli import main
from hermes_env.errors import ConfigError
from hermes_env.pdgraph.distributions import distribution_from_spec
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.traces import TRACE_NAMES, load_trace
from hermes_env.sim.workload import ArrivalConfig

FIGURES = {  # SOURCE.md's figures: requests, rate, inter-arrival CV, median prompt and output tokens
    "azure_llm_2023_conv": (19366, 5.53, 1.09, 1020, 129),
    "azure_llm_2023_code": (8819, 2.57, 13.15, 1469, 13),
    "mooncake_conversation": (12031, 3.40, 3.03, 6909, 350),
}


def replay(trace, **arrivals):
    return ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "arrivals": {"process": "trace", "trace": trace, **arrivals}}})


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_replay_reproduces_the_trace_exactly(name):
    count, rate, cv, prompt, output = FIGURES[name]
    trace = load_trace(name)
    sim = Simulation(replay(name), seed=3)
    assert sim.config.workload.num_applications == count == len(trace)
    times = sim.arrival_times
    gaps = np.diff(times)
    assert np.array_equal(times, trace.arrival)
    assert (count - 1) / times[-1] == pytest.approx(rate, abs=0.005) and gaps.std() / gaps.mean() == pytest.approx(
        cv, abs=0.005)
    runs = [sim._realise(i)[0] for i in range(count)]  # each request's realised (single) stage
    prompts = np.array([int(r.prompt_tokens[0]) for r in runs])
    outputs = np.array([int(r.output_tokens[0]) for r in runs])
    assert np.array_equal(prompts, trace.prompt) and np.array_equal(outputs, np.maximum(trace.output, 1))
    assert np.median(prompts) == prompt and np.median(outputs) == output


def test_a_rescaled_window_keeps_the_requests_and_their_order():
    full = load_trace("azure_llm_2023_conv")
    cfg = replay("azure_llm_2023_conv", window=[600, 1200], rate=11.06)
    w = cfg.workload.trace
    inside = (full.arrival >= 600) & (full.arrival < 1200)
    assert len(w) == inside.sum() and np.array_equal(w.prompt, full.prompt[inside])
    assert w.rate == pytest.approx(11.06, rel=1e-9)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_a_fitted_generator_reproduces_rate_cv_and_medians(name, tmp_path):
    """The gamma renewal fit (the default written): rate within 1%, CV and medians within 5% over 100,000
    generated requests."""
    out = tmp_path / "fit.yaml"
    assert main(["fit-trace", name, "--out", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())
    trace = load_trace(name)
    times = ArrivalConfig.from_dict(spec["arrivals"], "fit").times(100_000, np.random.default_rng(0))
    gaps, trace_gaps = np.diff(times), np.diff(trace.arrival)
    assert (len(times) - 1) / times[-1] == pytest.approx(trace.rate, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(trace_gaps.std() / trace_gaps.mean(), rel=0.05)
    stage = spec["applications"][0]["template"]["stages"][0]
    rng = np.random.default_rng(1)
    for key, values in (("prompt_tokens", trace.prompt), ("output_tokens", trace.output)):
        drawn = np.maximum(1, np.rint(distribution_from_spec(stage[key]).sample(rng, 100_000)))
        assert np.median(drawn) == pytest.approx(np.median(values), rel=0.05)
    # and the file runs as a workload, unbounded in length
    spec["num_applications"] = 500
    ExperimentConfig.from_dict({"cluster": "default", "workload": spec})


@pytest.mark.parametrize("text, problem", [
    ("arrival,prompt_tokens\n0,10\n", "no 'output_tokens' column"),
    ("arrival,prompt_tokens,output_tokens\n0,10,5\n-1,10,5\n", "line 3"),
    ("arrival,prompt_tokens,output_tokens\n0,10,5\n5,10,5\n4,10,5\n", "line 4: timestamp is earlier"),
    ("arrival,prompt_tokens,output_tokens\n0,10,5\n1,ten,5\n", "line 3: prompt_tokens 'ten' is not an integer"),
    ("arrival,prompt_tokens,output_tokens\n", "has no requests"),
    ("", "has no requests"),
    ("when,what\n1,2\n", "none of the known time columns"),
])
def test_malformed_trace_files_name_the_line(tmp_path, text, problem):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_trace(path)


def test_malformed_mooncake_lines_name_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [0]}\n{"timestamp": 5}\n')
    with pytest.raises(ConfigError, match="line 2: has no 'input_length'"):
        load_trace(path)
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 3}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2: is not JSON"):
        load_trace(path)


def test_a_trace_request_longer_than_the_context_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival,prompt_tokens,output_tokens\n0,100,10\n1,9000,10\n2,100,10\n")
    cluster = yaml.safe_load(open("configs/clusters/contended.yaml"))  # Llama-3-8B: 8,192 tokens
    cfg = ExperimentConfig.from_dict({"cluster": cluster, "workload": {
        "arrivals": {"process": "trace", "trace": str(path)}}})
    s = Simulation(cfg, seed=0).run().summary
    assert (s["completed"], s["failed"]) == (2, 1) and "max_model_len 8192" in next(iter(s["failure_reasons"]))


def test_trace_requests_become_the_first_llm_call_of_library_applications():
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": 50, "arrivals": {"process": "trace", "trace": "azure_llm_2023_conv"},
        "applications": [{"template": "rag"}, {"template": "react_agent"}]}})
    sim = Simulation(cfg, seed=0)
    trace = load_trace("azure_llm_2023_conv")
    for i in range(50):
        runs = sim._realise(i)
        first = next(r for r in runs if r.tool_time is None)
        assert int(first.prompt_tokens[0]) == trace.prompt[i]
    assert sim.run().summary["completed"] == 50


def test_mooncake_block_ids_become_shared_cached_prefixes(tmp_path):
    """Two requests sharing their first two 512-token blocks, on one replica: the second reuses exactly those
    1,024 tokens (then its own third block differs)."""
    path = tmp_path / "t.csv"
    path.write_text("arrival,prompt_tokens,output_tokens,prefix_ids\n0,1500,5,1 2 3\n100,1400,5,1 2 4\n")
    cluster = {"llm_backends": [{"name": "llm:m", "profile": "llama3-8b-h100", "model": "llama3-8b"}]}
    cfg = ExperimentConfig.from_dict({"cluster": cluster, "workload": {
        "arrivals": {"process": "trace", "trace": str(path)}}})
    sim = Simulation(cfg, seed=0, check_invariants=True)
    sim.run()
    replica = sim.llm_backends["llm:m"].replicas[0]
    assert replica.cached_tokens == 1024 and replica.computed_tokens == 1500 + 1400 - 1024


def test_every_shipped_trace_loads_and_every_trace_experiment_runs_briefly():
    for name in TRACE_NAMES:
        assert len(load_trace(name)) > 1000
    for name in ("azure-conv", "azure-code", "mooncake-conv"):
        cfg = ExperimentConfig.from_yaml(name)
        assert cfg.workload.trace is not None and cfg.workload.num_applications > 5000


def test_coding_agent_sessions_reproduce_the_published_figures():
    from hermes_env.pdgraph import sample_realisation
    from hermes_env.pdgraph.library import load_template

    space = load_template("coding_agent_session").state_space()
    rng = np.random.default_rng(7)
    calls = turns = tools = 0
    for _ in range(8_000):
        stages = [(r.stage, r.width) for r in sample_realisation(space, rng).runs]
        calls += sum(s in ("start", "call") for s, _ in stages)
        turns += 1 + sum(s == "user" for s, _ in stages)
        tools += sum(w for s, w in stages if s == "tools")
    assert turns / 8_000 == pytest.approx(3.95, rel=0.04)
    assert calls / turns == pytest.approx(7.83, rel=0.04) and tools / turns == pytest.approx(7.3, rel=0.04)
