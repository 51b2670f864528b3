"""Scaling out (issue 15): sweep wall time per executor and worker count, and RLlib's sampling throughput
per number of environment runners, each as a ratio to one worker measured in the same run.

    python benchmarks/ray_scaling.py [--workers 1,2,4,8,16]

The sweep is ``configs/bench/hermes.yaml`` with 2 seeds (32 cells: 4 loads x 4 policy pairs x 2 seeds);
RLlib trains PPO on ``Scheduling-v0`` (short episodes) for 6 iterations of 2,000 steps and reports the
environment steps per second of wall time from the end of the first iteration to the end of the last: a
steady state of sampling and learning, without the runners' start-up. Needs the ``[ray]`` extra. On a
machine of C cores, more than C workers cannot help.

    python benchmarks/ray_scaling.py --workers 1,2,4,8,16 --parts sweep,rllib --out DIR   # DIR/scaling.{csv,png}
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
                      algorithm="rllib-ppo", num_env_runners=runners, total_timesteps=12_000,
                      rllib={"train_batch_size": 2_000, "minibatch_size": 250, "num_epochs": 1})
    with tempfile.TemporaryDirectory() as tmp:
        train_rllib(cfg, Path(tmp), progress_bar=False)
        rows = list(csv.DictReader(open(Path(tmp) / "curve.csv")))
    ray.shutdown()
    first, last = rows[0], rows[-1]
    steps = int(last["env_steps"]) - int(first["env_steps"])
    return steps / (float(last["wall_seconds"]) - float(first["wall_seconds"]))


def plot(rows: list[dict], path: Path) -> None:
    """Speed-up against worker count: each sweep executor against serial, RLlib against one runner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == label]
        ax.plot([int(r["workers"]) for r in mine], [float(r["speedup"]) for r in mine], marker="o", label=label)
    top = max(int(r["workers"]) for r in rows)
    ax.plot([1, top], [1, top], color="grey", linestyle=":", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers (processes, Ray tasks or RLlib env runners)")
    ax.set_ylabel("speed-up")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--parts", default="sweep,rllib", help="sweep, rllib or both, comma-separated")
    parser.add_argument("--out", type=Path, help="write scaling.csv and scaling.png here")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    parts = args.parts.split(",")
    rows = []
    if "sweep" in parts:
        sweep_seconds("serial", None)  # warm-up: one-off imports and the plotting backend, not the executor's cost
        serial = sweep_seconds("serial", None)
        print(f"sweep of 32 cells (hermes bench, 2 seeds): serial {serial:.1f} s wall")
        print(f"{'executor':9s} {'workers':>7s} {'wall s':>7s} {'speed-up vs serial':>19s}")
        for executor in ("process", "ray"):
            for w in counts:
                seconds = sweep_seconds(executor, w)
                rows.append({"series": f"sweep, {executor} executor", "workers": w, "value": round(seconds, 2),
                             "unit": "wall s", "speedup": round(serial / seconds, 3)})
                print(f"{executor:9s} {w:7d} {seconds:7.1f} {serial / seconds:19.2f}", flush=True)
    if "rllib" in parts:
        print("\nRLlib PPO, Scheduling-v0 (100-application episodes), steady state")
        print(f"{'env runners':>11s} {'env steps/s':>11s} {'x one runner':>12s}")
        one = None
        for w in counts:
            rate = rllib_steps_per_second(w)
            one = one or rate
            rows.append({"series": "RLlib PPO env steps/s", "workers": w, "value": round(rate, 1), "unit": "steps/s",
                         "speedup": round(rate / one, 3)})
            print(f"{w:11d} {rate:11.0f} {rate / one:12.2f}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "scaling.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["series", "workers", "value", "unit", "speedup"])
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, args.out / "scaling.png")


if __name__ == "__main__":
    main()
