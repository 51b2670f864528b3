"""Reference autoscalers: when an LLM backend loads or releases a replica (``fixed`` is in the core).

Each acts through ``sim.scale_up(backend, now)`` and ``sim.scale_down(backend, now)``. Whatever the
autoscaler, a request that finds no replica warm or loading starts a load (the backend's own rule), so
scale-to-zero is always safe. A replica is *idle* when it holds no request and none waits for it.
"""

from __future__ import annotations

import functools
from typing import Any

from hermes_env.cluster.llm import LOADING, WARM
from hermes_env.errors import require
from hermes_env.sim.forecast import p_request_within, realised_next_use
from hermes_env.sim.policies import Autoscaler, register_autoscaler


def _idle(backend: Any, replica: Any) -> bool:
    return replica.idle and (replica.queue is backend.queue and not len(backend.queue) or not len(replica.queue))


class _IdleClock:
    """When each warm replica became idle (seen at decision points and ticks)."""

    def __init__(self) -> None:
        self.since: dict[tuple[str, int], float] = {}

    def idle_for(self, backend: Any, replica: Any, now: float) -> float:
        key = (backend.name, replica.index)
        if replica.state != WARM or not _idle(backend, replica):
            self.since.pop(key, None)
            return 0.0
        return now - self.since.setdefault(key, now)


def _serving(backend: Any) -> int:
    return sum(r.state in (WARM, LOADING) for r in backend.replicas)


def _waiting(backend: Any) -> int:
    return backend.routed_waiting()


KIND_RULES = ("first", "fastest", "cheapest", "efficient")


def kind_to_load(backend: Any, rule: str) -> str | None:
    """The replica kind a scale-out loads, among those with a cold or draining replica: ``first`` (None: the
    backend's own order, the only choice of a backend with one kind), ``fastest`` (most decode throughput),
    ``cheapest`` (lowest price per replica-hour) or ``efficient`` (lowest price per decode token; speeds from
    :meth:`~hermes_env.cluster.config.LLMBackendConfig.decode_throughput`)."""
    if rule == "first" or len(backend.cfg.kinds) == 1:
        return None
    kinds = [k for k in backend.cfg.kinds if backend.can_scale_up(k.name)]
    if not kinds:
        return None
    price = {k.name: k.price_per_gpu_hour * k.gpus_per_replica for k in kinds}
    speed = backend.cfg.decode_throughput
    score = {"fastest": lambda k: -speed(k), "cheapest": lambda k: price[k.name],
             "efficient": lambda k: price[k.name] / speed(k)}[rule]
    return min(kinds, key=score).name


@register_autoscaler("all")
class AllReplicas(Autoscaler):
    """Provisioning for the peak: every replica the GPU budget allows is loaded at the start and kept."""

    def start(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            while backend.can_scale_up():
                sim.scale_up(name, now)


@register_autoscaler("keepalive")
class KeepAlive(Autoscaler):
    """Serverless scaling: a replica is loaded only when a request finds none warm or loading, and a warm
    replica idle for ``keep_alive`` seconds (default 60) is released, down to zero (a fixed keep-alive, as
    serverless LLM platforms and ServerlessLLM's baseline keep an instance after its last request)."""

    tick = 1.0

    def __init__(self, keep_alive: float = 60.0) -> None:
        self.keep_alive = keep_alive
        self.clock = _IdleClock()

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            for replica in backend.replicas:
                if self.clock.idle_for(backend, replica, now) >= self.keep_alive:
                    sim.scale_down(name, now)


@register_autoscaler("queue_threshold")
class QueueThreshold(Autoscaler):
    """Scale on waiting and running requests (KEDA on vLLM's ``num_requests_waiting``, as the vLLM production
    stack autoscales): load a replica when more than ``up`` requests wait per warm or loading replica (one
    load in flight at a time, of the replica kind ``kind`` picks: :func:`kind_to_load`); drain one when, for
    ``cooldown`` seconds on end, nothing waits and the
    running requests would fit on one replica fewer at ``target`` requests each (KEDA's cooldown period,
    Knative's stable window); the last replica is drained when it has been idle for ``cooldown``."""

    tick = 1.0

    def __init__(self, up: float = 4.0, target: float = 32.0, cooldown: float = 30.0, kind: str = "first") -> None:
        require(kind in KIND_RULES, "autoscaler.kind", f"unknown rule {kind!r}", f"use one of {KIND_RULES}")
        self.up, self.target, self.cooldown, self.kind = up, target, cooldown, kind
        self.low_since: dict[str, float] = {}

    def scale_out(self, sim: Any, name: str, backend: Any, now: float) -> None:
        loading = any(r.state == LOADING for r in backend.replicas)
        if not loading and _waiting(backend) > self.up * max(_serving(backend), 1):
            sim.scale_up(name, now, kind_to_load(backend, self.kind))

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            self.scale_out(sim, name, backend, now)
            warm = [r for r in backend.replicas if r.state == WARM]
            running = sum(r._batch() for r in warm)
            low = bool(warm) and not _waiting(backend) and running <= self.target * (len(warm) - 1)
            if not low:
                self.low_since.pop(name, None)
                continue
            if now - self.low_since.setdefault(name, now) >= self.cooldown and self.may_release(sim, name, now):
                if len(warm) > 1 or running == 0:
                    sim.scale_down(name, now)
                self.low_since.pop(name, None)

    def may_release(self, sim: Any, name: str, now: float) -> bool:
        return True


@register_autoscaler("pdgraph")
class PDGraphAutoscaler(QueueThreshold):
    """Hermes's prewarm applied to LLM replicas: scale out and in as ``queue_threshold``; when no replica is
    warm or loading, load one as soon as the PDGraph forecast says a request to the backend is likely
    (probability ``warm_threshold``) within the replica's load time; release the last warm replica only
    when a request within ``keep_alive`` seconds is unlikely (under ``release_threshold``). The forecast
    is :func:`hermes_env.sim.forecast.p_request_within`, as for tool prewarm."""

    def __init__(self, up: float = 4.0, target: float = 32.0, cooldown: float = 30.0, warm_threshold: float = 0.5,
                 release_threshold: float = 0.1, keep_alive: float = 60.0, kind: str = "first") -> None:
        super().__init__(up, target, cooldown, kind)
        self.warm_threshold, self.release_threshold, self.keep_alive = warm_threshold, release_threshold, keep_alive

    @staticmethod
    def p_any(sim: Any, backend: str, horizon: float, now: float) -> float:
        return p_request_within(sim, backend, horizon, now)

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            if not _serving(backend) and self.p_any(sim, name, backend.cfg.load_time(), now) >= self.warm_threshold:
                sim.scale_up(name, now, kind_to_load(backend, self.kind))
        super().decide(sim, now)

    def may_release(self, sim: Any, name: str, now: float) -> bool:
        """The last replica goes only when a request within ``keep_alive`` is unlikely."""
        last = sum(r.state == WARM for r in sim.llm_backends[name].replicas) == 1
        return not last or self.p_any(sim, name, self.keep_alive, now) < self.release_threshold


@register_autoscaler("oracle")
class ClairvoyantAutoscaler(QueueThreshold):
    """A clairvoyant heuristic, not achievable and not a bound: it knows every future arrival and each
    application's realised stages. It scales out and in as ``queue_threshold``; when no replica is warm or
    loading it starts a load one load time (plus a tick) before the next request to the backend (the next
    arrival whose realised stages use it, plus its realised service before that stage, ignoring queueing;
    or an application in the system's next use); it releases the last replica, once idle, when no request
    is due within ``break_even`` seconds (default: its load time, after which holding it costs more GPU
    time than loading it again)."""

    tick = 0.5

    def __init__(self, up: float = 4.0, target: float = 32.0, cooldown: float = 30.0,
                 break_even: float | None = None, kind: str = "first") -> None:
        super().__init__(up, target, cooldown, kind)
        self.break_even = break_even

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            load = backend.cfg.load_time()
            due = realised_next_use(sim, name, now)
            if not _serving(backend) and due <= load + self.tick:  # warm in time, whatever the tick's phase
                sim.scale_up(name, now, kind_to_load(backend, self.kind))
            warm = [r for r in backend.replicas if r.state == WARM]
            keep = load if self.break_even is None else self.break_even
            if len(warm) == 1 and _idle(backend, warm[0]) and due > keep:
                sim.scale_down(name, now)
        super().decide(sim, now)

    def may_release(self, sim: Any, name: str, now: float) -> bool:
        """Only down to one replica: the last goes by the clairvoyant rule."""
        return sum(r.state == WARM for r in sim.llm_backends[name].replicas) > 1


# The scale-out rules on a backend of several replica kinds, by name: queue_threshold-efficient loads the kind
# with the lowest price per decode token, pdgraph-fastest the fastest, ... (on one kind they are the plain rules).
for _rule in KIND_RULES[1:]:
    for _name, _cls in (("queue_threshold", QueueThreshold), ("pdgraph", PDGraphAutoscaler)):
        register_autoscaler(f"{_name}-{_rule}")(functools.partial(_cls, kind=_rule))
