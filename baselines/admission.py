"""Reference admission policies: which arriving applications the cluster takes when it is overloaded.

Each registers under a name in the simulator's registry (``none`` is in the core), with its parameters
after colons. Every one protects the tiers that may not be refused (``critical`` by default): they are
always admitted, and a policy falls back to the next order its tier allows (defer, then reject, then
admit) when the one it prefers is not (``sim.may_defer``, ``sim.may_reject``).

* ``token_bucket:RATE:BURST``: a bucket of ``BURST`` tokens refilled at ``RATE`` per second; an
  application takes a token, or is rejected when none is left (whatever its tier, except the protected
  ones, which take a token when there is one and are admitted all the same).
* ``queue_threshold:S:T``: by the requests waiting at every backend (the queue length), rejects a
  ``sheddable`` application when ``S`` or more wait, defers a ``standard`` one when ``T`` or more wait (it
  is admitted when a later application's end finds fewer, rejected once its tier's ``max_defer`` is over).
* ``oracle:RATE:WINDOW``: clairvoyant (knows every application's realised demand and the future
  arrivals): per window of ``WINDOW`` seconds of arrivals, admits the protected applications, then the
  others by tier (``standard`` before ``sheddable``) and least realised work first, while the window's
  admitted work stays within ``RATE * WINDOW`` applications of the workload's mean realised work; rejects
  the rest at arrival. Work is the application's realised service at isolated service times (as the
  ``oracle`` scheduler prices it). It is a heuristic, not a bound: it knows how much work each
  application brings, not how batching will serve it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.sim.policies import (
    ADMIT,
    DEFER,
    REJECT,
    AdmissionPolicy,
    parse_numbers,
    register_admission,
)
from hermes_env.sim.workload import TIERS


def first_allowed(sim: Any, app: Any, now: float, order: int) -> int:
    """``order`` if ``app``'s tier allows it now, else the next allowed of defer, reject, admit."""
    for o in (order, DEFER, REJECT):
        if o == ADMIT or (o == DEFER and sim.may_defer(app, now)) or (o == REJECT and sim.may_reject(app)):
            return o
    return ADMIT


@register_admission("token_bucket")
class TokenBucket(AdmissionPolicy):
    """``token_bucket:RATE:BURST`` (see the module docstring). The bucket starts full."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, 0.0

    @classmethod
    def from_arg(cls, arg: str) -> TokenBucket:
        return cls(*parse_numbers(arg, "admission", "token_bucket:RATE:BURST (applications/s, tokens)", (2, 2)))

    def admit(self, sim: Any, app: Any, now: float) -> int:
        self.tokens = min(self.burst, self.tokens + self.rate * (now - self.last))
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return ADMIT
        return ADMIT if not sim.may_reject(app) else REJECT


@register_admission("queue_threshold")
class QueueThreshold(AdmissionPolicy):
    """``queue_threshold:S:T`` (see the module docstring)."""

    def __init__(self, sheddable: float, standard: float) -> None:
        self.limits = {"critical": math.inf, "standard": standard, "sheddable": sheddable}

    @classmethod
    def from_arg(cls, arg: str) -> QueueThreshold:
        return cls(*parse_numbers(arg, "admission", "queue_threshold:S:T (requests waiting: sheddable, standard)",
                                  (2, 2)))

    def admit(self, sim: Any, app: Any, now: float) -> int:
        if sum(sim.requests_waiting().values()) < self.limits[app.tier]:
            return ADMIT
        return first_allowed(sim, app, now, REJECT if app.tier == "sheddable" else DEFER)


@register_admission("oracle")
class ClairvoyantAdmission(AdmissionPolicy):
    """``oracle:RATE:WINDOW`` (see the module docstring): the whole plan is made before the run."""

    def __init__(self, rate: float, window: float) -> None:
        self.rate, self.window = rate, window
        self.admitted: set[int] = set()

    @classmethod
    def from_arg(cls, arg: str) -> ClairvoyantAdmission:
        return cls(*parse_numbers(arg, "admission", "oracle:RATE:WINDOW (applications/s, seconds)", (2, 2)))

    def bind(self, sim: Any) -> None:
        n = len(sim.arrival_times)
        cost = sim.cost
        work = np.array([sum(float(run.service_times(cost).sum()) for run in sim.peek_realisation(i))
                         for i in range(n)])
        mixes = sim.config.workload.applications
        budget = self.rate * self.window * float(work.mean())
        windows = np.floor(np.asarray(sim.arrival_times) / self.window).astype(int)
        for w in np.unique(windows):
            members = np.flatnonzero(windows == w)
            protected = [i for i in members if not sim.config.workload.tier(mixes[sim.app_mix[i]].tier).reject]
            others = sorted(set(members) - set(protected),
                            key=lambda i: (TIERS.index(mixes[sim.app_mix[i]].tier), work[i]))
            used = float(work[protected].sum()) if protected else 0.0
            self.admitted.update(int(i) for i in protected)
            for i in others:
                if used + work[i] <= budget:
                    used += work[i]
                    self.admitted.add(int(i))

    def admit(self, sim: Any, app: Any, now: float) -> int:
        return ADMIT if app.id in self.admitted else first_allowed(sim, app, now, REJECT)
