"""Metrics of a simulation: application completion times, failures, SLO attainment, goodput and
admission outcomes per SLO tier, backend utilisation, cold starts, idle warm cost, GPU-seconds,
prefix-cache reuse and queueing per stage; written as a per-application CSV and a summary JSON.

A :class:`Recorder` takes each application as it ends, so memory does not grow with the run: completion
times are kept exactly (8 bytes each), every other distribution (queueing per stage, TTFT, TPOT) in a
:class:`LogHistogram` of fixed size, whose percentiles are within 0.25% of the exact ones. The
per-application rows are kept in memory (``keep_applications``, the default) or streamed to a CSV file.
"""

from __future__ import annotations

import csv
import json
import math
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

import numpy as np

from hermes_env._mypyc import mypyc_attr

ROW_FIELDS = ("id", "template", "class", "tier", "arrival", "completion", "completion_time", "slo_met", "failed",
              "stages", "queue_times", "service_times")


@mypyc_attr(allow_interpreted_subclasses=True)
class LogHistogram:
    """Counts of non-negative values in logarithmic bins (``per_decade`` per factor of 10, from 1e-6 to 1e6;
    values below 1e-6 count as zero, above 1e6 in the last bin), with the exact count, sum and maximum."""

    LOW: ClassVar[float] = 1e-6
    DECADES: ClassVar[int] = 12

    def __init__(self, per_decade: int = 1000) -> None:
        self.per_decade = per_decade
        self.counts = np.zeros(self.DECADES * per_decade + 1, dtype=np.int64)  # bin 0: zero
        self.count, self.total, self.peak = 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.peak:
            self.peak = value
        if value < self.LOW:
            self.counts[0] += 1
        else:
            i = int(math.log10(value / self.LOW) * self.per_decade) + 1
            self.counts[min(i, len(self.counts) - 1)] += 1

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, interpolated geometrically inside its bin."""
        target = q * self.count
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            return 0.0
        below = cum[i - 1]
        frac = (target - below) / self.counts[i] if self.counts[i] else 0.0
        low = self.LOW * 10 ** ((i - 1) / self.per_decade)
        return float(min(low * 10 ** (frac / self.per_decade), self.peak))

    @classmethod
    def merged(cls, hists: list[LogHistogram]) -> LogHistogram:
        """One histogram of the values of ``hists`` (of the same bins)."""
        out = cls(hists[0].per_decade if hists else 1000)
        for h in hists:
            out.counts += h.counts
            out.count, out.total, out.peak = out.count + h.count, out.total + h.total, max(out.peak, h.peak)
        return out

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        return {"count": self.count, "mean": self.total / self.count, "p50": self.quantile(0.5),
                "p95": self.quantile(0.95), "p99": self.quantile(0.99)}


def distribution_summary(x: np.ndarray) -> dict[str, float]:
    if len(x) == 0:
        return {"count": 0}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"count": int(len(x)), "mean": float(x.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


TIER_COUNTS = ("applications", "completed", "slo_met", "rejected", "deferred")


def slo_met(app: Any) -> bool:
    """Completed within its SLO (an application without an SLO meets it by completing)."""
    return bool(not app.failed and app.completion - app.arrival <= app.mix.slo)


def application_row(app: Any) -> dict[str, Any]:
    return {"id": app.id, "template": app.template, "class": app.app_class, "tier": app.tier, "arrival": app.arrival,
            "completion": app.completion, "completion_time": app.completion - app.arrival,
            "slo_met": slo_met(app), "failed": app.failed,
            "stages": ";".join(r.stage for r in app.runs[: len(app.queue_times)]),
            "queue_times": ";".join(f"{t:.6f}" for t in app.queue_times),
            "service_times": ";".join(f"{t:.6f}" for t in app.service_times)}


def _met_of() -> list[int]:
    return [0, 0]


def _tier_counts() -> dict[str, int]:
    return dict.fromkeys(TIER_COUNTS, 0)


@mypyc_attr(allow_interpreted_subclasses=True)
class Recorder:
    """What the summary needs of every application, taken when it completes or fails."""

    def __init__(self, keep_applications: bool = True, rows_to: str | Path | None = None) -> None:
        self.keep = keep_applications
        self.completed: list[Any] = []  # Application objects, when kept
        self.completion_times = array("d")  # of completed (not failed) applications
        self.lower_bounds = array("d")  # their relaxation bounds (Application.lower_bound), in the same order
        self.slo: dict[str, list[int]] = defaultdict(_met_of)  # class -> [met, with an SLO]
        self.stage_wait: dict[str, LogHistogram] = defaultdict(LogHistogram)
        self.token_latency: dict[tuple[str, str], tuple[LogHistogram, LogHistogram]] = {}
        self.failures: Counter[str] = Counter()
        self.resumed_ttft: dict[str, LogHistogram] = defaultdict(LogHistogram)  # calls resuming a conversation
        self.failed = 0
        # applications with an SLO: how many, how many missed it (failures count), how many would miss it
        # even served alone (their lower bound exceeds it: no policy can meet it)
        self.slo_counts = {"with_slo": 0, "missed": 0, "missed_alone": 0}
        # per SLO tier: applications ended, completed, meeting their SLO, rejected and ever deferred by admission
        self.tiers: dict[str, dict[str, int]] = defaultdict(_tier_counts)
        self._file: TextIO | None = None
        self._rows: csv.DictWriter | None = None
        if rows_to is not None:
            path = Path(rows_to)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
            self._rows = csv.DictWriter(self._file, fieldnames=ROW_FIELDS)
            self._rows.writeheader()

    def application(self, app: Any) -> None:
        jct = app.completion - app.arrival
        tier = self.tiers[app.tier]
        tier["applications"] += 1
        tier["completed"] += not app.failed
        tier["slo_met"] += slo_met(app)
        tier["rejected"] += app.failed.startswith("admission:")
        tier["deferred"] += not math.isnan(app.deferred_at)
        if math.isfinite(app.mix.slo):
            counts = self.slo_counts
            counts["with_slo"] += 1
            counts["missed"] += bool(app.failed) or jct > app.mix.slo
            counts["missed_alone"] += bool(app.failed) or app.lower_bound > app.mix.slo
        if app.failed:
            self.failed += 1
            self.failures[app.failed.split(" (")[0]] += 1
        else:
            self.completion_times.append(jct)
            self.lower_bounds.append(app.lower_bound)
            if math.isfinite(app.mix.slo):
                met = self.slo[app.app_class]
                met[0] += jct <= app.mix.slo
                met[1] += 1
            for run, wait in zip(app.runs, app.queue_times, strict=False):
                self.stage_wait[f"{app.template}/{run.stage}"].add(wait)
        if self.keep:
            self.completed.append(app)
        if self._rows is not None:
            self._rows.writerow(application_row(app))

    def request(self, backend: str, app_class: str, ttft: float, tpot: float | None) -> None:
        hists = self.token_latency.get((backend, app_class))
        if hists is None:
            hists = self.token_latency[(backend, app_class)] = (LogHistogram(), LogHistogram())
        hists[0].add(ttft)
        if tpot is not None:
            hists[1].add(tpot)

    def resumed(self, backend: str, ttft: float) -> None:
        self.resumed_ttft[backend].add(ttft)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@mypyc_attr(allow_interpreted_subclasses=True)
@dataclass
class SimulationResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    def write(self, out: str | Path) -> None:
        """``applications.csv`` (unless the simulation streamed it there already) and ``summary.json``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if self.rows:
            with open(out / "applications.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=ROW_FIELDS)
                writer.writeheader()
                writer.writerows(self.rows)
        (out / "summary.json").write_text(json.dumps(self.summary, indent=1) + "\n")


def summarise(sim: Any) -> SimulationResult:
    now = sim.engine.now
    rec: Recorder = sim.recorder
    rows = [application_row(app) for app in sorted(rec.completed, key=lambda a: a.id)] if rec.keep else []
    backends: dict[str, Any] = {}
    for name, b in sim.tool_backends.items():
        backends[name] = b.summary(now)
    for name, b in sim.llm_backends.items():
        latency = {cls: {"ttft": ttft.summary(), "tpot": tpot.summary()}
                   for (backend, cls), (ttft, tpot) in sorted(rec.token_latency.items()) if backend == name}
        backends[name] = {**b.summary(now), "token_latency": latency}
        backends[name]["kv_memory"]["resumed_ttft"] = rec.resumed_ttft[name].summary() if name in rec.resumed_ttft \
            else {}
        disagg = backends[name].get("disaggregation")
        if disagg is not None:  # DistServe's goodput: requests meeting both TTFT and TPOT SLOs per second
            disagg["goodput"] = per_second(disagg["token_slo_met"], now, float(sim.arrival_times[-1]))
            hists = [h for (backend, _), h in rec.token_latency.items() if backend == name]
            disagg["ttft"] = LogHistogram.merged([h[0] for h in hists]).summary()  # every class together
            disagg["tpot"] = LogHistogram.merged([h[1] for h in hists]).summary()
    tools = [b for n, b in backends.items() if n in sim.tool_backends]
    summary = {
        "seed": sim.seed, "scheduler": sim.scheduler.name, "prewarm": sim.prewarm_policy.name,
        "router": sim.router_name, "autoscaler": sim.autoscaler.name, "retention": sim.retention.name,
        "migration": sim.migration.name,
        "disagg": sim.disagg.name,
        "simulated_seconds": now, "applications": len(rec.completion_times) + rec.failed,
        "completed": len(rec.completion_times), "failed": rec.failed, "failure_reasons": dict(rec.failures),
        "stage_requests": sim.stage_requests, "events": sim.engine.events, "admission": sim.admission.name,
        "jct": distribution_summary(np.frombuffer(rec.completion_times, dtype=float)),
        # a lower bound for every policy: each application's stages served alone, warm, with every reusable
        # prefix cached (its quantiles bound the completion time's quantiles too)
        "jct_lower_bound": distribution_summary(np.frombuffer(rec.lower_bounds, dtype=float)),
        "slo_attainment": {c: met / total for c, (met, total) in sorted(rec.slo.items()) if total},
        "slo_miss_counts": dict(rec.slo_counts),
        **tier_summary(rec, now, float(sim.arrival_times[-1])),
        "cold_starts": sum(b["cold_starts"] for b in tools),
        "idle_warm_cost": sum(b["idle_cost"] for b in tools),
        "gpu_seconds": sum(b["gpu_seconds"] for n, b in backends.items() if n in sim.llm_backends),
        "gpu_cost": sum(b["gpu_cost"] for n, b in backends.items() if n in sim.llm_backends),
        "gpu_seconds_lower_bound": sum(b["gpu_seconds_lower_bound"] for n, b in backends.items()
                                       if n in sim.llm_backends),
        "backends": backends,
        "stage_queueing": {k: h.summary() for k, h in sorted(rec.stage_wait.items())},
    }
    return SimulationResult(rows, summary)


def tier_summary(rec: Recorder, now: float, last_arrival: float) -> dict[str, Any]:
    """``tiers``: per SLO tier, the counts of TIER_COUNTS and its goodput; ``goodput``: applications meeting
    their SLO per second, per tier and ``all``. The time is that of the last arrival (``now`` if earlier),
    the same for every policy under a seed, so that goodputs compare as the counts do (a policy that sheds
    work does not gain by ending sooner)."""
    tiers: dict[str, dict[str, Any]] = {t: {**c, "goodput": per_second(c["slo_met"], now, last_arrival)}
                                        for t, c in sorted(rec.tiers.items())}
    goodput = {t: c["goodput"] for t, c in tiers.items()}
    goodput["all"] = per_second(sum(c["slo_met"] for c in tiers.values()), now, last_arrival)
    return {"tiers": tiers, "goodput": goodput}


def per_second(count: int, now: float, last_arrival: float) -> float:
    """A goodput: ``count`` over the time of the last arrival (``now`` if earlier), the same for every policy
    under a seed (see :func:`tier_summary`)."""
    span = min(now, last_arrival)
    return count / span if span > 0 else 0.0


def mean_ci(values: Any) -> tuple[float, float]:
    """Mean and 95% confidence half-width (Student t) of per-seed figures; NaN half-width under two."""
    from scipy import stats  # imported when first needed: keeps `import hermes_env` light

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
