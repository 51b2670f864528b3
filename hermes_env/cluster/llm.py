"""LLM backends: replicas of a model with iteration-level continuous batching and a KV-cache limit.

Each replica runs iterations back to back while it has work. An iteration in which requests are
admitted prefills their prompts together with one decode token for every running request (a mixed
iteration); otherwise it decodes one token per running request. Iteration times come from the measured
latency profile (:mod:`hermes_env.cluster.latency`).

Decode-only iterations are simulated in *segments*: while the batch does not change, iteration ``k``
of a segment takes ``lin(B) + per_kv * (S0 + k B) + per_max * (C0 + k)``, so a segment of ``m``
iterations has a closed-form length, and the replica schedules one event for the earliest of: the first
request to finish, the KV cache filling up. A request arriving mid-segment cuts the segment at the end of
the iteration in progress, so it is admitted at the next iteration boundary, exactly as iteration by
iteration stepping would admit it.

Admission (at iteration boundaries) takes requests in the scheduling policy's order while the batch has
fewer than ``max_batch`` requests, the prompts fit the ``max_prefill_tokens`` budget (a single longer
prompt is admitted alone) and the KV cache has room for the prompt plus one token for every running
request. When the cache cannot grow by one token per request, the lowest-priority running request is
preempted and recomputed later (vLLM's recompute preemption): its KV is freed and it rejoins the queue,
keeping the tokens it generated, which its next prefill recomputes. KV is accounted in tokens; the
capacity is whole blocks (per-request fragmentation within the last block is not modelled).

With a prefix cache (CALVO), a request's reusable prefix is fetched from remote storage at the
configured bandwidth before its prefill, which then computes only the rest of the prompt. In ``async``
mode the fetch runs on the replica's network link (one fetch at a time, in admission order) while the
GPU keeps iterating, and the request is prefilled at the first boundary after its prefix arrives; in
``sync`` mode the iteration that prefills the request waits for the fetch.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from hermes_env.cluster.config import LLMBackendConfig
from hermes_env.cluster.queue import DecisionPending, WaitQueue
from hermes_env.cluster.request import Request
from hermes_env.cluster.tool import EventScheduler


class Replica:
    """One model replica. Running requests are kept against an iteration *clock* (decode tokens produced
    per running request since the replica started): a request admitted at clock ``c`` with context ``x``
    and ``y`` tokens left holds ``x + (clock - c)`` tokens and finishes at clock ``c + y``. A heap on the
    finishing clock and the running sums make every event O(log batch) with no per-request updates."""

    def __init__(self, backend: LLMBackend, index: int) -> None:
        self.backend, self.index = backend, index
        cfg = backend.cfg
        self.capacity = cfg.kv_capacity_tokens
        self.max_batch = cfg.max_batch
        self.latency = cfg.latency
        self.clock = 0
        self.running: dict[Request, tuple[int, int, int]] = {}  # request -> (ctx0, finish clock, admission id)
        self._finish: list[tuple[int, int, Request]] = []  # (finish clock, admission id, request), lazy
        self._longest: list[tuple[int, int, Request]] = []  # (-ctx0, admission id, request), lazy
        self.sum_ctx0 = 0  # sum of ctx0: the running requests hold sum_ctx0 + n * clock tokens
        self._admissions = 0
        self.kv_used = 0  # tokens held or reserved for the iterations planned
        self.prefilling: list[Request] = []  # admitted in the iteration in progress
        self.cache = cfg.prefix_cache
        self.kv_bytes_per_token = cfg.model.kv_bytes_per_token
        self.loading: set[Request] = set()  # admitted, prefix still loading from the prefix cache (async)
        self.loaded: list[Request] = []  # prefix loaded, waiting for the next iteration's prefill
        self.link_free_at = 0.0
        self.load_seconds = 0.0
        self.version = 0
        self.busy = False
        self.deciding = False  # suspended in admission until an external policy chooses
        # the plan of the iteration or segment in progress
        self.t0 = 0.0
        self.planned = 0  # decode iterations planned in the segment (0 for a mixed iteration)
        self.a = 0.0  # segment length T(m) = a m^2 + b m
        self.b = 0.0
        self.mixed_time = 0.0
        self._prefill_tokens = 0
        self._load_stall = 0.0
        self.busy_seconds = 0.0
        self.iterations = 0
        self.preemptions = 0

    # -- the running set ----------------------------------------------------------------------
    def context(self, request: Request) -> int:
        return self.running[request][0] + self.clock

    def _kv_held(self) -> int:
        return self.sum_ctx0 + len(self.running) * self.clock

    def _max_context(self) -> int:
        heap, running = self._longest, self.running
        while heap and running.get(heap[0][2], (0, 0, -1))[2] != heap[0][1]:
            heapq.heappop(heap)
        return -heap[0][0] + self.clock if heap else 0

    def _join(self, r: Request) -> None:
        ctx0 = r.prompt_tokens + r.generated - self.clock
        finish = self.clock + r.output_tokens - r.generated
        self._admissions += 1
        self.running[r] = (ctx0, finish, self._admissions)
        self.sum_ctx0 += ctx0
        heapq.heappush(self._finish, (finish, self._admissions, r))
        heapq.heappush(self._longest, (-ctx0, self._admissions, r))

    def _leave(self, r: Request) -> int:
        """Remove a running request; returns the tokens it held."""
        ctx0, _, _ = self.running.pop(r)
        self.sum_ctx0 -= ctx0
        return ctx0 + self.clock

    # -- prefix cache -------------------------------------------------------------------------
    def load_time(self, r: Request) -> float:
        """Seconds to fetch the request's reusable prefix from the prefix cache (0 without one)."""
        if self.cache is None or not r.prefix_tokens:
            return 0.0
        return r.prefix_tokens * self.kv_bytes_per_token / self.cache.load_bandwidth

    def _prefill_work(self, r: Request) -> tuple[int, int]:
        """Tokens to compute and causal attention pairs of the request's prefill: with a loaded prefix
        only the rest of the prompt is computed, attending to the whole of it."""
        total = r.prompt_tokens + r.generated
        cached = r.prefix_tokens if self.cache is not None else 0
        return total - cached, total * total - cached * cached

    def _loaded_prefix(self, now: float, r: Request) -> None:
        self.loading.discard(r)
        self.loaded.append(r)
        self.poke(now)

    def _batch(self) -> int:
        return len(self.running) + len(self.prefilling) + len(self.loading) + len(self.loaded)

    # -- the iteration loop -----------------------------------------------------------------
    def poke(self, now: float) -> None:
        """New work is waiting: start at once if idle, else cut a decode segment at the next boundary."""
        if self.deciding:
            return
        if not self.busy:
            self._boundary(now, self.version)
        elif self.planned > 1 and (self.loaded or self._batch() < self.max_batch):
            done = self._iterations_by(now - self.t0)
            if done + 1 < self.planned:
                self.kv_used -= (self.planned - done - 1) * len(self.running)  # unreserve the cut iterations
                self.planned = done + 1
                self.version += 1
                end = self.t0 + self._segment_time(self.planned)
                self.backend.engine.at(max(end, now), self._boundary, self.version)

    def _segment_time(self, m: int) -> float:
        return self.a * m * m + self.b * m

    def _iterations_by(self, elapsed: float) -> int:
        """The number of whole iterations of the segment finished ``elapsed`` seconds after its start."""
        a, b = self.a, self.b
        k = int(elapsed / b) if a <= 0 else int((-b + math.sqrt(b * b + 4 * a * elapsed)) / (2 * a))
        while k > 0 and self._segment_time(k) > elapsed:
            k -= 1
        while self._segment_time(k + 1) <= elapsed:
            k += 1
        return min(k, self.planned)

    def _boundary(self, now: float, version: int) -> None:
        if version != self.version:
            return
        if self.busy:
            self.busy_seconds += now - self.t0
            self._apply_progress(now)
        self._prefill_tokens = 0
        self._load_stall = 0.0
        self._continue(now)

    def _resume(self, now: float) -> None:
        self.deciding = False
        self._continue(now)

    def _continue(self, now: float) -> None:
        """Admit, then plan the next iteration; suspends if an external policy has a choice to make."""
        try:
            self._admit(now)
            if self.prefilling:
                self._plan_mixed(now)
            elif self.running:
                self._plan_segment(now)  # may preempt everything and admit again (a mixed iteration)
            else:
                self.busy = False  # prefixes still loading call poke when they arrive
                return
        except DecisionPending:
            self.deciding = True
            self.backend.on_decision(self.backend.queue, now, self._resume)  # type: ignore[misc]
            return
        self.busy = True
        self.version += 1
        end = self.t0 + (self.mixed_time if self.planned == 0 else self._segment_time(self.planned))
        self.backend.engine.at(end, self._boundary, self.version)

    def _apply_progress(self, now: float) -> None:
        steps = 1 if self.planned == 0 else self.planned
        self.iterations += steps
        self.clock += steps  # the running requests' growth was reserved when the steps were planned
        if self.prefilling:  # each prefill produced its request's next token
            for r in self.prefilling:
                r.generated += 1
                if r.first_token < 0:
                    r.first_token = now
                self._join(r)
            self.prefilling = []
        heap, running, clock = self._finish, self.running, self.clock
        while heap and heap[0][0] <= clock:
            _, admission, r = heapq.heappop(heap)
            if running.get(r, (0, 0, -1))[2] != admission:
                continue  # stale: preempted since
            self.kv_used -= self._leave(r)
            r.generated = r.output_tokens
            r.finished = now
            self.backend.finish(r, now)

    def _admit(self, now: float) -> None:
        queue = self.backend.queue
        budget = self.backend.cfg.max_prefill_tokens
        prefill = self._prefill_tokens  # kept across a suspension for an external choice
        while self.loaded:  # requests whose prefix has arrived go first
            tokens = self._prefill_work(self.loaded[0])[0]
            if self.prefilling and prefill + tokens > budget:
                break
            self.prefilling.append(self.loaded.pop(0))
            prefill += tokens
        self._prefill_tokens = prefill
        batch = self._batch()
        while len(queue) and batch < self.max_batch:
            r = queue.peek(now)
            held = r.prompt_tokens + r.generated  # a preempted request recomputes what it generated
            tokens = self._prefill_work(r)[0]
            growth = batch + 1
            if self.prefilling and prefill + tokens > budget:
                break
            if self.kv_used + held + growth > self.capacity and not self._make_room(r, held + growth, now):
                break
            queue.pop(now)
            batch += 1
            r.started = now if r.started < 0 else r.started
            self.kv_used += held
            load = self.load_time(r)
            self.load_seconds += load
            if load and self.cache.mode == "async":  # fetch on the link while the GPU works
                start = max(now, self.link_free_at)
                self.link_free_at = start + load
                self.loading.add(r)
                self.backend.engine.at(self.link_free_at, self._loaded_prefix, r)
                continue
            self._load_stall += load  # sync: the iteration waits for the fetch
            self.prefilling.append(r)
            prefill += tokens
            self._prefill_tokens = prefill
        self._prefill_tokens = prefill

    def _plan_mixed(self, now: float) -> None:
        pairs = sum(self._prefill_work(r)[1] for r in self.prefilling)
        n_run = len(self.running)
        self.t0, self.planned = now, 0
        self.mixed_time = self._load_stall + self.latency.iteration_time(
            self._prefill_tokens + n_run, kv_tokens=self._kv_held(), prefill_pairs=pairs,
            max_context=self._max_context())
        self.kv_used += n_run + len(self.prefilling)  # every request's next token

    def _plan_segment(self, now: float) -> None:
        while len(self.running) > self.capacity - self.kv_used:  # no room for one more token each
            self._preempt(now)
        n = len(self.running)
        if n == 0:  # everything was preempted: restart from admission
            self._admit(now)
            if self.prefilling:
                self._plan_mixed(now)
                return
            raise RuntimeError(f"{self.backend.name}: a single request does not fit the KV cache")
        heap = self._finish
        while self.running.get(heap[0][2], (0, 0, -1))[2] != heap[0][1]:
            heapq.heappop(heap)
        m = min(heap[0][0] - self.clock, (self.capacity - self.kv_used) // n)
        lat = self.latency
        base = lat.linear_layers(n) + lat.per_kv_token * self._kv_held() + lat.per_max_context * self._max_context()
        step = lat.per_kv_token * n + lat.per_max_context  # growth of the iteration time per iteration
        self.a, self.b = step / 2.0, float(base) - step / 2.0
        self.t0, self.planned = now, m
        self.kv_used += m * n  # reserve the segment's growth

    def _make_room(self, head: Request, need: int, now: float) -> bool:
        """If the policy lets ``head`` take KV memory from running requests (BROS: real-time from
        best-effort), preempt such requests, lowest priority first, until ``need`` tokens fit."""
        may_preempt = getattr(self.backend.queue.policy, "may_preempt", None)
        if may_preempt is None:
            return False
        victims = sorted((r for r in self.running if may_preempt(head, r)), key=lambda r: (r.key, r.seq))
        freeable = sum(self.context(r) for r in victims)
        if self.kv_used - freeable + need > self.capacity:
            return False
        while self.kv_used + need > self.capacity:
            self._preempt(now, victims.pop())
        return True

    def _preempt(self, now: float, victim: Request | None = None) -> None:
        """Free the KV of a running request (by default the lowest-priority one) and send it back to the
        queue."""
        if victim is None:
            victim = max(self.running, key=lambda r: (r.key, r.seq))
        held = self._leave(victim)
        victim.generated = held - victim.prompt_tokens
        self.kv_used -= held
        victim.preemptions += 1
        self.preemptions += 1
        self.backend.queue.push(victim, now)

    def check_invariants(self) -> None:
        name = f"{self.backend.name}[{self.index}]"
        assert self.kv_used <= self.capacity, f"{name}: KV {self.kv_used} > capacity {self.capacity}"
        assert self._batch() <= self.max_batch, f"{name}: batch over max_batch"
        staged = [*self.prefilling, *self.loading, *self.loaded]
        held = self._kv_held() + sum(r.prompt_tokens + r.generated for r in staged)
        assert 0 <= held <= self.kv_used, f"{name}: requests hold {held} KV tokens, accounted {self.kv_used}"
        assert self.sum_ctx0 == sum(v[0] for v in self.running.values())


class LLMBackend:
    """All replicas of one model share a waiting queue; an idle replica, or one with room in its batch,
    takes work at its next iteration boundary."""

    def __init__(self, cfg: LLMBackendConfig, engine: EventScheduler, queue: WaitQueue,
                 on_done: Callable[[Request, float], None],
                 on_decision: Callable[[WaitQueue, float, Callable[[float], None]], None] | None = None) -> None:
        self.cfg, self.name = cfg, cfg.name
        self.engine, self.queue, self.on_done = engine, queue, on_done
        self.on_decision = on_decision  # told when an external policy must choose; gets a resume callback
        self.replicas = [Replica(self, i) for i in range(cfg.replicas)]
        self.completed = 0

    def submit(self, request: Request, now: float) -> None:
        need = request.prompt_tokens + request.output_tokens
        if need > self.replicas[0].capacity:
            raise ValueError(f"{self.name}: a request of {request.prompt_tokens} prompt and {request.output_tokens} "
                             f"output tokens needs {need} KV tokens, more than a replica holds "
                             f"({self.replicas[0].capacity}); give the backend more GPU memory per replica")
        self.queue.push(request, now)
        # an idle replica takes it, else the one with the smallest batch; ties go to the lowest index
        best, best_batch = None, 0
        for replica in self.replicas:
            if not replica.busy:
                best = replica
                break
            batch = replica._batch()
            if best is None or batch < best_batch:
                best, best_batch = replica, batch
        best.poke(now)

    def finish(self, request: Request, now: float) -> None:
        self.completed += 1
        self.on_done(request, now)

    def check_invariants(self) -> None:
        for r in self.replicas:
            r.check_invariants()
