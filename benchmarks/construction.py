"""Construction time: the environments and the template analysis, with an empty table cache and a filled one.

1. ``gym.make`` and the first ``reset`` of every environment in a warm interpreter (hermes_env, scipy and
   the baselines already imported), each after the in-process memo of demand models is cleared, so that it
   builds its PDGraph tables as a new process would: *cold* with an empty table cache
   (:mod:`hermes_env.pdgraph.tablecache`), *warm* with the one the cold pass filled. CPU seconds, and as a
   ratio to ``gym.make`` + ``reset`` of CartPole-v1 measured in the same run. The target is ``gym.make``
   under 0.5 s.
2. ``hermes-env templates`` (every library template analysed) as a fresh process, cold and warm: CPU
   seconds of the child process.

    python benchmarks/construction.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import scipy.signal  # noqa: F401  (imported up front: the figures leave import time out)
import scipy.stats  # noqa: F401

import baselines  # noqa: F401
import hermes_env
from hermes_env.pdgraph.library import load_template
from hermes_env.sim.simulator import shared_demand_model

ROOT = Path(__file__).resolve().parent.parent


def cpu_and_wall(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def construct(env_id: str) -> tuple[float, float]:
    """CPU seconds of gym.make, and of make + the first reset, after the in-process memo is cleared."""
    shared_demand_model.cache_clear()
    load_template.cache_clear()
    env = None

    def make():
        nonlocal env
        env = gym.make(env_id)

    make_cpu, _ = cpu_and_wall(make)
    reset_cpu, _ = cpu_and_wall(lambda: env.reset(seed=0))
    env.close()
    return make_cpu, make_cpu + reset_cpu


def reference() -> float:
    """CPU seconds of gym.make + reset of CartPole-v1 (median of 20)."""
    times = sorted(cpu_and_wall(lambda: gym.make("CartPole-v1").reset(seed=0))[0] for _ in range(20))
    return times[len(times) // 2]


def templates_cpu(cache: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "hermes_env.cli", "templates"], check=True, capture_output=True,
                   env={**os.environ, "HERMES_ENV_CACHE": cache, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    ref = reference()
    print(f"reference: gym.make('CartPole-v1') + reset costs {1e3 * ref:.2f} ms CPU on this machine\n")
    print(f"{'environment':28s} {'cache':>5s} {'make s':>7s} {'make+reset s':>12s} {'make/ref':>9s} "
          f"{'make+reset/ref':>14s}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HERMES_ENV_CACHE"] = tmp  # by name: the script also measures versions before the cache
        for env_id in hermes_env.envs.ENV_IDS:
            for cache in ("cold", "warm"):
                if cache == "cold":
                    for f in Path(tmp).iterdir():
                        f.unlink()
                make, total = construct(env_id)
                print(f"{env_id:28s} {cache:>5s} {make:7.3f} {total:12.3f} {make / ref:9.0f} {total / ref:14.0f}")
        print("\nhermes-env templates, a fresh process (CPU s of the child)")
        for f in Path(tmp).iterdir():
            f.unlink()
        cold = templates_cpu(tmp)
        warm = templates_cpu(tmp)
        print(f"cold {cold:.2f} s, warm {warm:.2f} s ({cold / warm:.1f}x); python -c pass: "
              f"{templates_cpu_pass():.2f} s")


def templates_cpu_pass() -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


if __name__ == "__main__":
    main()
