"""Reference prewarm policies (``none`` and ``always`` are in the core, ``hermes_env.sim.policies``).

Each acts through ``sim.prewarm(backend, now)`` / ``sim.release(backend, now)`` and may change a tool
backend's ``keep_alive``; it is called at every decision point and every ``tick`` seconds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.cluster.tool import COLD, WARM, WARMING
from hermes_env.sim.forecast import p_request_within, realised_next_use
from hermes_env.sim.policies import PrewarmPolicy, register_prewarm


def _idle_warm(backend: Any) -> bool:
    return any(i.state == WARM and i.busy == 0 for i in backend.instances)


@register_prewarm("keepalive")
class FixedKeepAlive(PrewarmPolicy):
    """Cold until requested, then kept warm ``keep_alive`` seconds after the last request (10 minutes:
    OpenWhisk's fixed keep-alive, the baseline of Shahrad et al., ATC 2020), whatever the cluster config
    says."""

    def __init__(self, keep_alive: float = 600.0) -> None:
        self.keep_alive = keep_alive

    def start(self, sim: Any, now: float) -> None:
        for backend in sim.tool_backends.values():
            backend.keep_alive = self.keep_alive


@register_prewarm("on_demand")
class OnDemand(FixedKeepAlive):
    """Cold until requested, released the moment it is idle (keep-alive 0): serverless scale-to-zero, the
    opposite extreme to ``always``. Where idle instances are priced near an application-second, it is the
    heuristic to beat (prewarm-contended-cost)."""

    def __init__(self) -> None:
        super().__init__(keep_alive=0.0)


@register_prewarm("hybrid")
class HybridHistogram(PrewarmPolicy):
    """The hybrid histogram policy of "Serverless in the Wild" (Shahrad et al., ATC 2020), per backend.

    It keeps a histogram of idle times (gaps between consecutive requests to the backend). With enough
    samples (``min_samples``) and a histogram that is not too spread (coefficient of variation of the
    bin counts at most ``max_cv``), the pre-warm window is the 5th percentile of idle times and the
    keep-alive the 99th percentile: after a request the instances are released, warmed again once the
    pre-warm window has passed, and released when the keep-alive window ends without a request. Otherwise
    (too few samples, or idle times out of the histogram's range) it falls back to a fixed keep-alive
    equal to the histogram range, as the paper's policy does. Checked every ``tick`` seconds."""

    def __init__(self, tick: float = 1.0, bins: int = 240, bin_width: float = 1.0, min_samples: int = 10,
                 max_cv: float = 2.0) -> None:
        self.tick, self.bins, self.bin_width = tick, bins, bin_width
        self.min_samples, self.max_cv = min_samples, max_cv

    def start(self, sim: Any, now: float) -> None:
        for backend in sim.tool_backends.values():
            if not backend.pinned:
                backend.keep_alive = math.inf  # the policy releases instances itself

    def _windows(self, arrivals: list[float]) -> tuple[float, float] | None:
        if len(arrivals) < self.min_samples + 1:
            return None
        gaps = np.diff(arrivals[-1000:])
        range_end = self.bins * self.bin_width
        in_range = gaps[gaps < range_end]
        if len(in_range) < self.min_samples or len(in_range) < 0.5 * len(gaps):
            return None
        counts = np.bincount((in_range / self.bin_width).astype(int), minlength=self.bins)
        if counts.std() / max(counts.mean(), 1e-12) > self.max_cv * math.sqrt(self.bins):
            return None
        return float(np.percentile(in_range, 5)), float(np.percentile(in_range, 99))

    def decide(self, sim: Any, now: float) -> None:
        range_end = self.bins * self.bin_width
        for name, backend in sim.tool_backends.items():
            if backend.pinned or not backend.arrival_times:
                continue
            idle = now - backend.arrival_times[-1]
            windows = self._windows(backend.arrival_times)
            if windows is None:  # fixed keep-alive over the histogram range
                if idle > range_end and _idle_warm(backend):
                    sim.release(name, now)
                continue
            prewarm, keep = windows
            busy = any(i.busy for i in backend.instances) or len(backend.queue)
            if busy:
                continue
            if idle < prewarm or idle > keep:
                while _idle_warm(backend):  # outside the window: hold nothing warm
                    sim.release(name, now)
            elif not any(i.state in (WARM, WARMING) for i in backend.instances):
                sim.prewarm(name, now)


@register_prewarm("pdgraph")
class PDGraphPrewarm(PrewarmPolicy):
    """Hermes's prewarm from PDGraphs.

    For each tool backend, the probability that some application requests it within ``t`` seconds
    (:func:`hermes_env.sim.forecast.p_request_within`). The backend is warmed when
    no instance is warm or warming and ``P_any(mean cold start)`` reaches ``warm_threshold`` (a request is
    likely before a warm-up started now would finish); an idle warm instance is released when
    ``P_any(keep_alive)`` falls under ``release_threshold`` and nothing waits. Backend keep-alives are left
    to this policy. Called at every decision point and every ``tick`` seconds."""

    def __init__(self, warm_threshold: float = 0.5, release_threshold: float = 0.1, keep_alive: float = 60.0,
                 tick: float | None = 1.0) -> None:
        self.warm_threshold, self.release_threshold = warm_threshold, release_threshold
        self.keep_alive, self.tick = keep_alive, tick

    def start(self, sim: Any, now: float) -> None:
        for backend in sim.tool_backends.values():
            if not backend.pinned:
                backend.keep_alive = math.inf

    @staticmethod
    def p_any(sim: Any, backend: str, horizon: float, now: float) -> float:
        return p_request_within(sim, backend, horizon, now)

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.tool_backends.items():
            if backend.pinned:
                continue
            cold_start = backend.cfg.cold_start.mean if backend.cfg.cold_start is not None else 0.0
            states = [i.state for i in backend.instances]
            if WARM not in states and WARMING not in states:
                if self.p_any(sim, name, cold_start, now) >= self.warm_threshold:
                    sim.prewarm(name, now)
            elif _idle_warm(backend) and not len(backend.queue):
                if self.p_any(sim, name, self.keep_alive, now) < self.release_threshold:
                    sim.release(name, now)


@register_prewarm("oracle")
class ClairvoyantPrewarm(PrewarmPolicy):
    """A clairvoyant heuristic, not achievable and not a bound: it knows every future arrival and each
    application's realised stages (:func:`~hermes_env.sim.forecast.realised_next_use`). A cold tool
    backend starts a warm-up one mean cold start (plus a tick) before its next request; an idle warm one is
    released whenever that request is further away than a warm-up, since it can be warmed again in time."""

    def __init__(self, tick: float | None = 0.5) -> None:
        self.tick = tick

    def start(self, sim: Any, now: float) -> None:
        for backend in sim.tool_backends.values():
            if not backend.pinned:
                backend.keep_alive = math.inf

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.tool_backends.items():
            if backend.pinned:
                continue
            due = realised_next_use(sim, name, now)
            warm_up = (backend.cfg.cold_start.mean if backend.cfg.cold_start is not None else 0.0) + (self.tick or 0.0)
            states = [i.state for i in backend.instances]
            if due <= warm_up and WARM not in states and WARMING not in states and COLD in states:
                sim.prewarm(name, now)
            elif due > warm_up + (self.tick or 0.0) and _idle_warm(backend) and not len(backend.queue):
                sim.release(name, now)
