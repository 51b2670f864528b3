"""Metrics of a simulation: application completion times, SLO attainment, backend utilisation, cold
starts, idle warm cost and queueing per stage; written as a per-application CSV and a summary JSON."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def distribution_summary(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"count": 0}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"count": int(len(x)), "mean": float(x.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    def write(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "applications.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.rows[0]) if self.rows else ["id"])
            writer.writeheader()
            writer.writerows(self.rows)
        (out / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")


def summarise(sim: Any) -> SimulationResult:
    now = sim.engine.now
    rows = []
    for app in sorted(sim.completed, key=lambda a: a.id):
        rows.append({
            "id": app.id, "template": app.template, "class": app.app_class, "arrival": app.arrival,
            "completion": app.completion, "completion_time": app.completion - app.arrival,
            "slo_met": bool(app.completion - app.arrival <= app.mix.slo),
            "stages": ";".join(r.stage for r in app.runs),
            "queue_times": ";".join(f"{t:.6f}" for t in app.queue_times),
            "service_times": ";".join(f"{t:.6f}" for t in app.service_times),
        })
    jct = np.array([r["completion_time"] for r in rows])
    classes: dict[str, list[bool]] = defaultdict(list)
    for app in sim.completed:
        if math.isfinite(app.mix.slo):
            classes[app.app_class].append(app.completion - app.arrival <= app.mix.slo)
    stage_wait: dict[str, list[float]] = defaultdict(list)
    for app in sim.completed:
        for run, wait in zip(app.runs, app.queue_times, strict=True):
            stage_wait[f"{app.template}/{run.stage}"].append(wait)
    backends: dict[str, Any] = {}
    for name, b in sim.tool_backends.items():
        b._account(now)
        slots = b.cfg.instances * b.cfg.capacity
        backends[name] = {"utilisation": b.busy_slot_seconds / (slots * now) if now else 0.0,
                          "completed": b.completed, "cold_starts": b.cold_starts, "prewarms": b.prewarms,
                          "requests_delayed_by_warmup": b.delayed_by_warmup, "warm_seconds": b.warm_seconds,
                          "idle_warm_seconds": b.idle_warm_seconds, "idle_cost": b.idle_cost}
    for name, b in sim.llm_backends.items():
        busy = sum(r.busy_seconds for r in b.replicas)
        latency = {cls: {"ttft": distribution_summary(np.array(ttft)), "tpot": distribution_summary(np.array(tpot))}
                   for (backend, cls), (ttft, tpot) in sorted(sim.token_latency.items()) if backend == name}
        backends[name] = {"utilisation": busy / (len(b.replicas) * now) if now else 0.0, "completed": b.completed,
                          "iterations": sum(r.iterations for r in b.replicas),
                          "preemptions": sum(r.preemptions for r in b.replicas),
                          "prefix_load_seconds": sum(r.load_seconds for r in b.replicas),
                          "token_latency": latency}
    summary = {
        "seed": sim.seed, "scheduler": sim.scheduler.name, "prewarm": sim.prewarm_policy.name,
        "simulated_seconds": now, "applications": len(rows), "stage_requests": sim.stage_requests,
        "events": sim.engine.events,
        "jct": distribution_summary(jct),
        "slo_attainment": {c: float(np.mean(v)) for c, v in sorted(classes.items())},
        "cold_starts": sum(b["cold_starts"] for n, b in backends.items() if n in sim.tool_backends),
        "idle_warm_cost": sum(b["idle_cost"] for n, b in backends.items() if n in sim.tool_backends),
        "backends": backends,
        "stage_queueing": {k: distribution_summary(np.array(v)) for k, v in sorted(stage_wait.items())},
    }
    return SimulationResult(rows, summary)
