"""Request migration between replicas (issue 21, item 4): Llumnix's live migration, its cost, conservation,
capacity, scale-in by migration, the policies, snapshots taken mid-transfer, determinism and bad input."""

import math

import pytest

from hermes_env.cluster.llm import COLD, DRAINING
from hermes_env.cluster.migration import MigrationLink
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.policies import MigrationPolicy, make_migration, migration_names

LLM = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b"}
BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # Llama-3-8B: layers x KV heads x head size x (K, V) x fp16


def experiment(stages, rate, n, arrivals=None, tools=(), **backend):
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [{**LLM, **backend}], "tool_backends": list(tools)},
        "workload": {"num_applications": n, "arrivals": arrivals or {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "app", "stages": stages}}]}})


def single(prompt, output):
    return [{"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": prompt, "output_tokens": output}]


class MoveOnce(MigrationPolicy):
    """At its first tick, moves the running request of replica ``source`` to ``target`` (a test's scripted move)."""

    name = "move_once"

    def __init__(self, at, source=0, target=1):
        self.tick, self.source, self.target, self.context_at_start = at, source, target, None

    def decide(self, sim, now):
        if self.context_at_start is not None:
            return
        backend = sim.llm_backends["llm:llama3-8b"]
        source = backend.replicas[self.source]
        request = next(iter(source.running))
        self.context_at_start = source.context_now(request, now)
        assert sim.migrate("llm:llama3-8b", request, self.target, now)


def test_a_stage_costs_the_handshake_the_transfers_and_the_bytes_over_the_link():
    link = MigrationLink()
    # 1,000 tokens: 4 transfers of 256 tokens at 10 us, 131,072 bytes a token at 25 GB/s, 1 ms of handshake
    assert link.stage_time(1000, BYTES_PER_TOKEN) == pytest.approx(1e-3 + 4 * 10e-6 + 1000 * BYTES_PER_TOKEN / 25e9)
    assert link.stage_time(0, BYTES_PER_TOKEN) == pytest.approx(1e-3)  # the last stage may copy nothing


def run_one(policy=None, output=2000):
    """One request (1,000-token prompt) alone on replica 0 of two; ``policy`` may move it."""
    cfg = experiment(single(1000, output), 100.0, 1, replicas=2, gpu_memory_gb=30)
    sim = Simulation(cfg, router="round_robin", seed=0, check_invariants=True,
                     migration=policy if policy is not None else "none")
    return sim, sim.run().summary


def test_a_live_migration_costs_the_request_its_downtime_only():
    _, alone = run_one()
    policy = MoveOnce(at=2.0)
    sim, moved = run_one(policy)
    backend = sim.llm_backends["llm:llama3-8b"]
    m = moved["backends"]["llm:llama3-8b"]["migration"]
    assert m["migrations"] == 1 and m["aborted"] == 0
    # the request finished on the target, every token generated once: nothing recomputed, nothing preempted
    assert backend.replicas[1].iterations > 0 and moved["backends"]["llm:llama3-8b"]["preemptions"] == 0
    source = backend.replicas[0]  # its KV freed: what it still holds is the prompt's blocks, unreferenced in its cache
    assert source.running == {} and source.free_tokens() == source.capacity and source.cache.blocks == 1000 // 16
    # stages: the first copies the context at the start, each later one what was decoded meanwhile, the
    # last (after the source stopped it) at most a few tokens; all of them add up to the context at the stop
    assert policy.context_at_start > 1000 and m["copied_tokens"] > policy.context_at_start
    assert m["bytes"] == m["copied_tokens"] * BYTES_PER_TOKEN
    assert m["copied_tokens"] - policy.context_at_start < 16 + 5  # the second stage: a few decode iterations
    # alone on two identical replicas, the request loses exactly its downtime: the last stage's copy
    # (handshake, one transfer, a token or so), the target being idle when it lands
    assert m["mean_downtime_s"] == pytest.approx(m["longest_downtime_s"])
    assert 1e-3 < m["mean_downtime_s"] < MigrationLink().stage_time(16, BYTES_PER_TOKEN) + 1e-9
    assert moved["jct"]["mean"] - alone["jct"]["mean"] == pytest.approx(m["mean_downtime_s"], abs=1e-6)


def test_a_request_that_finishes_during_its_copy_is_not_migrated():
    slow = MigrationLink(bandwidth=5e7)  # 0.05 GB/s: a 1,000-token context takes 2.6 s to copy
    cfg = experiment(single(1000, 200), 100.0, 1, replicas=2, gpu_memory_gb=30)  # 200 tokens: about 1.5 s
    cfg.cluster.llm_backends[0].__dict__["migration_link"] = slow  # a frozen config, changed for this test only
    sim = Simulation(cfg, router="round_robin", seed=0, check_invariants=True, migration=MoveOnce(at=0.3))
    sim._start()
    backend = sim.llm_backends["llm:llama3-8b"]
    while len(sim.engine):  # past the request's end, to the end of the stage under way
        sim.engine.step()
        sim._check_invariants()
    m = backend.migrator.summary()
    assert m["migrations"] == 0 and m["aborted"] == 1 and sim.ended == 1
    assert backend.replicas[1].kv_used == 0 and backend.replicas[1].inbound == 0  # the reservation was given back


def stressed(n=100, rate=12.0, tools=(), output=1200):
    """Long heavy-tailed decodes on four small KV caches at high load: preemptions and queues, round robin."""
    stages = [{"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "lognormal", "mean": 300, "cv": 1},
               "output_tokens": {"dist": "lognormal", "mean": output, "cv": 1}}]
    return experiment(stages, rate, n, tools=tools, replicas=4, gpu_memory_gb=20)


@pytest.mark.parametrize("policy", ["llumnix", "oracle", "llumnix:200:400"])
def test_every_policy_conserves_requests_and_never_exceeds_memory(policy):
    sim = Simulation(stressed(), router="round_robin", migration=policy, seed=0, check_invariants=True)
    summary = sim.run().summary  # the invariants (one place per request, capacity, reservations) after every event
    assert summary["completed"] + summary["failed"] == 100 and summary["failed"] <= 1  # one is longer than a cache
    assert summary["migration"] == policy
    assert summary["backends"]["llm:llama3-8b"]["migration"]["migrations"] > 0


def test_llumnix_moves_requests_off_the_replica_whose_queue_is_blocked():
    """Round robin piles long decodes on some replicas: Llumnix's rules move them to where there is room, so
    fewer requests are preempted and the first tokens of queued ones come sooner (paired on the seed)."""
    runs = {p: Simulation(stressed(240), router="round_robin", migration=p, seed=1).run().summary
            for p in ("none", "llumnix")}
    b = {p: s["backends"]["llm:llama3-8b"] for p, s in runs.items()}
    assert b["llumnix"]["preemptions"] < b["none"]["preemptions"]
    ttft = {p: next(iter(x["token_latency"].values()))["ttft"] for p, x in b.items()}
    assert ttft["llumnix"]["p99"] < ttft["none"]["p99"]


def test_the_default_runs_no_migrator_and_the_same_seed_runs_the_same():
    sim = Simulation(stressed(60), router="round_robin", seed=3)
    assert sim.migration.name == "none" and sim.llm_backends["llm:llama3-8b"].migrator is None
    assert "migration" not in sim.run().summary["backends"]["llm:llama3-8b"]
    a, b = (Simulation(stressed(60), router="round_robin", migration="llumnix", seed=3).run().summary
            for _ in range(2))
    assert a == b


def test_a_snapshot_taken_mid_transfer_runs_on_bit_for_bit():
    sim = Simulation(stressed(), router="round_robin", migration="llumnix", seed=0)
    sim._start()
    migrator = sim.llm_backends["llm:llama3-8b"].migrator
    while not any(m.phase == 2 for m in migrator.by_request.values()):  # a request on the link: the downtime
        sim.engine.step()
    snap = sim.snapshot()
    first = sim.run().summary
    again = Simulation.from_snapshot(snap).run().summary
    assert first == again and first["backends"]["llm:llama3-8b"]["migration"]["migrations"] > 0


def test_scale_in_drains_by_migrating_instead_of_waiting():
    cfg = experiment(single(500, 3000), 1000.0, 8, replicas=2, gpu_memory_gb=30)  # all arrive within ms
    went_cold = {}
    for policy in ("none", "llumnix"):
        sim = Simulation(cfg, router="round_robin", migration=policy, seed=0, check_invariants=True)
        sim._start()
        sim.engine.run(until=5.0)
        backend = sim.llm_backends["llm:llama3-8b"]
        assert sim.scale_down("llm:llama3-8b", 5.0)
        victim = next(r for r in backend.replicas if r.state == DRAINING)
        while victim.state != COLD and len(sim.engine):
            sim.engine.step()
            sim._check_invariants()
        went_cold[policy] = sim.engine.now
        summary = sim.run().summary
        assert summary["completed"] == 8
    # waiting: the victim serves its 3,000-token decodes to the end (tens of seconds); migrating: it is cold
    # once its four requests have been copied one after another (well under a second each)
    assert went_cold["llumnix"] < 6.0 < 20.0 < went_cold["none"]


def test_bad_migration_input_is_one_clear_error():
    with pytest.raises(ConfigError, match="unknown migration policy 'nope'"):
        make_migration("nope")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_migration("llumnix:-1:5")
    with pytest.raises(ConfigError, match="migration_link.bandwidth_gbps"):
        experiment(single(100, 10), 1.0, 1, migration_link={"bandwidth_gbps": 0})
    with pytest.raises(ConfigError, match="migration_link"):
        experiment(single(100, 10), 1.0, 1, migration_link={"bandwidth": 5})
    sim = Simulation(experiment(single(100, 10), 1.0, 1, replicas=2), router="round_robin")
    with pytest.raises(ConfigError, match="migration: is none"):
        sim.migrate_between("llm:llama3-8b", 0, 1, 0.0)
    assert {"none", "llumnix", "oracle"} <= set(migration_names())
    assert math.isfinite(MigrationLink.from_dict({"stage_overhead_ms": 0}, "x").stage_time(10, 2))


# -- the environments ---------------------------------------------------------------------------------------

# a one-stage template with short outputs (cheap demand tables) on four replicas, a tool backend for Joint-v0
ENV_EXPERIMENT = stressed(30, output=300, tools=[{"name": "api:search", "instances": 1, "capacity": 8, "idle_cost": 0}])


@pytest.mark.parametrize("env_id", ["hermes_env/Routing-v0", "hermes_env/Joint-v0"])
def test_env_checker_with_migration_control(env_id):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    import hermes_env  # noqa: F401

    env = gym.make(env_id, config=ENV_EXPERIMENT, migration_control=True, migration_tick=0.5)
    space = env.action_space
    assert space.nvec[-1] == 1 + 4 * 4
    check_env(env.unwrapped, skip_render_check=True)


def test_an_agent_that_never_migrates_is_the_run_without_migration_and_unmasked_moves_start():
    import gymnasium as gym
    import numpy as np

    import hermes_env  # noqa: F401
    from hermes_env.sim.metrics import summarise

    rows = {}
    for agent in ("never", "greedy"):
        env = gym.make("hermes_env/Routing-v0", config=stressed(80), migration_control=True, migration_tick=0.5)
        obs, info = env.reset(seed=5)
        base, done, moves = env.unwrapped, False, 0
        while not done:
            d, mask = base.decision, info["action_mask"]
            route_mask, move_mask = mask[:4], mask[4:]
            place = min(d.candidates, key=lambda r: (r.outstanding, r.index)).index if d.kind == "route" else 0
            assert route_mask[place] and move_mask[0]
            move = 0
            if d.kind == "migrate" and agent == "greedy" and move_mask[1:].any():
                move = int(np.flatnonzero(move_mask)[-1])  # the last unmasked pair
                started = base.sim.llm_backends[d.backend].migrator.started
            obs, _, terminated, truncated, info = env.step(np.array([place, move]))
            if move:
                assert base.sim.llm_backends[d.backend].migrator.started == started + 1  # unmasked: it starts
                moves += 1
            done = terminated or truncated
        rows[agent] = summarise(base.sim).rows
        if agent == "never":
            reference = Simulation(base.experiment, scheduler="gittins", router="least_outstanding",
                                   seed=base.sim.seed).run()
            assert rows[agent] == reference.rows
        else:
            assert moves > 0 and not info["invalid_action"]
    assert rows["never"] != rows["greedy"]


def test_migration_control_bad_input():
    import gymnasium as gym

    import hermes_env  # noqa: F401

    with pytest.raises(ConfigError, match="migration_control: is not available on SchedulingEnv"):
        gym.make("hermes_env/Scheduling-v0", migration_control=True)
    with pytest.raises(ConfigError, match="migration: is 'llumnix', but migration_control"):
        gym.make("hermes_env/Routing-v0", migration="llumnix", migration_control=True)
    with pytest.raises(ConfigError, match="migration_tick"):
        gym.make("hermes_env/Routing-v0", migration_tick=0)


def test_the_clairvoyant_migration_planner_to_the_end_is_never_worse_than_llumnix():
    cfg = stressed(30, rate=20.0)

    def cost(policy):
        sim = Simulation(cfg, router="round_robin", migration=policy, seed=2)
        sim.run()
        return sim, sim.totals()[0]  # applications in the system integrated over time: the rollouts' cost

    _, native = cost("llumnix")
    _, followed = cost("oracle-rollout:llumnix@width=1")  # BASE, deciding through the planner's pauses
    spec = "oracle-rollout:llumnix@horizon=inf,width=3,every=3"
    planner, planned = cost(spec)
    assert followed == native and planned <= followed * (1 + 1e-12)
    assert planner.migration.plans > 0 and planner.migration.name == spec


def test_resample_admitted_redraws_what_running_requests_have_left_on_a_copy_only():
    import numpy as np

    sim = Simulation(stressed(), router="round_robin", migration="llumnix", seed=0)
    sim._start()
    migrator = sim.llm_backends["llm:llama3-8b"].migrator
    while not migrator.by_request or sum(len(r.running) for r in migrator.backend.replicas) < 20:
        sim.engine.step()

    def running(s):
        return [(r.output_tokens, r.prompt_tokens) for rep in s.llm_backends["llm:llama3-8b"].replicas
                for r in rep.running]

    before = running(sim)
    copies = []
    for _ in range(2):
        branch = sim.branch()
        branch.resample_future(np.random.default_rng(1))
        branch.resample_admitted(np.random.default_rng(1))
        copies.append(branch)
    after = running(copies[0])
    assert running(sim) == before and running(copies[1]) == after  # the original untouched; a function of the rng
    assert sum(a != b for a, b in zip(after, before, strict=True)) > len(before) // 2
    for rep in copies[0].llm_backends["llm:llama3-8b"].replicas:
        assert all(r.output_tokens > rep.context(r) - r.prompt_tokens for r in rep.running)  # beyond what it has
    copies[0].check = True  # the copy runs on to the end, its migrations going on, with every invariant
    assert copies[0].run().summary["completed"] + copies[0].recorder.failed == 100
