"""Make a hermes_env environment, run a heuristic and a random policy on it, print mean completion times.

    python examples/quickstart.py

The heuristic reads the observation only: it admits the waiting request whose application has the highest
Gittins index (column 0 of ``obs["requests"]``, the log1p of the index), which is the Hermes policy. The
random policy picks uniformly among the valid slots (``info["action_mask"]``). Both see the same
applications under each seed.
"""

from collections.abc import Callable

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401  (registers hermes_env/Scheduling-v0, Prewarm-v0, Joint-v0)


def highest_gittins(obs: dict, info: dict, rng: np.random.Generator) -> int:
    index = np.where(info["action_mask"], obs["requests"][:, 0], -np.inf)
    return int(np.argmax(index))


def uniform_random(obs: dict, info: dict, rng: np.random.Generator) -> int:
    return int(rng.choice(np.flatnonzero(info["action_mask"])))


def mean_completion_time(env: gym.Env, policy: Callable[[dict, dict, np.random.Generator], int], seed: int) -> float:
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs, info, rng))
        done = terminated or truncated
    apps = env.unwrapped.sim.completed
    return float(np.mean([a.completion - a.arrival for a in apps]))


if __name__ == "__main__":
    env = gym.make("hermes_env/Scheduling-v0")  # the contended cluster, 200 Hermes-like applications
    for name, policy in (("highest Gittins index", highest_gittins), ("random", uniform_random)):
        times = [mean_completion_time(env, policy, seed) for seed in range(5)]
        print(f"{name:22s} mean completion time {np.mean(times):6.2f} s (over 5 seeds: "
              f"{', '.join(f'{t:.2f}' for t in times)})")
