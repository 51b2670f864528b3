"""Headroom of the routing and autoscaling decisions: every heuristic and the clairvoyant reference on
three workloads each, and where the best heuristic is 10% or more from the reference.

    python scripts/headroom.py --out runs/headroom          # runs (or resumes) the six benches, ~20 min
    python scripts/headroom.py --out runs/headroom --tables docs/figures

Objectives: routing, the mean completion time; autoscaling, the mean completion time plus GPU-seconds
per application (Autoscaling-v0's reward with ``gpu_cost_weight = 1``: an application-second in the
system costs as much as a GPU-second held). The reference policy is the clairvoyant ``oracle``; where a
heuristic beats it, the table says it is no bound there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hermes_env.sim.bench import BenchConfig, run_bench

DECISIONS = {
    "routing": ("router", ["routing-mix", "routing-mooncake", "routing-sessions"]),
    "autoscaling": ("autoscaler", ["autoscaling-cycles", "autoscaling-bursty", "autoscaling-azure-code"]),
}


def objective(row: dict, kind: str, applications: int) -> float:
    return row["jct_mean"] + (row["gpu_seconds"] / applications if kind == "autoscaling" else 0.0)


def table(kind: str, out: Path) -> str:
    key, benches = DECISIONS[kind]
    unit = "mean s" if kind == "routing" else "mean s + GPU-s/app"
    lines = [f"{kind}: every {key} and the clairvoyant reference (oracle); objective = {unit}; gap = (best heuristic"
             " - reference) / best heuristic", ""]
    for name in benches:
        summary = json.loads((out / name / "summary.json").read_text())
        cfg = BenchConfig.from_yaml(name)
        n = cfg.experiment_at(1.0).workload.num_applications
        rows = summary["rows"]
        lines.append(f"{name} ({summary['seeds']} seeds, {n} applications)")
        lines.append(f"  {key:18s} {'mean s':>8s} {'P95 s':>8s} {'GPU-s':>8s} {unit:>19s}")
        for r in rows:
            lines.append(f"  {r[key]:18s} {r['jct_mean']:8.2f} {r['jct_p95']:8.2f} {r['gpu_seconds']:8.0f} "
                         f"{objective(r, kind, n):19.3f}")
        heuristics = [r for r in rows if r[key] != "oracle"]
        best = min(heuristics, key=lambda r: objective(r, kind, n))
        ref = next(r for r in rows if r[key] == "oracle")
        b, o = objective(best, kind, n), objective(ref, kind, n)
        gap = (b - o) / b
        if o > b:
            verdict = (f"the reference is {-gap:.0%} worse than {best[key]}: no bound here (a clairvoyant heuristic); "
                       f"the headroom above {best[key]} is unknown")
        elif gap >= 0.10:
            verdict = f"gap {gap:.0%} from {best[key]} to the reference: a task for a learned {key}"
        else:
            verdict = f"gap {gap:.0%} from {best[key]}: under 10%, little to learn against this reference"
        lines += [f"  best heuristic: {best[key]}; {verdict}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/headroom"))
    parser.add_argument("--tables", type=Path, help="also write headroom_<kind>.txt here")
    parser.add_argument("--executor", default="process")
    args = parser.parse_args()
    for kind, (_, benches) in DECISIONS.items():
        for name in benches:
            folder = args.out / name
            if not (folder / "summary.json").is_file() or json.loads((folder / "summary.json").read_text()).get(
                    "missing_cells"):
                run_bench(BenchConfig.from_yaml(name), folder, progress=False, resume=(folder / "runs.csv").is_file(),
                          executor=args.executor)
        text = table(kind, args.out)
        print(text)
        if args.tables:
            args.tables.mkdir(parents=True, exist_ok=True)
            (args.tables / f"headroom_{kind}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
