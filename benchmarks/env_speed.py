"""Environment speed (issue 16's figures), each beside a reference measured in the same run.

1. Steps per CPU second of every environment on its default config, one core, with a trivial masked policy
   (the first valid action of each part) and with a uniform random valid policy, at least 20,000 steps
   each, against CartPole-v1 stepped by random actions in the same process.
2. The same inside ``gymnasium.make_vec`` (8 copies, synchronous), as training uses it.
3. Start-up: wall time of ``hermes-env --help`` and of a whole ``hermes-env simulate default`` command,
   against ``python -c pass``.
4. The cost per step against the applications in the system (arrival rate raised), as a ratio to the
   lightest load.

    python benchmarks/env_speed.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401

ENV_IDS = ("Scheduling-v0", "Prewarm-v0", "Routing-v0", "Autoscaling-v0", "Joint-v0")
MIN_STEPS = 20_000


def policy(space: gym.Space, kind: str, rng: np.random.Generator):
    """first: the first valid action of each part; random: a uniform valid action of each part."""
    splits = np.cumsum(space.nvec)[:-1] if hasattr(space, "nvec") else None

    def act(mask: np.ndarray):
        parts = [mask] if splits is None else np.split(mask, splits)
        choice = [int(np.flatnonzero(p)[0]) if kind == "first" else int(rng.choice(np.flatnonzero(p)))
                  for p in parts]
        return choice[0] if splits is None else np.array(choice)
    return act


def steps_per_second(env: gym.Env, kind: str, min_steps: int = MIN_STEPS) -> tuple[float, float]:
    """Steps per CPU second (resets included) and the mean applications in the system."""
    act = policy(env.action_space, kind, np.random.default_rng(0))
    steps, seed, in_system = 0, 0, []
    t0 = time.process_time()
    while steps < min_steps:
        _, info = env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(act(info["action_mask"]))
            steps += 1
            in_system.append(info["in_system"])
            done = terminated or truncated
        seed += 1
    return steps / (time.process_time() - t0), float(np.mean(in_system))


def cartpole_steps_per_second(n: int = 200_000) -> float:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, n)
    t0 = time.process_time()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    return n / (time.process_time() - t0)


def vector_steps_per_second(env_id: str, copies: int = 8, min_steps: int = MIN_STEPS) -> float:
    vec = gym.make_vec(env_id, num_envs=copies, vectorization_mode="sync")
    _, info = vec.reset(seed=0)
    first = policy(vec.single_action_space, "first", np.random.default_rng(0))
    steps = 0
    t0 = time.process_time()
    while steps < min_steps:
        actions = np.stack([first(m) for m in info["action_mask"]])
        _, _, _, _, info = vec.step(actions)
        steps += copies
    vec.close()
    return steps / (time.process_time() - t0)


def wall(command: list[str], cwd: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    cartpole = cartpole_steps_per_second()
    print(f"reference: CartPole-v1, random actions: {cartpole:,.0f} steps per CPU second\n")
    print(f"{'environment':16s} {'policy':7s} {'steps/s':>9s} {'x CartPole':>10s} {'in system':>9s}")
    for name in ENV_IDS:
        env = gym.make(f"hermes_env/{name}")
        for kind in ("first", "random"):
            n = MIN_STEPS if name != "Autoscaling-v0" else 2_000  # each of its steps simulates 5 s of a cluster
            rate, in_system = steps_per_second(env, kind, n)
            print(f"{name:16s} {kind:7s} {rate:9,.0f} {rate / cartpole:10.4f} {in_system:9.1f}", flush=True)
    rate = vector_steps_per_second("hermes_env/Scheduling-v0")
    print(f"\nmake_vec(Scheduling-v0, 8 copies, sync), first valid action: {rate:,.0f} steps/s "
          f"({rate / cartpole:.4f} x CartPole)")

    exe = str(Path(sys.executable).parent / "hermes-env")
    with tempfile.TemporaryDirectory() as tmp:
        python = wall([sys.executable, "-c", "pass"], tmp)
        helped = wall([exe, "--help"], tmp)
        simulate = wall([exe, "simulate", "default", "--seed", "0", "--out", "run"], tmp, repeats=1)
    print(f"\nstart-up (wall, best of 3): python -c pass {python:.2f} s; hermes-env --help {helped:.2f} s "
          f"({helped / python:.1f}x); hermes-env simulate default, whole command {simulate:.2f} s")

    print("\ncost per step against applications in the system (Scheduling-v0, first valid action, rate raised)")
    print(f"{'rate':>5s} {'in system':>9s} {'us/step':>8s} {'ratio':>6s}")
    reference = None
    for rate in (1.0, 2.0, 3.0, 5.0):
        env = gym.make("hermes_env/Scheduling-v0", overrides={"workload": {"arrivals": {"rate": rate}}})
        speed, in_system = steps_per_second(env, "first", 5_000)
        reference = reference or speed
        print(f"{rate:5.1f} {in_system:9.1f} {1e6 / speed:8.0f} {reference / speed:6.2f}", flush=True)


if __name__ == "__main__":
    main()
