"""What recording a timeline costs: the run's wall time with and without a TimelineRecorder, the time to
build and write the trace-event JSON, and its size per application.

The experiments run whole (every application), each configuration three times interleaved, the fastest
kept; times are the process's CPU seconds (less disturbed than wall time on a shared machine; the ratios
are still indicative).

    python benchmarks/timeline_cost.py               # prints the table docs/timeline.md quotes
"""

from __future__ import annotations

import os
import tempfile
import time

from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.timeline import TimelineRecorder

EXPERIMENTS = (("small", "shared"), ("default", "shared"), ("routing", "least_outstanding"))


def one(cfg: ExperimentConfig, router: str, record: bool, path: str) -> tuple[float, float, int, int, int]:
    """Run seconds, build + write seconds, events, bytes, applications."""
    tl = TimelineRecorder() if record else None
    t0 = time.process_time()
    sim = Simulation(cfg, seed=0, router=router, keep_applications=False, timeline=tl)
    sim.run()
    run = time.process_time() - t0
    if tl is None:
        return run, 0.0, 0, 0, sim.ended
    t0 = time.process_time()
    trace = tl.write(path)
    return run, time.process_time() - t0, len(trace["traceEvents"]), os.path.getsize(path), sim.ended


def main() -> None:
    print(f"{'experiment':10s} {'apps':>6s} {'off s':>7s} {'on s':>7s} {'on/off':>7s} {'write s':>8s} "
          f"{'events':>9s} {'events/app':>10s} {'MB':>7s} {'kB/app':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.json")
        for name, router in EXPERIMENTS:
            cfg = ExperimentConfig.from_yaml(name)
            best: dict[bool, tuple] = {}
            for _ in range(3):
                for record in (False, True):
                    got = one(cfg, router, record, path)
                    if record not in best or got[0] < best[record][0]:
                        best[record] = got
            off, (on, write, events, size, apps) = best[False][0], best[True]
            print(f"{name:10s} {apps:6d} {off:7.2f} {on:7.2f} {on / off:7.2f} {write:8.2f} {events:9d} "
                  f"{events / apps:10.1f} {size / 1e6:7.2f} {size / 1e3 / apps:7.2f}")


if __name__ == "__main__":
    main()
