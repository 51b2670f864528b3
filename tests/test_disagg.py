"""Prefill/decode disaggregation (issue 21, item 2): the KV link's hand-computed transfer times, the hand-off's
conservation (every request in one place, KV on two replicas only while it moves, no replica over its KV
capacity), the colocated policy as the backend without disaggregation, the rules' choices, determinism, and
bad input."""

from __future__ import annotations

import math

import pytest

from hermes_env.cluster.config import MODEL_SHAPES, ClusterConfig
from hermes_env.cluster.link import LINKS, KVLink, LinkQueue
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.bench import BenchConfig
from hermes_env.sim.policies import disagg_names, make_disagg

BPT = MODEL_SHAPES["llama3.1-8b"].kv_bytes_per_token  # 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072


def backend(replicas: int = 2, prefill: int = 1, link: object = "nvlink", **extra: object) -> dict:
    return {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3.1-8b", "replicas": replicas,
            "disaggregation": {"prefill_replicas": prefill, "link": link, "slo": {"ttft_s": 2.0, "tpot_s": 0.05}},
            **extra}


def experiment(tmp_path, rows: list[tuple[float, int, int]], **kw: object) -> ExperimentConfig:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    return ExperimentConfig.from_dict({"cluster": {"llm_backends": [backend(**kw)]},
                                       "workload": {"arrivals": {"process": "trace", "trace": str(trace)}}})


def test_a_kv_transfer_takes_latency_plus_chunks_plus_bytes_over_bandwidth():
    assert BPT == 131072
    # 1,000 tokens over NVLink: 2 us + 4 chunks of 256 tokens x 5 us + 131,072,000 B / 450 GB/s
    assert LINKS["nvlink"].transfer_time(1000, BPT) == pytest.approx(2e-6 + 20e-6 + 131.072e6 / 450e9, rel=1e-12)
    # over the network link: 10 us + 20 us + 131,072,000 B / 50 GB/s = 2.6514 ms
    assert LINKS["network"].transfer_time(1000, BPT) == pytest.approx(10e-6 + 20e-6 + 131.072e6 / 50e9, rel=1e-12)
    custom = KVLink.from_spec({"base": "network", "bandwidth_gbps": 25}, "link")
    assert (custom.latency, custom.per_chunk, custom.bandwidth) == (pytest.approx(10e-6), pytest.approx(5e-6), 25e9)
    queue = LinkQueue(LINKS["network"])  # FIFO: the second transfer waits for the first
    one = LINKS["network"].transfer_time(1000, BPT)
    assert queue.send(1.0, 1000, BPT) == pytest.approx(1.0 + one)
    assert queue.send(1.0, 1000, BPT) == pytest.approx(1.0 + 2 * one)
    assert queue.send(5.0, 0, BPT) == pytest.approx(5.0 + 10e-6)  # an empty transfer still pays the latency


def test_a_split_request_prefills_on_the_prefill_replica_and_decodes_on_the_decode_replica(tmp_path):
    cfg = experiment(tmp_path, [(0.0, 3000, 50)], link="network")
    runs = {}
    for policy in ("colocated", "always"):
        sim = Simulation(cfg, router="least_outstanding", disagg=policy, check_invariants=True)
        sim.request_log = []
        summary = sim.run().summary
        runs[policy] = (sim.request_log[0], summary["backends"]["llm:llama3-8b"]["disaggregation"], sim)
    (alone, d0, _), (split, d1, sim) = runs["colocated"], runs["always"]
    assert d0["split_requests"] == d0["transfers"] == 0
    assert (d1["split_requests"], d1["transfers"], d1["local_decodes"]) == (1, 1, 0)
    # the prompt and its first token move (the decode replica's cache holds none of it): 3,001 tokens
    assert d1["transferred_tokens"] == 3001
    assert d1["link_busy_seconds"] == pytest.approx(LINKS["network"].transfer_time(3001, BPT), rel=1e-12)
    assert split.replica.index == 1 and alone.replica.index == 0
    assert split.first_token == alone.first_token  # the same prefill, alone on an idle replica
    # the decode starts once the KV has arrived: later than colocated by the transfer, within one iteration
    late = split.finished - alone.finished
    assert d1["link_busy_seconds"] - 0.02 < late < d1["link_busy_seconds"] + 0.02
    prefill, decode = sim.llm_backends["llm:llama3-8b"].replicas
    assert prefill.kv_used == prefill.block * prefill.cache.blocks  # its copy freed, the prompt's blocks cached
    assert not prefill.sending and not decode.incoming and decode.iterations > 0


@pytest.mark.parametrize("policy", ["always", "distserve", "splitwise:1"])
def test_every_request_is_in_one_place_and_no_replica_exceeds_its_kv(tmp_path, policy):
    # 3 prefill and 1 decode replica on 40 GB GPUs (a small KV cache), a burst of long prompts: the decode pool
    # runs out of KV, so requests wait with their KV on the prefill side (check_invariants checks every event)
    rows = [(0.05 * i, 2000 + 1500 * (i % 5), 100 + 40 * (i % 7)) for i in range(60)]
    cfg = experiment(tmp_path, rows, replicas=4, prefill=3, gpu_memory_gb=24)
    summary = Simulation(cfg, router="least_outstanding", disagg=policy, check_invariants=True).run().summary
    b = summary["backends"]["llm:llama3-8b"]
    d = b["disaggregation"]
    assert summary["completed"] == 60 and d["requests"] == 60
    assert d["split_requests"] > 0 and d["transfers"] + d["local_decodes"] <= d["split_requests"]
    assert d["ttft"]["count"] == 60 and 0 <= d["token_slo_met"] <= 60
    if policy == "always":  # the decode pool was full at times: prefilled requests waited, their KV held
        assert d["decode_wait_seconds"] > 1.0 and b["preemptions"] >= 0


def test_a_replica_whose_kv_is_held_for_the_decode_pool_waits_rather_than_fails(tmp_path):
    # long split prompts (their KV held on the prefill replicas until the one small decode replica takes it) beside
    # colocated short prompts with long answers: at times every running request on a prefill replica is preempted
    # and none fits again until a hand-off frees its blocks (this raised "does not fit the KV cache")
    rows = [(0.02 * i, 5000 if i % 2 else 300, 3000) for i in range(60)]
    cfg = experiment(tmp_path, rows, replicas=4, prefill=3, gpu_memory_gb=24)
    summary = Simulation(cfg, router="least_outstanding", disagg="distserve", check_invariants=True).run().summary
    assert summary["completed"] == 60 and summary["backends"]["llm:llama3-8b"]["preemptions"] > 0


def test_a_decode_pool_of_another_gpu_kind_never_exceeds_its_own_capacity(tmp_path):
    # two 80 GB prefill replicas, two 24 GB decode replicas (a third of the KV): capacity is per kind
    kinds = [{"name": "big", "profile": "llama3-8b-h100", "replicas": 2, "gpu_memory_gb": 80},
             {"name": "small", "profile": "llama3-8b-h100", "replicas": 2, "gpu_memory_gb": 24}]
    rows = [(0.04 * i, 3000 + 1000 * (i % 6), 150 + 30 * (i % 5)) for i in range(50)]
    trace = tmp_path / "t.csv"
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(f"{a},{p},{o}\n" for a, p, o in rows))
    spec = {k: v for k, v in backend(prefill=2).items() if k not in ("profile", "replicas")}
    cfg = ExperimentConfig.from_dict({"cluster": {"llm_backends": [{**spec, "replica_kinds": kinds}]},
                                      "workload": {"arrivals": {"process": "trace", "trace": str(trace)}}})
    sim = Simulation(cfg, router="least_outstanding", disagg="always", check_invariants=True)
    d = sim.run().summary["backends"]["llm:llama3-8b"]["disaggregation"]
    reps = sim.llm_backends["llm:llama3-8b"].replicas
    assert [r.role for r in reps] == ["prefill", "prefill", "decode", "decode"]
    assert reps[2].capacity < reps[0].capacity / 2 and d["transfers"] == 50 and d["decode_wait_seconds"] > 0


def test_colocated_on_a_split_backend_is_the_backend_without_disaggregation(tmp_path):
    rows = [(0.1 * i, 500 + 300 * (i % 4), 20 + i) for i in range(40)]
    split = experiment(tmp_path, rows, replicas=3)
    spec = backend(replicas=3)
    del spec["disaggregation"]
    plain = ExperimentConfig.from_dict({"cluster": {"llm_backends": [spec]}, "workload": {
        "arrivals": {"process": "trace", "trace": str(tmp_path / "t.csv")}}})
    a = Simulation(split, router="least_outstanding", seed=3).run().summary
    b = Simulation(plain, router="least_outstanding", seed=3).run().summary
    assert a["jct"] == b["jct"] and a["events"] == b["events"]
    assert a["backends"]["llm:llama3-8b"]["token_latency"] == b["backends"]["llm:llama3-8b"]["token_latency"]


def test_the_rules_split_what_their_papers_say(tmp_path):
    cfg = experiment(tmp_path, [(0.0, 100, 10)], replicas=2)
    sim = Simulation(cfg, router="least_outstanding", disagg="distserve")
    b = sim.llm_backends["llm:llama3-8b"]
    from hermes_env.cluster.request import Request

    # DistServe: split when the prompt's prefill alone (this profile: 0.034 s for 1,024 tokens, 0.130 s for
    # 4,096) exceeds the TPOT SLO (0.05 s), times the factor
    rule = make_disagg("distserve")
    assert not rule.split(b, Request(None, 0, 0, b.name, 1024, 10), 0.0)
    assert rule.split(b, Request(None, 0, 0, b.name, 4096, 10), 0.0)
    assert not make_disagg("distserve:3").split(b, Request(None, 0, 0, b.name, 4096, 10), 0.0)  # 0.130 < 0.15
    # Splitwise: by phase, unless every prefill replica has Q requests waiting
    rule = make_disagg("splitwise:1")
    r = Request(None, 0, 0, b.name, 1000, 10)
    assert rule.split(b, r, 0.0)
    b.replicas[0].queue.push(Request(None, 1, 0, b.name, 1000, 10), 0.0)
    assert not rule.split(b, r, 0.0)
    assert {"colocated", "always", "distserve", "splitwise"} <= set(disagg_names())


def test_the_same_seed_gives_the_same_run(tmp_path):
    rows = [(0.07 * i, 800 + 900 * (i % 3), 30 + 7 * (i % 5)) for i in range(40)]
    cfg = experiment(tmp_path, rows, replicas=3)
    runs = [Simulation(cfg, router="prefix_affinity", disagg="splitwise", seed=5).run().summary for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize(("change", "field"), [
    ({"link": {"bandwidth_gbps": 0, "latency_us": 1}}, "disaggregation.link.bandwidth_gbps"),
    ({"link": "infiniband"}, "disaggregation.link"),
    ({"prefill_replicas": 2}, "disaggregation.prefill_replicas"),
    ({"slo": {"ttft_s": 1.0}}, "disaggregation.slo.tpot_s"),
])
def test_bad_disaggregation_is_one_error_naming_the_field(change, field):
    spec = backend(replicas=2)
    spec["disaggregation"] = {**spec["disaggregation"], **change}
    with pytest.raises(ConfigError) as err:
        ClusterConfig.from_dict({"llm_backends": [spec]})
    assert field in str(err.value) and "\n" not in str(err.value)


def test_a_splitting_policy_needs_a_router(tmp_path):
    cfg = experiment(tmp_path, [(0.0, 100, 10)])
    with pytest.raises(ConfigError, match="router"):
        Simulation(cfg, disagg="always")
    Simulation(cfg, disagg="colocated")  # the shared queue serves a backend whose requests are never split


def test_migration_is_refused_on_a_disaggregated_backend(tmp_path):
    cfg = experiment(tmp_path, [(0.0, 100, 10)])
    with pytest.raises(ConfigError, match="disaggregated") as err:
        Simulation(cfg, router="least_outstanding", migration="llumnix")
    assert "\n" not in str(err.value)
    Simulation(cfg, router="least_outstanding", migration="none")


def test_the_pd_disagg_bench_builds_every_cell():
    cfg = BenchConfig.from_yaml("pd-disagg")
    assert {c[-1] for c in cfg.combos} == {"colocated", "always", "distserve", "splitwise"}
    assert "goodput_requests" in cfg.columns() and "tpot_p99" in cfg.columns()
    assert math.isclose(cfg.experiment_at(1.0).cluster.llm_backends[0].disaggregation.tpot_slo, 0.1)


# -- the environments: the split part on Routing-v0 and Joint-v0 where a backend is disaggregated ----------------
PD = {"workload": {"arrivals": {"window": [0, 30]}}}  # about 60 Mooncake requests


@pytest.mark.parametrize("env_id", ["hermes_env/Routing-v0", "hermes_env/Joint-v0"])
def test_the_env_checkers_pass_on_a_disaggregated_backend(env_id):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check

    import hermes_env  # noqa: F401  (registers the environments)

    env = gym.make(env_id, config="pd-disagg", overrides=PD).unwrapped
    assert env.controls[-1] == "split" and env.observation_space["disagg"].shape == (4, 4)
    check_env(env, skip_render_check=True)
    sb3_check(gym.make(env_id, config="pd-disagg", overrides=PD).unwrapped, warn=True)
    assert gym.make("hermes_env/Routing-v0").unwrapped.action_space == gym.spaces.Discrete(4)  # default unchanged


def test_the_split_part_splits_the_requests_the_agent_splits():
    import gymnasium as gym
    import numpy as np

    import hermes_env  # noqa: F401

    env = gym.make("hermes_env/Routing-v0", config="pd-disagg", overrides=PD, invalid_action="raise").unwrapped
    assert env.action_space == gym.spaces.MultiDiscrete([4, 2])
    obs, info = env.reset(seed=0)
    asked = split = 0
    while True:
        d = env.decision
        mask = env.action_masks()
        route, can_split = mask[:4], mask[4:]
        prefill = [i for i in np.flatnonzero(route) if d.candidates[0].backend.replicas[i].role == "prefill"]
        want = asked % 2 == 0 and can_split[1] and prefill  # every other request split, the rest colocated
        action = np.array([prefill[0] if want else int(np.flatnonzero(route)[-1]), int(bool(want))])
        asked, split = asked + 1, split + bool(want)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
        assert obs["disagg"][0, 0] == 1.0 and obs["disagg"][2, 1] == 1.0  # replicas 0, 1 prefill; 2, 3 decode
    from hermes_env.sim.metrics import summarise

    d = summarise(env.sim).summary["backends"]["llm:llama3-8b"]["disaggregation"]
    assert d["policy"] == "external" and d["split_requests"] == split > 0
    assert d["transfers"] + d["local_decodes"] == split
    with pytest.raises(ValueError, match="not a prefill replica"):  # split with a decode replica is invalid
        env.reset(seed=0)
        env.step(np.array([3, 1]))


def test_a_snapshot_restores_a_run_with_kv_in_flight_bit_for_bit():
    import gymnasium as gym
    import numpy as np

    import hermes_env  # noqa: F401

    env = gym.make("hermes_env/Routing-v0", config="pd-disagg", overrides=PD).unwrapped

    def act() -> np.ndarray:  # split every request that may be, on the first prefill replica; else the last replica
        mask = env.action_masks()
        route = np.flatnonzero(mask[:4])
        prefill = [i for i in route if env.sim.llm_backends["llm:llama3-8b"].replicas[i].role == "prefill"]
        return np.array([prefill[0], 1]) if mask[5] and prefill else np.array([route[-1], 0])

    def finish() -> list:
        out = []
        while True:
            obs, reward, terminated, truncated, _ = env.step(act())
            out.append((reward, obs["disagg"].tobytes()))
            if terminated or truncated:
                return out

    env.reset(seed=1)
    b = env.sim.llm_backends["llm:llama3-8b"]
    busy = lambda: any(r.sending or r.incoming or r.staged or any(q.split for q in r.prefilling)  # noqa: E731
                       for r in b.replicas)
    for _ in range(25):
        env.step(act())
    while not busy():  # a split request mid-prefill, or its KV waiting or in flight
        env.step(act())
    snap = env.snapshot()
    first = finish()
    env.restore(snap)
    assert finish() == first
