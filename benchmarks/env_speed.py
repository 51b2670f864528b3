"""Environment speed: steps per second of hermes_env/Scheduling-v0 with a random masked policy on the
default environment config, on one core; and the cost per step against the number of applications in the
system. The reference measured in the same run is a headless FCFS simulation of the same workload (cost
per simulator event).

    python benchmarks/env_speed.py
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401
from hermes_env.sim import Simulation


def run_random(env, episodes, seed=0):
    rng = np.random.default_rng(seed)
    steps, cpu, in_system = 0, 0.0, []
    for ep in range(episodes):
        obs, info = env.reset(seed=seed + ep)
        t0 = time.process_time()
        done = False
        while not done:
            action = int(rng.choice(np.flatnonzero(info["action_mask"])))
            obs, reward, term, trunc, info = env.step(action)
            steps += 1
            in_system.append(info["in_system"])
            done = term or trunc
        cpu += time.process_time() - t0
    return steps, cpu, float(np.mean(in_system))


def main() -> None:
    env = gym.make("hermes_env/Scheduling-v0")
    run_random(env, 1)  # warm the PDGraph statistics cache (a one-off per template and state)
    steps, cpu, _ = run_random(env, 3, seed=10)
    sim = Simulation(env.unwrapped.experiment, scheduler="fcfs", seed=0)
    t0 = time.process_time()
    sim.run()
    per_event = (time.process_time() - t0) / sim.engine.events
    print(f"Scheduling-v0, random masked policy, default config: {steps} steps in {cpu:.2f} CPU s = "
          f"{steps / cpu:.0f} steps/s ({1e6 * cpu / steps:.0f} us/step, {cpu / steps / per_event:.1f}x a headless "
          f"FCFS simulator event of the same workload, {1e6 * per_event:.1f} us)")
    print("\ncost per step against applications in the system (arrival rate raised)")
    print(f"{'rate':>5s} {'mean in system':>14s} {'steps':>6s} {'us/step':>8s} {'ratio':>6s}")
    reference = None
    for rate in (1.0, 1.5, 2.0, 3.0):
        env = gym.make("hermes_env/Scheduling-v0", overrides={"workload": {"arrivals": {"rate": rate}}})
        run_random(env, 1)
        steps, cpu, mean_in = run_random(env, 2, seed=20)
        per = cpu / steps
        reference = reference or per
        print(f"{rate:5.1f} {mean_in:14.1f} {steps:6d} {1e6 * per:8.0f} {per / reference:6.2f}")


if __name__ == "__main__":
    main()
