"""NVIDIA Dynamo's agentic Mooncake rows: reading, writing, replaying, fitting PDGraphs and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hermes_env.cli import main
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.agentic import (
    AgenticReplay,
    fit_report,
    load_agentic,
    rows_from_run,
    rows_from_workload,
    write_agentic,
)
from hermes_env.sim.traces import load_trace

EXAMPLE = str(Path(__file__).parent / "data" / "dynamo_agentic.jsonl")  # hand-written: four sessions
ONE_REPLICA = {"llm_backends": [{"name": "llm:m", "profile": "llama3-8b-h100", "model": "llama3-8b"}],
               "tool_backends": [{"name": "api:user", "instances": 1, "capacity": 1000}]}


def agentic(trace, cluster="default", **arrivals):
    return ExperimentConfig.from_dict({"cluster": cluster, "workload": {"arrivals": {
        "process": "trace", "trace": str(trace), "format": "dynamo-agentic", **arrivals}}})


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_example_reads_into_sessions_of_waves():
    t = load_agentic(EXAMPLE, 64)
    ids = lambda s: [[t.rows[i].request_id for i in wave] for wave in s.waves]  # noqa: E731
    assert len(t.rows) == 13 and [ids(s) for s in t.sessions] == [
        [["a0"], ["a1"], ["a2"]],                      # a chain with tool waits
        [["b0"], ["b1", "b2"], ["b3"]],                # two sub-agents spawned and joined
        [["c0"], ["c1", "c3"], ["c2"], ["c4"]],        # a sub-agent chain beside the parent's next call
        [["d0"]]]
    assert t.arrivals().tolist() == [0.0, 1.0, 2.5, 4.0]
    assert [s.exact for s in t.sessions] == [True, True, False, True] and t.inexact == 1
    a1 = t.rows[2]
    assert (a1.prompt, a1.output, a1.hash_ids, a1.wait) == (300, 60, (1, 2, 3, 4, 5), pytest.approx(2.6))
    assert t.rows[1].branches == (3, 4) and t.rows[3].session_id == "b-sub1"


def test_write_then_read_gives_the_same_rows_and_sessions(tmp_path):
    t = load_agentic(EXAMPLE, 64)
    write_agentic(t.rows, tmp_path / "out.jsonl")
    back = load_agentic(tmp_path / "out.jsonl", 64)
    assert back.rows == t.rows and back.sessions == t.sessions
    # and a workload's applications, written as rows, read back as the same rows and one session each
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": 40, "arrivals": {"process": "poisson", "rate": 1.0},
        "applications": [{"template": "react_agent"}, {"template": "map_reduce_summarisation"}]}})
    sim = Simulation(cfg, seed=1)
    rows = rows_from_workload(sim, 40)
    write_agentic(rows, tmp_path / "sample.jsonl")
    again = load_agentic(tmp_path / "sample.jsonl")
    assert again.rows == tuple(rows) and len(again.sessions) == 40 and again.inexact == 0
    for s in again.sessions:  # each session's waves are its application's LLM stage runs
        llm = [r for r in sim.peek_realisation(int(again.rows[s.waves[0][0]].session_id[1:])) if r.tool_time is None]
        assert [len(w) for w in s.waves] == [r.width for r in llm]
        assert [again.rows[j].output for j in s.waves[-1]] == llm[-1].output_tokens.tolist()


def test_a_replayed_chain_waits_exactly_and_reuses_its_prefix(tmp_path):
    """r1 waits 1.25 s after r0 (tool 1,000 ms + delay 250 ms) and its first two 64-token blocks are r0's: on one
    replica, those 128 tokens come from the prefix cache."""
    path = write_rows(tmp_path / "t.jsonl", [
        {"request_id": "r0", "timestamp": 500, "input_length": 128, "output_length": 4, "hash_ids": [7, 8]},
        {"request_id": "r1", "input_length": 192, "output_length": 4, "hash_ids": [7, 8, 9], "wait_for": ["r0"],
         "delay": 250, "tool_wait_ms": 1000}])
    sim = Simulation(agentic(path, ONE_REPLICA, block_size=64), seed=0, check_invariants=True)
    sim.run()
    app = sim.completed[0]
    assert [r.stage for r in app.runs] == ["start", "tool", "think", "call"] and app.arrival == 0.0
    assert app.service_times[1:3] == pytest.approx([1.0, 0.25]) and app.queue_times == [0.0] * 4
    assert app.completion == pytest.approx(sum(app.service_times))
    replica = sim.llm_backends["llm:m"].replicas[0]
    assert replica.cached_tokens == 128 and replica.computed_tokens == 128 + 192 - 128


def test_the_example_replays_every_session_under_every_seed():
    cfg = agentic(EXAMPLE, block_size=64)
    assert cfg.workload.num_applications == 4 and cfg.workload.applications[0].template == "agentic:dynamo_agentic"
    ends = []
    for seed in (0, 1):
        sim = Simulation(cfg, seed=seed, check_invariants=True)
        assert sim.run().summary["completed"] == 4
        apps = sorted(sim.completed, key=lambda a: a.id)
        assert [a.arrival for a in apps] == [0.0, 1.0, 2.5, 4.0]
        b = apps[1]  # the fan-out: both sub-agents wait 0.2 s, then the join 0.5 + 0.03 s after the later one ends
        assert [r.width for r in b.runs] == [1, 2, 2, 2, 1, 1, 1]
        assert b.service_times[1:3] == pytest.approx([0.0, 0.2]) and b.service_times[4:6] == pytest.approx([0.5, 0.03])
        ends.append([a.completion for a in apps])
    assert ends[0] == ends[1]  # a replay is the same under every seed


def test_parallel_first_calls_are_one_session_and_open_loop_turns_are_not(tmp_path):
    def row(rid, ts=None, **kw):
        return {"request_id": rid, "session_id": "u", "timestamp": ts, "input_length": 8, "output_length": 2, **kw}

    t = load_agentic(write_rows(tmp_path / "t.jsonl", [row("a", 0), row("b", 0), row("c", wait_for=["a", "b"]),
                                                          row("d", 900)]))
    assert [[[t.rows[i].request_id for i in w] for w in s.waves] for s in t.sessions] == [
        [["a", "b"], ["c"]], [["d"]]] and t.arrivals().tolist() == [0.0, 0.9] and t.inexact == 0


def test_a_window_and_a_rate_select_and_rescale_sessions():
    cfg = agentic(EXAMPLE, block_size=64, window=[0.5, 3.0], rate=2.0)
    w = cfg.workload
    assert w.num_applications == 2 and w.agentic.sessions == (1, 2)
    assert Simulation(cfg, seed=0).arrival_times.tolist() == [0.0, 0.5]


def test_fit_trace_writes_a_pdgraph_workload_that_runs(tmp_path, capsys):
    out = tmp_path / "fit.yaml"
    assert main(["fit-trace", EXAMPLE, "--format", "dynamo-agentic", "--block-size", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "13 requests in 4 sessions (1 replayed with added waits)" in printed and "calls a session" in printed
    spec = yaml.safe_load(out.read_text())
    graph = spec["applications"][0]["template"]
    assert [s["name"] for s in graph["stages"]] == ["start", "tool", "think", "call"]
    spec["num_applications"] = 30
    s = Simulation(ExperimentConfig.from_dict({"cluster": "default", "workload": spec}), seed=0).run().summary
    assert s["completed"] == 30


def test_a_pdgraph_fitted_to_its_own_sample_reproduces_it(tmp_path):
    """Rows exported from react_agent's applications, fitted back: calls a session, tokens and tool waits
    within a few percent of the sample, by mean and by Kolmogorov-Smirnov distance."""
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": 600, "arrivals": {"process": "poisson", "rate": 1.0},
        "applications": [{"template": "react_agent"}]}})
    write_agentic(rows_from_workload(Simulation(cfg, seed=0), 600), tmp_path / "s.jsonl")
    replay = AgenticReplay.build(str(tmp_path / "s.jsonl"), 512, range(600), "llm:llama3-8b", "api:user")
    report = fit_report(replay, samples=3000)
    for measure, r in report.items():
        assert r["fit mean"] == pytest.approx(r["trace mean"], rel=0.06), measure
        assert r["ks"] < 0.06, measure


def test_export_trace_writes_a_workload_as_rows(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["export-trace", "small", "--num-applications", "12", "--seed", "3", "--out", str(out)]) == 0
    t = load_agentic(out)
    assert f"wrote {len(t.rows)} requests of 12 applications" in capsys.readouterr().out
    sim = Simulation(ExperimentConfig.from_yaml("small"), seed=3)
    calls = sum(r.width for i in range(12) for r in sim.peek_realisation(i) if r.tool_time is None)
    assert len(t.rows) == calls and {r.session_id for r in t.rows} <= {f"s{i}" for i in range(12)}
    assert main(["export-trace", "small", "--simulate", "--num-applications", "12", "--seed", "3", "--out",
                 str(out)]) == 0
    run = load_agentic(out)  # the same calls, with the run's times
    assert sorted((r.prompt, r.output) for r in run.rows) == sorted((r.prompt, r.output) for r in t.rows)
    # a library template directly: react_agent's sessions at 2/s
    assert main(["export-trace", "--template", "react_agent", "--rate", "2", "--num-applications", "50", "--out",
                 str(out)]) == 0
    rows = load_agentic(out)
    assert len(rows.sessions) == 50 and 20 < rows.arrivals()[-1] < 30


def test_a_simulated_run_written_with_its_times_replays_to_the_same_times(tmp_path):
    """fact_checking's calls (extract, queries, web searches in parallel, verify) written from a run with
    their issue times and measured waits (search queueing included), at the engine's 16-token blocks:
    replaying the rows issues every call at the same time again, relative to the first."""
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": 12, "arrivals": {"process": "poisson", "rate": 0.01},
        "applications": [{"template": "fact_checking"}]}})
    times, waits = [], []
    for k in range(2):
        sim = Simulation(cfg, seed=0)
        sim.request_log = []
        sim.run()
        rows = rows_from_run(sim, block_size=16)
        write_agentic(rows, tmp_path / f"run{k}.jsonl")
        t = load_agentic(tmp_path / f"run{k}.jsonl", 16)
        assert len(t.sessions) == 12 and t.inexact == 0
        for s in t.sessions:  # extract, then queries, then (after the searches: tool time) verify
            assert [len(w) for w in s.waves] == [1, 1, 1] and t.rows[s.waves[2][0]].tool_wait > 0
        times.append(np.sort([r.timestamp for r in rows]) - min(r.timestamp for r in rows))
        waits.append(sorted((r.delay, r.tool_wait) for r in t.rows))  # written again, the same tool and delay
        cfg = agentic(tmp_path / f"run{k}.jsonl", block_size=16)
    assert len(times[0]) == len(times[1]) == 12 * 3
    assert np.allclose(times[0], times[1], rtol=0, atol=1e-6) and np.allclose(waits[0], waits[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("rows, problem", [
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1},
      {"request_id": "b", "input_length": 5, "output_length": 1, "wait_for": ["zz"]}],
     "line 2: wait_for names 'zz', which no row has"),
    ([{"request_id": "a", "input_length": 5, "output_length": 1, "wait_for": ["b"]},
      {"request_id": "b", "timestamp": 0, "input_length": 5, "output_length": 1}],
     "line 1: wait_for names 'b', a later row"),
    ([{"request_id": "r", "timestamp": 0, "input_length": 5, "output_length": 1},
      {"request_id": "a", "input_length": 5, "output_length": 1, "wait_for": ["r", "b"]},
      {"request_id": "b", "input_length": 5, "output_length": 1, "wait_for": ["a"]}],
     r"line 2: wait_for closes a cycle: a -> b -> a"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1, "wait_for": ["a"]}],
     "line 1: wait_for names the row itself"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1},
      {"request_id": "b", "input_length": 5, "output_length": 1, "wait_for": ["a"], "delay": -5}],
     r"line 2: delay -5 must be a finite number of milliseconds >= 0"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1},
      {"request_id": "b", "input_length": 5, "output_length": 1, "wait_for": ["a"], "tool_wait_ms": -1.5}],
     r"line 2: tool_wait_ms -1.5 must be"),
    ([{"request_id": "a", "input_length": 5, "output_length": 1}], "line 1: waits for nothing and has no 'timestamp'"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1, "delay": 10}],
     "line 1: has a delay or tool_wait_ms but waits for nothing"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1},
      {"request_id": "a", "timestamp": 1, "input_length": 5, "output_length": 1}],
     "line 2: request_id 'a' is also on line 1"),
    ([{"timestamp": 0, "input_length": 5, "output_length": 1}], "line 1: needs a 'request_id'"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1, "branches": ["b"]},
      {"request_id": "b", "timestamp": 0, "input_length": 5, "output_length": 1}],
     "line 1: branches names 'b', which does not wait for this row"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "output_length": 1, "waitfor": ["x"]}],
     "line 1: has the unknown field 'waitfor'"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 0, "output_length": 1}],
     "line 1: input_length 0 must be an integer >= 1"),
    ([{"request_id": "a", "timestamp": 0, "input_length": 5, "input_tokens": 6, "output_length": 1}],
     "line 1: has both 'input_tokens' and 'input_length'"),
    ([{"request_id": "a", "created_time": 0, "input_tokens": 5, "output_tokens": 1},
      {"request_id": "b", "input_tokens": 5, "output_tokens": 1, "wait_for": ["a"], "delay_ms": -2}],
     "line 2: delay -2 must be"),
])
def test_bad_agentic_rows_are_one_clear_error(tmp_path, rows, problem):
    with pytest.raises(ConfigError, match=problem):
        load_agentic(write_rows(tmp_path / "t.jsonl", rows))


def test_agentic_files_and_configs_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="it is an agentic Mooncake row .* format: dynamo-agentic"):
        load_trace(EXAMPLE)  # read as a plain Mooncake trace
    (tmp_path / "t.jsonl").write_text('{"request_id": "a", "timestamp": 0, "output_length": 1}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2: is not JSON"):
        load_agentic(tmp_path / "t.jsonl")
    with pytest.raises(ConfigError, match="block_size: goes with format: dynamo-agentic"):
        ExperimentConfig.from_dict({"cluster": "default", "workload": {"arrivals": {
            "process": "trace", "trace": "mooncake_conversation", "block_size": 64}}})
    with pytest.raises(ConfigError, match="applications: goes with no agentic trace"):
        ExperimentConfig.from_dict({"cluster": "default", "workload": {
            "arrivals": {"process": "trace", "trace": EXAMPLE, "format": "dynamo-agentic"},
            "applications": [{"template": "rag"}]}})
    with pytest.raises(ConfigError, match="wait_backend: 'api:user' is not a tool backend of the cluster"):
        agentic(EXAMPLE, {"llm_backends": ONE_REPLICA["llm_backends"]})
    assert main(["fit-trace", EXAMPLE, "--block-size", "64", "--out", str(tmp_path / "f.yaml")]) == 2
    assert main(["export-trace", "small", "--num-applications", "1000000000", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["export-trace", "small", "--scheduler", "gittins", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["export-trace", "small", "--template", "rag", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert main(["export-trace", "--template", "rag", "--out", str(tmp_path / "x.jsonl")]) == 2  # how many?
    assert np.isfinite(load_agentic(EXAMPLE, 64).arrivals()).all()
