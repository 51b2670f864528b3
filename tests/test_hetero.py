"""Heterogeneous replicas (issue 21): replica kinds of one LLM backend with their own latency profiles, memory,
prices and loads; the speed-aware router, the autoscalers' choice of kind, and the environments' view of them."""

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env

from baselines.autoscaling import kind_to_load
from hermes_env.cluster.config import MODEL_SHAPES
from hermes_env.cluster.latency import PARAMETERS, load_profile
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation

MODEL = MODEL_SHAPES["llama3-8b"]
STAGES = [{"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "lognormal", "mean": 1500, "cv": 0.3},
           "output_tokens": {"dist": "lognormal", "mean": 200, "cv": 0.5}}]


@pytest.fixture(scope="module")
def slow_profile(tmp_path_factory):
    """The H100 profile with every time doubled: a GPU half as fast in every term."""
    base = load_profile("llama3-8b-h100")
    spec = {k: float(getattr(base, k)) * (1 if k == "sharpness" else 2) for k in PARAMETERS}
    path = tmp_path_factory.mktemp("profiles") / "slow.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": "slow", "source": "test: the H100 fit with times doubled"}))
    return str(path)


def kinds(slow_profile, fast_warm=1, slow_warm=1, fast_max=1, slow_max=1):
    return [{"name": "fast", "profile": "llama3-8b-h100", "gpu_memory_gb": 141, "replicas": fast_warm,
             "max_gpus": fast_max, "price_per_gpu_hour": 4.0, "load_bandwidth_gbps": 8.0, "engine_start_s": 2.0},
            {"name": "slow", "profile": slow_profile, "gpu_memory_gb": 80, "replicas": slow_warm, "max_gpus": slow_max,
             "price_per_gpu_hour": 1.0}]


def experiment(replica_kinds, rate=2.0, n=60, **backend):
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [{"name": "llm:llama3-8b", "model": "llama3-8b", "replica_kinds": replica_kinds,
                                      **backend}]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "app", "stages": STAGES}}]}})


def test_each_kind_has_its_own_memory_profile_and_load_time(slow_profile):
    cfg = experiment(kinds(slow_profile, fast_max=2)).cluster.llm_backends[0]
    per_token = MODEL.kv_bytes_per_token * 16
    assert cfg.kv_capacity(cfg.kinds[0]) == int((141e9 * 0.9 - MODEL.weight_bytes) // per_token) * 16
    assert cfg.kv_capacity(cfg.kinds[1]) == int((80e9 * 0.9 - MODEL.weight_bytes) // per_token) * 16
    assert cfg.kv_capacity_tokens == cfg.kv_capacity(cfg.kinds[1])  # a request must fit every replica
    assert cfg.load_time(cfg.kinds[0]) == pytest.approx(MODEL.weight_bytes / 8e9 + 2.0)
    assert cfg.load_time(cfg.kinds[1]) == pytest.approx(MODEL.weight_bytes / 6e9 + 5.0)  # nvme, default start
    assert (cfg.replicas, cfg.max_replicas) == (2, 3)
    sim = Simulation(experiment(kinds(slow_profile, fast_max=2)), seed=0)
    reps = sim.llm_backends["llm:llama3-8b"].replicas
    assert [(r.kind.name, r.state) for r in reps] == [("fast", 2), ("fast", 0), ("slow", 2)]  # warm first per kind
    assert reps[2].latency.floor == pytest.approx(2 * reps[0].latency.floor)


def test_gpu_seconds_and_their_price_integrate_each_kind_held(slow_profile):
    sim = Simulation(experiment(kinds(slow_profile), n=30), router="round_robin", seed=1, check_invariants=True)
    result = sim.run()
    backend = result.summary["backends"]["llm:llama3-8b"]
    end = sim.engine.now
    assert backend["gpu_seconds"] == pytest.approx(2 * end)
    assert backend["gpu_cost"] == pytest.approx((4.0 + 1.0) * end / 3600)


def test_the_speed_aware_router_sends_more_work_to_the_faster_kind_and_finishes_sooner(slow_profile):
    cfg = experiment(kinds(slow_profile), rate=6.0, n=300)
    means, served = {}, {}
    for router in ("round_robin", "expected_finish"):
        sim = Simulation(cfg, router=router, seed=2, check_invariants=True)
        result = sim.run()
        assert result.summary["completed"] == 300
        means[router] = result.summary["jct"]["mean"]
        served[router] = [r.iterations for r in sim.llm_backends["llm:llama3-8b"].replicas]
    fast, slow = served["expected_finish"]
    assert fast > 1.3 * slow
    assert means["expected_finish"] < 0.9 * means["round_robin"]


def test_a_lone_request_goes_to_the_faster_replica(slow_profile):
    cfg = experiment(kinds(slow_profile), rate=0.05, n=5)
    sim = Simulation(cfg, router="expected_finish", seed=3)
    backend = sim.llm_backends["llm:llama3-8b"]
    result = sim.run()  # what each kind's replicas served (compiled, the backend's methods cannot be spied on)
    served = {kind: sum(r.iterations for r in backend.replicas if r.kind.name == kind) for kind in ("fast", "slow")}
    assert result.summary["completed"] == 5 and served["slow"] == 0 < served["fast"]


def test_the_kind_rules_weigh_speed_against_price(slow_profile):
    sim = Simulation(experiment(kinds(slow_profile, fast_warm=0, slow_warm=0, fast_max=2, slow_max=2)), seed=0)
    backend = sim.llm_backends["llm:llama3-8b"]
    fast, slow = backend.cfg.kinds
    assert backend.cfg.decode_throughput(fast) == pytest.approx(2 * backend.cfg.decode_throughput(slow))
    assert kind_to_load(backend, "fastest") == "fast" and kind_to_load(backend, "cheapest") == "slow"
    # price per decode token: 4 / (2 x) against 1 / x: the slow kind is the efficient one here
    assert kind_to_load(backend, "efficient") == "slow" and kind_to_load(backend, "first") is None
    assert backend.scale_up(0.0, "slow") and [r.state for r in backend.replicas] == [0, 0, 1, 0]
    with pytest.raises(ConfigError, match="no replica kind 'tpu'"):
        sim.scale_up("llm:llama3-8b", 0.0, "tpu")


def test_autoscaling_env_loads_the_kind_it_orders_and_passes_the_checker(slow_profile):
    cfg = experiment(kinds(slow_profile, fast_warm=1, slow_warm=0, fast_max=1, slow_max=2), n=40)
    env = gym.make("hermes_env/Autoscaling-v0", config=cfg)
    assert env.action_space.nvec.tolist() == [5]  # nothing, load, release, load fast, load slow
    obs, info = env.reset(seed=0)
    assert obs["kinds"].shape == (1, 2, 6) and obs["replica_kinds"].shape[1] == 3
    assert info["action_mask"].tolist() == [True, True, True, False, True]  # no cold fast replica left
    env.step(np.array([4]))
    reps = env.unwrapped.sim.llm_backends["llm:llama3-8b"].replicas
    assert [(r.kind.name, r.state) for r in reps] == [("fast", 2), ("slow", 1), ("slow", 0)]
    check_env(gym.make("hermes_env/Autoscaling-v0", config=cfg).unwrapped)
    homogeneous = gym.make("hermes_env/Autoscaling-v0")
    assert "kinds" not in homogeneous.observation_space.spaces and homogeneous.action_space.nvec.tolist() == [3]


@pytest.mark.parametrize("bad, field", [
    ({"profile": "llama3-8b-h100"}, "llm_backends[0].profile"),
    ({"replica_kinds": []}, "replica_kinds"),
    ({"replica_kinds": [{"profile": "llama3-8b-h100"}]}, "replica_kinds[0].name"),
    ({"replica_kinds": [{"name": "a", "profile": "llama3-8b-h100"}, {"name": "a", "profile": "llama3-8b-h100"}]},
     "replica_kinds"),
    ({"replica_kinds": [{"name": "a", "profile": "no-such-gpu"}]}, "latency_profile"),
    ({"replica_kinds": [{"name": "a", "profile": "llama3-8b-h100", "gpu_memory_gb": 16}]}, "gpu_memory_gb"),
    ({"replica_kinds": [{"name": "a", "profile": "llama3-8b-h100", "price_per_gpu_hour": -1}]}, "price_per_gpu_hour"),
])
def test_bad_replica_kinds_name_the_field(slow_profile, bad, field):
    spec = {"replica_kinds": kinds(slow_profile), **bad}
    replica_kinds = spec.pop("replica_kinds")
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        experiment(replica_kinds, **spec)
