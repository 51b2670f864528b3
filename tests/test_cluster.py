"""Cluster control (issue 12): routing to per-replica queues, replica lifecycle and autoscaling, LoRA
adapters, and their bad input."""

import numpy as np
import pytest

from hermes_env.cluster.config import LOAD_BANDWIDTH, MODEL_SHAPES
from hermes_env.cluster.latency import load_profile
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.policies import autoscaler_names, router_names

LLM = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b"}
AGENT = [{"name": "think", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "lognormal", "mean": 1500, "cv": 0.3},
          "output_tokens": {"dist": "lognormal", "mean": 120, "cv": 0.5}, "prompt_growth_per_iteration": 400,
          "system_prompt_tokens": 1000, "context": "continue",
          "next": [{"to": "think", "p": 0.8, "max_iterations": 5}, {"to": "end", "p": 0.2}]}]


def experiment(stages, rate, n, arrivals=None, **backend):
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [{**LLM, **backend}]},
        "workload": {"num_applications": n, "arrivals": arrivals or {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "app", "stages": stages}}]}})


def single(prompt=500, output=100):
    return [{"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": prompt, "output_tokens": output}]


# -- routing ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ["shared", "round_robin", "random", "least_outstanding", "least_kv",
                                    "prefix_affinity", "session_sticky", "oracle"])
def test_every_router_completes_every_application_with_invariants(router):
    cfg = experiment(AGENT, 3.0, 150, replicas=3, gpu_memory_gb=30)
    sim = Simulation(cfg, router=router, seed=0, check_invariants=True)
    result = sim.run()
    assert result.summary["completed"] == 150 and result.summary["router"] == router
    served = [r.iterations for r in sim.llm_backends["llm:llama3-8b"].replicas]
    assert all(n > 0 for n in served)  # every router uses every replica at this load


def test_round_robin_alternates_and_session_sticky_keeps_an_application_on_one_replica():
    cfg = experiment(AGENT, 2.0, 60, replicas=3)
    replicas_of = {}
    for router in ("round_robin", "session_sticky"):
        sim = Simulation(cfg, router=router, seed=1)
        seen: dict[int, set] = {}
        policy = sim.llm_backends["llm:llama3-8b"].router  # spied on, not the backend (compiled, it takes no
        real = policy.route                                # instance attribute over a method)

        def spy(backend, request, candidates, now, seen=seen, real=real):
            replica = real(backend, request, candidates, now)
            seen.setdefault(request.app.id, set()).add(replica.index)
            return replica

        policy.route = spy
        sim.run()
        replicas_of[router] = seen
    assert all(len(s) == 1 for s in replicas_of["session_sticky"].values())
    assert np.mean([len(s) for s in replicas_of["round_robin"].values() if len(s) > 0]) > 1.5


def test_affinity_routing_finds_the_prefix_caches_that_round_robin_scatters():
    cfg = experiment(AGENT, 3.0, 200, replicas=4)
    hit = {}
    for router in ("round_robin", "session_sticky", "prefix_affinity"):
        result = Simulation(cfg, router=router, seed=0).run()
        hit[router] = result.summary["backends"]["llm:llama3-8b"]["prefix_cache"]["hit_rate"]
    assert hit["session_sticky"] > 1.3 * hit["round_robin"] and hit["prefix_affinity"] > 1.3 * hit["round_robin"]


def test_the_shared_queue_is_the_default_and_needs_no_router():
    sim = Simulation(experiment(single(), 1.0, 10, replicas=2), seed=0)
    backend = sim.llm_backends["llm:llama3-8b"]
    assert backend.router is None and all(r.queue is backend.queue for r in backend.replicas)


# -- lifecycle and autoscaling ------------------------------------------------------------------------------

def test_a_request_to_a_cold_backend_waits_for_a_replica_to_load():
    lat = load_profile("llama3-8b-h100")
    cfg = experiment(single(), 0.001, 1, replicas=0, max_gpus=2)
    sim = Simulation(cfg, seed=0, check_invariants=True)
    row = sim.run().rows[0]
    load = MODEL_SHAPES["llama3-8b"].weight_bytes / LOAD_BANDWIDTH["nvme"] + 5.0
    assert cfg.cluster.llm_backends[0].load_time() == pytest.approx(load)
    service = float(lat.isolated_service_time(np.array(500), np.array(100)))
    assert row["completion_time"] == pytest.approx(load + service, rel=1e-12)
    summary = sim.llm_backends["llm:llama3-8b"].summary(sim.engine.now)
    assert summary["replica_loads_on_demand"] == 1
    assert summary["gpu_seconds"] == pytest.approx(load + service, rel=1e-12)  # from the load order on


def test_keepalive_releases_idle_replicas_and_gpu_seconds_follow(tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n0\n1\n200\n201\n")  # two bursts 200 s apart
    arrivals = {"process": "trace", "trace": str(trace)}
    cfg = experiment(single(), 0, 4, arrivals=arrivals, replicas=1, max_gpus=1)
    fixed = Simulation(cfg, seed=0, check_invariants=True)
    fixed.run()
    keep = Simulation(cfg, autoscaler="keepalive", seed=0, check_invariants=True)
    keep.run()
    f, k = (s.llm_backends["llm:llama3-8b"].summary(s.engine.now) for s in (fixed, keep))
    assert f["scale_downs"] == 0 and k["scale_downs"] >= 1 and k["replica_loads_on_demand"] == 1
    assert k["gpu_seconds"] < 0.6 * f["gpu_seconds"]  # released for most of the 200 s gap
    times = {a.id: a.completion - a.arrival for a in keep.completed}
    assert times[2] > cfg.cluster.llm_backends[0].load_time()  # the second burst paid a load on its critical path


@pytest.mark.parametrize("autoscaler", ["fixed", "keepalive", "queue_threshold", "pdgraph", "oracle"])
def test_every_autoscaler_completes_every_application_within_the_gpu_budget(autoscaler):
    arrivals = {"process": "time_varying", "schedule": [{"duration": 60, "rate": 0.2}, {"duration": 60, "rate": 12}]}
    cfg = experiment(single({"dist": "lognormal", "mean": 800, "cv": 0.5}, 200), 0, 600, arrivals=arrivals,
                     replicas=1, max_gpus=4, max_num_seqs=32)
    sim = Simulation(cfg, autoscaler=autoscaler, seed=0, check_invariants=True)
    result = sim.run()
    backend = sim.llm_backends["llm:llama3-8b"]
    assert result.summary["completed"] == 600
    assert result.summary["gpu_seconds"] <= 4 * sim.engine.now + 1e-6
    if autoscaler in ("queue_threshold", "pdgraph", "oracle"):
        assert backend.scale_ups > 0  # the bursts need more than one replica


def test_the_clairvoyant_autoscaler_loads_ahead_of_a_burst():
    arrivals = {"process": "time_varying", "schedule": [{"duration": 200, "rate": 0.0001}, {"duration": 20, "rate": 1}]}
    cfg = experiment(single(), 0, 30, arrivals=arrivals, replicas=0, max_gpus=1)
    on_demand = Simulation(cfg, autoscaler="keepalive", seed=3).run().summary
    oracle = Simulation(cfg, autoscaler="oracle", seed=3).run().summary
    assert on_demand["backends"]["llm:llama3-8b"]["replica_loads_on_demand"] >= 1
    assert oracle["backends"]["llm:llama3-8b"]["replica_loads_on_demand"] == 0  # warm when the burst came
    assert oracle["jct"]["mean"] < on_demand["jct"]["mean"]


# -- LoRA ----------------------------------------------------------------------------------------------------

def lora_experiment(n, rate, max_loras=2, adapters=8, popularity=None):
    stage = {"name": "chat", "backend": "llm:llama3-8b", "prompt_tokens": 300, "output_tokens": 50, "adapter": "any"}
    mix = {"template": {"name": "chat", "stages": [stage]}}
    if popularity:
        mix["adapters"] = popularity
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [{**LLM, "lora": {"adapters": adapters, "max_loras": max_loras}}]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate}, "applications": [mix]}})


def test_a_request_for_a_cold_adapter_waits_for_its_load():
    lat = load_profile("llama3-8b-h100")
    cfg = lora_experiment(1, 0.001)
    lora = cfg.cluster.llm_backends[0].lora
    assert lora.adapter_bytes == pytest.approx(MODEL_SHAPES["llama3-8b"].lora_bytes(16))
    assert 80e6 < lora.adapter_bytes < 90e6  # rank 16 on every linear layer of Llama-3-8B
    row = Simulation(cfg, seed=0, check_invariants=True).run().rows[0]
    service = float(lat.isolated_service_time(np.array(300), np.array(50)))
    assert row["completion_time"] == pytest.approx(lora.load_time() + service, rel=1e-12)


def test_resident_adapters_never_exceed_max_loras_and_popular_ones_load_less():
    uniform = Simulation(lora_experiment(400, 20.0, max_loras=2, adapters=16), seed=0, check_invariants=True)
    uniform.run()
    zipf = Simulation(lora_experiment(400, 20.0, max_loras=2, adapters=16,
                                      popularity={"popularity": "zipf", "s": 1.5}), seed=0, check_invariants=True)
    zipf.run()
    loads = [s.llm_backends["llm:llama3-8b"].replicas[0].adapter_loads for s in (uniform, zipf)]
    assert loads[1] < 0.8 * loads[0] and loads[1] > 2
    assert len({a.adapter for a in uniform.completed}) == 16


# -- bad input ---------------------------------------------------------------------------------------------

def test_cluster_control_bad_input_names_the_field():
    with pytest.raises(ConfigError, match="unknown router 'nearest'"):
        Simulation(experiment(single(), 1.0, 1), router="nearest")
    with pytest.raises(ConfigError, match="unknown autoscaler 'magic'"):
        Simulation(experiment(single(), 1.0, 1), autoscaler="magic")
    with pytest.raises(ConfigError, match="max_gpus: is 1, smaller than one replica"):
        experiment(single(), 1.0, 1, gpus_per_replica=2, max_gpus=1)
    with pytest.raises(ConfigError, match="load_bandwidth_gbps: must be > 0"):
        experiment(single(), 1.0, 1, load_bandwidth_gbps=0)
    stage = {"name": "chat", "backend": "llm:llama3-8b", "prompt_tokens": 300, "output_tokens": 50, "adapter": "sql"}
    with pytest.raises(ConfigError, match="does not serve the adapter 'sql'"):
        ExperimentConfig.from_dict({"cluster": {"llm_backends": [{**LLM, "lora": {"adapters": 4}}]}, "workload": {
            "num_applications": 1, "arrivals": {"process": "poisson", "rate": 1.0},
            "applications": [{"template": {"name": "chat", "stages": [stage]}}]}})
    with pytest.raises(ConfigError, match="serves no LoRA adapters"):
        experiment([{**stage, "adapter": "any"}], 1.0, 1)
    assert {"shared", "round_robin", "prefix_affinity", "oracle"} <= set(router_names())
    assert {"fixed", "keepalive", "queue_threshold", "pdgraph", "oracle"} <= set(autoscaler_names())
