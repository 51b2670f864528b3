"""Request migration between replicas of one LLM backend: Llumnix's live migration (Sun et al., OSDI 2024).

**The model.** A running request's KV moves to another warm replica of the same backend in *stages* over
the source replica's migration link, while the request keeps decoding on its source: stage 0 copies the
context it holds when the migration starts, each later stage the tokens it decoded during the previous
one. When the tokens left to copy are at most ``stop_tokens`` (or after ``max_stages`` stages), the source
stops the request at its next iteration boundary (it leaves the batch, its KV there is freed) and the last
tokens are copied: the *downtime*, the only stage during which the request decodes nowhere (it is on the
link, on neither replica). It then joins the target's batch at the target's next iteration boundary and
decodes on from where it stopped: nothing is recomputed (a preemption would prefill it again).

**What it costs.** A stage of ``n`` tokens takes ``stage_overhead`` (the two engines' handshake) plus the
host KV tier's copy form (:func:`~hermes_env.cluster.link.copy_time`): ``ceil(n / chunk_tokens)``
transfers of ``latency_per_transfer`` each and ``n x kv_bytes_per_token / bandwidth``. Copies overlap with
compute (Llumnix's copies run beside the engines, on their own communication stack), so they cost link
time and target memory, not iterations. A replica sends one migration at a time (its link is a FIFO of
one); migrations into one target do not slow each other (not modelled).

**Memory and places.** The target reserves a batch slot at the start and, before each stage, the KV that
stage copies (evicting unreferenced prefix-cache blocks if need be); when it has no room the migration is
aborted and the request stays on its source. A request that finishes or is preempted on its source before
it stops is not migrated (the reservation is released). So no replica's KV exceeds its capacity, a
request's KV is on two replicas only while it is being copied, and a request is, for scheduling, in
exactly one place: its source's batch, the link, or its target's batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hermes_env.cluster.link import copy_time
from hermes_env.cluster.request import Request
from hermes_env.validation import check_keys, integer, number

COPYING, STOPPING, ON_LINK = 0, 1, 2  # a migration's phases: stages under way, waiting to stop, downtime


@dataclass(frozen=True)
class MigrationLink:
    """The link a replica migrates KV over, and the live-migration schedule. The defaults are assumed, not
    measured: a 200 Gb/s RDMA NIC per replica (25 GB/s), 10 us per 256-token transfer, 1 ms of handshake per
    stage; stop once at most one block is left, after 8 stages at most."""

    bandwidth: float = 25e9  # bytes/s
    latency_per_transfer: float = 10e-6  # seconds per chunk
    chunk_tokens: int = 256
    stage_overhead: float = 1e-3  # seconds per stage
    stop_tokens: int = 16
    max_stages: int = 8

    def stage_time(self, tokens: int, bytes_per_token: int) -> float:
        """Seconds of one stage copying ``tokens`` tokens."""
        return self.stage_overhead + copy_time(tokens, bytes_per_token, self.bandwidth, self.latency_per_transfer,
                                               self.chunk_tokens)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> MigrationLink:
        check_keys(spec, {"bandwidth_gbps", "latency_per_transfer_us", "chunk_tokens", "stage_overhead_ms",
                          "stop_tokens", "max_stages"}, where)
        d = cls()
        return cls(number(spec, "bandwidth_gbps", where, d.bandwidth / 1e9, low=0, low_open=True, high=1e4) * 1e9,
                   number(spec, "latency_per_transfer_us", where, d.latency_per_transfer * 1e6, low=0,
                          high=1e6) * 1e-6,
                   integer(spec, "chunk_tokens", where, d.chunk_tokens, low=1, high=1 << 20),
                   number(spec, "stage_overhead_ms", where, d.stage_overhead * 1e3, low=0, high=1e6) * 1e-3,
                   integer(spec, "stop_tokens", where, d.stop_tokens, low=0, high=1 << 30),
                   integer(spec, "max_stages", where, d.max_stages, low=1, high=1000))


class Migration:
    """One request's move from ``source`` to ``target``: ``copied`` tokens are on the target (reserved
    there, with ``reserved`` counting what the target holds for it), ``stages`` stages done."""

    __slots__ = ("request", "source", "target", "admission", "copied", "reserved", "stages", "phase", "started",
                 "stopped")

    def __init__(self, request: Request, source: Any, target: Any, now: float) -> None:
        self.request, self.source, self.target = request, source, target
        self.admission = source.running[request][2]  # the source's admission id: a preemption changes it
        self.copied = self.reserved = self.stages = 0
        self.phase = COPYING
        self.started, self.stopped = now, -1.0

    def __repr__(self) -> str:
        return f"Migration({self.request}, {self.source.index}->{self.target.index}, phase={self.phase})"


class Migrator:
    """A backend's migrations: starts them, runs their stages, and counts them. ``drain`` holds the draining
    replicas whose running requests leave one after another (scale-in by migration)."""

    def __init__(self, backend: Any, link: MigrationLink) -> None:
        self.backend, self.link = backend, link
        self.bytes_per_token = backend.cfg.model.kv_bytes_per_token
        self.by_request: dict[Request, Migration] = {}
        self.sending: dict[int, Migration] = {}  # source replica index -> its migration in flight
        self.drain: set[int] = set()
        self.started = self.completed = self.aborted = 0
        self.copied_tokens = 0
        self.downtime = self.longest_downtime = 0.0

    # -- starting -------------------------------------------------------------------------------------
    def why_not(self, request: Request, source: Any, target: Any) -> str:
        """Why ``request`` cannot move from ``source`` to ``target`` now ("" if it can)."""
        if source is target or source.backend is not target.backend:
            return "the target must be another replica of the same backend"
        if request not in source.running:
            return "only a running (decoding) request migrates"
        if request in self.by_request:
            return "the request is migrating already"
        if source.index in self.sending:
            return "the source is sending another request"
        if target.state != 2:  # WARM
            return "the target is not warm"
        if request.adapter is not None:
            return "requests with a LoRA adapter do not migrate"
        if target._batch() >= target.max_batch:
            return "the target's batch is full"
        if target.free_tokens() < source.context(request) + self.link.stop_tokens:
            return "the target has no room for the request's context"  # (what it will grow to is not known)
        return ""

    def pick(self, source: Any, target: Any) -> Request | None:
        """The running request of ``source`` Llumnix would move to ``target``: the shortest context (the
        cheapest copy, and the request least likely to finish during it), among those that can move."""
        if source is target or source.index in self.sending:
            return None
        movable = (r for r in source.running if not self.why_not(r, source, target))
        return min(movable, key=lambda r: (source.context(r), r.seq), default=None)

    def start(self, request: Request, source: Any, target: Any, now: float) -> bool:
        """Start moving ``request`` (running on ``source``) to ``target``; False if :meth:`why_not` objects."""
        if self.why_not(request, source, target):
            return False
        m = Migration(request, source, target, now)
        self.by_request[request] = m
        self.sending[source.index] = m
        target.inbound += 1
        self.started += 1
        self._stage(m, now)
        return True

    def _reserve(self, m: Migration, tokens: int) -> bool:
        if not m.target._room(tokens):
            return False
        m.target.kv_used += tokens
        m.reserved += tokens
        return True

    def _stage(self, m: Migration, now: float) -> None:
        """Copy what the target lacks of the request's context, the source decoding on."""
        tokens = m.source.context_now(m.request, now) - m.copied
        if not self._reserve(m, tokens):
            self._abort(m, now)
            return
        m.stages += 1
        self.backend.engine.at(now + self.link.stage_time(tokens, self.bytes_per_token), self._staged, m, tokens)

    def _staged(self, now: float, m: Migration, tokens: int) -> None:
        m.copied += tokens
        self.copied_tokens += tokens
        source, r = m.source, m.request
        if source.running.get(r, (0, 0, -1))[2] != m.admission:  # finished or preempted on the source meanwhile
            self._abort(m, now)
            return
        left = source.context_now(r, now) - m.copied
        if left > self.link.stop_tokens and m.stages < self.link.max_stages:
            self._stage(m, now)
            return
        m.phase = STOPPING  # stop-and-copy at the source's next boundary
        source.leaving.append(m)
        source.cut(now)

    # -- the hooks the replicas call at their iteration boundaries -------------------------------------
    def boundary(self, replica: Any, now: float) -> None:
        """At ``replica``'s iteration boundary: requests stopping there leave it for the link, requests
        arrived from the link join its batch."""
        leaving, replica.leaving = replica.leaving, []
        for m in leaving:
            self._stop(m, now)
        arrived, replica.arrived = replica.arrived, []
        for m in arrived:
            replica.join_migrated(m.request, now)
            self._done(m, now)

    def _stop(self, m: Migration, now: float) -> None:
        source, r = m.source, m.request
        if source.running.get(r, (0, 0, -1))[2] != m.admission:
            self._abort(m, now)
            return
        tokens = source.context(r) - m.copied
        if not self._reserve(m, tokens):
            self._abort(m, now)
            return
        source.detach(r)
        m.phase, m.stopped = ON_LINK, now
        self.backend.engine.at(now + self.link.stage_time(tokens, self.bytes_per_token), self._landed, m, tokens)

    def _landed(self, now: float, m: Migration, tokens: int) -> None:
        m.copied += tokens
        self.copied_tokens += tokens
        m.target.arrived.append(m)
        m.target.poke_migrated(now)

    def _done(self, m: Migration, now: float) -> None:
        down = now - m.stopped
        self.downtime += down
        self.longest_downtime = max(self.longest_downtime, down)
        self.completed += 1
        self._release(m, now)

    def _abort(self, m: Migration, now: float) -> None:
        m.target.kv_used -= m.reserved
        m.reserved = 0
        self.aborted += 1
        self._release(m, now)
        m.target.poke(now)  # its batch slot is free again

    def _release(self, m: Migration, now: float) -> None:
        del self.by_request[m.request]
        del self.sending[m.source.index]
        m.target.inbound -= 1
        if m.source.index in self.drain:
            self.drain_next(m.source, now)

    # -- scale-in ----------------------------------------------------------------------------------------
    def drain_next(self, source: Any, now: float) -> None:
        """Move ``source``'s next running request (:meth:`pick`) to the warm replica with the most free KV;
        once none is left (or none can move), the replica finishes the rest where it is."""
        if source.state != 3:  # DRAINING: taken back or gone cold
            self.drain.discard(source.index)
            return
        self.drain.add(source.index)
        if source.index in self.sending:
            return
        warm = [t for t in self.backend.replicas if t.state == 2 and t is not source]
        target = max(warm, key=lambda t: (t.free_tokens(), -t.index), default=None)
        request = self.pick(source, target) if target is not None else None
        if request is None or not self.start(request, source, target, now):
            self.drain.discard(source.index)

    def summary(self) -> dict[str, float]:
        return {"migrations": self.completed, "aborted": self.aborted, "copied_tokens": self.copied_tokens,
                "bytes": self.copied_tokens * self.bytes_per_token,
                "mean_downtime_s": self.downtime / self.completed if self.completed else 0.0,
                "longest_downtime_s": self.longest_downtime}

    def check_invariants(self) -> None:
        """Every migration's request is in exactly one place; targets hold what was copied, within capacity."""
        for r, m in self.by_request.items():
            places = sum(r in replica.running for replica in self.backend.replicas)
            assert places == 0 if m.phase == ON_LINK else places <= 1, f"{m}: the request is in {places} batches"
            assert r not in m.target.running, f"{m}: joined its target while still migrating"
            assert m.reserved >= m.copied, f"{m}: the target holds less than was copied"
        for replica in self.backend.replicas:
            assert replica.inbound == sum(m.target is replica for m in self.by_request.values()), \
                f"{self.backend.name}[{replica.index}]: inbound slots differ from the migrations into it"
