"""The planning API's cost: ``snapshot()`` and ``restore()`` of an environment's episode at a decision, beside a
deep copy of the whole environment in the same run (what copying cost before: 20 ms to 0.8 s).

For each environment on its default experiment, the episode is stepped with the first valid action to a
quarter, a half and three quarters of its applications ended; at each point the median of 9 snapshots, 9
restores and 3 whole deep copies (``copy.deepcopy(env)``) is printed in milliseconds, with the ratio of a
deep copy to a snapshot. Figures are indicative on a shared machine; the ratio is measured in one run.

    python benchmarks/snapshot.py
"""

from __future__ import annotations

import copy
import statistics
import time

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401

ENV_IDS = ("Scheduling-v0", "Routing-v0", "Autoscaling-v0", "Prewarm-v0")


def first_valid(env) -> object:
    mask = env.action_masks()
    if hasattr(env.action_space, "n"):
        return int(np.flatnonzero(mask)[0])
    parts = np.split(mask, np.cumsum(env.action_space.nvec)[:-1])
    return np.array([int(np.flatnonzero(p)[0]) for p in parts])


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    print(f"{'environment':16s} {'ended':>7s} {'active':>6s} {'snapshot ms':>11s} {'restore ms':>10s} "
          f"{'deepcopy ms':>11s} {'ratio':>6s}")
    for env_id in ENV_IDS:
        env = gym.make(f"hermes_env/{env_id}").unwrapped
        env.reset(seed=0)
        n = env.experiment.workload.num_applications
        for quarter in (1, 2, 3):
            done = False
            while not done and env.sim.ended < quarter * n // 4:
                _, _, terminated, truncated, _ = env.step(first_valid(env))
                done = terminated or truncated
            if done:
                break
            snap = env.snapshot()
            snapshot = median_ms(env.snapshot, 9)
            restore = median_ms(lambda: env.restore(snap), 9)  # noqa: B023 (used at once)
            deep = median_ms(lambda: copy.deepcopy(env), 3)  # noqa: B023
            print(f"{env_id:16s} {env.sim.ended:7d} {len(env.sim.active):6d} {snapshot:11.1f} {restore:10.1f} "
                  f"{deep:11.1f} {deep / snapshot:6.1f}")


if __name__ == "__main__":
    main()
