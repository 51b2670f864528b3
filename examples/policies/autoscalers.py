"""Written autoscalers (docs/tasks.md, "Written policies"): score one with
``hermes-env evaluate --task autoscaling-cycles-cost --policy examples/policies/autoscalers.py:BacklogStep``.

An autoscaler subclasses :class:`~hermes_env.sim.policies.Autoscaler` and defines ``start(sim, now)`` (time 0)
and/or ``decide(sim, now)``, called every ``tick`` seconds and, when ``reacts`` is True, at every decision
point (an arrival, a stage issued, an application's end). It orders through ``sim.scale_up(backend, now)`` and
``sim.scale_down(backend, now)`` and reads ``sim.llm_backends`` (each backend's ``replicas``, their ``state``,
``outstanding`` and ``idle``; ``routed_waiting()``; ``can_scale_up()`` / ``can_scale_down()``).
"""

from __future__ import annotations

from typing import Any

from hermes_env.cluster.llm import LOADING, WARM
from hermes_env.sim.policies import Autoscaler


class BacklogStep(Autoscaler):
    """Every second: load a replica when more than ``up`` requests wait per replica warm or loading (one load
    at a time); release one when every warm replica has been idle, nothing waiting, for ``idle_for`` seconds
    on end, keeping ``floor`` replicas warm."""

    tick = 1.0
    reacts = False
    up, idle_for, floor = 4.0, 20.0, 1

    def __init__(self) -> None:
        self.quiet_since: dict[str, float] = {}

    def decide(self, sim: Any, now: float) -> None:
        for name, backend in sim.llm_backends.items():
            serving = [r for r in backend.replicas if r.state in (WARM, LOADING)]
            waiting = backend.routed_waiting()
            if not any(r.state == LOADING for r in serving) and waiting > self.up * max(len(serving), 1):
                sim.scale_up(name, now)
            warm = [r for r in backend.replicas if r.state == WARM]
            if waiting or not warm or not all(r.idle for r in warm):
                self.quiet_since.pop(name, None)
                continue
            if now - self.quiet_since.setdefault(name, now) >= self.idle_for and len(warm) > self.floor:
                sim.scale_down(name, now)
                self.quiet_since.pop(name, None)
