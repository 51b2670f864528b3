"""Demand forecasts from PDGraphs: when will some application next request a backend?

Hermes prewarms a cold backend when its PDGraphs say a request is likely before a warm-up started now
would finish. :func:`p_request_within` is that forecast, used by the PDGraph prewarm policy and autoscaler
(``baselines``) and by the environments' backend features alike:

- every application in the system forecasts, from its PDGraph at its current progress, the probability
  that it requests the backend within ``t`` seconds of its own service;
- applications yet to arrive add ``rate * t * sum_T w_T P_T(use within t)``: Poisson arrivals at the rate
  seen so far, template shares ``w_T``, each new application's forecast from its entry stage (an upper
  bound, as if it arrived now);

so ``P(any within t) = 1 - prod_apps (1 - P_app(t)) * exp(-expected new requests)``.

:func:`realised_next_use` is its clairvoyant twin, for the oracles: the seconds until the next request to
a backend from the realised stages of the applications in the system and of every future arrival.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.pdgraph.demand import Progress


def within(use: Any, horizon: float) -> float:
    """P(the next use comes within ``horizon``) of a :class:`~hermes_env.pdgraph.demand.NextUse`."""
    return use.within(horizon)


def p_request_within(sim: Any, backend: str, horizon: float, now: float) -> float:
    return float(p_requests_within(sim, ((backend, horizon),), now)[0])


def p_requests_within(sim: Any, pairs: tuple[tuple[str, float], ...], now: float) -> np.ndarray:
    """:func:`p_request_within` for several ``(backend, horizon)`` pairs at once (the observation's
    columns): one pass over the applications in the system, each application's miss probabilities read
    from a table kept per pairs and (template, state, copies pending) on the simulation."""
    table = sim.forecasts.setdefault(pairs, {})
    rows = [_app_miss(sim, app, pairs, table) for app in sim.active.values()]
    # one reduction over the stacked rows multiplies them in the loop's order: the same floats, less overhead
    miss = np.prod(rows, axis=0) if rows else np.ones(len(pairs))
    if ("new", pairs) not in sim.forecasts:  # the mix is fixed: new arrivals' forecast is computed once
        mix = sim.config.workload.applications
        total = sum(m.weight for m in mix)
        sim.forecasts["new", pairs] = np.array([
            sum(m.weight / total * within(sim.demand_model(m.template).next_use(Progress(0, 0.0, None), b), h)
                for m in mix) * h for b, h in pairs])
    rate = sim.arrived / now if now > 0 else 0.0
    return 1.0 - miss * np.exp(-rate * sim.forecasts["new", pairs])


def _app_miss(sim: Any, app: Any, pairs: tuple[tuple[str, float], ...], table: dict) -> np.ndarray:
    """P(``app`` does not request each pair's backend within its horizon), from its PDGraph."""
    key = (app.template, app.current.state, max(app.pending, 1))
    if key not in table:
        model, progress = sim.demand_model(app.template), Progress(key[1], 0.0, key[2])
        table[key] = np.array([1.0 - within(model.next_use(progress, b), h) for b, h in pairs])
    return table[key]


def realised_lead(runs: Any, backend: str, cost: Any) -> float:
    """Realised service before the first of ``runs`` on ``backend`` (inf if none is)."""
    elapsed = 0.0
    for run in runs:
        if run.backend == backend:
            return elapsed
        elapsed += float(run.service_times(cost).max())  # copies run in parallel
    return math.inf


def realised_next_use(sim: Any, backend: str, now: float) -> float:
    """Seconds until the next request to ``backend``, knowing every application's realised stages and every
    future arrival (service alone, no queueing); inf if none comes. An application's current stage counts:
    it is being issued or served, so the backend is in use now."""
    soonest = min((realised_lead(app.runs[app.cursor:], backend, sim.cost) for app in sim.active.values()),
                  default=math.inf)
    times, i = sim.arrival_times, sim.arrived
    while i < len(times) and times[i] - now < soonest:
        soonest = min(soonest, times[i] - now + realised_lead(sim.peek_realisation(i), backend, sim.cost))
        i += 1
    return soonest
