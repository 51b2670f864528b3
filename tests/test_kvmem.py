"""Agentic KV memory (issue 20): the host tier, retention at tool boundaries, the retention policies."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from hermes_env.cluster.kvtier import RELEASE, HostTierConfig, Plan, load_kv_transfer
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.policies import make_retention, retention_names
from hermes_env.sim.retention import RetentionPolicy

BPT = 131072  # bytes per token of Llama-3.1-8B: 2 x 32 layers x 8 KV heads x 128 x 2 B
POLICIES = ("lru", "ttl", "kvflow", "infercept", "pdgraph", "oracle")


def template(prompt: int = 1000, added: int = 500, output: int = 100, tool: dict | None = None,
             calls: int = 2, system: int = 0, output2: int | None = None) -> dict:
    """An agent: ``calls`` LLM calls (the first of ``prompt`` tokens, each later one appending ``added``), a tool
    call between each two (deterministic 10 s unless ``tool`` says otherwise)."""
    first = {"name": "first", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "deterministic", "value": prompt},
             "output_tokens": {"dist": "deterministic", "value": output}, "system_prompt_tokens": system,
             "next": [{"to": "tool", "p": 1.0}]}
    tool_stage = {"name": "tool", "backend": "tool:sandbox",
                  "service_time": tool or {"dist": "deterministic", "value": 10.0},
                  "next": [{"to": "again", "p": 1.0, **({"max_iterations": calls - 2, "on_limit": "end"}
                                                         if calls > 2 else {})}]}
    if calls == 2:
        tool_stage["next"] = [{"to": "again", "p": 1.0}]
    again = {"name": "again", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "deterministic", "value": added},
             "output_tokens": {"dist": "deterministic", "value": output if output2 is None else output2},
             "context": "append",
             "next": [{"to": "tool", "p": 1.0}] if calls > 2 else []}
    return {"name": "agent", "entry": "first", "stages": [first, tool_stage, again]}


def experiment(graph: dict, apps: int = 1, rate: float = 1.0, gpu_gb: float = 40.0, host: dict | None = None,
               replicas: int = 1) -> ExperimentConfig:
    host = {"capacity_gb": 10, "transfer": "h200-pcie5"} if host is None else host
    llm = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3.1-8b", "replicas": replicas,
           "gpu_memory_gb": gpu_gb, "max_model_len": 32768, **({"host_kv_tier": host} if host else {})}
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm], "tool_backends": [{"name": "tool:sandbox", "instances": 1000}]},
        "workload": {"num_applications": apps, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": graph}]}})


def run(cfg: ExperimentConfig, retention, seed: int = 0, **kw) -> dict:  # noqa: ANN001
    sim = Simulation(cfg, retention=retention, seed=seed, check_invariants=True, **kw)
    summary = sim.run().summary
    return summary, sim


class Fixed(RetentionPolicy):
    """A test policy: the same plan at every boundary (optionally a prefetch ``lead`` seconds before the
    realised next use)."""

    name = "fixed"

    def __init__(self, plan: Plan, lead: float | None = None) -> None:
        self.plan, self.lead = plan, lead

    def at_boundary(self, replica, ctx, now):  # noqa: ANN001, ANN201
        nxt = self.realised_next_use(replica, ctx)
        if self.lead is None or nxt is None:
            return self.plan
        return Plan("offload", prefetch_at=now + nxt - self.lead)


def kv(summary: dict) -> dict:
    return summary["backends"]["llm:llama3-8b"]["kv_memory"]


# -- the transfer profile and the configs --------------------------------------------------------
def test_transfer_time_is_chunks_times_latency_plus_bytes_over_bandwidth() -> None:
    profile = load_kv_transfer("h200-pcie5")  # measured on the lent H200
    assert profile.measured and profile.chunk_tokens == 256
    tier = HostTierConfig(10e9, profile)
    # 1,088 tokens: 5 chunks of 17.2 us, and 1,088 x 128 KiB at 54.97 GB/s (host to device)
    assert tier.transfer_time(1088, BPT, True) == pytest.approx(5 * 17.2e-6 + 1088 * BPT / 54.97e9)
    assert tier.transfer_time(1088, BPT, False) == pytest.approx(5 * 17.2e-6 + 1088 * BPT / 54.85e9)
    assert tier.transfer_time(0, BPT, False) == 0.0


@pytest.mark.parametrize(("host", "field", "words"), [
    ({"capacity_gb": 10, "transfer": "h200-pcie5", "bandwidth_h2d_gbps": -5}, "host_kv_tier.bandwidth_h2d_gbps",
     "> 0"),
    ({"capacity_gb": 300, "transfer": "h200-pcie5"}, "host_kv_tier.capacity_gb", "more than the machine's 256 GB"),
    ({"capacity_gb": 10, "transfer": "no-such-link"}, "host_kv_tier.transfer", "no cost config named"),
    ({"capacity_gb": 10}, "host_kv_tier.transfer", "is missing"),
])
def test_bad_host_tiers_are_rejected_with_one_clear_line(host: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        experiment(template(), host=host)
    assert field in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_retention_policy_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ConfigError, match=r"retention: unknown retention 'belady'.*lru"):
        Simulation(experiment(template()), retention="belady")
    assert set(POLICIES) <= set(retention_names())


# -- the mechanism, by hand ------------------------------------------------------------------------
# One application: a 1,000-token prompt and a 100-token answer (68 whole blocks: 1,088 tokens), a 10 s tool
# call, then 500 more tokens: a 1,600-token prompt whose first 1,100 tokens were computed before.
def test_release_keeps_the_context_while_memory_allows() -> None:
    s, _ = run(experiment(template()), "lru")
    m = kv(s)
    assert m["resumed_tokens"] == 1100 and m["reprefilled_tokens"] == 12  # the last partial block
    assert m["resumed_gpu_hit_rate"] == pytest.approx(1088 / 1100)


def test_discard_recomputes_the_whole_conversation() -> None:
    s, _ = run(experiment(template()), Fixed(Plan("discard")))
    m = kv(s)
    assert m["reprefilled_tokens"] == 1100 and m["discards"] == 2 and m["resumed_gpu_hit_rate"] == 0.0


def test_offload_then_load_on_demand_moves_every_block_once_each_way() -> None:
    s, sim = run(experiment(template()), Fixed(Plan("offload")))
    m = kv(s)
    # both boundaries offload (the second one's 1,696 tokens are lost when the application ends), one loads
    assert m["bytes_d2h"] == (1088 + 1696) * BPT and m["bytes_h2d"] == 1088 * BPT
    assert m["offloaded_blocks"] == 68 + 106 and m["host_lost_blocks"] == 106
    assert m["host_loaded_tokens"] == 1088 and m["prefetched_blocks"] == 0
    assert m["reprefilled_tokens"] == 12 and m["resumed_host_hit_rate"] == pytest.approx(1088 / 1100)
    # the resumed call waited for its load: its TTFT exceeds the prefetched one's by the copy time
    s2, _ = run(experiment(template()), Fixed(Plan("offload"), lead=1.0))
    load = 5 * 17.2e-6 + 1088 * BPT / 54.97e9
    assert kv(s2)["prefetched_blocks"] == 68 and kv(s2)["host_loaded_tokens"] == 0
    ttft = kv(s)["resumed_ttft"]["mean"] - kv(s2)["resumed_ttft"]["mean"]
    assert ttft == pytest.approx(load, rel=0.05)


def test_pin_keeps_the_context_out_of_the_lru_cache_for_its_time() -> None:
    s, _ = run(experiment(template()), Fixed(Plan("pin")))
    m = kv(s)
    assert m["reprefilled_tokens"] == 12
    # pinned from the end of the first call until the second is admitted: 68 blocks for the 10 s tool call
    assert m["pinned_block_seconds"] == pytest.approx(68 * 10.0, rel=1e-6)


def test_a_pinned_context_is_offloaded_before_a_running_request_is_preempted() -> None:
    # A KV cache of 4,496 tokens. A (at 5 s): a short call, then a 60 s tool call, its 1,088 tokens pinned.
    # B (at 10 s): a call growing to 4,000 tokens, which cannot grow beside A's pinned context.
    short = template(output=100, tool={"dist": "deterministic", "value": 60.0})
    long = template(added=400, output=3000, output2=10, tool={"dist": "deterministic", "value": 1.0})
    short["name"], long["name"] = "short", "long"
    cfg = experiment(short, apps=2, gpu_gb=18.5)
    spec = {"cluster": {"llm_backends": [{"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3.1-8b",
                                          "gpu_memory_gb": 18.5, "max_model_len": 32768,
                                          "host_kv_tier": {"capacity_gb": 10, "transfer": "h200-pcie5"}}],
                        "tool_backends": [{"name": "tool:sandbox", "instances": 10}]},
            "workload": {"num_applications": 2, "arrivals": {"process": "bursty", "rate": 0.2, "cv": 0.001},
                         "applications": [{"template": short}, {"template": long}]}}
    cfg = ExperimentConfig.from_dict(spec)
    assert cfg.cluster.llm_backends[0].kv_capacity_tokens == 4496
    seed = next(s for s in range(50) if list(Simulation(cfg, seed=s).app_mix) == [0, 1])  # A short, B long
    pinned, _ = run(cfg, "kvflow", seed=seed)  # pins every context, offloads under pressure
    m = kv(pinned)
    assert pinned["backends"]["llm:llama3-8b"]["preemptions"] == 0 and pinned["completed"] == 2
    assert m["reclaims"] == 1 and m["offloaded_blocks"] >= 68 and m["host_loaded_tokens"] + 16 * m[
        "prefetched_blocks"] >= 1088  # A came back from the host
    pinning, _ = run(cfg, Fixed(Plan("pin")), seed=seed)  # the base's pressure plan: discard, not preempt
    assert pinning["backends"]["llm:llama3-8b"]["preemptions"] == 0 and kv(pinning)["discards"] >= 1


def test_a_releasing_policy_with_the_mechanism_on_changes_nothing() -> None:
    cfg = experiment(template(calls=4, tool={"dist": "exponential", "mean": 3.0}), apps=12, rate=0.5, gpu_gb=18.6)
    base, _ = run(cfg, "lru")
    same, sim = run(cfg, Fixed(RELEASE))
    assert sim.llm_backends["llm:llama3-8b"].replicas[0].kvmem is not None
    for key in ("jct", "events", "completed"):
        assert same[key] == base[key]
    assert kv(same)["reprefilled_tokens"] == kv(base)["reprefilled_tokens"] > 0


# -- every policy: conservation, determinism, hand-computed decisions ------------------------------
def pressure() -> ExperimentConfig:
    graph = template(prompt=900, added=300, output=60, calls=5, system=200,
                     tool={"dist": "hyperexponential", "means": [0.5, 8.0], "probs": [0.7, 0.3]})
    return experiment(graph, apps=24, rate=1.5, gpu_gb=18.6, host={"capacity_gb": 0.3, "transfer": "h200-pcie5"})


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_conserves_blocks_across_tiers_under_pressure(name: str) -> None:
    s, sim = run(pressure(), name)  # check_invariants: no block in two places, capacities, transfers accounted
    assert s["completed"] == 24 and s["failed"] == 0
    m = kv(s)
    assert m["bytes_d2h"] == m["offloaded_blocks"] * 16 * BPT
    assert m["bytes_h2d"] == (m["prefetched_blocks"] * 16 + m["host_loaded_tokens"]) * BPT
    assert m["offloaded_blocks"] == m["prefetched_blocks"] + m["host_loaded_tokens"] // 16 + m["host_lost_blocks"]
    for replica in sim.llm_backends["llm:llama3-8b"].replicas:
        assert replica.kvmem is None or not replica.kvmem.contexts  # every application ended: nothing held
    if name in ("kvflow", "pdgraph", "oracle", "infercept"):
        assert m["offloads"] > 0


def test_runs_are_deterministic_under_a_seed() -> None:
    a, _ = run(pressure(), "pdgraph", seed=3)
    b, _ = run(pressure(), "pdgraph", seed=3)
    assert a["jct"] == b["jct"] and kv(a) == kv(b)


class Recording:
    """Wraps a policy and records (plan, context tokens, realised next use, now, KV held, whether the application
    has a next stage) at each boundary."""

    def __init__(self, name: str) -> None:
        self.inner = make_retention(name)
        self.name = name
        self.reclaim_for_admission = self.inner.reclaim_for_admission
        self.seen: list[tuple] = []

    def __getattr__(self, attr: str):  # noqa: ANN204
        return getattr(self.inner, attr)

    def bind(self, sim) -> None:  # noqa: ANN001
        self.inner.bind(sim)

    def at_boundary(self, replica, ctx, now):  # noqa: ANN001, ANN201
        plan = self.inner.at_boundary(replica, ctx, now)
        self.seen.append((plan, ctx.tokens, self.inner.realised_next_use(replica, ctx), now, replica._kv_held(),
                          self.inner.next_run(ctx) is None))
        return plan


def decisions(name: str, tool: dict) -> list[tuple]:
    policy = Recording(name)
    run(experiment(template(tool=tool, calls=3), apps=3, rate=0.2), policy)
    return policy.seen


EXP2 = {"dist": "exponential", "mean": 2.0}


def test_lru_releases() -> None:
    assert all(p == RELEASE for p, *_ in decisions("lru", EXP2))


# template(calls=3): first call, tool, second call, tool, end. After the second call a tool still runs (so a
# non-clairvoyant policy keeps the context for it) but no LLM call follows (so the oracle discards it).
def test_ttl_pins_for_the_tools_90th_percentile() -> None:
    seen = decisions("ttl", EXP2)
    assert len(seen) == 6 and not any(last for *_, last in seen)
    for plan, _, _, now, _, _ in seen:
        assert plan.action == "pin" and plan.then == "release"
        assert plan.until == pytest.approx(now + 2.0 * math.log(10))  # exponential: -mean ln(0.1)


def test_pdgraph_pins_until_the_forecasts_95th_percentile_then_offloads() -> None:
    seen = decisions("pdgraph", EXP2)
    for plan, _, nxt, now, _, _ in seen:
        if nxt is None:  # the PDGraph says no LLM call follows the last tool call
            assert plan == RELEASE
        else:  # the next use is the tool's duration (the lattice's rounding: a few percent)
            assert plan.action == "pin" and plan.then == "offload"
            assert plan.until - now == pytest.approx(2.0 * math.log(20), rel=0.05)
    assert {p.action for p, *_ in seen} == {"pin", "release"}


def test_oracle_pins_what_will_be_used_and_discards_the_rest() -> None:
    seen = decisions("oracle", EXP2)
    assert {p.action for p, _, n, *_ in seen if n is None} == {"discard"}
    assert {p.action for p, _, n, *_ in seen if n is not None} == {"pin"}


def test_infercept_takes_the_least_waste() -> None:
    # preserve T x C against swap 2 T_swap(C) x B (B: the batch's tokens and C): a 0.5 ms pause preserves,
    # a 100 s pause swaps (recomputing, T_fwd(C) x B, costs more than either)
    tier = HostTierConfig(10e9, load_kv_transfer("h200-pcie5"))
    for mean, action in ((0.0005, "pin"), (100.0, "offload")):
        for plan, tokens, _, _, batch, _ in decisions("infercept", {"dist": "exponential", "mean": mean}):
            swap = (tier.transfer_time(tokens, BPT, False) + tier.transfer_time(tokens, BPT, True)) * (batch + tokens)
            assert (mean * tokens < swap) == (action == "pin")
            assert plan.action == action


def test_kvflow_counts_steps_to_the_next_call_and_frees_the_farthest_first() -> None:
    policy = make_retention("kvflow")
    cfg = experiment(template(calls=3), apps=1)
    sim = Simulation(cfg, retention=policy, seed=0)
    sim.run()
    graph = cfg.workload.applications[0].known_graph
    app = type("App", (), {"template": "agent", "mix": cfg.workload.applications[0], "cursor": 0,
                           "runs": [type("R", (), {"stage": s, "state": 0})() for s in ("first", "tool", "again")]})()
    ctx = type("Ctx", (), {"app": app})()
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    assert graph.stage("tool").backend == "tool:sandbox"
    assert policy.steps(replica, ctx) == 1  # the tool, then the LLM
    app.cursor = 1  # the next stage is the LLM call itself
    assert policy.steps(replica, ctx) == 0
    far, near = type("C", (), {"memo": 3})(), type("C", (), {"memo": 1})()
    assert sorted([near, far], key=lambda c: policy.victim_key(replica, c, 0.0)) == [far, near]


def test_every_registered_policy_builds_and_names_itself() -> None:
    for name in POLICIES:
        assert make_retention(name).name == name
    assert copy.deepcopy(make_retention("pdgraph")).hold == 0.95
    with pytest.raises(ConfigError, match="retention.action: unknown action 'keep'"):
        Plan("keep")


# -- KVCache-v0 -----------------------------------------------------------------------------------
def test_an_agent_that_always_releases_reproduces_the_lru_simulation() -> None:
    import gymnasium as gym

    graph = template(calls=4, tool={"dist": "exponential", "mean": 3.0})
    cfg = experiment(graph, apps=12, rate=0.5, gpu_gb=18.6)
    env = gym.make("hermes_env/KVCache-v0", config=cfg, router="shared")
    obs, info = env.reset(options={"simulation_seed": 0})
    steps = 0
    while True:
        assert info["decision"] in ("retain", "") and obs["kv"].shape == (11,)
        idle = [True] + [False] * 4 + [True, False, False]  # no decision: only (0, 0), ignored
        assert info["action_mask"].tolist() == ([True] * 8 if info["decision"] else idle)
        obs, _, term, trunc, info = env.step([0, 0])  # release: vLLM's behaviour
        steps += 1
        if term or trunc:
            break
    _, headless = run(cfg, "lru", router="shared")
    jct = {a.id: a.completion - a.arrival for a in env.unwrapped.sim.completed}
    assert steps > 12 and jct == pytest.approx({a.id: a.completion - a.arrival for a in headless.completed}, rel=1e-12)


def test_random_retention_actions_keep_every_invariant() -> None:
    import gymnasium as gym

    env = gym.make("hermes_env/KVCache-v0", config=pressure())
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=1)
    sim = env.unwrapped.sim
    chosen = set()
    while True:
        mask = info["action_mask"]
        action = [int(rng.choice(np.flatnonzero(mask[:5]))), int(rng.choice(np.flatnonzero(mask[5:])))]
        chosen.add(action[0])
        obs, _, term, trunc, info = env.step(action)
        sim._check_invariants()
        if term or trunc:
            break
    assert chosen == {0, 1, 2, 3, 4} and info["completed"] == 24


# -- the CLI and the shipped configs ---------------------------------------------------------------
def test_simulate_takes_a_retention_policy_and_reports_kv_memory(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    import yaml

    from hermes_env.cli import main

    spec = {"cluster": {"llm_backends": [{"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3.1-8b",
                                          "gpu_memory_gb": 18.6, "max_model_len": 32768,
                                          "host_kv_tier": {"capacity_gb": 1, "transfer": "h200-pcie5"}}],
                        "tool_backends": [{"name": "tool:sandbox", "instances": 100}]},
            "workload": {"num_applications": 12, "arrivals": {"process": "poisson", "rate": 1.0},
                         "applications": [{"template": template(calls=4)}]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["simulate", str(path), "--retention", "kvflow", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    kv_summary = summary["backends"]["llm:llama3-8b"]["kv_memory"]
    assert summary["retention"] == kv_summary["retention"] == "kvflow" and kv_summary["resumed_tokens"] > 0
    assert main(["simulate", str(path), "--retention", "belady", "--out", str(tmp_path / "bad")]) == 2
    assert "retention: unknown retention 'belady'" in capsys.readouterr().err


def test_the_agent_kv_configs_have_the_real_kv_capacity() -> None:
    from hermes_env.sim.bench import BenchConfig

    cfg = ExperimentConfig.from_yaml("agent-kv")
    llm = cfg.cluster.llm_backends[0]
    assert llm.model.kv_bytes_per_token == 64 * 8 * 128 * 2 * 2 == 262144
    assert llm.kv_capacity_tokens == 234096  # (141 GB x 0.9 - 65.53 GB) / 256 KiB, whole 16-token blocks
    assert llm.host_kv_tier.capacity == 200e9 and llm.host_kv_tier.transfer.measured
    assert llm.latency.name == "qwen2.5-32b-h200" and not llm.latency.derived
    bench = BenchConfig.from_yaml("agent-kv")
    assert set(bench.retentions) == set(POLICIES) and len(bench.combos) == 6


def test_joint_takes_the_retention_part_only_where_kv_memory_is_modelled() -> None:
    import gymnasium as gym

    env = gym.make("hermes_env/Joint-v0", config=pressure())
    assert list(env.action_space.nvec[-2:]) == [5, 3] and "kv" in env.observation_space.spaces
    rng = np.random.default_rng(0)
    obs, info = env.reset(seed=0)
    kinds = set()
    while True:
        mask, cuts = info["action_mask"], np.cumsum(env.action_space.nvec)[:-1]
        action = [int(rng.choice(np.flatnonzero(part))) for part in np.split(mask, cuts)]
        obs, _, term, trunc, info = env.step(action)
        kinds.add(info["decision"])
        env.unwrapped.sim._check_invariants()
        if term or trunc:
            break
    assert "retain" in kinds and info["completed"] == 24
    plain = gym.make("hermes_env/Joint-v0", overrides={"workload": {"num_applications": 5}})
    assert "retain" not in plain.unwrapped.controls and "kv" not in plain.observation_space.spaces
