"""The planning API: snapshot/restore exactness, resample_future's reach, and the planners' guarantee."""

import gymnasium as gym
import numpy as np
import pytest

import hermes_env  # noqa: F401  (registers the ids)
from hermes_env.envs.hermes import load_experiment
from hermes_env.sim.metrics import summarise
from hermes_env.sim.policies import ExternalAutoscaler, ExternalRouter, ExternalScheduler
from hermes_env.sim.simulator import Simulation

CASES = {  # an experiment, its external part, and a short workload
    "contended": ({"scheduler": ExternalScheduler}, 60),
    "routing": ({"router": ExternalRouter}, 60),
    "autoscaling": ({"autoscaler": lambda: ExternalAutoscaler(5.0)}, 60),
    "mooncake-conv": ({"scheduler": ExternalScheduler}, 30),  # trace blocks: segments that grow
}


def _sim(name: str, seed: int = 3) -> Simulation:
    parts, n = CASES[name]
    exp = load_experiment(name, {"workload": {"num_applications": n}})
    return Simulation(exp, seed=seed, **{k: make() for k, make in parts.items()})


def _act(sim: Simulation, d, i: int) -> None:
    """A scripted, state-dependent policy: the i-th decision's choice cycles through the options."""
    if d.kind == "schedule":
        sim.resolve(i % len(d.queue.waiting))
    elif d.kind == "route":
        sim.resolve(i % len(d.candidates))
    else:
        if i % 3 == 0:
            sim.scale_up(next(iter(sim.llm_backends)), sim.engine.now)
        elif i % 3 == 1:
            sim.scale_down(next(iter(sim.llm_backends)), sim.engine.now)
        sim.resolve()


def _drive(sim: Simulation, start: int = 0, stop: int | None = None) -> int:
    i, d = start, sim.run_until_decision()
    while d is not None and (stop is None or i < stop):
        _act(sim, d, i)
        i += 1
        d = sim.run_until_decision()
    return i


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_restored_copy_and_the_original_driven_alike_end_identically(name):
    reference = _sim(name)
    _drive(reference)
    expected = summarise(reference).summary
    sim = _sim(name)
    i = _drive(sim, stop=25)
    snap = sim.snapshot()
    _drive(sim, start=i)  # the original goes on as if no snapshot had been taken
    assert summarise(sim).summary == expected
    for _ in range(2):  # the snapshot can be restored more than once, into the original or a new object
        for copy in (Simulation.from_snapshot(snap), sim):
            if copy is sim:
                sim.restore(snap)
            _drive(copy, start=i)
            assert summarise(copy).summary == expected
    assert len(sim.completed) == len(reference.completed)


def test_snapshot_shares_the_experiment_and_history_but_not_the_state():
    sim = _sim("contended")
    _drive(sim, stop=40)
    copy = sim.snapshot().copy
    assert copy.config is sim.config and copy.engine is not sim.engine
    assert copy.completed == sim.completed and copy.completed is not sim.completed
    assert all(a is b for a, b in zip(copy.completed, sim.completed, strict=True))  # references, not copies
    for app_id, app in sim.active.items():
        assert copy.active[app_id] is not app and copy.active[app_id].runs is app.runs


def test_resample_future_leaves_the_original_and_the_past_alone():
    reference = _sim("contended")
    _drive(reference)
    sim = _sim("contended")
    i = _drive(sim, stop=25)
    branch = sim.branch()
    branch.resample_future(np.random.default_rng(7))
    now, arrived = sim.engine.now, sim.arrived
    # what has happened and what is known is unchanged
    assert np.array_equal(branch.arrival_times[:arrived], sim.arrival_times[:arrived])
    assert np.array_equal(branch.app_mix[:arrived], sim.app_mix[:arrived])
    assert branch.totals() == sim.branch().totals() and branch.ended == sim.ended  # (totals() rounds the accounts)
    for app_id, app in sim.active.items():
        other = branch.active[app_id]
        issued = app.cursor + 1 if app.pending else 0
        assert other.runs[:issued] == app.runs[:issued] and other.cursor == app.cursor
    # what is unknowable is redrawn: later arrivals, and the realised stages of some application in the system
    assert not np.array_equal(branch.arrival_times[arrived:], sim.arrival_times[arrived:])
    assert np.all(branch.arrival_times[arrived:] >= now)
    assert any(branch.active[k].runs != a.runs for k, a in sim.active.items())
    waiting = [(r, b) for q, bq in ((sim.tool_backends[n].queue, branch.tool_backends[n].queue)
                                    for n in sim.tool_backends) for r, b in zip(q, bq, strict=True)]
    waiting += [(r, b) for r, b in zip(sim.llm_backends["llm:llama3-8b"].queue,
                                        branch.llm_backends["llm:llama3-8b"].queue, strict=True)]
    assert waiting and any((r.service_time, r.output_tokens) != (b.service_time, b.output_tokens) for r, b in waiting)
    assert all(r.prompt_tokens == b.prompt_tokens and r.seq == b.seq for r, b in waiting)  # prompts are known
    _drive(branch, start=i)  # the redrawn future runs to its end
    assert branch.ended == branch.config.workload.num_applications
    _drive(sim, start=i)  # and the original's true future is untouched
    assert summarise(sim).summary == summarise(reference).summary


def test_resample_future_is_a_function_of_its_generator():
    sim = _sim("routing")
    _drive(sim, stop=10)
    ends = []
    for _ in range(2):
        branch = sim.branch()
        branch.resample_future(np.random.default_rng(11))
        _drive(branch, start=10)
        ends.append(summarise(branch).summary)
    assert ends[0] == ends[1]


def test_environment_snapshot_restores_observations_and_rewards():
    # the default experiment: its PDGraph analyses are cached from the other environment tests
    env = gym.make("hermes_env/Scheduling-v0", overrides={"workload": {"num_applications": 30}}).unwrapped
    rng = np.random.default_rng(0)
    env.reset(seed=1)
    for _ in range(15):
        _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
    snap = env.snapshot()
    actions, runs = [], []
    for attempt in range(2):
        if attempt:
            env.restore(snap)
        trace, done, k = [], False, 0
        while not done:
            mask = env.action_masks()
            if not attempt:
                actions.append(int(rng.choice(np.flatnonzero(mask))))
            obs, reward, done, truncated, _ = env.step(actions[k])
            trace.append((reward, obs["requests"].tobytes()))
            k += 1
        runs.append(trace)
    assert runs[0] == runs[1]


# -- planners -------------------------------------------------------------------------------------------

PLANNED = {  # experiment, the policy argument, its base, the rollout cost's weights, applications
    "contended": ("scheduler", "fcfs", {}, 10),
    "routing": ("router", "round_robin", {}, 16),
    "autoscaling": ("autoscaler", "queue_threshold", {"gpu": 1.0}, 15),
    "hetero-autoscaling": ("autoscaler", "queue_threshold-cheapest", {"gpu": 1.0}, 25),  # a load order per kind
    "overload-slo": ("admission", "queue_threshold:2:4", {"slo_miss": 10.0}, 30),
    "agent-kv": ("retention", "lru", {}, 2),
}


def _planned(name: str, spec: str, seed: int = 5) -> tuple[Simulation, float]:
    arg, _, weights, n = PLANNED[name]
    exp = load_experiment(name, {"workload": {"num_applications": n}})
    sim = Simulation(exp, seed=seed, keep_applications=False, **{arg: spec})
    routers = [b.router for b in sim.llm_backends.values()]
    for policy in (sim.scheduler, sim.autoscaler, sim.admission, sim.retention, *routers):
        if hasattr(policy, "price"):
            policy.price(**weights)
    sim.run()
    area, _, missed, gpu = sim.totals()
    return sim, area + weights.get("gpu", 0.0) * gpu + weights.get("slo_miss", 0.0) * missed


@pytest.mark.parametrize("name", sorted(PLANNED))
def test_the_clairvoyant_planner_to_the_end_is_never_worse_than_its_base(name):
    base = PLANNED[name][1]
    _, native = _planned(name, base)
    _, followed = _planned(name, f"oracle-rollout:{base}@width=1")  # BASE, deciding through the planner's pauses
    planner, planned = _planned(name, f"oracle-rollout:{base}@horizon=inf,width=2,every=0")
    if name in ("contended", "routing", "overload-slo"):  # they pause exactly where BASE decides natively
        assert followed == native
    assert planned <= followed * (1 + 1e-12)
    if name == "contended":  # two decisions deep on the true future: never worse either
        assert _planned(name, f"oracle-search:{base}@horizon=inf,width=2")[1] <= followed * (1 + 1e-12)
    owners = [planner.scheduler, planner.autoscaler, planner.admission, planner.retention,
              *(b.router for b in planner.llm_backends.values())]
    assert sum(getattr(p, "plans", 0) for p in owners) > 0


def test_rollout_samples_futures_deterministically_and_names_itself():
    spec = "rollout:fcfs@futures=2,horizon=5,width=2,every=2"
    a, cost_a = _planned("contended", spec)
    b, cost_b = _planned("contended", spec)
    assert cost_a == cost_b and a.scheduler.plans == b.scheduler.plans > 0
    assert a.run().summary["scheduler"] == spec


@pytest.mark.parametrize("name", ["overload-slo", "agent-kv"])
def test_admission_and_retention_sample_futures_deterministically(name):
    """Admission and retention plan on sampled futures as the other kinds do: run to run the same, with
    planning decisions made."""
    arg, base = PLANNED[name][:2]
    spec = f"rollout:{base}@futures=2,horizon=2,width=2,every=60"
    a, cost_a = _planned(name, spec)
    b, cost_b = _planned(name, spec)
    assert cost_a == cost_b and getattr(a, arg).plans == getattr(b, arg).plans > 0 and getattr(a, arg).name == spec


def test_a_scaling_planner_tries_one_load_per_replica_kind():
    from hermes_env.sim.simulator import Decision

    exp = load_experiment("hetero-autoscaling", {"workload": {"num_applications": 5}})
    sim = Simulation(exp, seed=0, autoscaler="rollout:queue_threshold-cheapest@width=5")
    name = next(iter(sim.llm_backends))
    orders = sim.autoscaler.candidates(sim, Decision("scale", 0.0, ""))
    assert orders == ["base", "nothing", ("load", name, "h100"), ("load", name, "h200"), ("release", name)]


def test_planner_specs_are_checked():
    from hermes_env.errors import ConfigError
    from hermes_env.sim.policies import make_autoscaler, make_router

    assert make_router("search:least_kv").depth == 2 and make_autoscaler("oracle-rollout:all").clairvoyant
    for bad in ("rollout:round_robin@depth=2", "rollout:round_robin@width=0", "rollout:rollout:round_robin",
                "rollout:nonesuch"):
        with pytest.raises(ConfigError):
            make_router(bad)


def test_planner_weights_follow_the_task_objective():
    from hermes_env.tasks import Task, planner_weights

    task = Task.from_yaml("autoscaling-bursty-cost")
    assert planner_weights(task, task.env()) == {"area": 1.0, "gpu": 10.0, "idle": 0.0}
    assert planner_weights(Task.from_yaml("sched-contended-slo"), None)["slo_miss"] == 1.0


def test_a_planner_takes_the_heuristic_part_of_an_environment():
    env = gym.make("hermes_env/Scheduling-v0", prewarm="rollout:on_demand@futures=1,horizon=5",
                   overrides={"workload": {"num_applications": 15}}).unwrapped
    _, info = env.reset(seed=0)
    done = False
    while not done:  # the agent's decisions come back; the planner's are settled inside
        assert info["decision"] in (None, "schedule")
        _, _, done, _, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
    assert env.sim.prewarm_policy.plans > 0 and env.sim.ended == 15


def test_the_rollout_cost_counts_an_application_past_its_slo_as_a_miss():
    """At the horizon an application still in the system past its SLO misses for certain: the rollout cost
    counts it (an admission's miss beyond the horizon is not free beside a rejection's at once)."""
    from hermes_env.sim.policies import make_admission

    exp = load_experiment("overload-slo", {"workload": {"num_applications": 400}})
    sim = Simulation(exp, seed=0, keep_applications=False)  # admits every application: a backlog grows
    sim.run(until=150.0)
    late = [app for app in sim.active.values() if 150.0 - app.arrival > app.mix.slo]
    assert late and len(late) < len(sim.active)  # some past their SLO, some not yet
    planner = make_admission("rollout:none").price(slo_miss=1.0, area=0.0)
    assert planner._price(sim, 150.0) == sim.totals(150.0)[2] + len(late)
    assert planner.price(slo_miss=0.0, area=1.0)._price(sim, 150.0) == sim.totals(150.0)[0]
