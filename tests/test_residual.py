"""Residual autoscaling: a native heuristic at its own cadence, the agent's (or a planner's) orders added."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import hermes_env  # noqa: F401  (registers the environments)
from hermes_env.envs.hermes import RELEASE, WARM_UP
from hermes_env.errors import ConfigError
from hermes_env.sim import Simulation
from hermes_env.tasks import Task, run_policy

BUSY = {"workload": {"num_applications": 250}}  # into the autoscaling experiment's first busy phase
RECORDER = """from hermes_env.sim.policies import Autoscaler


class Recorder(Autoscaler):
    tick, reacts = 1.0, False

    def __init__(self):
        self.times = []

    def decide(self, sim, now):
        self.times.append(now)
"""


def _drive(env, order) -> dict:
    """One episode, ``order(env)`` giving each step's action; the summary and the decision times."""
    from hermes_env.sim.metrics import summarise

    env.reset(seed=0, options={"simulation_seed": 5})
    done, times = False, []
    while not done:
        times.append(env.sim.engine.now)
        _, _, terminated, truncated, _ = env.step(order(env))
        done = terminated or truncated
    return {**summarise(env.sim).summary, "decision_times": times}


def _alone(env, autoscaler: str) -> dict:
    """The headless run of ``env``'s episode above with ``autoscaler`` alone (the environment's scheduler)."""
    return Simulation(env.experiment, seed=5, autoscaler=autoscaler, scheduler=env.policy_names["schedule"]).run(
    ).summary


def _same_run(a: dict, b: dict) -> None:
    """Bit-for-bit equal runs: every figure of the summaries but the event count (the agent's ticks are events)
    and the policy names."""
    for key in set(a) - {"events", "autoscaler", "decision_times", "wall_seconds", "events_per_second"}:
        assert a[key] == b[key], key


@pytest.mark.parametrize("native", ["queue_threshold", "pdgraph", "keepalive"])
def test_a_noop_agent_is_the_native_heuristic_alone_bit_for_bit(native) -> None:
    env = gym.make("hermes_env/Autoscaling-v0", overrides=BUSY, residual=native).unwrapped
    mine = _drive(env, lambda e: np.zeros(len(e.action_space.nvec), dtype=np.int64))
    alone = _alone(env, native)
    _same_run(mine, alone)
    assert mine["autoscaler"] == f"residual:{native}+external" and len(mine["decision_times"]) > 20


def test_the_orders_add_to_the_native_heuristic_and_act_after_its_tick(tmp_path) -> None:
    """At each agent decision (every 5 s) the native tick due at the same instant has run; a load ordered on
    top of the native heuristic holds more GPU time than the native heuristic alone."""
    path = tmp_path / "recorder.py"
    path.write_text(RECORDER)
    env = gym.make("hermes_env/Autoscaling-v0", overrides=BUSY, residual=f"{path}:Recorder").unwrapped
    seen = []

    def order(e):
        seen.append((e.sim.engine.now, e.sim.autoscaler.native.times[-1]))
        return np.array([WARM_UP if e.action_masks()[WARM_UP] else 0])

    loading = _drive(env, order)
    assert all(now == last for now, last in seen) and [now for now, _ in seen[:3]] == [5.0, 10.0, 15.0]
    alone = _alone(env, "fixed")  # the recorder orders nothing: `fixed`
    assert loading["gpu_seconds"] > 1.5 * alone["gpu_seconds"]
    env = gym.make("hermes_env/Autoscaling-v0", overrides=BUSY, residual="all").unwrapped
    released = _drive(env, lambda e: np.array([RELEASE if e.action_masks()[RELEASE] else 0]))
    assert released["gpu_seconds"] < _alone(env, "all")["gpu_seconds"]


def test_the_checkers_pass_with_residual_control() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check

    short = {"workload": {"num_applications": 40}}
    check_env(gym.make("hermes_env/Autoscaling-v0", overrides=short, residual="queue_threshold").unwrapped)
    sb3_check(gym.make("hermes_env/Autoscaling-v0", overrides=short, residual="queue_threshold").unwrapped, warn=True)


@pytest.mark.parametrize(("env_id", "residual", "expected"), [
    ("hermes_env/Scheduling-v0", "queue_threshold", "residual: is for the agent's scale orders"),
    ("hermes_env/Autoscaling-v0", "magic", "autoscaler: unknown autoscaler 'magic'"),
    ("hermes_env/Autoscaling-v0", "rollout:queue_threshold", "the native autoscaler must be a heuristic"),
    ("hermes_env/Autoscaling-v0", 3, "residual: must be an autoscaler name")])
def test_bad_residual_input_is_one_clear_error(env_id, residual, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        gym.make(env_id, residual=residual)


def test_headless_task_runs_add_the_heuristic_to_the_native_one_and_a_planner_plans_over_it(tmp_path: Path) -> None:
    path = tmp_path / "res.yaml"
    path.write_text("description: tiny\nenv_id: hermes_env/Autoscaling-v0\nenv_kwargs: {residual: queue_threshold, "
                    "overrides: {workload: {num_applications: 250}}}\nobjective: cost\nsimplest: fixed\n"
                    "heuristics: [fixed]\ntrain_seeds: [0, 1]\neval_seeds: [100, 1]\nfound: by hand\n")
    task = Task.from_yaml(path)
    plain = replace(task, env_kwargs={"overrides": BUSY})
    assert run_policy(task, "fixed", 5) == run_policy(plain, "queue_threshold", 5)  # nothing added: the native
    sim = Simulation(task.env().experiment, seed=5, autoscaler=_planner_over_native(task))
    summary = sim.run().summary
    assert sim.autoscaler.orders.plans > 10  # it planned, over orders added to the native heuristic
    assert summary["gpu_seconds"] != Simulation(task.env().experiment, seed=5, autoscaler="queue_threshold").run(
    ).summary["gpu_seconds"]


def _planner_over_native(task: Task):
    """The residual autoscaler a headless task run of the planner gets (:func:`hermes_env.tasks._prepare`),
    priced as the task prices it."""
    from hermes_env.sim.policies import ResidualAutoscaler, make_autoscaler
    from hermes_env.tasks import planner_weights

    orders = make_autoscaler("rollout:fixed@futures=1,horizon=10,width=3,every=10")
    orders.price(**planner_weights(task, task.env()))
    return ResidualAutoscaler(make_autoscaler("queue_threshold"), orders)


def test_a_residual_episode_restored_from_a_snapshot_replays_bit_for_bit() -> None:
    env = gym.make("hermes_env/Autoscaling-v0", overrides=BUSY, residual="queue_threshold").unwrapped
    env.reset(seed=0, options={"simulation_seed": 5})
    orders = [np.array([k % 3]) for k in range(40)]

    def run_on() -> list[float]:
        rewards = []
        for action in orders:
            mask = env.action_masks()
            _, reward, terminated, truncated, _ = env.step(action if mask[int(action[0])] else np.array([0]))
            rewards.append(reward)
            if terminated or truncated:
                break
        return rewards

    for _ in range(4):
        env.step(np.array([0]))
    snap = env.snapshot()
    first = run_on()
    env.restore(snap)
    assert run_on() == first and len(first) > 10
