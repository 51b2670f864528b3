"""Request migration on the ``migration`` experiment: no migration, Llumnix's rules and the clairvoyant rules,
under two dispatchers, at two loads, several seeds, paired.

    python benchmarks/migration.py --apps 1000 --seeds 5 --workers 2 --out runs/migration
    python benchmarks/migration.py --planners --apps 1000 --seeds 3 --workers 2 --out runs/migration-planners

Every policy runs on the same arrivals and demands under each seed (common random numbers), so each ratio to
``none`` (under the same router and load) is paired per seed before averaging; ``+-`` is the 95% half-width of
the mean over seeds. Prints a markdown table (and writes it, with every run's figures as JSON, under ``--out``):
time to first token and completion time (mean and P99), preemptions, migrations and their mean downtime.
``--planners`` instead runs the planners over Llumnix's rules (round robin, 8/s) beside ``none``, ``llumnix`` and
``oracle``, with ratios to ``llumnix``: the headroom a planner finds over the heuristic. Figures are indicative
(one machine, one run).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import Simulation
from hermes_env.sim.metrics import mean_ci

POLICIES = ("none", "llumnix", "oracle")
ROUTERS = ("round_robin", "least_outstanding")
RATES = (8.0, 10.0)  # applications/s on the four replicas: busy, and past where queues build under round robin
PLANNERS = ("rollout:llumnix@futures=2,width=3,every=2,horizon=20", "oracle-rollout:llumnix@width=3,every=2,horizon=20")


def run(cell: tuple[str, float, str, int, int]) -> dict:
    router, rate, policy, seed, apps = cell
    cfg = load_experiment("migration", {"workload": {"num_applications": apps,
                                                     "arrivals": {"process": "poisson", "rate": rate}}})
    t0 = time.perf_counter()
    s = Simulation(cfg, router=router, migration=policy, seed=seed, keep_applications=False).run().summary
    b = s["backends"]["llm:llama3.1-8b"]
    ttft = b["token_latency"]["real_time"]["ttft"]
    m = b.get("migration", {})
    return {"router": router, "rate": rate, "policy": policy, "seed": seed, "ttft_mean": ttft["mean"],
            "ttft_p99": ttft["p99"], "jct_mean": s["jct"]["mean"], "jct_p99": s["jct"]["p99"],
            "preemptions": b["preemptions"], "migrations": m.get("migrations", 0),
            "downtime_ms": 1e3 * m.get("mean_downtime_s", 0.0), "copied_gb": m.get("bytes", 0) / 1e9,
            "wall_s": time.perf_counter() - t0}


METRICS = ("ttft_mean", "ttft_p99", "jct_mean", "jct_p99")


def planner_table(rows: list[dict]) -> str:
    """Each policy against ``llumnix`` on the same seeds (round robin, the one rate)."""
    base = {r["seed"]: r for r in rows if r["policy"] == "llumnix"}
    lines = ["| policy | TTFT mean | TTFT P99 | completion mean | completion P99 | preemptions | migrations | "
             "wall s per run |", "|" + " --- |" * 8]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        cells = [f"{mean_ci([r[k] / base[r['seed']][k] for r in mine])[0]:.3f}x" for k in METRICS]
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {np.mean([r['preemptions'] for r in mine]):.0f} | "
                     f"{np.mean([r['migrations'] for r in mine]):.0f} | {np.mean([r['wall_s'] for r in mine]):.1f} |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = ("| router | rate | policy | TTFT mean (s) | TTFT P99 | completion mean | completion P99 | preemptions | "
            "migrations | downtime (ms) |\n|" + " --- |" * 10)
    lines = [head]
    for router in ROUTERS:
        for rate in RATES:
            base = {r["seed"]: r for r in rows if (r["router"], r["rate"], r["policy"]) == (router, rate, "none")}
            for policy in POLICIES:
                mine = [r for r in rows if (r["router"], r["rate"], r["policy"]) == (router, rate, policy)]
                if not mine:
                    continue
                cells = []
                for k in METRICS:
                    mean, ci = mean_ci([r[k] for r in mine])
                    if policy == "none":
                        cells.append(f"{mean:.2f} +- {ci:.2f}")
                    else:
                        ratio, rci = mean_ci([r[k] / base[r["seed"]][k] for r in mine])
                        cells.append(f"{ratio:.2f}x +- {rci:.2f}")
                pre = np.mean([r["preemptions"] for r in mine])
                mig = np.mean([r["migrations"] for r in mine])
                down = np.mean([r["downtime_ms"] for r in mine])
                lines.append(f"| {router} | {rate:g} | {policy} | " + " | ".join(cells) +
                             f" | {pre:.0f} | {mig:.0f} | {down:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/migration"))
    parser.add_argument("--planners", action="store_true", help="the planners against llumnix (round robin, 8/s)")
    args = parser.parse_args()
    if args.planners:
        cells = [("round_robin", RATES[0], policy, seed, args.apps) for policy in (*POLICIES, *PLANNERS)
                 for seed in range(args.seeds)]
    else:
        cells = [(router, rate, policy, seed, args.apps) for router in ROUTERS for rate in RATES for policy in POLICIES
                 for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run, cells))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.planners:
        text = (f"migration experiment, round robin, {RATES[0]:g}/s, {args.apps} applications, {args.seeds} seeds "
                f"paired; ratios to llumnix\n\n" + planner_table(rows))
    else:
        text = (f"migration experiment, {args.apps} applications, {args.seeds} seeds paired; ratios to none under "
                f"the same router and rate, +- 95% half-width over seeds\n\n" + table(rows))
    (args.out / "table.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
