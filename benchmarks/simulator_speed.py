"""Headless simulator speed: FCFS on the default cluster.

1. Throughput: LLM requests and events simulated per second of CPU (process time), on an LLM-only workload
   (ShareGPT-like single requests at about the cluster's capacity) and on the Hermes-like mix; the
   issue's target is one million LLM requests per CPU-minute.
2. Scaling: the cost per event with 10 to 10,000 applications in the system at once (all arriving in a
   burst), as a ratio to the cost with 10 (issue 24 asks for at most 1.3x).
3. Memory of a long run (``keep_applications=False``, as ``hermes-env simulate`` streams): peak resident
   memory of fresh processes simulating 50,000 and 200,000 applications, and the growth per application.

    python benchmarks/simulator_speed.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from hermes_env.sim import Engine, ExperimentConfig, Simulation

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = yaml.safe_load((ROOT / "configs" / "clusters" / "default.yaml").read_text())


def experiment(applications, arrivals, n):
    return ExperimentConfig.from_dict({"cluster": CLUSTER, "workload": {
        "num_applications": n, "arrivals": arrivals, "applications": applications}})


def timed(cfg):
    sim = Simulation(cfg, scheduler="fcfs", prewarm="none", seed=0)
    t0 = time.process_time()
    result = sim.run()
    cpu = time.process_time() - t0
    llm = sum(b["completed"] for name, b in result.summary["backends"].items() if name.startswith("llm:"))
    return cpu, llm, result.summary["events"], result


def bare_engine_event_cost(n: int = 500_000) -> float:
    """CPU seconds per event of the engine alone (no-op callbacks): the same-run reference that makes the
    figures below comparable across machines."""
    engine = Engine()

    def noop(now, i):
        if i < n:
            engine.at(now + 1.0, noop, i + 1)

    engine.at(0.0, noop, 0)
    t0 = time.process_time()
    engine.run()
    return (time.process_time() - t0) / engine.events


def main() -> None:
    bare = bare_engine_event_cost()
    print(f"reference: the bare event loop costs {1e6 * bare:.2f} us per event on this machine\n")
    print("throughput (FCFS, default cluster)")
    print(f"{'workload':34s} {'LLM requests':>12s} {'events':>9s} {'CPU s':>7s} {'req/s':>8s} {'events/s':>9s} "
          f"{'req per CPU-min':>15s} {'event/bare':>10s}")
    single = [{"template": "single_request", "weight": 1}]
    hermes = yaml.safe_load((ROOT / "configs" / "workloads" / "hermes.yaml").read_text())["applications"]
    for name, apps, rate, n in (("single_request, 16 req/s", single, 16.0, 200_000),
                                ("Hermes-like mix, 2 apps/s", hermes, 2.0, 40_000)):
        cpu, llm, events, result = timed(experiment(apps, {"process": "poisson", "rate": rate}, n))
        print(f"{name:34s} {llm:12d} {events:9d} {cpu:7.2f} {llm / cpu:8.0f} {events / cpu:9.0f} "
              f"{60 * llm / cpu:15.0f} {cpu / events / bare:10.1f}   (LLM utilisation "
              f"{result.summary['backends']['llm:llama3-8b']['utilisation']:.2f})")

    print("\ncost per event against applications in the system (a burst of N arrivals, Hermes-like mix)")
    print(f"{'N':>6s} {'events':>9s} {'us/event':>9s} {'ratio to N=10':>13s}")
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 100, 1000, 10_000):
            trace = Path(tmp) / f"burst{n}.csv"
            trace.write_text("timestamp\n" + "\n".join(f"{i * 1e-4:.6f}" for i in range(n)) + "\n")
            repeats = max(1, 20_000 // n)
            cpu = events = 0
            for seed in range(repeats):
                cfg = experiment(hermes, {"process": "trace", "trace": str(trace)}, n)
                sim = Simulation(cfg, seed=seed)
                t0 = time.process_time()
                sim.run()
                cpu += time.process_time() - t0
                events += sim.engine.events
            per = cpu / events
            reference = reference or per
            print(f"{n:6d} {events:9d} {1e6 * per:9.2f} {per / reference:13.2f}")
    memory()


# The child's own peak: VmHWM, the high-water mark of its address space. Not ru_maxrss: on Linux a child started
# by vfork + exec inherits its parent's peak there (exec folds the old address space's peak into it), so a
# child of this benchmark reported the parent's peak after the throughput runs (551 MB at 50,000 and 200,000
# applications on the lent machine) rather than its own.
MEMORY_RUN = """
import re, resource, sys, yaml
from pathlib import Path
from hermes_env.sim import ExperimentConfig, Simulation
cluster = yaml.safe_load(Path(sys.argv[2]).read_text())
cfg = ExperimentConfig.from_dict({"cluster": cluster, "workload": {"num_applications": int(sys.argv[1]),
    "arrivals": {"process": "poisson", "rate": 16.0}, "applications": [{"template": "single_request"}]}})
Simulation(cfg, seed=0, keep_applications=False).run()
try:
    print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
except OSError:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS) is then the child's own
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1))
"""


def peak_rss_mb(n: int) -> float:
    cluster = ROOT / "configs" / "clusters" / "default.yaml"
    out = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(n), str(cluster)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[-1]) / 1024


def memory() -> None:
    small, large = peak_rss_mb(50_000), peak_rss_mb(200_000)
    print(f"\nmemory of a long run (single requests, keep_applications=False): peak RSS {small:.0f} MB at 50,000 "
          f"applications, {large:.0f} MB at 200,000: {1024 * (large - small) / 150_000:.2f} kB per application")


if __name__ == "__main__":
    main()
