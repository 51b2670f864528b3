"""A distilled student's share of its teacher's margin on one held-out set, paired: the teacher (the planner,
headless), the student and the best heuristic on the task's held-out seeds or held-out workload.

    python scripts/planner_share.py agents/checkpoints/two-model-slow-cost-distill.pt --set workload --workers 2

``agents.distill --evaluate`` runs the planner on both sets; this runs it on one, at the checkpoint's own size
or ``--fraction`` of the task's applications, when the planner's minutes an episode allow only that.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from agents.distill import DistillConfig, eval_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--set", choices=("seeds", "workload"), default="workload")
    parser.add_argument("--fraction", type=float, help="of the task's applications (default: the distilled size)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    cfg = {**ckpt["config"], **({"fraction": args.fraction} if args.fraction else {})}
    seeds = list(DistillConfig(**cfg).shortened().eval_seeds)
    specs = [ckpt["teacher"], "learned", ckpt["best"]]
    jobs = [(cfg, s, args.checkpoint, seed, args.set == "workload") for s in specs for seed in seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(eval_job, jobs))
    per = {s: np.array([r["objective"] for r in runs if r["policy"] == s]) for s in specs}
    best, planner, learned = per[ckpt["best"]], per[ckpt["teacher"]], per["learned"]
    print(json.dumps({"task": ckpt["config"]["task"], "fraction": cfg["fraction"], "set": f"heldout_{args.set}",
                      "seeds": seeds, "objectives": {s: v.tolist() for s, v in per.items()},
                      "planner_vs_best": float(np.mean((best - planner) / best)),
                      "learned_vs_best": float(np.mean((best - learned) / best)),
                      "captured": float(np.sum(best - learned) / np.sum(best - planner))}))


if __name__ == "__main__":
    main()
