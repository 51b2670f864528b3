"""Planner baselines: rollout and search over copies of the simulation, the achievable references.

``rollout:BASE`` (any registered heuristic of the decision's kind: ``rollout:gittins`` a scheduler,
``rollout:prefix_affinity`` a router, ``rollout:on_demand`` a prewarm policy, ``rollout:queue_threshold``
an autoscaler, ``rollout:queue_threshold:8:16`` an admission policy, ``rollout:pdgraph`` a retention
policy, ``rollout:llumnix`` a migration policy) decides as BASE does except at its *planning* decisions,
where it copies the simulation (:meth:`~hermes_env.sim.simulator.Simulation.snapshot`), tries each candidate
action, rolls each copy out
with BASE for ``horizon`` simulated seconds and keeps the cheapest on average over ``futures`` sampled
futures (Bertsekas's rollout algorithm: one step of policy improvement over BASE). The futures are drawn
with :meth:`~hermes_env.sim.simulator.Simulation.resample_future` (what a non-clairvoyant policy cannot
know, from the PDGraphs the schedulers believe), the same ones for every candidate (common random
numbers). ``search:BASE`` looks two planning decisions ahead: each candidate, then at the next planning
decision within the horizon the best of its candidates on the same future, then BASE (hindsight
optimisation over sampled futures: iterated rollout of depth 2). ``oracle-rollout:BASE`` and
``oracle-search:BASE`` plan on the true future (one copy, no resampling): clairvoyant references, not
achievable; with an infinite horizon the first is never worse than BASE on the same workload (policy
improvement).

Options follow an ``@``: ``rollout:gittins@futures=8,horizon=30,width=3,every=0,seed=0``. ``width``: the
candidates tried (scheduling: BASE's first choices in its order; routing: every replica; prewarm and
scaling: BASE's own orders, nothing, then one warm/release (load/release) order per backend, one load order
per replica kind where a backend has several; admission: BASE's order, then the others of admit, defer and
reject the application's tier allows; retention: BASE's plan at the tool boundary, then each of
:data:`~hermes_env.sim.retention.RETAIN_ACTIONS`; migration: BASE's own moves, no move, then one move per
pair of replicas that can make one, the busiest source and the freest target first); ``every``:
seconds between planning decisions (the others are BASE's), so that frequent decision points (prewarm
and autoscalers that react to every arrival) cost a bounded number of plans. The rollout cost is the
environments' reward: applications in the system integrated over time, plus ``price``'s weights times
the idle warm tool cost, the SLO misses (with the applications still in the system past their SLO at the
horizon: certain misses) and the GPU-seconds (``hermes_env.tasks`` sets them from a task).
A planner may take the heuristic part of an environment: inside its rollouts the agent's own decisions
take the environment's fallback (the oldest request, the first replica, no order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.errors import require
from hermes_env.sim.policies import (
    ADMIT,
    DEFER,
    REJECT,
    AdmissionPolicy,
    Autoscaler,
    MigrationPolicy,
    PrewarmPolicy,
    Router,
    SchedulingPolicy,
    make_admission,
    make_autoscaler,
    make_migration,
    make_prewarm,
    make_retention,
    make_router,
    make_scheduler,
    register_family,
)
from hermes_env.sim.retention import RETAIN_ACTIONS, ExternalRetention, RetentionPolicy
from hermes_env.sim.simulator import Decision, Simulation

KINDS = {"scheduler": "schedule", "router": "route", "prewarm": "prewarm", "autoscaler": "scale",
         "migration": "migrate", "admission": "admit", "retention": "retain"}
MAKERS = {"scheduler": make_scheduler, "router": make_router, "prewarm": make_prewarm, "autoscaler": make_autoscaler,
          "migration": make_migration, "admission": make_admission, "retention": make_retention}
DEFAULTS = {  # futures, horizon (s), width, every (s)
    "schedule": {"futures": 4, "horizon": 60.0, "width": 3, "every": 0.0},
    "route": {"futures": 4, "horizon": 60.0, "width": 8, "every": 0.0},
    "prewarm": {"futures": 4, "horizon": 60.0, "width": 6, "every": 5.0},
    "scale": {"futures": 4, "horizon": 60.0, "width": 4, "every": 5.0},
    "migrate": {"futures": 4, "horizon": 30.0, "width": 4, "every": 1.0},
    "admit": {"futures": 4, "horizon": 60.0, "width": 3, "every": 0.0},
    "retain": {"futures": 4, "horizon": 60.0, "width": 6, "every": 0.0},
}
CHOICES = ("schedule", "route", "admit", "retain")  # kinds settled by one choice that BASE proposes first
BASE, NOTHING = "base", "nothing"


def parse_options(spec: str, decision: str) -> tuple[str, dict[str, float]]:
    """``BASE@key=value,...`` -> (BASE, options with the decision kind's defaults filled in)."""
    base, _, raw = spec.partition("@")
    options: dict[str, float] = dict(DEFAULTS[decision])
    options["seed"] = 0
    for item in filter(None, raw.split(",")):
        key, _, value = item.partition("=")
        require(key in options, "planner option", f"unknown option {key!r} in {spec!r}", f"use {sorted(options)}")
        try:
            options[key] = float(value)
        except ValueError:
            require(False, f"planner option {key}", f"must be a number, got {value!r}")
    require(options["futures"] >= 1 and options["width"] >= 1 and options["horizon"] > 0 and options["every"] >= 0,
            "planner options", f"{spec!r}: futures and width must be at least 1, horizon positive, every >= 0")
    return base, options


class Planner:
    """The machinery shared by the seven kinds (see the module docstring)."""

    external = True

    def __init__(self, kind: str, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        self.kind, self.decision = kind, KINDS[kind]
        base, options = parse_options(spec, self.decision)
        require(base.partition(":")[0] not in FAMILIES, "planner", f"{spec!r}: a planner's base must be a heuristic",
                "name a registered heuristic")
        self.base = MAKERS[kind](base)
        self.futures = 1 if clairvoyant else int(options["futures"])
        self.horizon, self.width, self.every = options["horizon"], int(options["width"]), options["every"]
        self.seed, self.depth, self.clairvoyant = int(options["seed"]), depth, clairvoyant
        prefix = ("oracle-" if clairvoyant else "") + ("search" if depth > 1 else "rollout")
        self.name = f"{prefix}:{spec}"
        self.weights = (1.0, 0.0, 0.0, 0.0)  # area, idle warm cost, SLO misses, GPU-seconds
        self.plans = 0  # planning decisions made (each one's futures are drawn from its own stream)
        self._next_plan = 0.0

    def price(self, idle: float = 0.0, slo_miss: float = 0.0, gpu: float = 0.0, area: float = 1.0) -> Planner:
        """The rollout cost's weights (an environment's ``idle_cost_weight``, ``slo_miss_weight``,
        ``gpu_cost_weight``; ``area`` weighs the applications in the system over time)."""
        self.weights = (area, idle, slo_miss, gpu)
        return self

    # -- settling a decision --------------------------------------------------------------------------
    def act(self, sim: Simulation, d: Decision) -> None:
        now = sim.engine.now
        if now < self._next_plan:
            self.follow(sim, d)
            return
        candidates, costs = self.plan(sim, d)
        best = int(np.argmin(costs))  # ties go to the first: BASE's own choice
        self._apply(sim, d, candidates[best], proposed=True)

    def plan(self, sim: Simulation, d: Decision) -> tuple[list[Any], np.ndarray]:
        """The candidates at ``sim``'s pending decision ``d`` (BASE's first) and each one's rollout cost summed
        over the futures (one candidate: not planned, cost 0); ``sim`` is left as it was. A distilled policy's
        teacher (agents/distill.py) asks this on a copy of an environment's simulation."""
        now = sim.engine.now
        snap = sim.snapshot()  # before BASE is asked (a router's turn), so that each copy asks it once
        candidates = self.candidates(sim, d)
        costs = np.zeros(len(candidates))
        if len(candidates) < 2:
            return candidates, costs
        self._next_plan = now + self.every
        self.plans += 1
        for j in range(self.futures):
            for k, action in enumerate(candidates):
                branch = Simulation.from_snapshot(snap)
                if not self.clairvoyant:  # future j is the same for every candidate: common random numbers
                    self.resample(branch, np.random.default_rng([self.seed, self.plans, j]))
                costs[k] += self._cost(branch, action, now + self.horizon, self.depth)
        return candidates, costs

    def resample(self, branch: Simulation, rng: np.random.Generator) -> None:
        """Draw a future a non-clairvoyant policy cannot tell from the true one, on ``branch``."""
        branch.resample_future(rng)

    def follow(self, sim: Simulation, d: Decision) -> None:
        """Settle ``d`` as BASE would."""
        self._apply(sim, d, self.candidates(sim, d)[0] if d.kind in CHOICES else BASE, proposed=True)

    def candidates(self, sim: Simulation, d: Decision) -> list[Any]:
        """The options tried, BASE's first (asking BASE: call once per decision, see ``_apply``)."""
        now = sim.engine.now
        if d.kind == "schedule":
            waiting = d.queue.waiting
            if hasattr(self.base, "select"):
                first = int(self.base.select(d.backend, list(waiting), now))
                order = [first, *(i for i in range(len(waiting)) if i != first)]
            else:
                order = sorted(range(len(waiting)), key=lambda i: (waiting[i].key, waiting[i].seq))
            return [waiting[i].seq for i in order[:self.width]]
        if d.kind == "route":
            backend = sim.llm_backends[d.backend]
            first = self.base.route(backend, d.request, d.candidates, now).index
            return [first, *(r.index for r in d.candidates if r.index != first)][:self.width]
        if d.kind == "admit":
            app = d.app
            first = self.base.admit(sim, app, now)
            allowed = (ADMIT, *(DEFER,) * sim.may_defer(app, now), *(REJECT,) * sim.may_reject(app))
            return [first, *(o for o in allowed if o != first)][:self.width]
        if d.kind == "retain":
            replica, ctx = d.candidates[0], d.context
            first = self.base.at_boundary(replica, ctx, now)
            memo, ctx.memo = ctx.memo, self.agent.next_use(replica, ctx)  # the forecast the agent's plans read
            plans = [self.agent.plan(replica, ctx, a, now) for a in range(len(RETAIN_ACTIONS))]
            ctx.memo = memo  # BASE's, for what follows the plan
            return [first, *(p for p in plans if p != first)][:self.width]
        orders: list[Any] = [BASE, NOTHING]
        if d.kind == "migrate":
            backend = sim.llm_backends[d.backend]
            pairs = [(s, t) for s in backend.replicas for t in backend.replicas
                     if backend.migrator.pick(s, t) is not None]
            pairs.sort(key=lambda p: (p[0].free_tokens() - p[1].free_tokens(), p[0].index, p[1].index))
            return (orders + [("move", s.index, t.index) for s, t in pairs])[:self.width]
        if d.kind == "prewarm":
            for name, b in sim.tool_backends.items():
                orders += [("warm", name)] * b.can_prewarm() + [("release", name)] * b.can_release()
        else:
            for name, b in sim.llm_backends.items():
                kinds = [k.name for k in b.cfg.kinds] if len(b.cfg.kinds) > 1 else [None]
                orders += [("load", name, k) for k in kinds if b.can_scale_up(k)]
                orders += [("release", name)] * b.can_scale_down()
        return orders[:self.width]

    def _apply(self, sim: Simulation, d: Decision, action: Any, proposed: bool = False) -> None:
        """Settle ``d`` with ``action`` on ``sim`` (a copy asks BASE first, as the original did)."""
        now = sim.engine.now
        owner = sim.owner(d)
        if not proposed and d.kind in CHOICES:
            owner.candidates(sim, d)  # BASE's state (a turn, a random draw, tokens) moves as in the original
        if d.kind == "schedule":
            sim.resolve(next(i for i, r in enumerate(d.queue.waiting) if r.seq == action))
        elif d.kind == "route":
            sim.resolve(next(i for i, r in enumerate(d.candidates) if r.index == action))
        elif d.kind in ("admit", "retain"):
            sim.resolve(action)  # an order (ADMIT, DEFER, REJECT) or a retention Plan
        else:
            if d.kind == "migrate":
                if action == BASE:
                    owner.base.decide(sim, now)
                sim.resolve(action[1:] if isinstance(action, tuple) else None)
                return
            if action == BASE:
                owner.base.decide(sim, now)
            elif action != NOTHING:
                verb, name, *kind = action
                if verb == "load":
                    sim.scale_up(name, now, *kind)
                else:
                    (sim.release if d.kind == "prewarm" else sim.scale_down)(name, now)
            sim.resolve()

    # -- rollouts -------------------------------------------------------------------------------------
    def _cost(self, sim: Simulation, action: Any, until: float, depth: int) -> float:
        """The cost of ``action`` at ``sim``'s pending decision: then BASE (or, ``depth`` > 1, the best
        candidate at the next planning decision) until ``until``."""
        self._apply(sim, sim.pending[0], action)
        while True:
            if not sim.pending:  # (the engine runs an event before it checks stop)
                sim.engine.run(until, stop=lambda: bool(sim.pending) or sim._finished())
            if not sim.pending:
                return self._price(sim, until)
            d = sim.pending[0]
            owner = sim.owner(d)
            if owner is None:  # an agent's decision (the planner is a heuristic part of an environment)
                sim.resolve(0 if d.kind in ("schedule", "route") else None)  # the oldest, the first, no order
                continue
            if depth > 1 and isinstance(owner, Planner) and owner.decision == self.decision and \
                    sim.engine.now >= owner._next_plan:
                owner._next_plan = sim.engine.now + self.every
                snap = sim.snapshot()
                options = owner.candidates(sim, d)
                return min(self._cost(Simulation.from_snapshot(snap), a, until, depth - 1) for a in options)
            owner.follow(sim, d)

    def _price(self, sim: Simulation, until: float) -> float:
        """The weighted totals at ``until`` (at the end, if the run ends before). An application still in the
        system past its SLO at ``until`` counts as a miss: it will miss for certain, and counting misses only
        at completion would make an admission whose miss falls beyond the horizon look free beside a rejection
        (a miss at once)."""
        end = sim.engine.now if sim._finished() or math.isinf(until) else until
        area, idle, missed, gpu = sim.totals(end)
        if self.weights[2]:
            missed += sum(end - app.arrival > app.mix.slo for app in sim.active.values())
        return float(np.dot(self.weights, (area, idle, missed, gpu)))


class PlanningScheduler(Planner, SchedulingPolicy):
    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("scheduler", spec, depth, clairvoyant)
        if hasattr(self.base, "key"):
            self.key = self.base.key  # each request's key is fixed when it joins a queue, as under BASE
        for attr in ("may_preempt", "max_active"):
            if hasattr(self.base, attr):
                setattr(self, attr, getattr(self.base, attr))

    def bind(self, sim: Any) -> None:
        self.base.bind(sim)


class PlanningRouter(Planner, Router):
    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("router", spec, depth, clairvoyant)

    def bind(self, sim: Any) -> None:
        self.sim = sim
        self.base.bind(sim)

    def route(self, backend: Any, request: Any, candidates: list[Any], now: float) -> Any:
        self.sim.request_route_decision(backend, request, candidates, now)
        return None


class PlanningPrewarm(Planner, PrewarmPolicy):
    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("prewarm", spec, depth, clairvoyant)
        self.tick = self.base.tick

    def start(self, sim: Any, now: float) -> None:
        self.base.start(sim, now)

    def decide(self, sim: Any, now: float) -> None:
        sim.request_prewarm_decision(now)


class PlanningAutoscaler(Planner, Autoscaler):
    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("autoscaler", spec, depth, clairvoyant)
        self.tick, self.reacts = self.base.tick, self.base.reacts

    def start(self, sim: Any, now: float) -> None:
        self.base.start(sim, now)

    def decide(self, sim: Any, now: float) -> None:
        sim.request_scale_decision(now)


class PlanningMigration(Planner, MigrationPolicy):
    """A planner over migration decisions: every BASE tick, one decision per LLM backend with two or more
    warm replicas (BASE's moves on every backend when its own option is taken)."""

    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("migration", spec, depth, clairvoyant)
        self.tick = self.base.tick

    def bind(self, sim: Any) -> None:
        self.base.bind(sim)

    def resample(self, branch: Simulation, rng: np.random.Generator) -> None:
        """Its moves concern running requests: their remaining lengths are redrawn too."""
        branch.resample_future(rng)
        branch.resample_admitted(rng)

    def decide(self, sim: Any, now: float) -> None:
        sim.request_migration_decisions(now)


class PlanningAdmission(Planner, AdmissionPolicy):
    """Asks for a decision at each arrival and each reconsideration of a deferred application."""

    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("admission", spec, depth, clairvoyant)

    def bind(self, sim: Any) -> None:
        self.base.bind(sim)

    def admit(self, sim: Any, app: Any, now: float) -> int | None:
        sim.request_admission_decision(app, now)
        return None


class PlanningRetention(Planner, RetentionPolicy):
    """Asks for a decision at each tool boundary that has a next call (a last call is BASE's); what follows
    a plan (a pin running out, memory pressure) is BASE's."""

    def __init__(self, spec: str, depth: int = 1, clairvoyant: bool = False) -> None:
        super().__init__("retention", spec, depth, clairvoyant)
        self.reclaim_for_admission = self.base.reclaim_for_admission

    def bind(self, sim: Any) -> None:
        self.sim = sim
        self.base.bind(sim)
        self.agent = ExternalRetention()  # the agent's plans (KVCache-v0's actions), the candidates after BASE's
        self.agent.bind(sim)

    def at_boundary(self, replica: Any, ctx: Any, now: float) -> Any:
        if self.next_run(ctx) is None:
            return self.base.at_boundary(replica, ctx, now)
        self.sim.request_retention_decision(replica, ctx, now)
        return None

    def decide(self, replica: Any, ctx: Any, plan: Any, now: float) -> None:
        """Carry out ``plan`` (a candidate of :meth:`candidates`), unless the context was claimed meanwhile."""
        if replica.kvmem.contexts.get(ctx.app) is ctx and ctx.state == "undecided":
            replica.kvmem.apply(self, ctx, plan, now)

    def after_pin(self, replica: Any, ctx: Any, now: float) -> Any:
        return self.base.after_pin(replica, ctx, now)

    def victim_key(self, replica: Any, ctx: Any, now: float) -> Any:
        return self.base.victim_key(replica, ctx, now)

    def pressure_plan(self, replica: Any, ctx: Any, now: float) -> Any:
        return self.base.pressure_plan(replica, ctx, now)


CLASSES = {"scheduler": PlanningScheduler, "router": PlanningRouter, "prewarm": PlanningPrewarm,
           "autoscaler": PlanningAutoscaler, "migration": PlanningMigration, "admission": PlanningAdmission,
           "retention": PlanningRetention}
FAMILIES = {"rollout": (1, False), "search": (2, False), "oracle-rollout": (1, True), "oracle-search": (2, True)}


def _factory(cls: type, depth: int, clairvoyant: bool) -> Any:
    def make(arg: str) -> Planner:
        return cls(arg, depth, clairvoyant)
    return make


for _kind, _cls in CLASSES.items():
    for _prefix, (_depth, _clairvoyant) in FAMILIES.items():
        register_family(_kind, _prefix)(_factory(_cls, _depth, _clairvoyant))
