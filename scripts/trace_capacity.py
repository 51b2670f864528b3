"""Capacity of the trace experiments by the doubling rule: the arrival rate at which the mean completion
time doubles over its light-load value (bisection on seed 0, FCFS on the shared queue). The experiments in
configs/experiments/ run at 80% of it.

    python scripts/trace_capacity.py [--experiments azure-conv,mooncake-conv]
"""

from __future__ import annotations

import argparse
import math

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import Simulation

# experiment -> the light-load rate its mean completion time is measured at
LIGHT = {"azure-conv": 3.0, "azure-code": 1.0, "mooncake-conv": 0.3, "agent-sessions": 0.02}


def mean_completion(experiment: str, rate: float) -> float:
    cfg = load_experiment(experiment, {"workload": {"arrivals": {"rate": rate}}})
    return Simulation(cfg, seed=0, keep_applications=False).run().summary["jct"]["mean"]


def capacity(experiment: str, steps: int = 10) -> tuple[float, float]:
    """(light-load mean completion time, the rate at which it doubles), bisected on the log of the rate."""
    light = mean_completion(experiment, LIGHT[experiment])
    low, high = LIGHT[experiment], LIGHT[experiment] * 2
    while mean_completion(experiment, high) < 2 * light:
        low, high = high, high * 2
    for _ in range(steps):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if mean_completion(experiment, mid) < 2 * light else (low, mid)
    return light, math.sqrt(low * high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default=",".join(LIGHT))
    args = parser.parse_args()
    for experiment in args.experiments.split(","):
        light, rate = capacity(experiment)
        print(f"{experiment:15s} light load {LIGHT[experiment]:g}/s: mean {light:.3g} s; capacity {rate:.3g}/s; "
              f"80% = {0.8 * rate:.3g}/s", flush=True)


if __name__ == "__main__":
    main()
