"""Observation features derived from the simulation and from each application's PDGraph.

Everything here is what a real scheduler could know: an application's template, progress (stage, loop
counters, unfinished copies), arrival and waiting times, class and SLO, and the prompt length of an LLM
request, but never its realised output length or service time. PDGraph-derived quantities (Gittins
index, remaining-demand statistics, next-use forecasts, structural entropy) are computed once per
(template, state, pending copies) and cached. The column names below are the documentation's
(docs/environments.md): every column is a flag, a fraction, or ``log1p`` of seconds or tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env._mypyc import mypyc_attr
from hermes_env.cluster.llm import COLD, DRAINING, LOADING, WARM, LLMBackend
from hermes_env.cluster.request import Request
from hermes_env.cluster.tool import WARM as TOOL_WARM
from hermes_env.cluster.tool import WARMING, ToolBackend
from hermes_env.pdgraph.demand import Progress
from hermes_env.pdgraph.graph import BACKEND_KINDS, backend_kind
from hermes_env.sim.forecast import p_requests_within
from hermes_env.sim.workload import TIERS

REQUEST_BASE_FEATURES = (
    "gittins_index", "remaining_mean", "remaining_std", "remaining_p50", "remaining_p90", "attained_service",
    "waiting_time", "time_in_system", "real_time", "slo_slack", *(f"kind_{k}" for k in BACKEND_KINDS),
    "prompt_tokens", "copies_pending", "structure_entropy",
)
BACKEND_FEATURES = ("deciding", *(f"kind_{k}" for k in BACKEND_KINDS), "queue_length", "load", "warm", "warming",
                    "cold", "time_until_warm", "kv_used", "demand_within_warmup", "demand_within_minute")
REPLICA_FEATURES = ("candidate", "deciding", "cold", "loading", "warm", "draining", "time_until_warm", "queue_length",
                    "queued_prompt_tokens", "batch", "kv_in_use", "prefix_hit", "adapter_resident")
# only on a cluster with a disaggregated backend (prefill/decode pools): per replica of the decision's backend
DISAGG_FEATURES = ("prefill_pool", "decode_pool", "sending_tokens", "incoming")
# only on a cluster with a backend of several replica kinds (GPU types): per LLM backend and kind, and per replica
KIND_FEATURES = ("decode_speed", "prefill_speed", "price", "kv_capacity", "serving", "cold")
REPLICA_KIND_FEATURES = ("decode_speed", "prefill_speed", "price")
DECISION_KINDS = ("schedule", "prewarm", "route", "scale")
GLOBAL_FEATURES = ("applications_in_system", "time", "completed_fraction", "failed_fraction",
                   *(f"decision_{k}" for k in DECISION_KINDS))
NO_SLO = 1e4  # seconds of slack reported for applications without an SLO
ADMISSION_FEATURES = ("deciding", "tier_critical", "tier_standard", "tier_sheddable", "real_time", "slo",
                      "waiting_time", "remaining_mean", "remaining_p90", "may_defer", "may_reject", "defer_time_left",
                      "deferred_now", "requests_waiting")


@mypyc_attr(native_class=False)
class FeatureBuilder:
    """Builds the fixed-shape arrays of the observation. One builder serves an environment's episodes:
    ``bind`` it to each new simulation; its cache of PDGraph statistics carries over."""

    def __init__(self, backend_names: list[str], slots: int, replica_rows: int = 1) -> None:
        self.slots = slots
        self.backend_names = backend_names
        self.replica_rows = replica_rows
        self.n_request_features = self.request_features(len(self.backend_names))
        self._app_stats: dict[tuple[int, int, int], np.ndarray] = {}
        self.sim: Any = None

    def bind(self, sim: Any) -> None:
        self.sim = sim
        self._backend_objects = [sim.backends[n] for n in self.backend_names]
        static = np.zeros((len(self.backend_names), len(BACKEND_FEATURES)), dtype=np.float32)
        for i, name in enumerate(self.backend_names):
            static[i, 1:5] = [backend_kind(name) == k for k in BACKEND_KINDS]
        self._backend_static = static
        # the forecast horizons: how long a warm-up takes (a tool's mean cold start, a replica's load), >= 1 s
        warmup = [max(b.cfg.load_time() if isinstance(b, LLMBackend) else
                      (b.cfg.cold_start.mean if b.cfg.cold_start is not None else 0.0), 1.0)
                  for b in self._backend_objects]
        self._forecast_pairs = tuple((b.name, h) for b, w in zip(self._backend_objects, warmup, strict=True)
                                     for h in (w, 60.0))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_app_stats": {}}  # a cache, rebuilt on demand: keep it out of pickles

    @staticmethod
    def request_features(n_backends: int) -> int:
        return len(REQUEST_BASE_FEATURES) + 2 * n_backends

    # -- per application progress: cached PDGraph analysis -----------------------------------
    def static_row(self, r: Request) -> np.ndarray:
        """The part of a request's features fixed by its application's template, class, state and
        unfinished copies (computed once, then cached); the time-dependent columns are left at 0."""
        app = r.app
        key = (id(app.mix), app.current.state, app.pending)
        row = self._app_stats.get(key)
        if row is None:
            model = self.sim.demand_model(app.template)
            progress = app.progress
            dist = model.remaining_demand(progress)
            p50, p90 = dist.quantile([0.5, 0.9])
            kind = backend_kind(r.backend)
            values = [math.log1p(model.gittins_index(progress)), math.log1p(dist.mean), math.log1p(dist.std),
                      math.log1p(float(p50)), math.log1p(float(p90)), 0.0, 0.0, 0.0,
                      float(app.app_class == "real_time"), 0.0, *(float(kind == k) for k in BACKEND_KINDS), 0.0,
                      math.log1p(app.pending), model.structure_entropy(progress)]
            for backend in self.backend_names:
                use = model.next_use(progress, backend)
                values += [use.probability, math.log1p(use.time.mean) if use.time is not None else 0.0]
            row = self._app_stats[key] = np.array(values, dtype=np.float32)
        return row

    # -- arrays ---------------------------------------------------------------------------------
    def requests(self, candidates: list[Request], now: float,
                 slots: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features and mask of the first ``slots`` candidates (default: the observation's K)."""
        slots = self.slots if slots is None else slots
        out = np.zeros((slots, self.n_request_features), dtype=np.float32)
        mask = np.zeros(slots, dtype=np.int8)
        cands = candidates[:slots]
        n = len(cands)
        if n:
            out[:n] = [self.static_row(r) for r in cands]
            dynamic = np.array([(sum(r.app.service_times[: r.app.cursor]), now - r.enqueued, now - r.app.arrival,
                                 r.app.arrival + r.app.mix.slo - now, r.prompt_tokens) for r in cands])
            slack = np.where(np.isfinite(dynamic[:, 3]), dynamic[:, 3], NO_SLO)
            out[:n, 5:8] = np.log1p(dynamic[:, :3])
            out[:n, 9] = np.sign(slack) * np.log1p(np.abs(slack))
            out[:n, 14] = np.log1p(dynamic[:, 4])
            mask[:n] = 1
        return out, mask

    def backends(self, deciding: str, now: float) -> np.ndarray:
        out = self._backend_static.copy()
        for i, b in enumerate(self._backend_objects):
            out[i, 0] = b.name == deciding
            if isinstance(b, ToolBackend):
                busy = warm = warming = 0
                soonest = math.inf
                for inst in b.instances:
                    busy += inst.busy
                    if inst.state == TOOL_WARM:
                        warm += 1
                    elif inst.state == WARMING:
                        warming += 1
                        soonest = min(soonest, inst.ready_at - now)
                n = len(b.instances)
                out[i, 5] = math.log1p(len(b.queue))
                out[i, 6:11] = (busy / (n * b.cfg.capacity), warm / n, warming / n, (n - warm - warming) / n,
                                math.log1p(soonest) if warming and not warm else 0.0)
            else:
                reps = b.replicas
                serving = [r for r in reps if r.state != COLD]
                loading = [r.ready_at - now for r in reps if r.state == LOADING]
                n = len(reps)
                warm = sum(r.state in (WARM, DRAINING) for r in reps)
                out[i, 5] = math.log1p(b.routed_waiting())
                out[i, 6] = sum(r._batch() for r in serving) / (max(len(serving), 1) * b.cfg.max_num_seqs)
                out[i, 7:11] = (warm / n, len(loading) / n, (n - warm - len(loading)) / n,
                                math.log1p(min(loading)) if loading and not warm else 0.0)
                out[i, 11] = sum(r.capacity - r.free_tokens() for r in serving) / max(
                    sum(r.capacity for r in serving), 1)
        out[:, 12:14] = p_requests_within(self.sim, self._forecast_pairs, now).reshape(-1, 2)
        return out

    def replicas(self, backend: LLMBackend | None, request: Request | None, candidates: list[Any] | None,
                 deciding: int | None, now: float) -> np.ndarray:
        """One row per replica of ``backend`` (the one a decision concerns; zeros when none is an LLM
        backend): whether it may take ``request`` (a routing decision's candidates), whether it is the one
        deciding, its state, its queue, batch and KV, and how much of ``request``'s prompt its prefix cache
        holds and whether ``request``'s adapter is resident there."""
        out = np.zeros((self.replica_rows, len(REPLICA_FEATURES)), dtype=np.float32)
        if backend is None:
            return out
        allowed = {r.index for r in candidates} if candidates else set()
        for r in backend.replicas[: self.replica_rows]:
            own = r.queue is not backend.queue
            hit = r.prefix_hit(request) / request.prompt_tokens if request is not None and request.chain else 0.0
            out[r.index] = (r.index in allowed, r.index == deciding, r.state == COLD, r.state == LOADING,
                            r.state == WARM, r.state == DRAINING,
                            math.log1p(max(r.ready_at - now, 0.0)) if r.state == LOADING else 0.0,
                            math.log1p(len(r.queue)) if own else 0.0,
                            math.log1p(sum(q.context for q in r.queue)) if own else 0.0,
                            r._batch() / r.max_batch, (r.capacity - r.free_tokens()) / r.capacity, hit,
                            float(request is not None and request.adapter in r.resident))
        return out

    @staticmethod
    def kind_profile(backend: LLMBackend, kind: Any) -> tuple[float, float, float]:
        """A replica kind against its backend's first: decode and prefill throughput (ratios, from
        :meth:`~hermes_env.cluster.config.LLMBackendConfig.decode_throughput` and ``prefill_throughput``), and
        log1p of its price per replica-hour."""
        cfg, ref = backend.cfg, backend.cfg.kinds[0]
        return (cfg.decode_throughput(kind) / cfg.decode_throughput(ref),
                cfg.prefill_throughput(kind) / cfg.prefill_throughput(ref),
                math.log1p(kind.price_per_gpu_hour * kind.gpus_per_replica))

    def kinds(self, max_kinds: int) -> np.ndarray:
        """Per LLM backend (rows in order) and replica kind: its speeds and price (:meth:`kind_profile`), KV
        capacity against the first kind's, and the fractions of its replicas serving (warm or loading) and cold."""
        backends = list(self.sim.llm_backends.values())
        out = np.zeros((len(backends), max_kinds, len(KIND_FEATURES)), dtype=np.float32)
        for i, b in enumerate(backends):
            for j, kind in enumerate(b.cfg.kinds):
                own = [r for r in b.replicas if r.kind is kind]
                out[i, j] = (*self.kind_profile(b, kind), b.cfg.kv_capacity(kind) / b.cfg.kv_capacity(b.cfg.kinds[0]),
                             sum(r.state in (WARM, LOADING) for r in own) / len(own),
                             sum(r.state == COLD for r in own) / len(own))
        return out

    def replica_kinds(self, backend: LLMBackend | None) -> np.ndarray:
        """Per replica of the decision's LLM backend (zeros otherwise): its kind's :meth:`kind_profile`."""
        out = np.zeros((self.replica_rows, len(REPLICA_KIND_FEATURES)), dtype=np.float32)
        if backend is not None:
            for r in backend.replicas[: self.replica_rows]:
                out[r.index] = self.kind_profile(backend, r.kind)
        return out

    def disagg(self, backend: LLMBackend | None) -> np.ndarray:
        """Per replica of the decision's LLM backend (zeros otherwise, and on a backend without disaggregation):
        its pool, log1p of the KV tokens it holds for split requests waiting for the decode pool or in flight,
        and log1p of the split requests waiting for its KV room."""
        out = np.zeros((self.replica_rows, len(DISAGG_FEATURES)), dtype=np.float32)
        if backend is not None and backend.handoff is not None:
            for r in backend.replicas[: self.replica_rows]:
                out[r.index] = (r.role == "prefill", r.role == "decode", math.log1p(sum(r.sending.values())),
                                math.log1p(len(r.incoming)))
        return out

    def observation(self, candidates: list[Request], deciding: str, now: float, decision_kind: str | None = None,
                    slots: int | None = None, request: Request | None = None,
                    replica_candidates: list[Any] | None = None,
                    deciding_replica: int | None = None) -> dict[str, np.ndarray]:
        """The arrays every observation has, for the environments and for checkpoints run as schedulers: the
        first ``slots`` candidates (default K), the backends with ``deciding`` flagged, the replicas of
        ``deciding`` when it is an LLM backend (for a routing decision: ``request`` and its
        ``replica_candidates``), the globals."""
        requests, mask = self.requests(candidates, now, slots)
        backend = self.sim.llm_backends.get(deciding) if self.sim is not None else None
        return {"requests": requests, "request_mask": mask, "backends": self.backends(deciding, now),
                "replicas": self.replicas(backend, request, replica_candidates, deciding_replica, now),
                "global": self.global_features(now, decision_kind)}

    def admission(self, app: Any, now: float) -> np.ndarray:
        """The application an admission decision concerns (zeros but ``deferred_now`` and
        ``requests_waiting`` when there is none): its tier, class and SLO, the time since it arrived, its
        remaining demand from its PDGraph at its first stage (fan-out width not yet known), what its tier
        allows now and how long it may still be deferred; then the applications deferred now and the
        requests waiting at every backend."""
        sim = self.sim
        out = np.zeros(len(ADMISSION_FEATURES), dtype=np.float32)
        out[12:14] = (math.log1p(len(sim.deferred)), math.log1p(sum(sim.requests_waiting().values())))
        if app is None:
            return out
        dist = sim.demand_model(app.template).remaining_demand(Progress(app.current.state, 0.0, None))
        slo = app.mix.slo if math.isfinite(app.mix.slo) else NO_SLO
        left = app.arrival + sim.config.workload.tier(app.tier).max_defer - now
        out[:12] = (1.0, *(float(app.tier == t) for t in TIERS), float(app.app_class == "real_time"), math.log1p(slo),
                    math.log1p(now - app.arrival), math.log1p(dist.mean), math.log1p(float(dist.quantile([0.9])[0])),
                    float(sim.may_defer(app, now)), float(sim.may_reject(app)), math.log1p(max(left, 0.0)))
        return out

    def global_features(self, now: float, decision_kind: str | None) -> np.ndarray:
        sim = self.sim
        n = sim.config.workload.num_applications
        return np.array([math.log1p(sim.in_system), math.log1p(now), len(sim.recorder.completion_times) / n,
                         sim.recorder.failed / n, *(float(decision_kind == k) for k in DECISION_KINDS)],
                        dtype=np.float32)
