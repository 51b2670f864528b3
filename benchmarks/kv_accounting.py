"""What vLLM's block accounting (``kv_accounting: vllm-0.11`` / ``vllm-0.34``) changes against hermes_env's default
token accounting, and what it costs to simulate.

* ``migration`` (configs/experiments/migration.yaml, without a migration policy): long reasoning decodes on four
  KV-bound Llama-3.1-8B replicas (its 1,000 applications): mean and P95 completion, preemptions.
* ``agent-kv`` (configs/experiments/agent-kv.yaml, session_sticky, retention lru): coding-agent sessions whose
  contexts exceed the KV cache, the first ``SESSIONS`` sessions.
* ``default`` (configs/experiments/default.yaml): the environments' default, where memory is not the constraint,
  for the speed cost.

The cost is the median, over ``REPEATS`` interleaved runs, of each run's CPU seconds over those of the ``tokens``
run beside it (indicative: the figures vary by tens of percent from run to run on a shared machine).

    python benchmarks/kv_accounting.py          # prints the table docs/simulator.md shows
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import yaml

from hermes_env.sim import ExperimentConfig, Simulation

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTINGS = ("tokens", "vllm-0.11", "vllm-0.34")
APPS, SESSIONS, REPEATS = 1000, 40, 10


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
          f"{'CPU x tokens':>12s}")
    for name, options, apps in runs:
        label = name + (f" ({options['retention']})" if "retention" in options else "")
        cfgs = {accounting: experiment(name, accounting, apps) for accounting in ACCOUNTINGS}
        cpu: dict[str, list[float]] = {accounting: [] for accounting in ACCOUNTINGS}
        summaries = {}
        for _ in range(REPEATS):  # interleaved, so that a busy spell of the machine weighs on all alike
            for accounting, cfg in cfgs.items():
                t0 = time.process_time()
                summaries[accounting] = Simulation(cfg, seed=0, keep_applications=False, **options).run().summary
                cpu[accounting].append(time.process_time() - t0)
        for accounting, s in summaries.items():
            ratio = statistics.median(a / b for a, b in zip(cpu[accounting], cpu["tokens"], strict=True))
            preemptions = sum(b.get("preemptions", 0) for b in s["backends"].values())
            print(f"{label:18s} {accounting:13s} {s['jct']['mean']:8.2f} {s['jct']['p95']:8.2f} {preemptions:11d} "
                  f"{ratio:12.2f}", flush=True)


if __name__ == "__main__":
    main()
