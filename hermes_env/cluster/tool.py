"""Tool backends (docker sandboxes, DNN models on a GPU, external APIs): instances with a capacity,
cold starts, keep-alive and an idle cost.

An instance is COLD, WARMING (for a draw of the cold-start distribution) or WARM. A request that finds
no free slot on a warm instance waits; if the instances already warming cannot take the waiting
requests, another cold instance starts warming (a cold start on the request's critical path). A warm
instance with nothing to do goes cold after ``keep_alive`` seconds. A prewarm policy may warm a cold
instance or release an idle warm one at any time. A backend configured without a cold start (an
external API) has no warm-up at all: its instances are always warm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from hermes_env.cluster.config import ToolBackendConfig
from hermes_env.cluster.queue import DecisionPending, WaitQueue
from hermes_env.cluster.request import Request

COLD, WARMING, WARM = 0, 1, 2


class EventScheduler(Protocol):
    def at(self, time: float, fn: Callable[..., Any], *args: Any) -> None: ...


class Instance:
    __slots__ = ("index", "state", "busy", "version", "ready_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.state = COLD
        self.busy = 0
        self.version = 0  # bumped on every state change, so that stale keep-alive events do nothing
        self.ready_at = 0.0


class ToolBackend:
    timeline: Any = None  # a hermes_env.sim.timeline.TimelineRecorder when the run records one

    def __init__(self, cfg: ToolBackendConfig, engine: EventScheduler, queue: WaitQueue, rng: np.random.Generator,
                 on_done: Callable[[Request, float], None],
                 on_decision: Callable[[Any, float, Callable[[float], None]], None] | None = None) -> None:
        self.cfg, self.name = cfg, cfg.name
        self.engine, self.queue, self.rng, self.on_done = engine, queue, rng, on_done
        self.on_decision = on_decision  # told when an external policy must choose; gets a resume callback
        self.deciding = False
        self.keep_alive = cfg.keep_alive  # a prewarm policy may change it
        self.arrival_times: list[float] = []  # when requests reached the backend (prewarm policies learn from it)
        self.instances = [Instance(i) for i in range(cfg.instances)]
        # Pinned instances stay warm: keep-alive never expires them. A backend without a cold start (an
        # external API) is always warm; an always-warm prewarm policy pins the others.
        self.pinned = cfg.cold_start is None
        for inst in self.instances:
            inst.state = WARM if self.pinned else COLD
        # accounting, integrated at every state change
        self._last = 0.0
        self.warm_seconds = 0.0  # instance-seconds warm or warming
        self.idle_warm_seconds = 0.0  # of which serving nothing
        self.busy_slot_seconds = 0.0
        self.cold_starts = 0  # warm-ups triggered by waiting requests
        self.prewarms = 0  # warm-ups ordered by the prewarm policy
        self.delayed_by_warmup = 0  # requests that waited while no instance was warm
        self.completed = 0

    # -- accounting -------------------------------------------------------------------------
    def _account(self, now: float) -> None:
        dt = now - self._last
        if dt > 0:
            for inst in self.instances:
                if inst.state != COLD:
                    self.warm_seconds += dt
                    if inst.busy == 0:
                        self.idle_warm_seconds += dt
                self.busy_slot_seconds += inst.busy * dt
            self._last = now

    @property
    def idle_cost(self) -> float:
        return self.idle_warm_seconds * self.cfg.idle_cost

    def idle_cost_until(self, now: float) -> float:
        """The idle cost accrued up to ``now``."""
        self._account(now)
        return self.idle_cost

    def summary(self, now: float) -> dict[str, float]:
        """The backend's figures up to ``now``, for the simulation summary."""
        self._account(now)
        slots = self.cfg.instances * self.cfg.capacity
        return {"utilisation": self.busy_slot_seconds / (slots * now) if now else 0.0, "completed": self.completed,
                "cold_starts": self.cold_starts, "prewarms": self.prewarms,
                "requests_delayed_by_warmup": self.delayed_by_warmup, "warm_seconds": self.warm_seconds,
                "idle_warm_seconds": self.idle_warm_seconds, "idle_cost": self.idle_cost}

    def warm_instances(self) -> int:
        return sum(inst.state == WARM for inst in self.instances)

    def warming_instances(self) -> int:
        return sum(inst.state == WARMING for inst in self.instances)

    # -- requests ---------------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        self.arrival_times.append(now)
        if not any(inst.state == WARM for inst in self.instances):
            self.delayed_by_warmup += 1
        self.queue.push(request, now)
        self._dispatch(now)

    def _dispatch(self, now: float) -> None:
        if self.deciding:
            return  # the pending choice re-runs dispatch once made
        queue, capacity = self.queue, self.cfg.capacity
        while len(queue):
            inst = next((i for i in self.instances if i.state == WARM and i.busy < capacity), None)
            if inst is None:
                break
            try:
                request = queue.pop(now)
            except DecisionPending:
                self.deciding = True
                self.on_decision(self.queue, now, self._resume)  # type: ignore[misc]
                return
            self._start(inst, request, now)
        if len(queue):
            coming = self.warming_instances() * capacity
            for inst in self.instances:
                if coming >= len(queue):
                    break
                if inst.state == COLD:
                    self.cold_starts += 1
                    self._warm(inst, now, "cold start")
                    coming += capacity

    def _resume(self, now: float) -> None:
        self.deciding = False
        self._dispatch(now)

    def _start(self, inst: Instance, request: Request, now: float) -> None:
        self._account(now)
        inst.busy += 1
        inst.version += 1
        request.started = now
        if self.timeline is not None:
            self.timeline.tool_start(self, inst, request)
        self.engine.at(now + request.service_time, self._finish, inst, request)

    def _finish(self, now: float, inst: Instance, request: Request) -> None:
        self._account(now)
        inst.busy -= 1
        inst.version += 1
        request.finished = now
        self.completed += 1
        if self.timeline is not None:
            self.timeline.tool_call(self, inst, request, now)
        if inst.busy == 0:
            self._idle(inst, now)
        self._dispatch(now)
        self.on_done(request, now)

    # -- warm-up and keep-alive -------------------------------------------------------------
    def _set_state(self, inst: Instance, state: int, now: float, cause: str = "") -> None:
        inst.state = state
        inst.version += 1
        if self.timeline is not None:
            self.timeline.instance_state(self, inst, now, cause)

    def _warm(self, inst: Instance, now: float, cause: str) -> None:
        self._account(now)
        self._set_state(inst, WARMING, now, cause)
        delay = 0.0 if self.cfg.cold_start is None else float(self.cfg.cold_start.sample(self.rng))
        inst.ready_at = now + delay
        self.engine.at(inst.ready_at, self._ready, inst, inst.version)

    def _ready(self, now: float, inst: Instance, version: int) -> None:
        if inst.version != version:
            return
        self._account(now)
        self._set_state(inst, WARM, now)
        self._dispatch(now)
        if inst.busy == 0:
            self._idle(inst, now)

    def _idle(self, inst: Instance, now: float) -> None:
        if not self.pinned and math.isfinite(self.keep_alive):
            self.engine.at(now + self.keep_alive, self._expire, inst, inst.version)

    def _expire(self, now: float, inst: Instance, version: int) -> None:
        if inst.version == version and inst.busy == 0 and inst.state == WARM and not self.pinned:
            self._account(now)
            self._set_state(inst, COLD, now)

    # -- prewarm orders -----------------------------------------------------------------------
    def prewarm(self, now: float) -> bool:
        """Start warming one cold instance; False if none is cold (or the backend is pinned warm)."""
        inst = next((i for i in self.instances if i.state == COLD), None) if not self.pinned else None
        if inst is None:
            return False
        self.prewarms += 1
        self._warm(inst, now, "prewarm")
        return True

    def can_prewarm(self) -> bool:
        return not self.pinned and any(i.state == COLD for i in self.instances)

    def _releasable(self) -> Instance | None:
        """An idle instance that no waiting request needs: a warm one, or a warming one beyond those
        whose slots the queue will fill (releasing those would strand the waiting requests)."""
        if self.pinned:
            return None
        idle = [i for i in self.instances if i.state != COLD and i.busy == 0]
        warm = next((i for i in idle if i.state == WARM), None)
        if warm is not None:
            return warm
        spare = self.warming_instances() * self.cfg.capacity - len(self.queue)
        return next((i for i in idle if i.state == WARMING), None) if spare >= self.cfg.capacity else None

    def can_release(self) -> bool:
        return self._releasable() is not None

    def release(self, now: float) -> bool:
        """Cool one idle instance that no waiting request needs (see :meth:`_releasable`); False if none."""
        inst = self._releasable()
        if inst is None:
            return False
        self._account(now)
        self._set_state(inst, COLD, now)
        return True

    def pin_warm(self, now: float) -> None:
        """Make every instance warm now and keep it so (the always-warm policy)."""
        self._account(now)
        self.pinned = True
        for inst in self.instances:
            if inst.state != WARM:
                self._set_state(inst, WARM, now)
        self._dispatch(now)

    def check_invariants(self) -> None:
        for inst in self.instances:
            assert 0 <= inst.busy <= self.cfg.capacity, f"{self.name}: instance {inst.index} has {inst.busy} requests"
            assert inst.busy == 0 or inst.state == WARM, f"{self.name}: a non-warm instance is serving"
