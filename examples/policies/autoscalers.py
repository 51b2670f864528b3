"""Written autoscalers (docs/tasks.md, "Written policies"): score one with
``hermes-env evaluate --task autoscaling-cycles-cost --policy examples/policies/autoscalers.py:BacklogStep``.

An autoscaler subclasses :class:`~hermes_env.sim.policies.Autoscaler` and defines ``start(sim, now)`` (time 0)
and/or ``decide(sim, now)``, called every ``tick`` seconds and, when ``reacts`` is True, at every decision
point (an arrival, a stage issued, an application's end). It orders through ``sim.scale_up(backend, now)`` and
``sim.scale_down(backend, now)`` and reads ``sim.llm_backends`` (each backend's ``replicas``, their ``state``,
``outstanding`` and ``idle``; ``queue``, the shared queue; ``routed_waiting()``; ``can_scale_up()`` /
``can_scale_down()``).
"""

from __future__ import annotations

from typing import Any

from hermes_env.cluster.llm import LOADING, WARM
from hermes_env.sim.policies import Autoscaler


class BacklogStep(Autoscaler):
    """Every second, per LLM backend: load a replica when more than ``high`` requests are outstanding (waiting
    or in a batch) per replica warm or loading, one load at a time; release the least loaded warm replica when,
    for ``cooldown`` seconds on end, the outstanding requests would fit at ``low`` per replica on one replica
    fewer (the last one only once nothing is outstanding: scale to zero, the backend reloads on demand)."""

    tick = 1.0
    reacts = False
    high, low, cooldown = 16.0, 8.0, 20.0

    def __init__(self) -> None:
        self.low_since: dict[str, float] = {}

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            serving = [r for r in backend.replicas if r.state in (WARM, LOADING)]
            outstanding = len(backend.queue) + sum(r.outstanding for r in backend.replicas)  # shared queue too
            if not any(r.state == LOADING for r in serving) and outstanding > self.high * max(len(serving), 1):
                sim.scale_up(name, now)
            warm = sum(r.state == WARM for r in backend.replicas)
            if not warm or outstanding > self.low * (warm - 1):
                self.low_since.pop(name, None)
                continue
            if now - self.low_since.setdefault(name, now) >= self.cooldown:
                sim.scale_down(name, now)
                self.low_since.pop(name, None)
