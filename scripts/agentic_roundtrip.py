"""Agentic traces (NVIDIA Dynamo's agentic Mooncake rows) to and from PDGraphs, measured.

1. Fit back: N applications of a library template written as agentic rows (``rows_from_workload``), a
   PDGraph fitted to them (``fit-trace --format dynamo-agentic``'s fit), and how its samples compare with
   the rows (``fit_report``: means, KS distances, median and P90 errors).
2. Replay: the agent-sessions experiment's first N sessions simulated, then their rows replayed on the same
   cluster (``arrivals: {process: trace, format: dynamo-agentic}``): completion times and prefix-cache reuse.
   The replay's waits are the sampled tool and user times, without the sandboxes' cold starts and queues.
3. The replay under schedulers that read the PDGraph fitted to the rows and ones that do not.
4. A simulated run written with its own times (``rows_from_run``: waits as the run measured them, cold
   starts and queues included), replayed and written again: how far each request's issue time moves.

    python scripts/agentic_roundtrip.py [--sessions 600] [--replay 150] [--run-sessions 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.agentic import AgenticReplay, fit_report, rows_from_run, rows_from_workload, write_agentic

TEMPLATES = ("react_agent", "map_reduce_summarisation", "coding_agent_session")


def hit_rate(sim: Simulation) -> float:
    cached = sum(r.cached_tokens for b in sim.llm_backends.values() for r in b.replicas)
    computed = sum(r.computed_tokens for b in sim.llm_backends.values() for r in b.replicas)
    return cached / (cached + computed)


def fit_back(template: str, n: int, folder: Path) -> None:
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": n, "arrivals": {"process": "poisson", "rate": 1.0},
        "applications": [{"template": template}]}})
    path = folder / f"{template}.jsonl"
    rows = rows_from_workload(Simulation(cfg, seed=0), n)
    write_agentic(rows, path)
    t0 = time.perf_counter()
    replay = AgenticReplay.build(str(path), 512, range(n), "llm:llama3-8b", "api:user")
    fit_s = time.perf_counter() - t0
    print(f"\n{template}: {n} sessions, {len(rows)} rows, fitted PDGraph of {len(replay.graph.state_space())} states "
          f"in {fit_s:.2f} s")
    print(f"  {'measure':16s} {'rows mean':>10s} {'fit mean':>10s} {'KS':>6s} {'p50 err':>8s} {'p90 err':>8s}")
    for m, r in fit_report(replay).items():
        print(f"  {m:16s} {r['trace mean']:10.4g} {r['fit mean']:10.4g} {r['ks']:6.3f} {100 * r['p50 error']:7.1f}% "
              f"{100 * r['p90 error']:7.1f}%")


def replay(n: int, folder: Path) -> None:
    original = Simulation(ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": n, "arrivals": {"process": "poisson", "rate": 0.0224},
        "applications": [{"template": "coding_agent_session"}]}}), seed=0)
    path = folder / "agent-sessions.jsonl"
    write_agentic(rows_from_workload(original, n), path)
    s0 = original.run().summary
    again = Simulation(ExperimentConfig.from_dict({"cluster": "default", "workload": {"arrivals": {
        "process": "trace", "trace": str(path), "format": "dynamo-agentic"}}}), seed=0)
    s1 = again.run().summary
    print(f"\nagent-sessions (coding_agent_session, {n} sessions at 0.0224/s, seed 0):")
    print(f"  {'run':28s} {'completed':>9s} {'failed':>6s} {'mean s':>8s} {'P95 s':>8s} {'prefix hit':>10s}")
    for name, s, sim in (("simulated from the PDGraph", s0, original), ("its rows replayed", s1, again)):
        print(f"  {name:28s} {s['completed']:9d} {s['failed']:6d} {s['jct']['mean']:8.1f} {s['jct']['p95']:8.1f} "
              f"{100 * hit_rate(sim):9.1f}%")


def issue_times(rows: list) -> dict[tuple[int, str], float]:
    """Each row's issue time from its session's first, keyed by (session rank by arrival, row number)."""
    starts: dict[str, float] = {}
    for r in rows:
        starts[r.session_id] = min(starts.get(r.session_id, r.timestamp), r.timestamp)
    rank = {sid: k for k, sid in enumerate(sorted(starts, key=lambda s: (starts[s], int(s[1:]))))}
    first = min(starts.values())
    return {(rank[r.session_id], r.request_id.split("-")[1]): r.timestamp - first for r in rows}


def replay_run(n: int, block_size: int, folder: Path, rate: float = 0.0224) -> None:
    """A simulated run written with its own times (rows_from_run), replayed, and written again."""
    base = ExperimentConfig.from_dict({"cluster": "default", "workload": {
        "num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
        "applications": [{"template": "coding_agent_session"}]}})
    runs = []
    for k in range(2):
        sim = Simulation(base, seed=0)
        sim.request_log = []
        summary = sim.run().summary
        rows = rows_from_run(sim, block_size)
        write_agentic(rows, folder / f"run{k}.jsonl")
        runs.append((summary, rows, hit_rate(sim)))
        base = ExperimentConfig.from_dict({"cluster": "default", "workload": {"arrivals": {
            "process": "trace", "trace": str(folder / f"run{k}.jsonl"), "format": "dynamo-agentic",
            "block_size": block_size}}})
    (s0, rows0, h0), (s1, rows1, h1) = runs
    a, b = issue_times(rows0), issue_times(rows1)
    diff = np.array([abs(b[k] - a[k]) for k in b]) / 1000.0
    print(f"\n  {n} sessions at {rate}/s, the run's rows ({block_size}-token blocks) replayed: {len(rows1)} of "
          f"{len(rows0)} rows, issue times "
          f"off by {diff.mean():.3f} s on average, {diff.max():.3f} s at most; prefix hit {100 * h1:.1f}% "
          f"against the run's {100 * h0:.1f}%")


def schedulers(n: int, folder: Path) -> None:
    """The replayed rows of part 2 under schedulers that read the fitted PDGraph (gittins, llmsched) and
    ones that do not (fcfs, and sjf on the fitted graph's mean demand)."""
    cfg = ExperimentConfig.from_dict({"cluster": "default", "workload": {"arrivals": {
        "process": "trace", "trace": str(folder / "agent-sessions.jsonl"), "format": "dynamo-agentic"}}})
    print(f"\n  the {n} replayed sessions by scheduler: mean / P95 completion s")
    for name in ("fcfs", "sjf", "gittins", "llmsched"):
        s = Simulation(cfg, scheduler=name, seed=0).run().summary
        print(f"    {name:9s} {s['jct']['mean']:8.1f} {s['jct']['p95']:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=600, help="sessions a template for the fit-back")
    parser.add_argument("--replay", type=int, default=150, help="agent sessions simulated and replayed")
    parser.add_argument("--run-sessions", type=int, default=60, help="agent sessions of the run written and replayed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for template in TEMPLATES:
            fit_back(template, args.sessions, Path(folder))
        replay(args.replay, Path(folder))
        schedulers(args.replay, Path(folder))
        for block in (512, 16):
            replay_run(args.run_sessions, block, Path(folder))
        replay_run(8, 16, Path(folder), rate=0.001)  # sessions that never overlap


if __name__ == "__main__":
    main()
