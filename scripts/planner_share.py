"""A distilled student's share of its teacher's margin on one held-out set, paired: the teacher (the planner,
headless), the student and the best heuristic on the task's held-out seeds or held-out workload.

    python scripts/planner_share.py agents/checkpoints/two-model-slow-cost-distill.pt --set workload --workers 2

``agents.distill --evaluate`` runs the planner on both sets after distilling; this evaluates a shipped
checkpoint on one (``agents.distill.evaluate``), at its own size or ``--fraction`` of the task's applications,
when the planner's minutes an episode allow only that, and prints the result (nothing is written beside it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.distill import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--set", choices=("seeds", "workload"), default="workload")
    parser.add_argument("--fraction", type=float, help="of the task's applications (default: the distilled size)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    result = evaluate(args.checkpoint, args.workers, fraction=args.fraction, sets=(args.set,), write=False)
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
