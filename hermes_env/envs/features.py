"""Observation features derived from the simulation and from each application's PDGraph.

Everything here is what a real scheduler could know: an application's template, progress (stage, loop
counters, unfinished copies), arrival and waiting times, class and SLO, and the prompt length of an LLM
request, but never its realised output length or service time. PDGraph-derived quantities (Gittins
index, remaining-demand statistics, next-use forecasts, structural entropy) are computed once per
(template, state, pending copies) and cached.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.cluster.llm import LLMBackend
from hermes_env.cluster.request import Request
from hermes_env.cluster.tool import COLD, WARM, WARMING, ToolBackend
from hermes_env.pdgraph.demand import Progress
from hermes_env.pdgraph.graph import BACKEND_KINDS, backend_kind

REQUEST_BASE_FEATURES = (
    "gittins_index", "remaining_mean", "remaining_std", "remaining_p50", "remaining_p90", "attained_service",
    "waiting_time", "time_in_system", "real_time", "slo_slack", *(f"kind_{k}" for k in BACKEND_KINDS),
    "prompt_tokens", "copies_pending", "structure_entropy",
)
BACKEND_FEATURES = ("deciding", *(f"kind_{k}" for k in BACKEND_KINDS), "queue_length", "load", "warm", "warming",
                    "cold", "time_until_warm", "kv_used")
GLOBAL_FEATURES = ("applications_in_system", "time", "completed_fraction", "prewarm_decision")
NO_SLO = 1e4  # seconds of slack reported for applications without an SLO


def signed_log(x: float) -> float:
    return math.copysign(math.log1p(abs(x)), x)


class FeatureBuilder:
    """Builds the fixed-shape arrays of the observation. One builder serves an environment's episodes:
    ``bind`` it to each new simulation; its cache of PDGraph statistics carries over."""

    def __init__(self, backend_names: list[str], slots: int) -> None:
        self.slots = slots
        self.backend_names = backend_names
        self.n_request_features = self.request_features(len(self.backend_names))
        self._app_stats: dict[tuple[str, int, int | None], np.ndarray] = {}
        self.sim: Any = None

    def bind(self, sim: Any) -> None:
        self.sim = sim

    @staticmethod
    def request_features(n_backends: int) -> int:
        return len(REQUEST_BASE_FEATURES) + 2 * n_backends

    # -- per application progress: cached PDGraph analysis -----------------------------------
    def app_stats(self, template: str, state: int, pending: int | None) -> np.ndarray:
        key = (template, state, pending)
        stats = self._app_stats.get(key)
        if stats is None:
            model = self.sim.demand_model(template)
            progress = Progress(state, 0.0, pending)
            dist = model.remaining_demand(progress)
            p50, p90 = dist.quantile([0.5, 0.9])
            values = [math.log1p(model.gittins_index(progress)), math.log1p(dist.mean), math.log1p(dist.std),
                      math.log1p(float(p50)), math.log1p(float(p90)), model.structure_entropy(progress)]
            for backend in self.backend_names:
                use = model.next_use(progress, backend)
                values += [use.probability, math.log1p(use.time.mean) if use.time is not None else 0.0]
            stats = self._app_stats[key] = np.array(values, dtype=np.float32)
        return stats

    def request_row(self, r: Request, now: float) -> np.ndarray:
        app = r.app
        stats = self.app_stats(app.template, app.current.state, app.pending)
        slack = app.arrival + app.mix.slo - now if math.isfinite(app.mix.slo) else NO_SLO
        kind = backend_kind(r.backend)
        row = np.empty(self.n_request_features, dtype=np.float32)
        row[:5] = stats[:5]
        row[5:10] = (math.log1p(sum(app.service_times[: app.cursor])), math.log1p(now - r.enqueued),
                     math.log1p(now - app.arrival), float(app.app_class == "real_time"), signed_log(slack))
        row[10:14] = [float(kind == k) for k in BACKEND_KINDS]
        row[14:17] = (math.log1p(r.prompt_tokens), math.log1p(app.pending), stats[5])
        row[17:] = stats[6:]
        return row

    # -- arrays ---------------------------------------------------------------------------------
    def requests(self, candidates: list[Request], now: float) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((self.slots, self.n_request_features), dtype=np.float32)
        mask = np.zeros(self.slots, dtype=np.int8)
        for i, r in enumerate(candidates[: self.slots]):
            out[i] = self.request_row(r, now)
            mask[i] = 1
        return out, mask

    def backends(self, deciding: str, now: float) -> np.ndarray:
        out = np.zeros((len(self.backend_names), len(BACKEND_FEATURES)), dtype=np.float32)
        for i, name in enumerate(self.backend_names):
            b = self.sim.backends[name]
            kind = backend_kind(name)
            row = [float(name == deciding), *(float(kind == k) for k in BACKEND_KINDS), math.log1p(len(b.queue))]
            if isinstance(b, ToolBackend):
                n = len(b.instances)
                states = [inst.state for inst in b.instances]
                ready = [inst.ready_at - now for inst in b.instances if inst.state == WARMING]
                row += [sum(inst.busy for inst in b.instances) / (n * b.cfg.capacity), states.count(WARM) / n,
                        states.count(WARMING) / n, states.count(COLD) / n,
                        math.log1p(min(ready)) if ready and WARM not in states else 0.0, 0.0]
            else:
                assert isinstance(b, LLMBackend)
                reps = b.replicas
                row += [sum(r._batch() for r in reps) / (len(reps) * b.cfg.max_batch), 1.0, 0.0, 0.0, 0.0,
                        sum(r.kv_used for r in reps) / sum(r.capacity for r in reps)]
            out[i] = row
        return out

    def global_features(self, now: float, prewarm_decision: bool) -> np.ndarray:
        sim = self.sim
        return np.array([math.log1p(sim.in_system), math.log1p(now),
                         len(sim.completed) / sim.config.workload.num_applications, float(prewarm_decision)],
                        dtype=np.float32)
