"""Written schedulers (docs/tasks.md, "Written policies"): score one with
``hermes-env evaluate --task sched-contended-mean --policy examples/policies/schedulers.py:ShortestExpectedRemaining``.

A scheduler subclasses :class:`~hermes_env.sim.policies.SchedulingPolicy` and defines ``key(request, now)``: a
priority fixed when the request joins a queue, lower first (each queue is a heap on it); ``bind(sim)`` is
called once before the run, so the policy can read the simulation (its applications' PDGraph analyses).
"""

from __future__ import annotations

from typing import Any

from hermes_env.sim.policies import SchedulingPolicy


class FirstComeFirstServed(SchedulingPolicy):
    """The order in which requests first reached their backend (a preempted request keeps its place): the
    built-in ``fcfs``, written here; its runs are the same, bit for bit."""

    def key(self, request: Any, now: float) -> float:
        return request.first_enqueued


class ShortestExpectedRemaining(SchedulingPolicy):
    """The application with the least expected remaining service first: the mean of its PDGraph's
    remaining-demand distribution at its current stage (its unfinished copies and loops counted), read when
    the stage's request joins the queue; ties to the earlier request. Non-clairvoyant: it reads the
    application's model, never its realised demand. (The built-in ``sjf`` reads the same.)"""

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def key(self, request: Any, now: float) -> tuple[float, float]:
        app = request.app
        remaining = self.sim.demand_model(app.template).remaining_demand(app.progress)
        return (remaining.mean, request.first_enqueued)
