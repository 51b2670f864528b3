"""Scaling out (issue 15): sweep wall time per executor and worker count, and RLlib's sampling throughput
per number of environment runners, each as a ratio to one worker measured in the same run.

    python benchmarks/ray_scaling.py [--workers 1,2,4,8,16]

The sweep is ``configs/bench/hermes.yaml`` with 2 seeds (32 cells: 4 loads x 4 policy pairs x 2 seeds);
RLlib trains PPO on ``Scheduling-v0`` (short episodes) for 3 iterations of 2,000 steps and reports the
sampled environment steps per second of wall time (the first iteration, which includes start-up, left out).
Needs the ``[ray]`` extra. On a machine of C cores, more than C workers cannot help.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from hermes_env.sim.bench import BenchConfig, run_bench


def sweep_seconds(executor: str, workers: int | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_bench(BenchConfig.from_yaml("hermes", seeds=2), Path(tmp), progress=False, executor=executor,
                  workers=workers)
        return time.perf_counter() - t0


def rllib_steps_per_second(runners: int) -> float:
    import ray

    from agents.config import TrainConfig
    from agents.rllib import train_rllib

    cfg = TrainConfig(env_kwargs={"config": "contended", "overrides": {"workload": {"num_applications": 100}}},
                      algorithm="rllib-ppo", num_env_runners=runners, total_timesteps=6_000,
                      rllib={"train_batch_size": 2_000, "minibatch_size": 250, "num_epochs": 1})
    with tempfile.TemporaryDirectory() as tmp:
        train_rllib(cfg, Path(tmp), progress_bar=False)
        rows = list(csv.DictReader(open(Path(tmp) / "curve.csv")))
    ray.shutdown()
    rates = [float(r["env_steps_per_s"]) for r in rows[1:]]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    sweep_seconds("serial", None)  # warm-up: one-off imports and the plotting backend, not the executor's cost
    serial = sweep_seconds("serial", None)
    print(f"sweep of 32 cells (hermes bench, 2 seeds): serial {serial:.1f} s wall")
    print(f"{'executor':9s} {'workers':>7s} {'wall s':>7s} {'speed-up vs serial':>19s}")
    for executor in ("process", "ray"):
        for w in counts:
            seconds = sweep_seconds(executor, w)
            print(f"{executor:9s} {w:7d} {seconds:7.1f} {serial / seconds:19.2f}", flush=True)
    print("\nRLlib PPO sampling, Scheduling-v0 (100-application episodes)")
    print(f"{'env runners':>11s} {'env steps/s':>11s} {'x one runner':>12s}")
    one = None
    for w in counts:
        rate = rllib_steps_per_second(w)
        one = one or rate
        print(f"{w:11d} {rate:11.0f} {rate / one:12.2f}", flush=True)


if __name__ == "__main__":
    main()
