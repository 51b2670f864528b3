import copy
import gc
import math

import numpy as np
import pytest
import yaml

from hermes_env.cluster.latency import load_profile
from hermes_env.errors import ConfigError
from hermes_env.sim import Engine, ExperimentConfig, Simulation
from hermes_env.sim.engine import GC_THRESHOLD
from tests.conftest import ROOT

SMALL = ROOT / "configs" / "experiments" / "small.yaml"


def small_spec():
    spec = yaml.safe_load(SMALL.read_text())
    spec["cluster"] = yaml.safe_load((ROOT / "configs" / "clusters" / "small.yaml").read_text())
    return spec


def llm_experiment(prompt, output, rate, n, **backend):
    llm = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b", **backend}
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "req", "stages": [
                         {"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": prompt,
                          "output_tokens": output}]}}]},
    })


@pytest.mark.parametrize("seed", range(6))
def test_invariants_hold_and_every_application_completes_once(seed):
    cfg = ExperimentConfig.from_yaml(SMALL)
    sim = Simulation(cfg, seed=seed, check_invariants=True)  # asserts capacity, KV, time order, non-idling
    result = sim.run()
    ids = [r["id"] for r in result.rows]
    assert ids == list(range(cfg.workload.num_applications))
    assert all(r["completion"] >= r["arrival"] for r in result.rows)
    # tool backends did exactly the work the completed applications demanded
    for name, backend in sim.tool_backends.items():
        demanded = sum(float(run.tool_time.sum()) for app in sim.completed for run in app.runs if run.backend == name)
        assert backend.busy_slot_seconds == pytest.approx(demanded, rel=1e-9, abs=1e-9)
        assert len(backend.queue) == 0
    for backend in sim.llm_backends.values():  # all KV is freed but for the prefix cache's unreferenced blocks
        for r in backend.replicas:
            cached = r.block * r.cache.blocks if r.cache is not None else 0
            assert not r.running and r.kv_used == cached and (r.cache is None or r.cache.locked == 0)
        demanded = sum(int(run.output_tokens.sum()) for app in sim.completed for run in app.runs
                       if run.backend == backend.name)
        assert backend.completed == sum(run.width for app in sim.completed for run in app.runs
                                        if run.backend == backend.name)
        assert demanded > 0


def test_same_seed_same_result_and_common_random_numbers():
    cfg = ExperimentConfig.from_yaml(SMALL)
    a, b = Simulation(cfg, seed=3).run(), Simulation(cfg, seed=3).run()
    assert a.rows == b.rows and a.summary == b.summary
    c = Simulation(cfg, seed=4).run()
    assert c.rows != a.rows
    other = Simulation(cfg, scheduler="app_fcfs", prewarm="always", seed=3).run()
    for x, y in zip(a.rows, other.rows, strict=True):  # same arrivals and realised stages under any policy
        assert (x["arrival"], x["template"], x["stages"]) == (y["arrival"], y["template"], y["stages"])


def test_a_request_alone_takes_its_isolated_service_time():
    lat = load_profile("llama3-8b-h100")
    result = Simulation(llm_experiment(700, 150, rate=0.001, n=30), seed=0).run()
    expected = float(lat.isolated_service_time(np.array(700), np.array(150)))
    arrivals = np.array([r["arrival"] for r in result.rows])
    gaps = np.diff(arrivals)
    alone = [r for i, r in enumerate(result.rows)
             if (i == 0 or gaps[i - 1] > 5) and (i == len(gaps) or gaps[i] > 5)]
    assert len(alone) >= 20
    for row in alone:
        assert row["completion_time"] == pytest.approx(expected, rel=1e-9)
    together = [r for i, r in enumerate(result.rows[1:]) if gaps[i] < 1]
    assert together and all(r["completion_time"] > expected for r in together)  # batching slows each one


def reference_replica(arrivals, prompt, output, lat, max_batch, budget):
    """Iteration-by-iteration continuous batching, the naive way (ample KV memory)."""
    waiting = sorted((t, i) for i, t in enumerate(arrivals))
    running = {}  # i -> (ctx, left)
    done = {}
    now, k = 0.0, 0
    crossings, lead = 0, None  # decode iterations whose larger attention term changed with the batch unchanged
    while len(done) < len(arrivals):
        if not running and k < len(waiting) and waiting[k][0] > now:
            now = waiting[k][0]
        new, tokens = [], 0
        while k < len(waiting) and waiting[k][0] <= now and len(running) + len(new) < max_batch:
            if new and tokens + prompt > budget:
                break
            new.append(waiting[k][1])
            tokens += prompt
            k += 1
        ctx = [c for c, _ in running.values()]
        now_lead = (tuple(running), lat.per_kv_token * sum(ctx) >= lat.per_max_context * max(ctx, default=0))
        crossings += not new and lead is not None and now_lead[0] == lead[0] and now_lead[1] != lead[1]
        lead = now_lead
        t = lat.iteration_time(tokens + len(running), kv_tokens=sum(ctx), prefill_pairs=len(new) * prompt**2,
                               max_context=max(ctx, default=0))
        now += t
        running = {i: (c + 1, left - 1) for i, (c, left) in running.items()}
        running.update({i: (prompt + 1, output - 1) for i in new})
        for i in [i for i, (_, left) in running.items() if left == 0]:
            done[i] = now
            del running[i]
    return [done[i] for i in range(len(arrivals))], crossings


@pytest.mark.parametrize("prompt, output, rate, max_batch, longest_bound", [
    (300, 120, 2.0, 256, False), (300, 120, 8.0, 8, False), (300, 120, 20.0, 256, False), (50, 300, 3.0, 256, True)])
def test_closed_form_segments_match_iteration_by_iteration_stepping(prompt, output, rate, max_batch, longest_bound,
                                                                   tmp_path):
    n = 150
    profile = "llama3-8b-h100"
    if longest_bound:  # the longest-context term 6x the per-token one: the larger term changes inside segments
        spec = load_profile(profile).to_dict() | {"per_max_context": 6 * load_profile(profile).per_kv_token}
        profile = tmp_path / "longest-bound.yaml"
        profile.write_text(yaml.safe_dump(spec))
    cfg = llm_experiment(prompt, output, rate=rate, n=n, engine="legacy", max_num_seqs=max_batch,
                         max_num_batched_tokens=1024, profile=str(profile))
    sim = Simulation(cfg, seed=2, check_invariants=True)
    result = sim.run()
    lat = cfg.cluster.llm_backends[0].latency
    expected, crossings = reference_replica(sim.arrival_times, prompt, output, lat, max_batch, 1024)
    got = [r["completion"] for r in result.rows]
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert sim.llm_backends["llm:llama3-8b"].replicas[0].iterations > 0
    assert (crossings > 0) == longest_bound


def test_kv_exhaustion_preempts_and_still_completes_everything():
    cfg = llm_experiment({"dist": "lognormal", "mean": 2000, "cv": 0.5}, {"dist": "lognormal", "mean": 800, "cv": 0.5},
                         rate=6.0, n=300, gpu_memory_gb=20.0)
    sim = Simulation(cfg, seed=0, check_invariants=True)
    result = sim.run()
    assert result.summary["backends"]["llm:llama3-8b"]["preemptions"] > 0
    assert len(result.rows) == 300


def test_keep_alive_decides_cold_starts(tmp_path):
    trace = tmp_path / "arrivals.csv"
    trace.write_text("timestamp\n" + "\n".join(str(10.0 * i) for i in range(5)) + "\n")

    def run(keep_alive):
        cfg = ExperimentConfig.from_dict({
            "cluster": {"tool_backends": [{"name": "tool:box", "cold_start": {"dist": "deterministic", "value": 2.0},
                                           "keep_alive": keep_alive}]},
            "workload": {"num_applications": 5, "arrivals": {"process": "trace", "trace": str(trace)},
                         "applications": [{"template": {"name": "j", "stages": [
                             {"name": "s", "backend": "tool:box", "service_time": 1.0}]}}]},
        })
        return Simulation(cfg, seed=0).run()

    warm, cold = run(keep_alive=60), run(keep_alive=5)  # a request every 10 s, served in 1 s
    assert warm.summary["cold_starts"] == 1  # only the first application pays the warm-up
    assert cold.summary["cold_starts"] == 5  # every gap outlasts the keep-alive
    assert warm.rows[0]["completion_time"] == pytest.approx(3.0)
    assert cold.summary["idle_warm_cost"] < warm.summary["idle_warm_cost"]


def test_always_warm_removes_cold_starts_at_an_idle_cost():
    cfg = ExperimentConfig.from_yaml(SMALL)
    none, always = Simulation(cfg, seed=1).run(), Simulation(cfg, prewarm="always", seed=1).run()
    assert none.summary["cold_starts"] > 0 and always.summary["cold_starts"] == 0
    assert always.summary["idle_warm_cost"] > none.summary["idle_warm_cost"]
    assert always.summary["jct"]["mean"] < none.summary["jct"]["mean"]


@pytest.mark.parametrize("path, value, field", [
    (["cluster", "llm_backends", 0, "model"], "gpt-5", "cluster.llm_backends[0].model"),
    (["cluster", "llm_backends", 0, "replicas"], -1, "cluster.llm_backends[0].replicas"),
    (["cluster", "llm_backends", 0, "gpu_memory_gb"], 16, "cluster.llm_backends[0].gpu_memory_gb"),
    (["cluster", "llm_backends", 0, "profile"], "nope", "latency_profile"),
    (["cluster", "tool_backends", 0, "keep_alive"], -1, "cluster.tool_backends[0].keep_alive"),
    (["cluster", "tool_backends", 0, "cold_start"], {"dist": "gamma"}, "cluster.tool_backends[0].cold_start.shape"),
    (["workload", "arrivals", "process"], "hawkes", "workload.arrivals.process"),
    (["workload", "arrivals", "rate"], 0, "workload.arrivals.rate"),
    (["workload", "applications", 0, "template"], "chess", "workload.applications[0].template"),
    (["workload", "applications", 1, "class"], "gold", "workload.applications[1].class"),
    (["workload", "num_applications"], 0, "workload.num_applications"),
    (["workload", "colour"], "red", "workload.colour"),
])
def test_bad_configs_raise_named_errors(path, value, field):
    spec = small_spec()
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(copy.deepcopy(spec), base=SMALL.parent)
    assert err.value.field == field, str(err.value)


def test_workload_needs_the_backends_its_applications_use():
    spec = small_spec()
    spec["cluster"]["tool_backends"] = [b for b in spec["cluster"]["tool_backends"] if b["name"] != "api:web-search"]
    with pytest.raises(ConfigError, match="needs backends the cluster lacks: \\['api:web-search'\\]"):
        ExperimentConfig.from_dict(spec, base=SMALL.parent)


def test_arrival_processes_have_their_rates(tmp_path):
    from hermes_env.sim.workload import ArrivalConfig

    rng = np.random.default_rng(0)
    for spec in ({"process": "poisson", "rate": 4.0}, {"process": "bursty", "rate": 4.0, "cv": 3.0}):
        t = ArrivalConfig.from_dict(spec, "a").times(50_000, rng)
        gaps = np.diff(t)
        assert 1 / gaps.mean() == pytest.approx(4.0, rel=0.05)
        assert gaps.std() / gaps.mean() == pytest.approx(spec.get("cv", 1.0), rel=0.1)
    tv = ArrivalConfig.from_dict({"process": "time_varying", "schedule": [{"duration": 10, "rate": 1},
                                                                       {"duration": 10, "rate": 9}]}, "a")
    t = tv.times(20_000, rng)
    in_fast = np.mod(t, 20) >= 10
    assert in_fast.mean() == pytest.approx(0.9, abs=0.02)
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,5\n"
                     "2023-11-16 18:15:47.1805900,10,5\n2023-11-16 18:15:50.6805900,10,5\n")
    replay = ArrivalConfig.from_dict({"process": "trace", "trace": str(trace), "time_scale": 2.0}, "a")
    assert replay.times(3, rng).tolist() == pytest.approx([0.0, 1.0, 8.0])
    with pytest.raises(ConfigError, match="is 4, but the trace has 3 arrivals"):
        replay.times(4, rng)


def test_slo_attainment_is_reported_per_class():
    result = Simulation(ExperimentConfig.from_yaml(SMALL), seed=0).run()
    att = result.summary["slo_attainment"]
    assert set(att) == {"real_time"} and 0.0 < att["real_time"] <= 1.0
    rt = [r for r in result.rows if r["class"] == "real_time"]
    assert att["real_time"] == pytest.approx(np.mean([r["slo_met"] for r in rt]))
    assert math.isfinite(result.summary["jct"]["p99"])


def prefix_experiment(mode, bandwidth_gbps=100.0, rate=3.0, n=300):
    # the engine of hermes_env 0.1 (no local prefix cache): the remote store serves exactly prefix_reuse
    llm = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3.1-8b", "engine": "legacy"}
    if mode:
        llm["remote_prefix_store"] = {"load_bandwidth_gbps": bandwidth_gbps, "mode": mode}
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "agent-step", "stages": [
                         {"name": "gen", "backend": "llm:llama3-8b", "prefix_reuse": 0.9,
                          "prompt_tokens": {"dist": "lognormal", "mean": 6000, "cv": 0.3},
                          "output_tokens": {"dist": "lognormal", "mean": 60, "cv": 0.5}}]}}]},
    })


def test_prefix_cache_loading_alone_costs_bytes_over_bandwidth():
    cfg = prefix_experiment("async", bandwidth_gbps=100.0, rate=0.001, n=1)
    sim = Simulation(cfg, seed=0, check_invariants=True)
    row = sim.run().rows[0]
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    app = sim.completed[0]
    prompt, output = int(app.runs[0].prompt_tokens[0]), int(app.runs[0].output_tokens[0])
    prefix = int(prompt * 0.9)
    load = prefix * 131072 / (100e9 / 8)
    lat = cfg.cluster.llm_backends[0].latency
    prefill = lat.iteration_time(prompt - prefix, prefill_pairs=prompt**2 - prefix**2)
    decode = float(lat.isolated_service_time(np.array(prompt), np.array(output)) - lat.prefill_time(prompt))
    assert replica.load_seconds == pytest.approx(load)
    assert row["completion_time"] == pytest.approx(load + prefill + decode, rel=1e-9)


def test_async_prefix_loading_beats_sync_and_recompute_under_load():
    jct = {}
    for mode in (None, "sync", "async"):
        result = Simulation(prefix_experiment(mode, bandwidth_gbps=50.0), seed=1, check_invariants=True).run()
        jct[mode] = result.summary["jct"]["mean"]
    # fetching 5,400 tokens of KV (0.7 GB) at 50 Gb/s takes ~113 ms, recomputing them ~165 ms; overlapping
    # the fetch with other requests' compute (CALVO) hides it
    assert jct["async"] < jct["sync"] < jct[None]


def test_time_to_first_token_and_per_output_token_are_reported():
    lat = load_profile("llama3-8b-h100")
    result = Simulation(llm_experiment(700, 150, rate=0.001, n=5), seed=0).run()
    tl = result.summary["backends"]["llm:llama3-8b"]["token_latency"]["best_effort"]
    assert tl["ttft"]["count"] == 5 and tl["tpot"]["count"] == 5
    # alone: the first token comes with the prefill; decode steps are batch-1 steps (the means are exact,
    # percentiles come from log histograms of 0.23% bins)
    assert tl["ttft"]["mean"] == pytest.approx(float(lat.prefill_time(700)), rel=1e-9)
    assert tl["ttft"]["p50"] == pytest.approx(float(lat.prefill_time(700)), rel=2.5e-3)
    step = (float(lat.isolated_service_time(np.array(700), np.array(150))) - float(lat.prefill_time(700))) / 149
    assert tl["tpot"]["mean"] == pytest.approx(step, rel=1e-9)
    assert tl["tpot"]["p50"] == pytest.approx(step, rel=2.5e-3)


def _one_stage_job(name, mean, backend="tool:server"):
    return {"name": name, "stages": [{"name": "s", "backend": backend,
                                      "service_time": {"dist": "exponential", "mean": mean}}]}


def believed_experiment(swap):
    """Short (0.3 s) and long (3 s) jobs on one server at 95% load; with ``swap`` the schedulers are
    given each job's PDGraph with the other's mean."""
    apps = [{"template": _one_stage_job("short", 0.3)}, {"template": _one_stage_job("long", 3.0)}]
    if swap:
        apps[0]["believed"], apps[1]["believed"] = _one_stage_job("short", 3.0), _one_stage_job("long", 0.3)
    return ExperimentConfig.from_dict({
        "cluster": {"tool_backends": [{"name": "tool:server", "instances": 1, "capacity": 1}]},
        "workload": {"num_applications": 2000, "arrivals": {"process": "poisson", "rate": 0.58},
                     "applications": apps}})


def test_schedulers_read_the_believed_pdgraph_and_sampling_the_true_one():
    true, stale = (Simulation(believed_experiment(swap), scheduler="gittins", seed=1).run() for swap in (False, True))
    realised = [[(r["template"], float(r["service_times"])) for r in run.rows] for run in (true, stale)]
    assert sorted(realised[0]) == sorted(realised[1])  # the same applications and demands either way
    # Gittins serves the believed-short jobs first: with beliefs swapped it serves the long ones first
    assert stale.summary["jct"]["mean"] > 1.5 * true.summary["jct"]["mean"]


def test_a_believed_pdgraph_must_share_the_true_structure():
    other = {"name": "short", "stages": [
        {"name": "s", "backend": "tool:server", "service_time": {"dist": "exponential", "mean": 0.3},
         "next": [{"to": "t", "p": 1.0}]},
        {"name": "t", "backend": "tool:server", "service_time": {"dist": "exponential", "mean": 0.3}}]}
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({
            "cluster": {"tool_backends": [{"name": "tool:server", "instances": 1, "capacity": 1}]},
            "workload": {"num_applications": 5, "arrivals": {"process": "poisson", "rate": 1.0},
                         "applications": [{"template": _one_stage_job("short", 0.3), "believed": other}]}})
    assert err.value.field == "workload.applications[0].believed"


def test_files_a_workload_names_are_relative_to_the_workload_file(tmp_path):
    (tmp_path / "workloads" / "templates").mkdir(parents=True)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "workloads" / "templates" / "job.yaml").write_text(yaml.safe_dump(_one_stage_job("job", 1.0)))
    (tmp_path / "workloads" / "w.yaml").write_text(yaml.safe_dump({
        "num_applications": 3, "arrivals": {"process": "poisson", "rate": 1.0},
        "applications": [{"template": "templates/job.yaml", "believed": "templates/job.yaml"}]}))
    (tmp_path / "experiments" / "e.yaml").write_text(yaml.safe_dump({
        "cluster": {"tool_backends": [{"name": "tool:server", "instances": 1, "capacity": 1}]},
        "workload": "../workloads/w.yaml"}))
    experiment = ExperimentConfig.from_yaml(tmp_path / "experiments" / "e.yaml")
    assert experiment.workload.applications[0].graph.name == "job"


def test_the_event_loop_collects_garbage_less_often_and_restores_the_thresholds():
    engine, seen = Engine(), []
    engine.at(1.0, lambda now: seen.append(gc.get_threshold()))
    engine.at(2.0, lambda now: 1 / 0)  # a failing callback leaves the thresholds as they were, too
    before = gc.get_threshold()
    with pytest.raises(ZeroDivisionError):
        engine.run()
    assert seen == [tuple(max(a, b) for a, b in zip(before, GC_THRESHOLD, strict=True))] and seen[0][0] >= 50_000
    assert gc.get_threshold() == before
