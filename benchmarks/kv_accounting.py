"""What vLLM's block accounting (``kv_accounting: vllm-0.11`` / ``vllm-0.34``) changes against hermes_env's default
token accounting, and what it costs to simulate.

* ``migration`` (configs/experiments/migration.yaml, without a migration policy): long reasoning decodes on four
  KV-bound Llama-3.1-8B replicas (its 1,000 applications): mean and P95 completion, preemptions.
* ``agent-kv`` (configs/experiments/agent-kv.yaml, session_sticky, retention lru): coding-agent sessions whose
  contexts exceed the KV cache, the first ``SESSIONS`` sessions.
* ``default`` (configs/experiments/default.yaml): the environments' default, where memory is not the constraint,
  for the speed ratio (wall seconds in this process, the fastest of ``REPEATS`` runs; the ratio to ``tokens``).

    python benchmarks/kv_accounting.py          # prints the table docs/simulator.md shows
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from hermes_env.sim import ExperimentConfig, Simulation

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTINGS = ("tokens", "vllm-0.11", "vllm-0.34")
APPS, SESSIONS, REPEATS = 1000, 40, 3


def experiment(name: str, accounting: str, apps: int | None = None) -> ExperimentConfig:
    path = ROOT / "configs" / "experiments" / f"{name}.yaml"
    spec = yaml.safe_load(path.read_text())
    cluster = yaml.safe_load((path.parent / spec["cluster"]).read_text())
    for backend in cluster["llm_backends"]:
        backend["kv_accounting"] = accounting
    if apps is not None:
        spec["workload"]["num_applications"] = apps
    return ExperimentConfig.from_dict({**spec, "cluster": cluster}, base=path.parent)

def main() -> None:
    runs = [("migration", {}, APPS), ("agent-kv", {"router": "session_sticky", "retention": "lru"}, SESSIONS),
            ("default", {}, None)]
    print(f"{'experiment':18s} {'kv_accounting':13s} {'mean s':>8s} {'P95 s':>8s} {'preemptions':>11s} "
          f"{'wall s':>7s} {'x tokens':>8s}")
    for name, options, apps in runs:
        label = name + (f" ({options['retention']})" if "retention" in options else "")
        base = 0.0
        for accounting in ACCOUNTINGS:
            cfg = experiment(name, accounting, apps)
            walls = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                s = Simulation(cfg, seed=0, keep_applications=False, **options).run().summary
                walls.append(time.perf_counter() - t0)
            wall = min(walls)
            base = base or wall
            preemptions = sum(b.get("preemptions", 0) for b in s["backends"].values())
            print(f"{label:18s} {accounting:13s} {s['jct']['mean']:8.2f} {s['jct']['p95']:8.2f} {preemptions:11d} "
                  f"{wall:7.2f} {wall / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
