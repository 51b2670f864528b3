"""Agentic KV memory: a host-memory tier below each replica's GPU cache, and what happens to an
application's context while it waits for a tool.

**Where a block is.** A block of an application's context (the segments of its conversation that no other
application shares: everything after the template's system prompt) is in exactly one place on its
replica: on the GPU, referenced by a running request, *pinned* for the application (locked in the prefix
cache: not evictable, counted against the KV that admission sees) or free in the LRU prefix cache; in the
replica's *host tier* (CPU DRAM); or *lost* (evicted, recomputed if needed again). Moves are exclusive:
an offload takes a segment's GPU blocks to host memory and frees them on the GPU, a load or prefetch
takes them back and frees them on the host (an exclusive hierarchy, as the conservation tests check).

**Transfers.** Each replica has one PCIe link with separate DMA engines for host-to-device and
device-to-host copies (full duplex: the two directions do not share time), each a FIFO of transfers. A
context of ``n`` tokens moves in ``ceil(n / chunk_tokens)`` chunks (LMCache's 256-token chunks), each
costing the profile's per-transfer latency, plus ``n x kv_bytes_per_token / bandwidth``. Copies overlap
with compute, as vLLM's KV connector and LMCache's asynchronous offload do: the GPU keeps iterating while
a copy is in flight. An offload frees the GPU blocks at once (the copy is taken before they are reused,
its time charged to the D2H link) and the host copy is readable when the copy ends; a load or prefetch
reserves GPU blocks at once and they are readable when the H2D copy ends: a request whose context is in
flight waits for it, holding its batch slot (as a remote-prefix load does).

**Decisions** come from a *retention policy* (``hermes_env.sim.retention``; duck-typed here): when a
request that continues its application's conversation finishes, ``at_boundary(replica, ctx, now)``
returns a :class:`Plan` (or None: an external agent decides later, the blocks free in the LRU cache until
then): ``release`` (vLLM: the blocks stay in the LRU cache), ``pin`` until a time
(then ``then``: release, offload or discard), ``offload`` (with an optional ``prefetch_at``) or
``discard``. Under memory pressure (a decode cannot grow, or admission finds no room once the LRU cache
is empty) the policy's ``victim_key`` orders the pinned contexts and ``pressure_plan`` says whether each
is offloaded (and when to prefetch it) or discarded; a policy with ``reclaim_for_admission = False``
(TTL pinning) lets only decode growth reclaim, so its pins hold admission back until they expire. When the
application's next request is admitted, its blocks still on the GPU are prefix hits, those on the host
are loaded, the rest is prefilled again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes_env.catalog import config_path
from hermes_env.cluster.link import copy_time
from hermes_env.cluster.prefix import PrefixCache, Segment, _block_range, _Tier
from hermes_env.errors import require
from hermes_env.validation import check_keys, integer, load_yaml, number

PINNED, HOST, PREFETCHED, UNDECIDED = "pinned", "host", "prefetched", "undecided"
ACTIONS = ("release", "pin", "offload", "discard")


@dataclass(frozen=True)
class KVTransferProfile:
    """Host<->device copy costs of one machine for KV-block-sized transfers, and its host memory per GPU.
    ``measured`` says whether the figures were measured (the method in docs/simulator.md) or are a
    vendor's; ``source`` cites them."""

    name: str
    bandwidth_h2d: float  # bytes/s
    bandwidth_d2h: float
    latency_per_transfer: float  # seconds per chunk copied
    chunk_tokens: int = 256
    host_memory_per_gpu: float = 256e9  # bytes of host DRAM per GPU on the machine
    measured: bool = False
    source: str = ""

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> KVTransferProfile:
        check_keys(spec, {"name", "bandwidth_h2d_gbps", "bandwidth_d2h_gbps", "latency_per_transfer_us",
                          "chunk_tokens", "host_memory_per_gpu_gb", "measured", "source", "method", "figures",
                          "duplex_aggregate_gbps"}, where)
        require(isinstance(spec.get("measured"), bool), f"{where}.measured",
                "must say true (measured) or false (vendor or derived figures)")
        return cls(str(spec.get("name", "")),
                   number(spec, "bandwidth_h2d_gbps", where, low=0, low_open=True, high=1e4) * 1e9,
                   number(spec, "bandwidth_d2h_gbps", where, low=0, low_open=True, high=1e4) * 1e9,
                   number(spec, "latency_per_transfer_us", where, low=0, high=1e6) * 1e-6,
                   integer(spec, "chunk_tokens", where, 256, low=1, high=1 << 20),
                   number(spec, "host_memory_per_gpu_gb", where, low=0, low_open=True, high=1e6) * 1e9,
                   spec["measured"], str(spec.get("source", "")))


def load_kv_transfer(name_or_path: str | Path, where: str = "kv_transfer") -> KVTransferProfile:
    """A packaged profile by name (``h200-pcie5``: ``configs/costs/kv-transfer-h200-pcie5.yaml``) or a YAML path."""
    path = Path(name_or_path)
    named = path.suffix not in (".yaml", ".yml") and not path.is_file()
    path = config_path("costs", f"kv-transfer-{name_or_path}" if named else name_or_path, where)
    return KVTransferProfile.from_dict(load_yaml(path, where), where)


@dataclass(frozen=True)
class HostTierConfig:
    """A replica's host-memory KV tier: ``capacity`` bytes of the machine's DRAM and the ``transfer`` profile
    of its PCIe link (each figure may be overridden in the backend's config)."""

    capacity: float
    transfer: KVTransferProfile

    def transfer_time(self, tokens: int, bytes_per_token: int, to_gpu: bool) -> float:
        """Seconds of one context copy of ``tokens`` tokens in one direction."""
        t = self.transfer
        return copy_time(tokens, bytes_per_token, t.bandwidth_h2d if to_gpu else t.bandwidth_d2h,
                         t.latency_per_transfer, t.chunk_tokens)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str, gpus_per_replica: int) -> HostTierConfig:
        check_keys(spec, {"capacity_gb", "transfer", "bandwidth_h2d_gbps", "bandwidth_d2h_gbps",
                          "latency_per_transfer_us"}, where)
        require(isinstance(spec.get("transfer"), str), f"{where}.transfer", "is missing",
                "name a KV transfer profile (h200-pcie5) or a YAML path")
        profile = load_kv_transfer(spec["transfer"], f"{where}.transfer")
        overrides = {}
        for key, attr, scale in (("bandwidth_h2d_gbps", "bandwidth_h2d", 1e9),
                                 ("bandwidth_d2h_gbps", "bandwidth_d2h", 1e9),
                                 ("latency_per_transfer_us", "latency_per_transfer", 1e-6)):
            if key in spec:
                low = {"low": 0, "low_open": True} if attr != "latency_per_transfer" else {"low": 0}
                overrides[attr] = number(spec, key, where, high=1e6, **low) * scale
        if overrides:
            profile = KVTransferProfile(**{**profile.__dict__, **overrides, "measured": False,
                                           "source": f"{profile.source}; overridden: {sorted(overrides)}"})
        machine = profile.host_memory_per_gpu * gpus_per_replica
        capacity = number(spec, "capacity_gb", where, low=0, low_open=True, high=1e6) * 1e9
        require(capacity <= machine, f"{where}.capacity_gb", f"is {capacity / 1e9:g} GB, more than the machine's "
                f"{machine / 1e9:g} GB of host memory for {gpus_per_replica} GPU(s) ({profile.name})",
                f"give at most {machine / 1e9:g}")
        return cls(capacity, profile)


@dataclass(frozen=True)
class Plan:
    """A retention decision for one context: ``action`` now; for ``pin``, until when and what ``then``
    (release, offload or discard); for ``offload`` (now or when a pin ends), when to start the prefetch
    (``prefetch_at``, absolute seconds; None: load on demand when the next request comes)."""

    action: str
    until: float = math.inf
    then: str = "release"
    prefetch_at: float | None = None

    def __post_init__(self) -> None:
        require(self.action in ACTIONS, "retention.action", f"unknown action {self.action!r}", f"use one of {ACTIONS}")
        require(self.then in ("release", "offload", "discard"), "retention.then", f"unknown action {self.then!r}",
                "use release, offload or discard")


RELEASE = Plan("release")


class Context:
    """An application's conversation held for its next request on one replica."""

    __slots__ = ("app", "chain", "private", "tokens", "replica", "state", "plan", "ready_at", "version",
                 "blocks", "since", "priority", "memo", "request")

    def __init__(self, app: Any, chain: tuple[Segment, ...], private: tuple[Segment, ...], replica: Any,
                 now: float, request: Any = None) -> None:
        self.app, self.chain, self.private, self.replica = app, chain, private, replica
        self.request = request  # the call that just ended (what an agent observes of the application)
        self.tokens = chain[-1].start + chain[-1].size if chain else 0
        self.state = ""
        self.plan = RELEASE
        self.ready_at = now  # when its blocks are readable where they are (a copy in flight until then)
        self.version = 0
        self.blocks = 0  # its private blocks where it is (GPU while pinned or prefetched, host while offloaded)
        self.since = now  # the boundary: when its last request finished
        self.priority = 0  # an external agent's eviction priority (higher goes first under pressure)
        self.memo: Any = None  # what the policy worked out at the boundary (a forecast), for later decisions

    def __repr__(self) -> str:
        return f"Context(app={getattr(self.app, 'id', self.app)}, {self.state}, {self.tokens} tokens)"


class HostTier(_Tier):
    """Blocks offloaded to one replica's host memory: per segment a prefix of its blocks, as on the GPU."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        super().__init__(block_size)
        self.capacity = capacity_blocks
        self.used = 0

    def lookup_from(self, chain: Sequence[Segment], start: int, limit: int) -> int:
        """Tokens the host serves right after a GPU hit of ``start`` tokens: whole segments' leading blocks
        that continue the hit without a gap (a segment the GPU holds part of is not on the host)."""
        pos, block = start, self.block
        for i, seg in enumerate(chain):
            end = chain[i + 1].start if i + 1 < len(chain) else limit
            first, last = _block_range(seg, min(end, limit), block)
            if first > last or last <= pos:
                continue
            have = self.cached_end.get(seg, 0)
            if pos != first - block or have < first:
                return pos - start
            if have < last:
                return have - start
            pos = last
        return pos - start

    def put(self, seg: Segment, end: int) -> int:
        self.cached_end[seg] = end
        n = self.blocks_of(seg)
        self.used += n
        return n

    def take(self, seg: Segment) -> int:
        """Drop a segment's blocks (loaded back, or lost); returns how many."""
        n = self.blocks_of(seg)
        self.used -= n
        self.cached_end.pop(seg, None)
        return n


class KVMemory:
    """One replica's retention state: its pinned, prefetched and offloaded contexts, its host tier and its
    two copy links (see the module docstring). ``replica`` is the :class:`~hermes_env.cluster.llm.Replica`
    whose KV accounting it shares."""

    def __init__(self, replica: Any, host: HostTierConfig | None) -> None:
        self.replica = replica
        self.cfg = host
        self.block = replica.block
        self.bytes_per_token = replica.kv_bytes_per_token
        capacity = int(host.capacity // (self.bytes_per_token * self.block)) if host is not None else 0
        self.host = HostTier(self.block, capacity) if host is not None else None
        self.contexts: dict[Any, Context] = {}  # app -> its context held here
        self.h2d_free_at = self.d2h_free_at = 0.0
        self._protected: Any = None  # the application being admitted: its host copy is not evicted meanwhile
        self.pinned_blocks = 0  # private blocks of pinned and prefetched contexts
        self._since = 0.0
        # accounting
        self.pinned_block_seconds = 0.0
        self.bytes_h2d = self.bytes_d2h = 0.0
        self.offloads = self.prefetches = self.discards = self.reclaims = 0
        self.host_loaded_tokens = 0  # loaded on demand by the next request
        self.host_lost_blocks = 0  # dropped from host memory (full, or no longer a prefix)
        self.offloaded_blocks = self.prefetched_blocks = 0

    @property
    def cache(self) -> PrefixCache:
        return self.replica.cache

    def _count(self, now: float, delta: int) -> None:
        self.pinned_block_seconds += self.pinned_blocks * (now - self._since)
        self._since = now
        self.pinned_blocks += delta

    def pinned_block_seconds_until(self, now: float) -> float:
        self._count(now, 0)
        return self.pinned_block_seconds

    # -- boundaries ---------------------------------------------------------------------------------
    def boundary(self, policy: Any, request: Any, now: float) -> None:
        """``request``, continuing its application's conversation, finished with its chain cached: apply the
        policy's plan."""
        private = request.chain[request.own:]
        if not private or self.cache is None:
            return
        ctx = Context(request.app, request.chain, private, self.replica, now, request)
        self.contexts[ctx.app] = ctx
        plan = policy.at_boundary(self.replica, ctx, now)
        if plan is None:  # decided later (an external agent): free in the LRU cache meanwhile, as vLLM leaves it
            ctx.state = UNDECIDED
            return
        self.apply(policy, ctx, plan, now, poke=False)

    def apply(self, policy: Any, ctx: Context, plan: Plan, now: float, poke: bool = True) -> None:
        """Carry out ``plan`` on ``ctx`` (which is pinned, or just finished and free in the LRU cache); the
        replica is poked, since memory may have been freed (not at an iteration boundary, which admits next)."""
        ctx.plan = plan
        ctx.version += 1
        if plan.action == "pin":
            if ctx.state != PINNED and ctx.state != PREFETCHED:
                self._pin(ctx, now)
            if plan.until < math.inf:
                self.replica.backend.engine.at(max(plan.until, now), self._expire, policy, ctx, ctx.version)
            return
        if plan.action == "release":
            self._forget(ctx, now)
        elif plan.action == "discard":
            self._drop_gpu(ctx, now)
            self.discards += 1
            self._forget(ctx, now)
        else:
            self._offload(ctx, now)
            if ctx.state == HOST and plan.prefetch_at is not None:
                self.replica.backend.engine.at(max(plan.prefetch_at, now), self._prefetch_due, ctx, ctx.version)
        if poke:
            self.replica.poke(now)

    def _expire(self, now: float, policy: Any, ctx: Context, version: int) -> None:
        if ctx.version != version or self.contexts.get(ctx.app) is not ctx or ctx.state != PINNED:
            return
        then = ctx.plan.then
        plan = policy.after_pin(self.replica, ctx, now) if then == "offload" else Plan(then)
        self.apply(policy, ctx, plan, now)

    def _prefetch_due(self, now: float, ctx: Context, version: int) -> None:
        if ctx.version == version and self.contexts.get(ctx.app) is ctx and ctx.state == HOST:
            self.prefetch(ctx, now)

    # -- moves ----------------------------------------------------------------------------------------
    def _gpu_blocks(self, ctx: Context) -> int:
        return sum(self.cache.blocks_of(s) for s in ctx.private)

    def _pin(self, ctx: Context, now: float) -> None:
        self.cache.acquire(ctx.chain)
        ctx.state, ctx.blocks = PINNED, self._gpu_blocks(ctx)
        self._count(now, ctx.blocks)

    def _unpin(self, ctx: Context, now: float) -> None:
        if ctx.state in (PINNED, PREFETCHED):
            self.cache.release(ctx.chain)
            self._count(now, -ctx.blocks)
            ctx.state, ctx.blocks = "", 0

    def _forget(self, ctx: Context, now: float) -> None:
        """Stop tracking ``ctx``: pinned blocks go back to the LRU cache, host blocks are lost."""
        self._unpin(ctx, now)
        if ctx.state == HOST:
            self._drop_host(ctx)
        ctx.state = ""
        ctx.version += 1
        if self.contexts.get(ctx.app) is ctx:
            del self.contexts[ctx.app]

    def _removable(self, ctx: Context) -> list[Segment]:
        """Its private segments with GPU blocks that no request reads (pins released first)."""
        refs, cached = self.cache.refs, self.cache.cached_end
        return [s for s in ctx.private if s in cached and s not in refs]

    def _drop_gpu(self, ctx: Context, now: float) -> int:
        self._unpin(ctx, now)
        freed = sum(self.cache.remove(s) for s in self._removable(ctx))
        self.replica.kv_used -= freed * self.block
        return freed

    def _drop_host(self, ctx: Context) -> None:
        lost = sum(self.host.take(s) for s in ctx.private if s in self.host.cached_end)
        self.host_lost_blocks += lost
        ctx.blocks = 0

    def _offload(self, ctx: Context, now: float) -> None:
        """Move the context's GPU blocks to host memory (discarding them when there is no host tier or it
        cannot hold them, and making room there by dropping the oldest offloaded contexts)."""
        self._unpin(ctx, now)
        segs = self._removable(ctx)
        blocks = sum(self.cache.blocks_of(s) for s in segs)
        host = self.host
        evictable = [c for c in self.contexts.values() if c.state == HOST and c.app is not self._protected]
        if host is None or not blocks or blocks > host.capacity - host.used + sum(c.blocks for c in evictable):
            self._drop_gpu(ctx, now)
            self.discards += bool(blocks)
            self._forget(ctx, now)
            return
        for victim in evictable:  # oldest offloaded first
            if host.used + blocks <= host.capacity:
                break
            self._forget(victim, now)
        for s in segs:
            host.put(s, self.cache.cached_end[s])
            self.cache.remove(s)
        self.replica.kv_used -= blocks * self.block
        tokens = blocks * self.block
        self.d2h_free_at = max(now, self.d2h_free_at) + self.cfg.transfer_time(tokens, self.bytes_per_token, False)
        self.bytes_d2h += tokens * self.bytes_per_token
        self.offloads += 1
        self.offloaded_blocks += blocks
        del self.contexts[ctx.app]  # re-inserted last: the dict's order is the host tier's FIFO
        self.contexts[ctx.app] = ctx
        ctx.state, ctx.blocks, ctx.ready_at = HOST, blocks, self.d2h_free_at

    def prefetch(self, ctx: Context, now: float) -> bool:
        """Bring an offloaded context back to the GPU ahead of its request (pinned there): False when the
        GPU has no room without reclaiming other contexts."""
        tokens = ctx.blocks * self.block
        self.cache.acquire(ctx.chain)  # so that making room cannot evict its own shared prefix
        if not self.replica._room(tokens):  # LRU eviction only: no other context is reclaimed
            self.cache.release(ctx.chain)
            return False
        segs = [s for s in ctx.private if s in self.host.cached_end]
        for s in segs:
            self.cache.put(s, self.host.cached_end[s])
            self.host.take(s)
        self.replica.kv_used += tokens
        start = max(now, self.h2d_free_at, ctx.ready_at)
        self.h2d_free_at = start + self.cfg.transfer_time(tokens, self.bytes_per_token, True)
        self.bytes_h2d += tokens * self.bytes_per_token
        self.prefetches += 1
        self.prefetched_blocks += ctx.blocks
        ctx.state, ctx.ready_at = PREFETCHED, self.h2d_free_at
        self._count(now, ctx.blocks)
        return True

    # -- the next request -------------------------------------------------------------------------
    def host_hit(self, app: Any, chain: Sequence[Segment], hit: int, limit: int) -> int:
        ctx = self.contexts.get(app)
        if ctx is None or ctx.state != HOST:
            return 0
        return self.host.lookup_from(chain, hit, limit)

    def claim(self, app: Any, host_tokens: int, now: float) -> float:
        """The application's next request is admitted here (its chain acquired): unpin its context, or
        load ``host_tokens`` of it from the host (the rest of the host copy is lost). Returns when the
        request's blocks are readable."""
        ctx = self.contexts.get(app)
        if ctx is None:
            return now
        ready = now
        if ctx.state in (PINNED, PREFETCHED):
            ready = max(now, ctx.ready_at) if ctx.state == PREFETCHED else now
        elif ctx.state == HOST and host_tokens:
            start = max(now, self.h2d_free_at, ctx.ready_at)
            self.h2d_free_at = ready = start + self.cfg.transfer_time(host_tokens, self.bytes_per_token, True)
            self.bytes_h2d += host_tokens * self.bytes_per_token
            self.host_loaded_tokens += host_tokens
            for s in ctx.private:  # loaded blocks are the request's now: off the host (the rest is lost)
                if s in self.host.cached_end:
                    self.host.take(s)
            self.host_lost_blocks += ctx.blocks - host_tokens // self.block
            ctx.blocks = 0
        self._forget(ctx, now)
        return ready

    def drop(self, app: Any, now: float) -> None:
        """The application left this replica (served elsewhere, or ended): forget its context."""
        ctx = self.contexts.get(app)
        if ctx is not None:
            self._forget(ctx, now)
            self.replica.poke(now)

    # -- pressure -------------------------------------------------------------------------------------
    def reclaim(self, policy: Any, tokens: int, now: float, admission: bool, exclude: Any = None) -> None:
        """Free at least ``tokens`` of GPU KV from pinned and prefetched contexts, in the policy's order,
        each offloaded or discarded as it says (admission reclaims only if the policy lets it)."""
        if admission and not getattr(policy, "reclaim_for_admission", True):
            return
        candidates = [c for c in self.contexts.values() if c.state in (PINNED, PREFETCHED) and c.app is not exclude]
        candidates.sort(key=lambda c: (-c.priority, policy.victim_key(self.replica, c, now), c.since))
        freed = 0
        self._protected = exclude
        for ctx in candidates:
            if freed >= tokens:
                break
            freed += ctx.blocks * self.block
            self.reclaims += 1
            self.apply(policy, ctx, policy.pressure_plan(self.replica, ctx, now), now, poke=False)
        self._protected = None

    def summary(self, now: float) -> dict[str, float]:
        return {"pinned_block_seconds": self.pinned_block_seconds_until(now), "bytes_h2d": self.bytes_h2d,
                "bytes_d2h": self.bytes_d2h, "offloads": self.offloads, "prefetches": self.prefetches,
                "discards": self.discards, "reclaims": self.reclaims, "host_loaded_tokens": self.host_loaded_tokens,
                "host_lost_blocks": self.host_lost_blocks, "offloaded_blocks": self.offloaded_blocks,
                "prefetched_blocks": self.prefetched_blocks}

    def check_invariants(self, name: str) -> None:
        cache = self.cache
        pinned = 0
        for app, ctx in self.contexts.items():
            assert ctx.app is app and ctx.state in (PINNED, PREFETCHED, HOST, UNDECIDED), f"{name}: {ctx} bad state"
            if ctx.state == UNDECIDED:
                assert not self.host or not any(s in self.host.cached_end for s in ctx.private), \
                    f"{name}: {ctx} has a block in host memory"
            elif ctx.state == HOST:
                held = sum(self.host.blocks_of(s) for s in ctx.private)
                assert held == ctx.blocks, f"{name}: {ctx} counts {ctx.blocks} host blocks, holds {held}"
                assert not any(s in cache.cached_end for s in ctx.private if s in self.host.cached_end), \
                    f"{name}: {ctx} has a block on the GPU and in host memory"
            else:
                pinned += ctx.blocks
                assert all(s in cache.refs for s in ctx.chain), f"{name}: {ctx} is not locked in the cache"
                assert not any(s in self.host.cached_end for s in ctx.private) if self.host else True, \
                    f"{name}: {ctx} has a block on the GPU and in host memory"
        assert pinned == self.pinned_blocks, f"{name}: {self.pinned_blocks} pinned blocks counted, {pinned} held"
        if self.host is not None:
            total = sum(self.host.blocks_of(s) for s in self.host.cached_end)
            assert total == self.host.used <= self.host.capacity, \
                f"{name}: host tier holds {total} blocks, counts {self.host.used}, capacity {self.host.capacity}"
            owned = sum(c.blocks for c in self.contexts.values() if c.state == HOST)
            assert owned == total, f"{name}: host blocks {total} not all owned by offloaded contexts ({owned})"
            assert not set(self.host.cached_end) & set(cache.cached_end), f"{name}: a block in two tiers"
            moved = self.prefetched_blocks + self.host_loaded_tokens // self.block + self.host_lost_blocks + total
            assert moved == self.offloaded_blocks, f"{name}: {self.offloaded_blocks} blocks offloaded, {moved} " \
                                                   "accounted (prefetched, loaded, lost, still on the host)"
