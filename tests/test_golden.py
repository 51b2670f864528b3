"""Results stay identical across refactors and speed work (issue 16): fixed-seed runs of every decision
kind against figures recorded in tests/golden/summaries.json. A change that moves them on purpose (a model
fix) regenerates the file with `python tests/test_golden.py` and says so in its commit message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import Simulation

GOLDEN = Path(__file__).parent / "golden" / "summaries.json"
RUNS = {
    "contended gittins+pdgraph": ("contended", {"scheduler": "gittins", "prewarm": "pdgraph"}),
    "contended fcfs+hybrid": ("contended", {"scheduler": "fcfs", "prewarm": "hybrid"}),
    "routing prefix_affinity": ("routing", {"router": "prefix_affinity", "scheduler": "gittins"}),
    "autoscaling pdgraph": ("autoscaling", {"autoscaler": "pdgraph"}),
    "small llmsched": ("small", {"scheduler": "llmsched"}),
}
KEYS = ("completed", "failed", "events", "cold_starts", "idle_warm_cost", "gpu_seconds")


def figures(name: str) -> dict:
    experiment, policies = RUNS[name]
    cfg = load_experiment(experiment, {"workload": {"num_applications": 300}})
    summary = Simulation(cfg, seed=11, keep_applications=False, **policies).run().summary
    return {**{k: summary[k] for k in KEYS}, **{f"jct_{m}": summary["jct"][m] for m in ("mean", "p95", "p99")}}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixed_seed_runs_match_the_recorded_figures(name: str) -> None:
    recorded = json.loads(GOLDEN.read_text())[name]
    now = figures(name)
    assert now == pytest.approx(recorded, rel=1e-9, abs=1e-9)


if __name__ == "__main__" and sys.argv[1:] == []:
    GOLDEN.write_text(json.dumps({name: figures(name) for name in sorted(RUNS)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
