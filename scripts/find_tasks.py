"""How the tasks were found: for every task config, every heuristic's objective on training seeds, the
bound, and the best heuristic's distance to it. A task is kept when that distance is at least 10%.

    python scripts/find_tasks.py [--seeds 3] [TASK ...]
"""

from __future__ import annotations

import argparse

import numpy as np

from hermes_env.tasks import Task, run_policy, task_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds to measure on")
    args = parser.parse_args()
    for name in args.tasks or task_names():
        task = Task.from_yaml(name)
        seeds = task.train_seeds[: args.seeds]
        results = {h: [run_policy(task, h, s) for s in seeds] for h in task.heuristics}
        bound = float(np.mean([b for _, b in next(iter(results.values()))]))
        means = {h: float(np.mean([v for v, _ in r])) for h, r in results.items()}
        best = min(means, key=means.get)
        gap = (means[best] - bound) / means[best] if means[best] else 0.0
        print(f"{name} ({task.objective}, seeds {seeds[0]}-{seeds[-1]}): "
              + ", ".join(f"{h} {v:.4g}" for h, v in sorted(means.items(), key=lambda kv: kv[1]))
              + f"; bound {bound:.4g}; best {best} is {gap:.0%} from the bound: {'keep' if gap >= 0.10 else 'DROP'}",
              flush=True)


if __name__ == "__main__":
    main()
