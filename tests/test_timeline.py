"""The run's timeline (issue 19, item 5): valid Chrome/Perfetto trace-event JSON whose spans account for
every request's time, in the vLLM 0.11 engine and under a router, with preemption, remote prefix loads,
LoRA adapter loads, chunked prefill, tool cold starts and replica loads in the run."""

import json
import math
import sys
from collections import Counter, defaultdict

import pytest

from hermes_env.envs.hermes import load_experiment
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.timeline import TimelineRecorder, parse_window

LLM = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b"}
REQUIRED = {"X": {"name", "ph", "ts", "dur", "pid", "tid"}, "M": {"name", "ph", "pid", "args"},
            "C": {"name", "ph", "ts", "pid", "args"}, "i": {"name", "ph", "ts", "pid", "s"},
            "s": {"name", "ph", "ts", "pid", "tid", "id", "cat"}, "f": {"name", "ph", "ts", "pid", "tid", "id", "cat"}}
PHASES = {"queued", "kv load", "adapter load", "staged", "prefill", "decode", "call"}  # a request's own time


def mechanisms(n=60, rate=4.0, **backend):
    """Two routed replicas short of KV memory, a remote prefix store, one LoRA slot and a 512-token budget;
    a tool with cold starts between two LLM calls of a conversation."""
    llm = {**LLM, "replicas": 1, "max_gpus": 2, "gpu_memory_gb": 20.0, "max_num_batched_tokens": 512,
           "max_num_seqs": 64, "remote_prefix_store": {"load_bandwidth_gbps": 10},
           "lora": {"adapters": 3, "max_loras": 1}, **backend}
    stages = [{"name": "plan", "backend": "llm:llama3-8b",
               "prompt_tokens": {"dist": "lognormal", "mean": 1500, "cv": 0.5},
               "output_tokens": {"dist": "lognormal", "mean": 400, "cv": 0.6}, "system_prompt_tokens": 600,
               "adapter": "any", "next": [{"to": "run", "p": 1.0}]},
              {"name": "run", "backend": "tool:box", "service_time": {"dist": "lognormal", "mean": 0.5, "cv": 0.5},
               "fanout": {"dist": "deterministic", "value": 2}, "next": [{"to": "answer", "p": 1.0}]},
              {"name": "answer", "backend": "llm:llama3-8b", "prompt_tokens": 300, "output_tokens": 100,
               "context": "append"}]
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm], "tool_backends": [
            {"name": "tool:box", "instances": 2, "capacity": 2, "keep_alive": 1.0,
             "cold_start": {"dist": "deterministic", "value": 0.8}}]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "agent", "stages": stages}}]}})


def record(cfg, **kwargs):
    tl = TimelineRecorder(**{k: kwargs.pop(k) for k in ("window", "max_events") if k in kwargs})
    sim = Simulation(cfg, seed=0, timeline=tl, **{"check_invariants": True, **kwargs})
    sim.run()
    return sim, json.loads(json.dumps(tl.trace(), allow_nan=False))  # through strict JSON, as a browser reads it


def check_trace_format(trace):
    """Every event has its phase's keys; spans on a thread nest or follow one another; flows pair up and
    bind inside a span of their thread."""
    events = trace["traceEvents"]
    threads = defaultdict(list)
    for e in events:
        assert REQUIRED[e["ph"]] <= set(e), e
        if e["ph"] == "X":
            assert e["dur"] >= 0 and e["ts"] >= 0
            threads[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
        if e["ph"] == "C":
            assert all(isinstance(v, int | float) and v >= 0 for v in e["args"].values()), e
    for spans in threads.values():
        stack = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start + 1e-3:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-3, "overlapping spans on one thread"
            stack.append(end)
    named = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(threads) <= named
    ends = defaultdict(list)
    for e in events:
        if e["ph"] in "sf":
            assert e["bp"] == "e"
            assert any(a - 1e-3 <= e["ts"] <= b + 1e-3 for a, b in threads[e["pid"], e["tid"]]), "unbound flow"
            ends[e["id"]].append((e["ph"], e["ts"]))
    for pair in ends.values():
        assert sorted(p for p, _ in pair) == ["f", "s"]
        assert dict(pair)["s"] <= dict(pair)["f"]
    return ends


def request_totals(trace):
    totals = defaultdict(float)
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["name"] in PHASES and e["cat"] != "replica":  # not a replica's own decode
            a = e["args"]
            totals[a["app"], a["run"], a["copy"]] += e["dur"] / 1e6
    return totals


@pytest.mark.parametrize("router, engine", [("shared", "vllm-0.11"), ("least_outstanding", "vllm-0.11"),
                                            ("shared", "legacy")])
def test_trace_is_valid_and_spans_account_for_every_requests_time(router, engine):
    sim, trace = record(mechanisms(engine=engine), router=router, autoscaler="queue_threshold")
    flows = check_trace_format(trace)
    names = Counter(e["name"] for e in trace["traceEvents"] if e["ph"] in "Xi")
    shown = ("preempted", "kv load", "adapter load", "chunk", "cold start", "loading", "prefill iteration")
    for mechanism in shown if engine == "vllm-0.11" else ("preempted", "adapter load", "cold start", "loading"):
        assert names[mechanism] > 0, mechanism  # the run exercises what the timeline shows
    totals = request_totals(trace)
    checked = 0
    for app in sim.completed:
        assert not app.failed
        for k, run in enumerate(app.runs):
            # the mean over copies of their spans' total is the stage's queueing plus service time
            mean = sum(totals[app.id, k, c] for c in range(run.width)) / run.width
            assert mean == pytest.approx(app.queue_times[k] + app.service_times[k], abs=1e-6)
            checked += run.width
    assert checked == len(totals) == sim.stage_requests
    # every stage after the first is reached by one arrow per request
    assert len(flows) == sum(r.width for a in sim.completed for r in a.runs[1:])
    llm = {e["name"] for e in trace["traceEvents"] if e["ph"] == "C" and e["pid"] == 1}  # the LLM backend's
    assert {"KV replica 0", "KV replica 1", "replicas"} <= llm
    assert ("queue" in llm) == (router == "shared") and ("replica 0 queue" in llm) == (router != "shared")
    assert "instances" in {e["name"] for e in trace["traceEvents"] if e["ph"] == "C" and e["pid"] == 2}


def test_small_experiment_spans_are_contiguous_from_arrival():
    """Each request's spans follow one another without gaps, the first stage's from the application's
    arrival; the queue counter returns to zero."""
    sim, trace = record(load_experiment("small", {"workload": {"num_applications": 80}}), check_invariants=False)
    check_trace_format(trace)
    spans = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X" and e["name"] in PHASES and e["cat"] != "replica":
            a = e["args"]
            spans[a["app"], a["run"], a["copy"]].append((e["ts"], e["ts"] + e["dur"]))
    arrivals = {a.id: a.arrival for a in sim.completed}
    for (app, run, _), s in spans.items():
        s.sort()
        assert all(abs(b[0] - a[1]) < 1e-3 for a, b in zip(s, s[1:], strict=False)), "a gap in a request's life"
        if run == 0:
            assert s[0][0] == pytest.approx(arrivals[app] * 1e6, abs=1e-3)
    queue = [e for e in trace["traceEvents"] if e["ph"] == "C" and e["name"] == "queue"]
    assert queue and queue[-1]["args"]["waiting"] == 0


def test_off_by_default_and_the_same_run_with_it():
    cfg = mechanisms(n=30)
    plain = Simulation(cfg, seed=3).run().summary
    tl = TimelineRecorder()
    recorded = Simulation(cfg, seed=3, timeline=tl).run().summary
    assert plain["jct"] == recorded["jct"] and plain["events"] == recorded["events"]
    assert Simulation(cfg, seed=3).timeline is None


def test_window_and_cap_keep_fewer_events_and_say_so():
    cfg = mechanisms(n=30)
    _, full = record(cfg)
    _, windowed = record(cfg, window=(2.0, 4.0))
    _, open_ended = record(cfg, window=(2.0, math.inf))
    assert open_ended["otherData"]["window_s"] == [2.0, None]
    spans = [e for e in windowed["traceEvents"] if e["ph"] == "X"]
    assert 0 < len(spans) < sum(e["ph"] == "X" for e in full["traceEvents"])
    assert all(e["ts"] <= 4e6 and e["ts"] + e["dur"] >= 2e6 for e in spans)
    check_trace_format(windowed)
    _, capped = record(cfg, max_events=100)
    assert capped["otherData"]["kept_events"] == 100 and capped["otherData"]["dropped_events"] > 0
    for trace in (full, windowed, capped):  # what was kept is what is written (queue lengths come on top)
        written = [e for e in trace["traceEvents"] if e["ph"] in "Xi" or (e["ph"] == "C" and "queue" not in e["name"])]
        assert len(written) == trace["otherData"]["kept_events"] + trace["otherData"]["window_opening_counters"]
    assert full["otherData"]["dropped_events"] == 0 and full["otherData"]["dropped_after_s"] is None
    check_trace_format(capped)


def test_bad_window_and_cap_name_the_field():
    with pytest.raises(ConfigError, match="timeline.window"):
        TimelineRecorder(window=(5.0, 1.0))
    with pytest.raises(ConfigError, match="timeline.max_events"):
        TimelineRecorder(max_events=0)
    with pytest.raises(ConfigError, match="--timeline-window"):
        parse_window("10")
    assert parse_window("10:") == (10.0, math.inf) and parse_window(":5") == (0.0, 5.0)
    tl = TimelineRecorder()
    Simulation(mechanisms(n=2), timeline=tl)
    with pytest.raises(ConfigError, match="one TimelineRecorder per run"):
        Simulation(mechanisms(n=2), timeline=tl)


def test_cli_writes_the_json_and_the_png(tmp_path, capsys):
    from hermes_env.cli import main

    js, png = tmp_path / "t.json", tmp_path / "t.png"
    assert main(["simulate", "small", "--out", str(tmp_path / "run"), "--timeline", str(js), "--timeline-png",
                 str(png), "--timeline-window", "0:30"]) == 0
    trace = json.loads(js.read_text())
    check_trace_format(trace)
    assert trace["otherData"]["window_s"] == [0.0, 30.0] and trace["otherData"]["dropped_events"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "timeline: " in capsys.readouterr().out
    for bad, field in ((["--timeline-window", "0:60"], "--timeline-window"),
                       (["--timeline", str(tmp_path / "t.png")], "--timeline"),
                       (["--timeline", str(tmp_path / "nowhere" / "t.json")], "--timeline")):
        assert main(["simulate", "small", "--out", str(tmp_path / "run"), *bad]) == 2
        assert f"hermes-env: {field}:" in capsys.readouterr().err


def test_env_writes_each_episodes_timeline_when_it_ends(tmp_path):
    from hermes_env.envs.hermes import RoutingEnv

    cfg = {"cluster": {"llm_backends": [{**LLM, "replicas": 2}]},
           "workload": {"num_applications": 20, "arrivals": {"process": "poisson", "rate": 5.0}, "applications": [
               {"template": {"name": "one", "stages": [{"name": "gen", "backend": "llm:llama3-8b",
                                                         "prompt_tokens": 500, "output_tokens": 50}]}}]}}
    env = RoutingEnv(cfg, timeline=tmp_path / "tl.json")
    for episode, max_steps in ((0, None), (1, 5)):
        env.max_steps = max_steps
        _, info = env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(int(info["action_mask"].argmax()))
            done = terminated or truncated
            assert ("timeline" in info) == done
        assert info["timeline"] == tmp_path / f"tl-{episode}.json"
        trace = json.loads(info["timeline"].read_text())
        check_trace_format(trace)
        assert trace["otherData"]["simulated_seconds"] == pytest.approx(info["sim_time"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tl-0.json", "tl-1.json"]
    for kwargs, field in (({"timeline": 3}, "timeline"), ({"timeline": tmp_path / "tl.txt"}, "timeline"),
                          ({"timeline_window": (0, 10)}, "timeline_window"),
                          ({"timeline": tmp_path / "tl.json", "timeline_window": (10, 0)}, "timeline.window")):
        with pytest.raises(ConfigError, match=field):
            RoutingEnv(cfg, **kwargs)


def test_a_run_stopped_early_shows_what_is_in_flight_up_to_now():
    """Every request in a queue or a batch when the run stops has spans from its arrival to now, the
    last one marked open; building the trace twice gives the same trace."""
    tl = TimelineRecorder()
    sim = Simulation(mechanisms(), seed=0, timeline=tl, router="least_outstanding")
    sim.run(until=7.0)  # LLM requests waiting and running, tool requests waiting and in service
    now = sim.engine.now
    trace = json.loads(json.dumps(tl.trace()))
    assert json.loads(json.dumps(tl.trace())) == trace
    check_trace_format(trace)
    totals = request_totals(trace)
    b = sim.llm_backends["llm:llama3-8b"]
    in_flight = [r for rep in b.replicas for r in (*rep.queue, *rep.running, *rep.prefilling, *rep.staged, *rep.ready)]
    in_flight += list(sim.tool_backends["tool:box"].queue)
    assert len(in_flight) > 3
    for r in in_flight:
        assert totals[r.app.id, r.run_index, r.copy] == pytest.approx(now - r.first_enqueued, abs=1e-6)
    opened = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["args"].get("open")]
    calls = [e for e in opened if e["name"] == "call"]
    assert len(calls) == sum(i.busy for i in sim.tool_backends["tool:box"].instances) > 0
    for e in calls:  # a call in progress: its wait and its service so far
        a = e["args"]
        assert totals[a["app"], a["run"], a["copy"]] == pytest.approx(now - sim.active[a["app"]].issued_at, abs=1e-6)
    assert len(opened) == trace["otherData"]["in_flight_spans"] >= len(in_flight) + len(calls)
    assert all(e["ts"] + e["dur"] == pytest.approx(now * 1e6, abs=1e-3) for e in opened)
    waiting = {e["name"]: e["args"]["waiting"] for e in trace["traceEvents"] if e["ph"] == "C" and e["pid"] == 1
               and "queue" in e["name"]}  # the last value of each queue's counter
    assert sum(waiting.values()) == sum(len(rep.queue) for rep in b.replicas)


def test_without_matplotlib_the_png_flag_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    from hermes_env.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["simulate", "small", "--out", str(tmp_path / "run"), "--timeline-png", str(tmp_path / "t.png")]) == 2
    assert capsys.readouterr().err.strip() == ("hermes-env: --timeline-png: needs matplotlib, which is not installed "
                                               "(pip install 'hermes_env[dev]', or matplotlib)")
    assert not (tmp_path / "run" / "summary.json").exists()
