"""Retention policies: what happens to an application's KV context while it waits for a tool.

The mechanism is :mod:`hermes_env.cluster.kvtier` (pin, offload to the host tier, prefetch, discard,
release to the LRU cache); a policy answers four questions (every answer a :class:`Plan`):

* ``at_boundary(replica, ctx, now)``: a request continuing the conversation finished; what now?
* ``after_pin(replica, ctx, now)``: a pin whose plan said ``then: offload`` ran out; when to prefetch?
* ``victim_key(replica, ctx, now)``: the order in which pinned contexts are freed under memory pressure
  (lower first; an external agent's priority and the boundary's age break ties around it);
* ``pressure_plan(replica, ctx, now)``: a victim is offloaded (with a prefetch time) or discarded.

**What a policy may know.** When an LLM call ends its output says what comes next: the tool it calls, or an
answer after which the user replies or the session ends (the client closes it). Every policy may read the
*identity* of the application's next stage (:meth:`RetentionPolicy.next_run`'s ``state`` and ``stage``);
only ``oracle`` reads its realised duration. ``pdgraph`` reads the PDGraph's next-use distribution from
that stage (:meth:`~hermes_env.pdgraph.demand.DemandModel.next_use`), ``ttl`` and ``infercept`` the
stage's own duration distribution, ``kvflow`` the graph's steps to the next LLM stage.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hermes_env.cluster.kvtier import RELEASE, Context, Plan
from hermes_env.pdgraph.demand import Progress
from hermes_env.pdgraph.sampling import StageRun
from hermes_env.sim.policies import register_retention

DISCARD = Plan("discard")


class RetentionPolicy:
    """The base: vLLM's behaviour (release to the LRU cache), and the helpers policies share."""

    name = ""
    reclaim_for_admission = True  # may admission free pinned contexts (else only decode growth may)

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        return RELEASE

    def after_pin(self, replica: Any, ctx: Context, now: float) -> Plan:
        return Plan("offload")

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        return ctx.since  # the longest idle first

    def pressure_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        return DISCARD

    # -- what policies read -------------------------------------------------------------------------
    @staticmethod
    def next_run(ctx: Context) -> StageRun | None:
        """The application's stage after the one that just ended (its identity is known, see above)."""
        app = ctx.app
        k = app.cursor + 1
        return app.runs[k] if k < len(app.runs) else None

    @staticmethod
    def round_trip(replica: Any, ctx: Context) -> tuple[float, float]:
        """Seconds to copy the context to host memory and back (infinite without a host tier)."""
        cfg = replica.kvmem.cfg
        if cfg is None:
            return math.inf, math.inf
        bpt = replica.kv_bytes_per_token
        return cfg.transfer_time(ctx.tokens, bpt, False), cfg.transfer_time(ctx.tokens, bpt, True)

    def next_use(self, replica: Any, ctx: Context) -> Any:
        """The PDGraph's forecast of the next request to this backend from the next stage (a NextUse), or
        None when the application ends."""
        run = self.next_run(ctx)
        if run is None:
            return None
        model = self.sim.demand_model(ctx.app.template)
        return model.next_use(Progress(run.state, 0.0, None), replica.backend.name)

    def realised_next_use(self, replica: Any, ctx: Context) -> float | None:
        """Clairvoyant: seconds from the boundary until the next request to this backend is issued (the
        realised tool durations in between; None when there is none)."""
        app, t = ctx.app, 0.0
        for run in app.runs[app.cursor + 1:]:
            if run.backend == replica.backend.name:
                return t
            if run.tool_time is None:  # another LLM backend: its isolated service time
                t += float(np.max(self.sim.cost.llm_service_time(run.backend, run.prompt_tokens, run.output_tokens)))
            else:
                t += float(np.max(run.tool_time))
        return None


def _residual(dist: Any, elapsed: float) -> tuple[np.ndarray, np.ndarray]:
    """The time left of a discrete forecast given that ``elapsed`` seconds have passed (empty if none)."""
    values, probs = dist.support, dist.probs
    keep = values > elapsed
    if not keep.any():
        return np.zeros(1), np.ones(1)
    p = probs[keep]
    return values[keep] - elapsed, p / p.sum()


def _quantile(values: np.ndarray, probs: np.ndarray, q: float) -> float:
    return float(values[min(int(np.searchsorted(np.cumsum(probs), q - 1e-12)), len(values) - 1)])


@register_retention("lru")
class LRURetention(RetentionPolicy):
    """vLLM 0.11 (the default): a finished request's blocks go to the prefix cache's LRU free queue and are
    evicted when memory is needed; nothing is pinned, offloaded or prefetched."""


@register_retention("ttl")
class TTLRetention(RetentionPolicy):
    """Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent Scheduling with KV Cache
    Time-to-Live", 2025), as read here: when an agent's call ends in a tool call, its KV is pinned on the GPU
    for a time-to-live set from that tool's duration distribution (here its ``quantile`` quantile, 0.9 by
    default), after which it is released to the LRU cache; an answer that ends the session releases at once.
    Pins count against admission until they expire (Continuum does not let new requests take pinned
    memory); only a running request's decode growth frees them, the soonest to expire first, discarded.
    No host tier."""

    reclaim_for_admission = False

    def __init__(self, quantile: float = 0.9) -> None:
        self.quantile = quantile

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        run = self.next_run(ctx)
        if run is None:
            return RELEASE
        if run.backend == replica.backend.name:
            return Plan("pin")  # the next call comes at once
        stage = ctx.app.mix.known_graph.stage(run.stage)
        if stage.service_time is None:
            return RELEASE
        return Plan("pin", until=now + float(stage.service_time.ppf(self.quantile)))

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        return ctx.plan.until


@register_retention("kvflow")
class KVFlowRetention(RetentionPolicy):
    """KVFlow (Pan et al., "KVFlow: Efficient Prefix Caching for Accelerating LLM-Based Multi-Agent
    Workflows", 2025), as read here: contexts stay cached (pinned) after each call; under memory pressure the
    one whose application is the most *steps* from its next LLM call in the workflow graph goes first (its
    steps-to-execution value; ties by age), offloaded to host memory (KVFlow's hierarchical cache) rather than
    lost; an offloaded context is prefetched in the background as soon as its next request arrives, so the
    copy overlaps the request's queueing rather than stalling its prefill."""

    def bind(self, sim: Any) -> None:
        super().bind(sim)
        self._steps: dict[tuple[str, str, str], int] = {}

    def steps(self, replica: Any, ctx: Context) -> int:
        """Stages from the next one to the application's next call on this backend (the graph's shortest path;
        a large number when none is reachable)."""
        run = self.next_run(ctx)
        if run is None:
            return 1 << 20
        key = (ctx.app.template, run.stage, replica.backend.name)
        if key not in self._steps:
            graph = ctx.app.mix.known_graph
            frontier, seen, depth = [run.stage], {run.stage}, 0
            found = 1 << 20
            while frontier and found == 1 << 20:
                if any(graph.stage(s).backend == replica.backend.name for s in frontier):
                    found = depth
                    break
                nxt = [t.to for s in frontier for t in graph.stage(s).next if t.to in
                       {st.name for st in graph.stages} and t.to not in seen]
                seen.update(nxt)
                frontier, depth = nxt, depth + 1
            self._steps[key] = found
        return self._steps[key]

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        if self.next_run(ctx) is None:
            return RELEASE
        ctx.memo = self.steps(replica, ctx)
        return Plan("pin")

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        return -ctx.memo

    def pressure_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        return Plan("offload")

    def on_arrival(self, replica: Any, ctx: Context, now: float) -> None:
        if ctx.state == "host":
            replica.kvmem.prefetch(ctx, now)


@register_retention("infercept")
class InferCeptRetention(RetentionPolicy):
    """InferCept (Abhyankar et al., "InferCept: Efficient Intercept Support for Augmented Large Language
    Model Inference", ICML 2024), as read here: at each interception (a tool call) it picks the action of
    least GPU-memory waste, in token-seconds, with the interception's duration predicted as its type's mean
    (the next stage's mean duration, ``T``), the context ``C`` tokens, the running batch ``B`` tokens:
    preserve ``T x C`` (memory held idle), discard ``T_fwd(C) x B`` (recomputing ``C`` holds the batch's
    memory that long), swap ``2 T_swap(C) x B`` (its swap-out and swap-in, as its formulas count them).
    Preserved contexts are pinned until the call returns; swapped ones are loaded back on resume (no
    prefetch); under pressure a preserved context with the largest preserve waste left is swapped."""

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        run = self.next_run(ctx)
        if run is None:
            return RELEASE
        if run.backend == replica.backend.name:
            return Plan("pin")
        stage = ctx.app.mix.known_graph.stage(run.stage)
        pause = ctx.memo = float(stage.service_time.mean) if stage.service_time is not None else 0.0
        batch = replica._kv_held() + ctx.tokens
        out, back = self.round_trip(replica, ctx)
        preserve = pause * ctx.tokens
        discard = float(replica.latency.prefill_time(ctx.tokens)) * batch
        swap = (out + back) * batch
        best = min(preserve, discard, swap)
        if best == preserve:
            return Plan("pin")
        return Plan("offload") if best == swap else DISCARD

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        return -max(0.0, (ctx.memo or 0.0) - (now - ctx.since)) * ctx.tokens

    def pressure_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        return Plan("offload")


@register_retention("pdgraph")
class PDGraphRetention(RetentionPolicy):
    """Hermes: from the PDGraph's distribution of the time until the application next calls this backend
    (from its next stage, :meth:`DemandModel.next_use`), keep the context on the GPU while memory allows
    and move it out of the way, and back just before it is needed, when memory is short.

    At a boundary the context is pinned until the forecast's ``hold`` quantile (0.95) of its next use, then
    offloaded; an application that will not call again releases it. Under pressure the context expected
    to be needed the latest (mean residual time to next use) goes first, offloaded to the host when the round
    trip fits before its ``early`` quantile (0.05) of the residual, discarded otherwise; an offloaded context
    is prefetched so that its copy ends at that early quantile: back just before it is needed."""

    def __init__(self, hold: float = 0.95, early: float = 0.05) -> None:
        self.hold, self.early = hold, early

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        nu = ctx.memo = self.next_use(replica, ctx)
        if nu is None or nu.time is None or nu.probability < 0.05:
            return RELEASE
        return Plan("pin", until=now + float(nu.time.quantile(self.hold)), then="offload")

    def _residual(self, replica: Any, ctx: Context, now: float) -> tuple[np.ndarray, np.ndarray]:
        nu = ctx.memo
        if nu is None or nu.time is None:
            return np.array([math.inf]), np.ones(1)
        return _residual(nu.time, now - ctx.since)

    def _offload_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        values, probs = self._residual(replica, ctx, now)
        out, back = self.round_trip(replica, ctx)
        early = _quantile(values, probs, self.early)
        if not math.isfinite(early):
            return DISCARD
        if out + back > early and replica.kvmem.cfg is None:
            return DISCARD
        return Plan("offload", prefetch_at=now + max(0.0, early - back))

    def after_pin(self, replica: Any, ctx: Context, now: float) -> Plan:
        return self._offload_plan(replica, ctx, now)

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        values, probs = self._residual(replica, ctx, now)
        return -float(values @ probs)

    def pressure_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        return self._offload_plan(replica, ctx, now)


@register_retention("oracle")
class OracleRetention(RetentionPolicy):
    """Clairvoyant: knows when each application's next call is issued (the realised tool durations). It pins
    every context that will be used again until its use, discards one that will not; under pressure it frees
    the one needed the latest (Belady's rule), offloaded with a prefetch timed to end when the call is
    issued. An upper reference for the non-clairvoyant policies (queueing after the issue is not foreseen)."""

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan:
        t = self.realised_next_use(replica, ctx)
        if t is None:
            return DISCARD
        ctx.memo = now + t
        return Plan("pin")

    @staticmethod
    def _due_at(ctx: Context) -> float:
        return ctx.memo if ctx.memo is not None else math.inf

    def victim_key(self, replica: Any, ctx: Context, now: float) -> Any:
        return -self._due_at(ctx)

    def pressure_plan(self, replica: Any, ctx: Context, now: float) -> Plan:
        due = self._due_at(ctx)
        _, back = self.round_trip(replica, ctx)
        if replica.kvmem.cfg is None:
            return DISCARD
        return Plan("offload", prefetch_at=max(now, due - back))



RETAIN_ACTIONS = ("release", "pin", "offload_prefetch", "offload", "discard")


class ExternalRetention(PDGraphRetention):
    """The retention side of an agent outside the simulation (``hermes_env/KVCache-v0``): every boundary
    pauses the simulation until ``Simulation.resolve((action, priority))`` (the context free in the LRU
    cache meanwhile, as vLLM leaves it, so an agent that always releases is ``lru`` exactly):
    ``action`` one of :data:`RETAIN_ACTIONS` (release to the LRU cache; pin until the next call or memory
    pressure; offload with a prefetch timed by the PDGraph forecast, as ``pdgraph`` times it; offload and
    load on demand; discard), ``priority`` 0 to 2 (a higher one goes first under memory pressure, ties by
    the forecast's expected next use, latest first). Pressure offloads as ``pdgraph`` does. A call that ends
    its application is released without a decision."""

    name = "external"
    external = True

    def at_boundary(self, replica: Any, ctx: Context, now: float) -> Plan | None:
        if self.next_run(ctx) is None:
            return RELEASE  # the application ends with this call: nothing to decide
        ctx.memo = self.next_use(replica, ctx)
        self.sim.request_retention_decision(replica, ctx, now)
        return None

    def plan(self, replica: Any, ctx: Context, action: int, now: float) -> Plan:
        name = RETAIN_ACTIONS[action]
        if name == "offload_prefetch":
            return self._offload_plan(replica, ctx, now)
        return Plan(name) if name != "pin" else Plan("pin")

    def decide(self, replica: Any, ctx: Context, choice: Any, now: float) -> None:
        action, priority = (int(c) for c in choice)
        if replica.kvmem.contexts.get(ctx.app) is not ctx or ctx.state != "undecided":
            return  # claimed before the agent answered: nothing left to decide
        ctx.priority = priority
        replica.kvmem.apply(self, ctx, self.plan(replica, ctx, action, now), now)
