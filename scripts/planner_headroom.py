"""Achievable headroom: each task's non-clairvoyant planner (``rollout:BEST``) against its best heuristic on
the task's training seeds, paired, with a 95% interval.

    python scripts/planner_headroom.py --seeds 3 --fraction 0.2 --workers 2 --out runs/planner_headroom
    python scripts/planner_headroom.py --tasks sched-bursty-mean --seeds 10 --workers 16   # a bigger machine
    python scripts/planner_headroom.py --tasks autoscaling-cycles-cost --residual queue_threshold --fraction 0.2

For every task (Joint-v0 ones are skipped: a planner takes one decision kind), every heuristic the task
lists runs on the first ``--seeds`` training seeds and the best (lowest mean objective) is the planner's
base; ``rollout:BEST@OPTIONS`` then runs on the same seeds and workloads, with the task's rollout cost
(``hermes_env.tasks.planner_weights``). The margin of a seed is ``(best - planner) / best`` (positive: the
planner is better); the table gives its mean +- the 95% half-width over the seeds, and the planner's
decisions. ``--fraction`` shortens every episode to that fraction of the task's applications (at least
30; heuristics and planner alike: the figures are for that size, not the task's), so that the whole fits
a small machine; ``--options`` sets the planner's
futures, horizon, width and cadence (baselines/planners.py), ``--task-options TASK=OPTIONS`` (repeated) a
task's own; ``--base TASK=HEURISTIC,...`` plans over another of a task's heuristics than its best (the margin
is still against the best). Runs (task, policy,
seed) are spread over ``--workers`` processes; each result is a function of its inputs alone, whatever the
split, so a sweep stopped midway resumes from ``OUT/runs.jsonl`` (``--heuristics-only`` runs the cheap heuristics on one
machine, the planners then resume from its ``runs.jsonl`` on a bigger one).

``--residual NAME`` (autoscaling tasks) runs the tasks with residual control (docs/environments.md): the
native autoscaler NAME runs in every episode and the only heuristic is ``fixed`` (the native heuristic alone,
nothing added), so the planner is ``rollout:fixed``: its candidates (nothing, a load, a release) add to the
native heuristic's orders. Compare its objective with a run without ``--residual`` on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.errors import require
from hermes_env.sim.metrics import mean_ci
from hermes_env.tasks import Task, run_policy, task_names


def shortened(name: str, fraction: float, residual: str = "") -> Task:
    """The task with ``fraction`` of its applications per episode (at least 30); with ``residual``, its scale
    orders added to that native autoscaler and ``fixed`` (the native heuristic alone) its only heuristic."""
    task = Task.from_yaml(name)
    if residual:
        task = replace(task, env_kwargs={**task.env_kwargs, "residual": residual}, heuristics=("fixed",))
    return task.shortened(fraction)


def one_run(job: tuple[str, float, str, int, str]) -> dict[str, Any]:
    """One episode: (task, fraction, policy, seed, residual) -> its objective and wall time."""
    name, fraction, spec, seed, residual = job
    task = shortened(name, fraction, residual)
    start = time.perf_counter()
    objective, _ = run_policy(task, spec, seed)
    return {"task": name, "fraction": fraction, "policy": spec, "seed": seed, "residual": residual,
            "objective": objective, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", help="comma-separated task names (default: every task but Joint-v0 ones)")
    parser.add_argument("--seeds", type=int, default=3, help="the first N training seeds of each task")
    parser.add_argument("--fraction", type=float, default=1.0, help="of each task's applications per episode")
    parser.add_argument("--options", default="futures=2,horizon=30", help="the planner's options")
    parser.add_argument("--planner", default="rollout", help="rollout, search, oracle-rollout or oracle-search")
    parser.add_argument("--residual", default="", help="a native autoscaler the planner's orders add to "
                        "(autoscaling tasks; see above)")
    parser.add_argument("--task-options", action="append", default=[], metavar="TASK=OPTIONS",
                        help="a task's own planner options (repeat for several tasks)")
    parser.add_argument("--base", default="", help="TASK=HEURISTIC,...: plan over that heuristic, not the best")
    parser.add_argument("--heuristics-only", action="store_true", help="run the heuristics only (into OUT/runs.jsonl, "
                        "where a later run on another machine resumes: the planners there)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/planner_headroom"))
    args = parser.parse_args()
    names = args.tasks.split(",") if args.tasks else [n for n in task_names()
                                                      if Task.from_yaml(n).part != "joint"]
    tasks = {n: shortened(n, args.fraction, args.residual) for n in names}
    seeds = {n: t.train_seeds[:args.seeds] for n, t in tasks.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "runs.jsonl"
    done = {(r["task"], r["fraction"], r["policy"], r["seed"], r.get("residual", "")): r
            for r in map(json.loads, path.open())} \
        if path.is_file() else {}  # a sweep resumes: its runs are functions of their inputs
    log = path.open("a")

    def run_all(jobs: list[tuple]) -> list[dict]:  # each run is logged as it ends (a long sweep can be read live)
        out = [done[job] for job in jobs if job in done]
        for result in pool.map(one_run, [job for job in jobs if job not in done]):
            log.write(json.dumps(result) + "\n")
            log.flush()
            out.append(result)
        return out

    with ProcessPoolExecutor(args.workers) as pool:
        heuristics = [(n, args.fraction, h, s, args.residual) for n, t in tasks.items() for h in t.heuristics
                      for s in seeds[n]]
        runs = run_all(heuristics)
        best = {}
        for n, t in tasks.items():
            means = {h: np.mean([r["objective"] for r in runs if r["task"] == n and r["policy"] == h])
                     for h in t.heuristics}
            best[n] = min(means, key=means.get)
        if args.heuristics_only:
            print("\n".join(f"{n}: best heuristic {best[n]}" for n in tasks))
            return
        bases = {**best, **dict(item.split("=", 1) for item in filter(None, args.base.split(",")))}
        planners = [(n, args.fraction, planner_spec(args, bases[n], n), s, args.residual)
                    for n in tasks for s in seeds[n]]
        runs += run_all(planners)
    (args.out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    text = table(tasks, seeds, best, bases, runs, args)
    (args.out / "headroom.md").write_text(text + "\n")
    print(text)


def planner_spec(args: argparse.Namespace, base: str, task: str) -> str:
    """The planner run on ``task``: ``PLANNER:BASE@OPTIONS``, the task's own options if given."""
    options = dict(item.split("=", 1) for item in args.task_options)
    unknown = set(options) - set(args.tasks.split(",") if args.tasks else task_names())
    require(not unknown, "--task-options", f"names tasks not measured: {sorted(unknown)}", "name tasks of --tasks")
    return f"{args.planner}:{base}@{options.get(task, args.options)}"


def table(tasks: dict[str, Task], seeds: dict[str, tuple[int, ...]], best: dict[str, str], bases: dict[str, str],
          runs: list[dict], args: argparse.Namespace) -> str:
    size = (f"{args.fraction:g} of each task's applications per episode, at least 30" if args.fraction < 1
            else "the tasks' own episodes")
    residual = f", its orders added to the native `{args.residual}` (residual control)" if args.residual else ""
    lines = [f"Planner `{args.planner}:BASE@OPTIONS`{residual} (BASE: the best heuristic unless --base names one; "
             f"OPTIONS `{args.options}` unless --task-options gives the task's) against each task's best heuristic "
             f"on its first {args.seeds} training seeds ({size}); margin = (best - planner) / best per seed, mean "
             "+- 95% half-width (positive: the planner is better). Wall seconds per planner episode on this machine "
             "(indicative).", "",
             "| task | objective | best heuristic | best | planner | planner objective | margin | planner s/episode |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, task in tasks.items():
        def of(spec: str, name: str = n) -> list[dict]:
            return sorted((r for r in runs if r["task"] == name and r["policy"] == spec), key=lambda r: r["seed"])
        spec = planner_spec(args, bases[n], n)
        b, p = np.array([r["objective"] for r in of(best[n])]), np.array([r["objective"] for r in of(spec)])
        margin = mean_ci(np.where(b != 0, (b - p) / np.where(b != 0, b, 1), 0.0))
        seconds = np.mean([r["seconds"] for r in of(spec)])
        lines.append(f"| `{n}` | {task.objective} | `{best[n]}` | {b.mean():.4g} | `{spec}` | {p.mean():.4g} | "
                     f"{margin[0]:+.1%} +- {margin[1]:.1%} | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
