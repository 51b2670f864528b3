"""Issue 24's speed figures as instruction counts: deterministic where CPU time on a shared machine is not.

Each figure runs twice under valgrind's callgrind, a short and a long version of the same work in fresh
processes, and takes the difference of the instructions executed (start-up, imports and set-up cancel out),
per unit of work:

- a bare heapq event (the reference of ``compiled_speed.py``, written here in plain Python);
- a CartPole-v1 step (the environments' reference);
- a headless event: the default cluster, single requests at 16/s, FCFS (``compiled_speed.py``'s run);
- a ``Scheduling-v0`` step (first valid action) and an ``Autoscaling-v0`` step (random valid action), after
  every template's demand model is built and 20 steps (a fresh process builds them lazily in its first steps:
  about 5 G instructions, which 400 steps would otherwise carry).

Instructions are not seconds (a cache miss costs more than an add), but two builds or two commits compare on
them without the noise of other jobs: ``--against CHECKOUT`` measures another checkout's build in the same
run (its compiled modules built there first, or ``HERMES_ENV_PURE=1`` for the source). Needs valgrind; takes
about 4 minutes per build.

    python benchmarks/instructions.py [--against ../other-checkout]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from reference import checkout_process

HERE = Path(__file__).resolve().parent

WORK = {  # name -> (program run with the number of units as sys.argv[1], short units, long units)
    "bare heapq event": ("""
import sys
sys.path.insert(0, sys.argv[2])
from reference import bare_heapq_events
bare_heapq_events(int(sys.argv[1]))
""", 1_000, 101_000),
    "CartPole step": ("""
import sys, gymnasium as gym, numpy as np
env = gym.make("CartPole-v1"); env.reset(seed=0)
for a in np.random.default_rng(0).integers(0, 2, int(sys.argv[1])):
    if any(env.step(int(a))[2:4]):
        env.reset()
""", 1_000, 21_000),
    "headless event": ("""
import sys
sys.path.insert(0, sys.argv[2])
from simulator_speed import experiment
from hermes_env.sim import Simulation
n = int(sys.argv[1])
sim = Simulation(experiment([{"template": "single_request", "weight": 1}], {"process": "poisson", "rate": 16.0},
                            max(n, 1)), scheduler="fcfs", prewarm="none", seed=0)
if n > 1:
    sim.run()
print("units", sim.engine.events)
""", 0, 3_000),
    **{f"{env_id} step": (f"""
import sys, numpy as np, gymnasium as gym
sys.path.insert(0, sys.argv[2])
import hermes_env
from env_speed import policy
env = gym.make("hermes_env/{env_id}")
act = policy(env.action_space, "{kind}", np.random.default_rng(0))
_, info = env.reset(seed=0)
for m in env.unwrapped.sim.config.workload.applications:  # every template's demand model (set-up, not a step)
    env.unwrapped.sim.demand_model(m.template)
for i in range(20 + int(sys.argv[1])):
    _, _, terminated, truncated, info = env.step(act(info["action_mask"]))
    if terminated or truncated:
        _, info = env.reset()
""", 0, steps) for env_id, kind, steps in (("Scheduling-v0", "first", 400), ("Autoscaling-v0", "random", 40))},
}


def instructions(program: str, units: int, checkout: Path | None) -> tuple[int, int]:
    """Instructions callgrind counted for ``program`` run with ``units``, and the units it reports doing."""
    root, env = checkout_process(checkout, {**os.environ, "PYTHONHASHSEED": "0"})  # the same dict and set orders
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                           program, str(units), str(HERE)], env=env, cwd=root, capture_output=True, text=True,
                          check=True)
    counted = re.search(r"Collected : (\d+)", done.stderr)
    reported = re.search(r"^units (\d+)$", done.stdout, re.M)
    return int(counted.group(1)), int(reported.group(1)) if reported else units


def measure(checkout: Path | None) -> dict[str, float]:
    out = {}
    for name, (program, short, long) in WORK.items():
        (a, ua), (b, ub) = instructions(program, short, checkout), instructions(program, long, checkout)
        out[name] = (b - a) / (ub - ua)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout whose build is measured too")
    against = parser.parse_args().against
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: this benchmark counts instructions with its callgrind tool")
    builds = {"this": measure(None), **({"against": measure(against.resolve())} if against else {})}
    print(f"instructions per unit of work (callgrind, long run minus short run); against: {against or '-'}")
    print(f"{'work':24s} {'this':>12s} {'x bare':>8s} {'x CartPole':>10s}" + (
        f" {'against':>12s} {'vs it':>7s}" if against else ""))
    for name in WORK:
        this = builds["this"]
        row = f"{name:24s} {this[name]:12,.0f} {this[name] / this['bare heapq event']:8.1f} " \
              f"{this[name] / this['CartPole step']:10.2f}"
        if against:
            row += f" {builds['against'][name]:12,.0f} {builds['against'][name] / this[name]:6.2f}x"
        print(row)


if __name__ == "__main__":
    main()
