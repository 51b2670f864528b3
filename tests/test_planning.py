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
    "routing": ({"scheduler": lambda: "gittins", "router": ExternalRouter}, 60),
    "autoscaling": ({"scheduler": lambda: "gittins", "autoscaler": lambda: ExternalAutoscaler(5.0)}, 80),
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
    env = gym.make("hermes_env/Scheduling-v0", overrides={"workload": {"num_applications": 40}}).unwrapped
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
