"""Reference scheduling policies. Each registers under a name in the simulator's registry (FCFS,
application-level FCFS and Gittins are in the core, ``hermes_env.sim.policies``) and works both in a
headless simulation and, through :class:`baselines.adapters.EnvPolicy`, on the Gymnasium environments.

Where a paper leaves a detail open, the docstring says which reading is implemented.
"""

from __future__ import annotations

import math
from typing import Any

from hermes_env.cluster.request import Request
from hermes_env.errors import require
from hermes_env.sim.policies import SchedulingPolicy, register_scheduler, register_scheduler_family


class _DemandAware(SchedulingPolicy):
    """Gives subclasses the application's PDGraph analysis at its current progress."""

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def remaining(self, request: Request) -> Any:
        app = request.app
        return self.sim.demand_model(app.template).remaining_demand(app.progress)


@register_scheduler("sjf")
class ShortestJobFirst(_DemandAware):
    """Shortest expected job first: the application with the least expected remaining demand (the mean
    of its PDGraph remaining-demand distribution at its current stage), read when the stage is issued."""

    def key(self, request: Request, now: float) -> tuple[float, float]:
        return (self.remaining(request).mean, request.first_enqueued)


@register_scheduler("llmsched")
class LLMSched(_DemandAware):
    """LLMSched (arXiv 2504.03444): mix uncertainty reduction with a completion-time-efficient rank.

    Reading implemented: the rank is the expected remaining demand divided by ``1 + beta * bits``, where
    ``bits`` is the structural uncertainty (entropy of the remaining path) that the application's
    current stage resolves when it runs. Short applications go first, and among similar ones, those whose
    next stage settles the most about their future (a branch, a loop exit, a fan-out width), which makes
    later decisions better informed. ``beta = 1``."""

    def __init__(self, beta: float = 1.0) -> None:
        self.beta = beta

    def key(self, request: Request, now: float) -> tuple[float, float]:
        app = request.app
        model = self.sim.demand_model(app.template)
        bits = model.uncertainty_reduction(app.progress).get(app.current.stage, 0.0)
        return (self.remaining(request).mean / (1.0 + self.beta * bits), request.first_enqueued)


@register_scheduler("edf")
class EarliestDeadlineFirst(SchedulingPolicy):
    """Earliest deadline first on application SLOs (arrival + SLO); applications without an SLO come
    after all with one, in arrival order."""

    def key(self, request: Request, now: float) -> tuple[float, float]:
        app = request.app
        return (app.arrival + app.mix.slo, request.first_enqueued)


@register_scheduler("bros")
class BROS(SchedulingPolicy):
    """BROS (arXiv 2504.09590): real-time requests ahead of best-effort ones, with a dynamic priority
    that protects best-effort throughput, and real-time requests allowed to take KV memory from
    best-effort ones.

    Reading implemented: at each decision the oldest best-effort request that has waited longer than
    ``aging`` seconds goes first (so best-effort work cannot starve); otherwise the real-time request with
    the earliest deadline; otherwise the oldest best-effort request. When a real-time request does not
    fit the KV cache, running best-effort requests are preempted to make room (bidirectional KV
    management reduced to its effect on admission). ``aging = 30`` s."""

    def __init__(self, aging: float = 30.0) -> None:
        self.aging = aging

    def select(self, backend: str, waiting: list[Request], now: float) -> int:
        best_effort = [i for i, r in enumerate(waiting) if r.app.app_class != "real_time"]
        starved = [i for i in best_effort if now - waiting[i].first_enqueued > self.aging]
        if starved:
            return min(starved, key=lambda i: waiting[i].first_enqueued)
        real_time = [i for i, r in enumerate(waiting) if r.app.app_class == "real_time"]
        if real_time:
            return min(real_time, key=lambda i: (waiting[i].app.arrival + waiting[i].app.mix.slo,
                                                 waiting[i].first_enqueued))
        return min(best_effort, key=lambda i: waiting[i].first_enqueued)

    @staticmethod
    def may_preempt(head: Request, victim: Request) -> bool:
        return head.app.app_class == "real_time" and victim.app.app_class != "real_time"


@register_scheduler("calvo")
class CALVO(_DemandAware):
    """CALVO: the KV-loading delay is part of each request's service cost.

    Reading implemented: shortest request cost first, where the cost of an LLM request is the time to
    fetch its reusable prefix from the prefix cache (0 without one) plus its expected isolated compute
    (prefill of its known prompt, then the expected output length of its stage in batch-1 steps); a tool
    request's cost is its stage's expected service time."""

    def key(self, request: Request, now: float) -> tuple[float, float]:
        app = request.app
        model = self.sim.demand_model(app.template)
        compute = model.lattice.mean(model.copy_pmf[app.current.state])
        backend = self.sim.llm_backends.get(request.backend)
        load = backend.replicas[0].load_time(request) if backend is not None else 0.0
        return (load + compute, request.first_enqueued)


@register_scheduler("oracle")
class ClairvoyantSRPT(SchedulingPolicy):
    """A clairvoyant heuristic, not achievable and not a bound: shortest remaining processing time on the
    application's realised remaining demand (its remaining stages' actual service, LLM stages at their
    isolated service time). Batching makes isolated service a poor ranking at times, so Gittins can beat it
    (docs/tasks.md); the bound is the relaxation of ``Simulation.lower_bound``."""

    def bind(self, sim: Any) -> None:
        self.cost = sim.cost

    def key(self, request: Request, now: float) -> tuple[float, float]:
        app = request.app
        remaining = sum(float(run.service_times(self.cost).sum()) for run in app.runs[app.cursor:])
        return (remaining if math.isfinite(remaining) else math.inf, request.first_enqueued)


class BlackBox(SchedulingPolicy):
    """The serving systems Hermes compares against, which treat an application as a black box: an
    application-level admission gate lets at most ``max_active`` applications in at once (in arrival order;
    the others wait before their first stage, and their completion time counts the wait), and the backends
    serve requests first come, first served (``fcfs``), or round robin among the admitted applications
    (``rr``: a request of the application that has had the fewest requests served goes first). It knows
    nothing of an application's structure. ``blackbox:N`` and ``blackbox-rr:N`` name it."""

    def __init__(self, max_active: int, order: str = "fcfs") -> None:
        self.max_active, self.order = max_active, order
        self.name = f"blackbox{'-rr' if order == 'rr' else ''}:{max_active}"
        self.served: dict[int, int] = {}

    def key(self, request: Request, now: float) -> Any:
        if self.order == "fcfs":
            return request.first_enqueued
        app_id = request.app.id
        turns = self.served.get(app_id, 0)
        self.served[app_id] = turns + 1
        return (turns, request.first_enqueued)


def _black_box(order: str) -> Any:
    def factory(arg: str) -> BlackBox:
        require(arg.isdigit() and int(arg) >= 1, "scheduler", f"blackbox needs the gate's size, got {arg!r}",
                "name it blackbox:N (or blackbox-rr:N) with N >= 1 applications active at once")
        return BlackBox(int(arg), order)
    return factory


register_scheduler_family("blackbox")(_black_box("fcfs"))
register_scheduler_family("blackbox-rr")(_black_box("rr"))
