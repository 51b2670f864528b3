"""LLM backends: replicas of a model with iteration-level continuous batching, as vLLM runs them.

**Iterations.** Each replica runs iterations back to back while it has work. An iteration decodes one token
for every running request and prefills prompt tokens of admitted requests. With ``chunked_prefill`` (vLLM
V1) the iteration's token budget ``max_num_batched_tokens`` goes first to the decodes, then to the next
chunk of each request whose prefill is under way (in admission order), then to new admissions, so a long
prompt is prefilled over several iterations while decodes go on. Without it (the ``legacy`` engine) an
admitted prompt is prefilled whole in one iteration, prompts up to the budget together (a longer one
alone), and every running decode waits for it. An iteration's time is the latency model's for the mixed
batch actually run: its tokens, its decodes' KV, and each chunk's causal attention over its context.

Decode-only iterations are simulated in *segments*: while the batch does not change, iteration ``k`` of a
segment takes ``lin(B) + per_kv * (S0 + k B) + per_max * (C0 + k)``, so a segment of ``m`` iterations has a
closed-form length, and the replica schedules one event for the earliest of: the first request to finish,
the KV cache filling up. New work cuts the segment at the end of the iteration in progress, so it is
admitted at the next iteration boundary, exactly as stepping one iteration at a time would admit it.

**Admission** (at iteration boundaries) takes requests in the scheduling policy's order while the batch
has fewer than ``max_num_seqs`` requests, the budget has tokens left and the KV cache has room for the
request's context (less what its prefix cache holds) plus one token for every running request. KV is
reserved for the whole context at admission (vLLM allocates per scheduled chunk; the two differ only
while a long prompt is being chunked). When the cache cannot grow by one token per request, unreferenced
prefix-cache blocks are evicted first, then the lowest-priority running request is preempted and
recomputed later (vLLM's recompute preemption): its KV is freed and it rejoins its queue, keeping the
tokens it generated, which its next prefill recomputes. KV is accounted in tokens; the capacity and the
prefix cache are whole blocks (fragmentation inside a request's last private block is not modelled).

**KV accounting** (``kv_accounting``). The above is the default, ``tokens``. ``vllm-0.11`` and ``vllm-0.34``
count KV as vLLM's ``KVCacheManager`` does, in whole blocks (``paged``): a request's block table holds
``ceil(tokens / block_size)`` blocks for the tokens whose KV the iteration planned computes, its prefix hit's
included. Each iteration the admitted requests, in admission order (vLLM's running list), first take the blocks
their tokens need: a decode a new block each time it crosses a block boundary, a prefill its chunk's. When none
is free the lowest-priority admitted request, running or prefilling, is preempted and its blocks freed, and
nothing is admitted in an iteration that preempted. A new request is admitted when the blocks of its first
chunk are free (``vllm-0.34``: and those of its whole context, vLLM's ``scheduler_reserve_full_isl``), with no
reserve for the running requests' growth. A prompt's full blocks enter the prefix cache as they are scheduled,
so that a request admitted after it in the same iteration reuses them; a preempted request's full blocks, those
it generated too, stay cached and unreferenced (its answer's segment is made then) for its next admission. A
decode segment takes the blocks of its iterations at once and ends before the iteration that would want a
block none is free for: a request holding ``h`` blocks at context ``c`` takes its next one ``h B + 1 - c``
iterations on and another every ``B``, so with ``F`` blocks free the segment runs ``(F // n) B`` iterations
plus the ``(F % n)``-th smallest of those offsets (a sort per segment); a cut gives back the blocks of the
iterations cut. Not with disaggregation or a migration policy, which move KV in tokens.

**Asynchronous scheduling** (``async_scheduling``, vLLM's ``--async-scheduling``). vLLM's asynchronous engine
plans iteration ``k + 1`` before it applies iteration ``k``'s output, so a request that finishes in iteration
``k`` still holds its batch slot and its KV while ``k + 1`` is planned, and what waits for them is admitted an
iteration later. With the option the replica does the same: a finished request leaves (its KV freed, its
answer cached, its application told) once the next iteration is planned.

**Prefix reuse** (:mod:`hermes_env.cluster.prefix`). With ``enable_prefix_caching`` a request reuses the
longest run of whole blocks of its prompt that its replica's cache holds, then loads from the remote store
(when the backend has one) the blocks the store holds beyond that, and computes the rest. In ``async``
mode a remote load runs on the replica's network link (one at a time, in admission order) while the GPU
keeps iterating, and the request is prefilled at the first boundary after its blocks arrive; in ``sync``
mode the iteration that prefills it waits for them. Without a local cache, the remote store serves exactly
the request's ``prefix_tokens`` (CALVO's setting, as hermes_env 0.1 modelled it).

**LoRA.** A request for an adapter that is not resident on its replica waits for the adapter to load
(holding its batch slot, like a remote prefix load); a load needs a free adapter slot (``max_loras``) or
a resident adapter no admitted request uses, which it evicts (least recently used first). When neither
exists the request is skipped and admission goes on down the queue (vLLM V1's rule) for key-ordered
policies; a select or external policy's choice waits at the head of the queue instead.

**Replicas** are of one or more kinds (a GPU type: its latency profile, memory, price per GPU-hour and load
path; :class:`~hermes_env.cluster.config.ReplicaKind`), and cold, loading, warm or draining
(:data:`STATE_NAMES`). A cold replica loads in its kind's
``load_time`` (weights over the load tier's bandwidth, plus engine start) when an autoscaler orders it or
when a request arrives and no replica is warm or loading (a cold start on the request's critical path).
A draining replica takes no new requests and goes cold once its work is done. GPU-seconds held (loading,
warm or draining) are integrated for the metrics.

**Disaggregation** (:mod:`hermes_env.cluster.disagg`). A backend split into prefill and decode pools gives each
replica a role; a split request leaves its prefill replica's batch when its prefill ends, its KV held there
(``sending``) until a decode replica takes it (``incoming``, at that replica's boundaries, before its queue) over
the sender's link; it then joins the decode replica's batch as a prompt with nothing left to prefill.

**Queues and routing.** Without a router the replicas share one queue and each takes work at its next
iteration boundary (the idle one first, else the one with the smallest batch): late binding, hermes_env
0.1's only mode. With a router every request is placed on one replica on arrival and waits in that
replica's queue under the scheduling policy.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable
from typing import Any

from hermes_env._mypyc import mypyc_attr
from hermes_env.cluster.config import LLMBackendConfig, ReplicaKind
from hermes_env.cluster.kvtier import KVMemory
from hermes_env.cluster.migration import ON_LINK
from hermes_env.cluster.prefix import PrefixCache, RemoteStore, Segment
from hermes_env.cluster.queue import DecisionPending, WaitQueue
from hermes_env.cluster.request import Request
from hermes_env.cluster.tool import EventScheduler
from hermes_env.errors import require

COLD, LOADING, WARM, DRAINING = 0, 1, 2, 3
STATE_NAMES = {COLD: "cold", LOADING: "loading", WARM: "warm", DRAINING: "draining"}


@mypyc_attr(allow_interpreted_subclasses=True)
class Replica:
    """One model replica. Running requests are kept against an iteration *clock* (decode tokens produced
    per running request since the replica started): a request admitted at clock ``c`` with context ``x``
    and ``y`` tokens left holds ``x + (clock - c)`` tokens and finishes at clock ``c + y``. A heap on the
    finishing clock and the running sums make every event O(log batch) with no per-request updates."""

    # Conformance hook (tests/test_conformance.py): when set, decode segments are one iteration long and it is
    # called with every iteration as planned, so that the schedule can be compared step by step with vLLM's.
    on_iteration: Callable[[Replica, float], None] | None = None

    def __init__(self, backend: LLMBackend, index: int, queue: WaitQueue, kind: ReplicaKind, warm: bool) -> None:
        self.backend, self.index, self.queue, self.kind = backend, index, queue, kind
        cfg = backend.cfg
        self.capacity = cfg.kv_capacity(kind)
        self.max_batch = cfg.max_num_seqs
        self.budget = cfg.max_num_batched_tokens
        self.chunked = cfg.chunked_prefill
        self.latency = kind.latency
        self.block = cfg.block_size
        # vLLM's block accounting (kv_accounting vllm-0.11 / vllm-0.34, see _allocate): each admitted request's
        # block table, in admission order (vLLM's running list); ``Request.kv`` is the part outside the cache
        self.paged = cfg.kv_accounting != "tokens"
        self.reserve_full = cfg.kv_accounting == "vllm-0.34"
        self.table: dict[Request, int] = {}
        self.held_back = False  # paged: admission skipped in the iteration planned, which preempted
        # async scheduling: requests that finished in the iteration just run, with the KV tokens they held, which
        # they keep (and their batch slots) until the next iteration is planned
        self.async_scheduling = cfg.async_scheduling
        self.finishing: list[tuple[Request, int]] = []
        self.cache = PrefixCache(cfg.block_size) if cfg.enable_prefix_caching else None
        self.remote_cfg = cfg.remote_store
        self.kv_bytes_per_token = cfg.model.kv_bytes_per_token
        self.lora = cfg.lora
        # agentic KV memory (hermes_env.cluster.kvtier): with a retention policy and a prefix cache
        self.kvmem = KVMemory(self, cfg.host_kv_tier) if backend.retention is not None and self.cache is not None \
            else None
        self.state = WARM if warm else COLD
        self.ready_at = 0.0  # when a loading replica will be warm
        self.clock = 0
        self.running: dict[Request, tuple[int, int, int]] = {}  # request -> (ctx0, finish clock, admission id)
        self._finish: list[tuple[int, int, Request]] = []  # (finish clock, admission id, request), lazy
        self._longest: list[tuple[int, int, Request]] = []  # (-ctx0, admission id, request), lazy
        self.sum_ctx0 = 0  # sum of ctx0: the running requests hold sum_ctx0 + n * clock tokens
        self._admissions = 0
        self.kv_used = 0  # tokens held or reserved outside the prefix cache, plus the cache's blocks
        self.prefilling: list[Request] = []  # admitted, prefill not finished (in admission order)
        self.staged: set[Request] = set()  # admitted, waiting for a remote prefix load or an adapter
        self.ready: list[Request] = []  # staged requests whose wait is over, prefilled first
        self.resident: dict[str, int] = {}  # LoRA adapter -> admitted requests using it (in LRU order)
        self.adapter_ready: dict[str, float] = {}  # adapters loading -> when they are resident
        self.link_free_at = 0.0
        # request migration (hermes_env.cluster.migration): batch slots reserved by migrations coming here,
        # migrations stopping here and arrived here, each handled at the next iteration boundary
        self.inbound = 0
        self.leaving: list[Any] = []
        self.arrived: list[Any] = []
        # prefill/decode disaggregation (hermes_env.cluster.disagg): the replica's pool, split requests whose KV
        # it holds until a decode replica has it, and those waiting here for their KV to be sent
        self.role = ""
        self.sending: dict[Request, int] = {}  # request -> private KV tokens held for it
        self.incoming: list[Request] = []
        self.version = 0
        self.busy = False
        self.deciding = False  # suspended in admission until an external policy chooses
        # the plan of the iteration or segment in progress
        self.t0 = 0.0
        self.planned = 0  # decode iterations planned in the segment (0 for a mixed iteration)
        self.a = 0.0  # segment length T(m) = a m^2 + b m
        self.b = 0.0
        self.mixed_time = 0.0
        self._chunks: dict[Request, int] = {}  # prefill tokens of each request in the iteration being planned
        self._left = 0  # tokens of the budget not yet given to a chunk
        self._load_stall = 0.0
        # accounting
        self.busy_seconds = 0.0
        self.iterations = 0
        self.preemptions = 0
        self.load_seconds = 0.0
        self.context_tokens = 0  # prompt (+ generated) tokens of every admission
        self.computed_tokens = 0  # of which to prefill on this replica
        self.prefilled_tokens = 0  # prefill tokens the iterations ran (chunks finished)
        self.longest_iteration = 0.0  # seconds: the longest gap between two tokens of a running request
        self.cached_tokens = 0  # served from this replica's prefix cache
        self.loaded_tokens = 0  # fetched from the remote store
        self.adapter_loads = 0
        self.resumed_tokens = 0  # prompt tokens of admissions that an earlier call of the application computed
        self.resumed_gpu = self.resumed_host = 0  # of which served from the GPU, from the host tier
        self.reprefilled_tokens = 0  # of which prefilled again (KV thrash)

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
        """Remove a running request; returns the KV tokens it held outside the prefix cache."""
        ctx0, _, _ = self.running.pop(r)
        self.sum_ctx0 -= ctx0
        if self.paged:
            del self.table[r]
            return r.kv
        return ctx0 + self.clock - r.cached

    def _private(self, r: Request) -> int:
        """KV tokens a running request holds outside the prefix cache (what preempting it frees)."""
        return r.kv if self.paged else self.context(r) - r.cached

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def _batch(self) -> int:
        return len(self.running) + len(self.prefilling) + len(self.staged) + len(self.ready) + self.inbound \
            + len(self.finishing)

    def context_now(self, request: Request, now: float) -> int:
        """A running request's context at ``now``, counting the iterations of the segment under way."""
        done = self._iterations_by(now - self.t0) if self.busy and self.planned > 0 else 0
        return self.context(request) + done

    @property
    def outstanding(self) -> int:
        """Requests routed to or admitted by this replica and not finished."""
        own = len(self.queue) if self.queue is not self.backend.queue else 0
        return own + self._batch() + len(self.incoming)

    @property
    def idle(self) -> bool:
        return not self.busy and not self._batch()

    def free_tokens(self) -> int:
        """KV tokens free now, counting unreferenced prefix-cache blocks as free."""
        free = self.capacity - self.kv_used
        return free + self.block * self.cache.evictable_blocks() if self.cache is not None else free

    def _room(self, tokens: int, now: float | None = None, admission: bool = False, exclude: Any = None) -> bool:
        """Make ``tokens`` of KV free, evicting unreferenced prefix-cache blocks if need be; given ``now``, a
        retention policy may first free pinned contexts (not ``exclude``'s), for ``admission`` if it allows."""
        short = self.kv_used + tokens - self.capacity
        if short <= 0:
            return True
        if self.cache is None:
            return False
        lacking = short - self.cache.evictable_blocks() * self.block
        if lacking > 0 and now is not None and self.kvmem is not None:
            self.kvmem.reclaim(self.backend.retention, lacking, now, admission, exclude)
            short = self.kv_used + tokens - self.capacity  # offloads and discards freed KV outside the cache
            if short <= 0:
                return True
        if self.cache.evictable_blocks() * self.block < short:
            return False
        evicted = self.cache.evict(self._blocks(short))
        self.kv_used -= evicted * self.block
        return True

    # -- prefix reuse ---------------------------------------------------------------------------------
    def load_time(self, r: Request) -> float:
        """Seconds to fetch the request's reusable prefix from the remote store (0 without one)."""
        if self.remote_cfg is None:
            return 0.0
        tokens = r.loaded if r.admitted_at >= 0 else self._remote_tokens(r, self.prefix_hit(r))
        return tokens * self.kv_bytes_per_token / self.remote_cfg.load_bandwidth

    def prefix_hit(self, r: Request) -> int:
        """Tokens of ``r``'s prompt this replica's prefix cache holds now (whole blocks; paged, of its context: a
        preempted request's generated blocks are cached too)."""
        if self.cache is None or not r.chain:
            return 0
        return self.cache.match(r.chain, r.context if self.paged else r.prompt_tokens)

    def _remote_tokens(self, r: Request, hit: int) -> int:
        """Tokens the remote store serves beyond the local hit."""
        if self.remote_cfg is None:
            return 0
        if self.cache is None:
            return r.prefix_tokens  # CALVO as hermes_env 0.1 modelled it: exactly the reusable prefix
        return max(0, self.backend.remote.lookup(r.chain, r.prompt_tokens - 1) - hit)  # type: ignore[union-attr]

    def _prefill_left(self, r: Request) -> int:
        return r.context - r.cached - r.host - r.loaded - r.computed

    # -- the iteration loop -----------------------------------------------------------------------
    def poke(self, now: float) -> None:
        """New work may be waiting: start at once if idle, else cut a decode segment at the next boundary."""
        if self.deciding or self.state not in (WARM, DRAINING):
            return
        if not self.busy:
            self._boundary(now, self.version)
        elif self.ready or self._batch() < self.max_batch:
            self.cut(now)

    def cut(self, now: float) -> None:
        """End the decode segment under way at the end of the iteration in progress (its next boundary)."""
        if self.planned > 1:
            done = self._iterations_by(now - self.t0)
            if done + 1 < self.planned:
                if self.paged:  # each keeps the blocks of the iterations left to run, the last at context + done
                    table, block, last = self.table, self.block, self.clock + done
                    for r, entry in self.running.items():
                        cut = table[r] - (entry[0] + last + block - 1) // block
                        table[r] -= cut
                        r.kv -= cut * block
                        self.kv_used -= cut * block
                else:
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
            if self.backend.timeline is not None:
                self.backend.timeline.iteration(self, now)
            self.busy_seconds += now - self.t0
            self._apply_progress(now)
        if self.leaving or self.arrived:
            self.backend.migrator.boundary(self, now)
        self._load_stall = 0.0
        self._plan_chunks()
        self._continue(now)

    def _resume(self, now: float) -> None:
        self.deciding = False
        if self.leaving or self.arrived:
            self.backend.migrator.boundary(self, now)
        self._continue(now)

    def _continue(self, now: float) -> None:
        """Admit, then plan the next iteration; suspends if an external policy has a choice to make."""
        try:
            # paged: the admitted requests take this iteration's blocks first, and vLLM admits nothing in an
            # iteration that preempted (unless nothing is left to run): the queue is tried again at the next one
            self.held_back = self.paged and self._allocate(now) and bool(self.running or self._chunks)
            if not self.held_back:
                self._admit(now)
            if self._chunks:
                self._plan_mixed(now)
            elif not (self.running and self._plan_segment(now)):  # it may preempt everything and admit again
                self.busy = False  # staged requests call poke when their wait is over
                if self.backend.timeline is not None:
                    self.backend.timeline.idle(self, now)
                self._release_finished(now)  # (what waited for their slots may start at once)
                if not self.busy and not self._batch():
                    self.backend.replica_idle(self, now)
                return
        except DecisionPending:
            self.deciding = True
            self.backend.on_decision(self.queue, now, self._resume)  # type: ignore[misc]
            return
        if self.on_iteration is not None:
            self.on_iteration(self, now)
        self.busy = True
        self.version += 1
        end = self.t0 + (self.mixed_time if self.planned == 0 else self._segment_time(self.planned))
        self.backend.engine.at(end, self._boundary, self.version)
        self._release_finished(now)

    def _release_finished(self, now: float) -> None:
        """Async scheduling: the requests that finished in the iteration before the one just planned leave, as
        vLLM applies an iteration's output only once the next is planned: their slots and KV were still held
        while it was, and what waits for them is admitted at the next boundary."""
        if not self.finishing:
            return
        done, self.finishing = self.finishing, []
        for r, held in done:
            self.kv_used -= held
            self._finished(r, now)
            self.backend.finish(r, now)
        if len(self.queue):
            self.poke(now)

    def _plan_chunks(self) -> None:
        """Start an iteration's plan: with chunked prefill, decodes take their tokens first, then each
        prefill under way its next chunk, in admission order."""
        self._chunks = {}
        if not self.chunked:
            self._left = self.budget
            return
        left = self.budget - len(self.running)
        for r in self.prefilling:
            if left <= 0:
                break
            chunk = min(self._prefill_left(r), left)
            self._chunks[r] = chunk
            left -= chunk
        self._left = left

    def _apply_progress(self, now: float) -> None:
        steps = 1 if self.planned == 0 else self.planned
        self.iterations += steps
        self.clock += steps  # the running requests' growth was reserved when the steps were planned
        if self.planned == 0:
            for r, chunk in self._chunks.items():
                r.computed += chunk
                self.prefilled_tokens += chunk
                if self._prefill_left(r) == 0:  # the prefill produced the request's next token
                    self.prefilling.remove(r)
                    r.generated += 1
                    if r.first_token < 0:
                        r.first_token = now
                    self._prefilled(r)
                    if r.split and self.role == "prefill" and self.backend.handoff.prefilled(self, r, now):
                        continue  # its KV moves to a decode replica
                    self._join(r)
        heap, running, clock = self._finish, self.running, self.clock
        while heap and heap[0][0] <= clock:
            _, admission, r = heapq.heappop(heap)
            if running.get(r, (0, 0, -1))[2] != admission:
                continue  # stale: preempted since
            held = self._leave(r)
            r.generated = r.output_tokens
            r.finished = now
            if self.async_scheduling:
                self.finishing.append((r, held))
                continue
            self.kv_used -= held
            self._finished(r, now)
            self.backend.finish(r, now)

    def _prefilled(self, r: Request) -> None:
        """The prompt's whole blocks enter the prefix cache (and the remote store): its KV there is shared."""
        if self.cache is None or not r.chain:
            return
        if self.paged:  # (its blocks entered the cache as its chunks were scheduled)
            self._share(r, r.context - 1)
        else:
            full = r.prompt_tokens // self.block * self.block
            added = self.cache.insert(r.chain, r.prompt_tokens)
            self.kv_used += added * self.block - (full - r.cached)
            r.cached = full
        if self.backend.remote is not None:
            self.backend.remote.publish(r.chain, r.prompt_tokens)

    def _finished(self, r: Request, now: float) -> None:
        """The answer continues the conversation: ``r.chain`` gains it, and its whole blocks are cached; the
        retention policy (if any) decides what happens to them until the application's next call."""
        prompt = r.chain if r.answer is None else r.chain[:-1]
        answer = r.answer
        if answer is None or answer.size != r.output_tokens:  # (made when it was preempted, unless redrawn since)
            answer = Segment(prompt[-1] if prompt else None, r.prompt_tokens, r.output_tokens)
        whole = (*prompt, answer)
        if self.cache is not None and r.chain:
            # the answer's whole blocks stay, shared (the request's private KV was freed as it left)
            self.kv_used += self.cache.insert(whole, r.prompt_tokens + r.output_tokens) * self.block
            self.cache.release(r.chain)
            if self.backend.remote is not None:
                self.backend.remote.publish(whole, r.prompt_tokens + r.output_tokens)
        r.chain = whole
        self._release_adapter(r)
        if self.kvmem is not None and r.copy == 0:
            self.kvmem.boundary(self.backend.retention, r, now)

    def _admit(self, now: float) -> None:
        while self.ready:  # requests whose wait (remote prefix, adapter) is over go first
            r = self.ready[0]
            if self.chunked:
                if self._left <= 0:
                    break
                chunk = min(self._prefill_left(r), self._left)
            else:
                chunk = self._prefill_left(r)
                if self._chunks and chunk > self._left:
                    break
            if self.paged and not self._grow(r, self._done(r) + chunk, now):
                break
            self.ready.pop(0)
            self._start_prefill(r, chunk)
        if self.incoming:  # prefilled elsewhere: their KV comes first
            self.backend.handoff.receive(self, now)
        if not self._accepting():
            return
        queue = self.queue
        # vLLM V1 skips a request whose adapter cannot be loaded now (the queue indexes them by adapter)
        admissible = self._adapter_slot if self.lora is not None and queue.ordered_by_key else None
        try:
            while len(queue) and self._batch() < self.max_batch and (self._left > 0 or not self.chunked):
                head = queue.peek(now, admissible)
                if head is None or head.adapter is not None and not self._adapter_slot(head.adapter):
                    break  # every request left is skipped, or a select policy's choice waits at the head
                if not self._try_admit(head, now):
                    break
        finally:
            queue.end_pass()

    def _accepting(self) -> bool:
        """A warm replica admits; a draining one finishes only the requests routed to it."""
        return self.state == WARM or (self.state == DRAINING and self.queue is not self.backend.queue)

    def _try_admit(self, r: Request, now: float) -> bool:
        """Admit the head of the queue if the budget and the KV cache allow; False stops admission."""
        hit = self.prefix_hit(r)
        host = self.kvmem.host_hit(r.app, r.chain, hit, r.prompt_tokens - 1) if self.kvmem is not None else 0
        loaded = self._remote_tokens(r, hit + host)
        compute = r.context - hit - host - loaded
        if self.chunked:
            chunk = min(compute, self._left)
        else:
            chunk = compute
            if self._chunks and chunk > self._left:
                return False  # a prompt longer than the budget is prefilled alone
        growth = self._batch() + 1
        if self.cache is not None and r.chain:
            self.cache.acquire(r.chain)  # so that making room cannot evict the blocks it reuses
        fits = True
        if self.paged:  # the blocks of its first chunk (0.34: only if its whole context fits the free blocks)
            need = self._blocks(r.context - compute + chunk) * self.block - hit
            fits = not self.reserve_full or self._blocks(r.context) * self.block - hit <= self.free_tokens()
        else:
            need = r.context - hit + growth
        if not fits or not self._room(need, now, True, r.app) and not self._make_room(r, need, now):
            if self.cache is not None and r.chain:
                self.cache.release(r.chain)
            return False
        self.queue.pop(now)
        r.started = now if r.started < 0 else r.started
        r.admitted_at = now
        r.cached, r.host, r.loaded, r.computed = hit, host, loaded, 0
        r.kv = need if self.paged else r.context - hit
        self.kv_used += r.kv
        if self.paged:
            self.table[r] = need // self.block + hit // self.block
            self._share(r, r.context - compute + chunk)
        self.context_tokens += r.context
        self.cached_tokens += hit
        self.loaded_tokens += r.loaded
        self.computed_tokens += compute
        ready_at = now
        if r.resumed:
            resumed = min(r.resumed, r.context)
            self.resumed_tokens += resumed
            self.resumed_gpu += min(hit, resumed)
            self.resumed_host += min(host, max(0, resumed - hit))
            self.reprefilled_tokens += max(0, resumed - hit - host - loaded)
        if self.kvmem is not None:
            ready_at = self.backend.claim_context(self, r.app, host, now)
        if r.loaded:
            load = r.loaded * self.kv_bytes_per_token / self.remote_cfg.load_bandwidth  # type: ignore[union-attr]
            self.load_seconds += load
            if self.remote_cfg.mode == "async":  # type: ignore[union-attr]  # fetch on the link while the GPU works
                self.link_free_at = max(now, self.link_free_at) + load
                ready_at = max(ready_at, self.link_free_at)
            else:
                self._load_stall += load  # sync: the iteration waits for the fetch
        if r.adapter is not None:
            ready_at = max(ready_at, self._use_adapter(r.adapter, now))
        if self.backend.timeline is not None:
            self.backend.timeline.admitted(self, r, now, ready_at)
        if ready_at > now:
            self.staged.add(r)
            self.backend.engine.at(ready_at, self._staged_ready, r)
        else:
            self._start_prefill(r, chunk)
        return True

    def _start_prefill(self, r: Request, chunk: int) -> None:
        self.prefilling.append(r)
        self._chunks[r] = chunk  # may be 0: a prompt served whole from a remote store still yields a token
        self._left -= chunk

    def _staged_ready(self, now: float, r: Request) -> None:
        if r in self.staged:  # not preempted meanwhile
            self.staged.discard(r)
            self.ready.append(r)
            self.poke(now)

    # -- LoRA adapters ------------------------------------------------------------------------------
    def _adapter_slot(self, adapter: str) -> bool:
        """Whether a request for ``adapter`` can be admitted now: resident, loading, or loadable."""
        if adapter in self.resident or adapter in self.adapter_ready:
            return True
        if len(self.resident) < self.lora.max_loras:  # type: ignore[union-attr]
            return True
        return any(n == 0 and a not in self.adapter_ready for a, n in self.resident.items())

    def _use_adapter(self, adapter: str, now: float) -> float:
        """Count a request as using ``adapter``; returns when the adapter is resident (loading it if need be)."""
        if adapter in self.resident:
            self.resident[adapter] = self.resident.pop(adapter) + 1  # most recently used last
            return self.adapter_ready.get(adapter, now)
        if len(self.resident) >= self.lora.max_loras:  # type: ignore[union-attr]
            victim = next(a for a, n in self.resident.items() if n == 0 and a not in self.adapter_ready)
            del self.resident[victim]
        self.resident[adapter] = 1
        ready = now + self.lora.load_time()  # type: ignore[union-attr]
        self.adapter_ready[adapter] = ready
        self.adapter_loads += 1
        self.backend.engine.at(ready, self._adapter_loaded, adapter, ready)
        return ready

    def _adapter_loaded(self, now: float, adapter: str, ready: float) -> None:
        if self.adapter_ready.get(adapter) == ready:
            del self.adapter_ready[adapter]

    def _release_adapter(self, r: Request) -> None:
        if r.adapter is not None:
            self.resident[r.adapter] -= 1

    # -- planning --------------------------------------------------------------------------------------
    def _plan_mixed(self, now: float) -> None:
        pairs = tokens = finishing = 0
        for r, chunk in self._chunks.items():
            done = r.cached + r.host + r.loaded + r.computed  # context already in KV: causal attention over it
            pairs += (done + chunk) ** 2 - done**2
            tokens += chunk
            finishing += chunk == self._prefill_left(r)
        # every decode and each finished prefill grows by a token: admission reserved that room, but a
        # chunked iteration may admit nothing, so make it here (evicting, then preempting) if need be
        while not self.paged and self.running and not self._room(len(self.running) + finishing, now):
            self._preempt(now)
        n_run = len(self.running)
        self.t0, self.planned = now, 0
        self.mixed_time = self._load_stall + self.latency.iteration_time(
            tokens + n_run, kv_tokens=self._kv_held(), prefill_pairs=pairs, max_context=self._max_context(),
            requests=n_run + len(self._chunks))
        if n_run and self.mixed_time > self.longest_iteration:
            self.longest_iteration = self.mixed_time
        if not self.paged:  # (paged: _allocate took the iteration's blocks)
            self.kv_used += n_run + finishing  # every decoding request's next token, and each finished prefill's

    def _plan_segment(self, now: float) -> bool:
        """Plan a decode segment (True), or a mixed iteration if every running request had to be preempted and
        one was admitted again; False when none could be and KV in flight holds the cache (the replica waits for
        it: a staged request's remote prefix or hand-off, a split request's KV not yet taken by the decode pool)."""
        if not self.paged:  # (paged: _allocate took the iteration's blocks, preempting if need be)
            if self.kvmem is not None and len(self.running) > self.free_tokens():  # idle contexts go first
                self.kvmem.reclaim(self.backend.retention, len(self.running) - self.free_tokens(), now, False)
            while self.running and len(self.running) > self.free_tokens():  # no room for one more token each
                self._preempt(now)
        n = len(self.running)
        if n == 0:  # everything was preempted: restart from admission
            self._plan_chunks()
            self._admit(now)
            if self._chunks:
                self._plan_mixed(now)
                return True
            if self.staged or self.sending:
                return False
            raise RuntimeError(f"{self.backend.name}: a single request does not fit the KV cache")
        heap = self._finish
        while self.running.get(heap[0][2], (0, 0, -1))[2] != heap[0][1]:
            heapq.heappop(heap)
        if self.on_iteration is not None or self.held_back and len(self.queue):
            m = 1
        elif self.paged:
            m = min(heap[0][0] - self.clock, self._decodes_fitting(heap[0][0] - self.clock))
        else:
            m = min(heap[0][0] - self.clock, self.free_tokens() // n)
        lat = self.latency
        # Decode attention is the larger of a term in all cached tokens (growing n per iteration) and one
        # in the longest context (growing 1): iteration k takes base + k * step while the larger stays the
        # larger, so the segment ends where the other would overtake and the next one is planned from there.
        kv = (lat.per_kv_token * self._kv_held(), lat.per_kv_token * n)
        longest = (lat.per_max_context * self._max_context(), lat.per_max_context)
        (lead, lead_step), (other, other_step) = (kv, longest) if kv[0] >= longest[0] else (longest, kv)
        if other_step > lead_step:  # the lead holds for iterations k <= (lead - other) / (other_step - lead_step)
            m = min(m, int((lead - other) / (other_step - lead_step)) + 1)
        if self.paged:
            self._reserve_decodes(m)
        else:
            self._room(m * n)
        base, step = float(lat.linear_layers(n)) + lead, lead_step  # step: growth of the time per iteration
        if lat.scheduler_overhead or lat.scheduler_overhead_per_request:  # the engine's time between passes
            base += lat.overhead(n)
        self.a, self.b = step / 2.0, base - step / 2.0
        self.t0, self.planned = now, m
        if not self.paged:
            self.kv_used += m * n  # reserve the segment's growth
        return True

    # -- vLLM's block accounting (kv_accounting vllm-0.11 / vllm-0.34) -----------------------------------
    def _done(self, r: Request) -> int:
        """Tokens of an admitted request's context whose KV is in place or being prefilled."""
        return r.cached + r.host + r.loaded + r.computed

    def _grow(self, r: Request, tokens: int, now: float) -> bool:
        """Give ``r``'s block table the blocks ``tokens`` tokens need (evicting unreferenced cached blocks if
        need be); False if they cannot be had. A prefill's full prompt blocks enter the prefix cache as they are
        scheduled, as vLLM caches them (so a request admitted after it in the same iteration reuses them)."""
        need = self._blocks(tokens) - self.table[r]
        if need > 0:
            if not self._room(need * self.block, now):
                return False
            self.table[r] += need
            r.kv += need * self.block
            self.kv_used += need * self.block
        if r not in self.running:
            self._share(r, tokens)
        return True

    def _share(self, r: Request, tokens: int) -> None:
        """The full blocks of ``r``'s prompt within its first ``tokens`` tokens enter the prefix cache: its
        blocks there are shared (a block another request cached meanwhile is freed, its copy used)."""
        if self.cache is None or not r.chain:
            return
        upto = min(tokens, r.prompt_tokens if r.answer is None else r.context)
        mine = self.table[r] * self.block - r.kv  # tokens of its table in the cache already
        newly = upto // self.block * self.block - mine
        if newly > 0:
            added = self.cache.insert(r.chain, upto)
            r.kv -= newly
            self.kv_used += added * self.block - newly

    def _allocate(self, now: float) -> bool:
        """vLLM's first pass over its running requests: each admitted request, in admission order, takes the
        blocks this iteration's tokens need (a decode its next token's, a prefill its chunk's); when none are
        free the lowest-priority admitted request is preempted and its blocks freed. True if one was."""
        preempted = False
        table, running, block, clock = self.table, self.running, self.block, self.clock
        for r in list(table):
            if r in running:
                tokens = running[r][0] + clock
                if tokens <= table[r] * block:
                    continue  # its blocks hold this decode's token
            elif r in self._chunks:
                tokens = self._done(r) + self._chunks[r]
            else:
                continue  # staged, or gone as a victim
            while r in self.table and not self._grow(r, tokens, now):
                self._preempt(now, self._victim())
                preempted = True
        return preempted

    def _keep_generated(self, r: Request) -> int:
        """vLLM caches a request's blocks as they fill, those it generated too, and a preempted request's
        stay cached (unreferenced, its last blocks evicted first) for its next admission to reuse: its answer's
        segment is made now and its full blocks cached. Returns the KV tokens that moved to the cache."""
        if self.cache is None or not r.chain or r.generated <= 0:
            return 0
        if r.answer is None:
            r.answer = Segment(r.chain[-1], r.prompt_tokens, r.output_tokens)
            r.chain = (*r.chain, r.answer)
        return self.cache.insert(r.chain, r.context - 1) * self.block

    def _victim(self) -> Request:
        """The request preemption takes: the lowest-priority running one (paged: or prefilling one)."""
        candidates = (*self.running, *self.prefilling) if self.paged else self.running
        return max(candidates, key=lambda r: (r.key, r.seq))

    def _decodes_fitting(self, wanted: int) -> int:
        """Decode iterations the running requests can run before one needs a block that no free block is left
        for (or ``wanted``, when they can run that many). A request holding ``h`` blocks at context ``c`` takes
        its next block at iteration ``h B + 1 - c`` (counting from 0, at least 1) and another every ``B``: with
        ``F`` blocks free, the ``F + 1``-th block is wanted after ``F // n`` rounds of ``B`` iterations, at the
        ``F % n``-th earliest of those offsets."""
        block, n = self.block, len(self.running)
        free = self.free_tokens() // block
        if free // n * block + 1 >= wanted:  # the earliest the blocks can run out: no need to sort
            return wanted
        table, clock = self.table, self.clock
        offsets = sorted(table[r] * block + 1 - entry[0] - clock for r, entry in self.running.items())
        return free // n * block + offsets[free % n]

    def _reserve_decodes(self, m: int) -> None:
        """Give each running request the blocks of ``m`` decode iterations (which :meth:`_decodes_fitting`
        says are free, evicting unreferenced cached blocks if need be)."""
        total, table, block, last = 0, self.table, self.block, self.clock + m - 1
        for r, entry in self.running.items():
            extra = (entry[0] + last + block - 1) // block - table[r]  # the blocks of context ctx0 + clock + m - 1
            if extra > 0:
                table[r] += extra
                r.kv += extra * block
                total += extra
        self._room(total * block)
        self.kv_used += total * block

    def _make_room(self, head: Request, need: int, now: float) -> bool:
        """If the policy lets ``head`` take KV memory from running requests (BROS: real-time from
        best-effort), preempt such requests, lowest priority first, until ``need`` tokens fit."""
        if not hasattr(self.queue.policy, "may_preempt"):  # compiled, getattr's default costs an exception
            return False
        may_preempt = self.queue.policy.may_preempt
        victims = sorted((r for r in self.running if may_preempt(head, r)), key=lambda r: (r.key, r.seq))
        if self.free_tokens() + sum(self._private(r) for r in victims) < need:
            return False
        while not self._room(need):
            self._preempt(now, victims.pop())
        return True

    def _preempt(self, now: float, victim: Request | None = None) -> None:
        """Free the KV of a running request (by default the lowest-priority one) and send it back to its
        queue; what it generated is recomputed when it is admitted again."""
        if victim is None:
            victim = self._victim()
        if self.backend.timeline is not None:
            self.backend.timeline.preempted(self, victim, now)
        chain = victim.chain
        if victim in self.running:
            victim.generated = self.context(victim) - victim.prompt_tokens
            held = self._leave(victim)
            if self.paged:
                held -= self._keep_generated(victim)
        else:  # paged: a request still prefilling (in vLLM's running list too) loses its chunks so far
            self.prefilling.remove(victim)
            self._left += self._chunks.pop(victim, 0)
            self.computed_tokens -= self._prefill_left(victim)
            del self.table[victim]
            held = victim.kv
        self.kv_used -= held
        if self.cache is not None and chain:
            self.cache.release(chain)
        self._release_adapter(victim)
        victim.cached = victim.host = victim.loaded = victim.computed = victim.kv = 0
        victim.admitted_at = -1.0
        victim.preemptions += 1
        self.preemptions += 1
        self.queue.push(victim, now)

    # -- migration hooks (hermes_env.cluster.migration) ------------------------------------------------
    def detach(self, r: Request) -> None:
        """Take running ``r`` out of the batch with its KV, which is freed here (its copy is on the link):
        what it generated so far stays generated."""
        held = self._leave(r)
        r.generated = held + r.cached - r.prompt_tokens
        self.kv_used -= held
        if self.cache is not None and r.chain:
            self.cache.release(r.chain)
        r.cached = r.host = r.loaded = 0
        r.computed = r.kv = r.context

    def join_migrated(self, r: Request, now: float) -> None:
        """``r`` arrived with its whole context, reserved here as it was copied: it decodes on in this batch,
        its KV private (the prompt's blocks enter this prefix cache when it finishes, as they would here)."""
        if self.cache is not None and r.chain:
            self.cache.acquire(r.chain)
        r.replica = self
        self._join(r)

    def poke_migrated(self, now: float) -> None:
        """A migrated request arrived: join it at the next boundary (now, if idle)."""
        if self.deciding:
            return  # joined when the choice is made
        if not self.busy:
            self._boundary(now, self.version)
        else:
            self.cut(now)

    def redraw_admitted(self, rng: Any, redraw: Callable[[Request, Any], None], now: float) -> None:
        """Redraw the output lengths of the admitted requests (``redraw``), each beyond what it has generated by
        ``now``; a running request gets a new admission id, so that its finish follows the new length (a finish
        inside the segment under way comes at the segment's end). For a planner's copy only."""
        for r in (*self.prefilling, *sorted(self.staged, key=lambda r: (r.admitted_at, r.seq)), *self.ready):
            redraw(r, rng)
        for r, (ctx0, _, _) in list(self.running.items()):
            r.generated = self.context_now(r, now) - r.prompt_tokens
            redraw(r, rng)
            self._admissions += 1
            finish = r.prompt_tokens + r.output_tokens - ctx0  # the clock at which its context is whole
            self.running[r] = (ctx0, finish, self._admissions)
            heapq.heappush(self._finish, (finish, self._admissions, r))
            heapq.heappush(self._longest, (-ctx0, self._admissions, r))

    def compact(self) -> None:
        """Drop the stale entries of the lazy heaps (requests that left or were preempted since), which
        would be skipped when they reach the top: the order of the others, and so every later event, is
        unchanged. Called before a snapshot, so that copies carry no finished requests."""
        running = self.running
        for heap in (self._finish, self._longest):
            if len(heap) > len(running):  # a stale entry holds a request that left, and its application
                heap[:] = [e for e in heap if running.get(e[2], (0, 0, -1))[2] == e[1]]
                heapq.heapify(heap)
        if self.cache is not None:
            self.cache.compact()

    def check_invariants(self) -> None:
        name = f"{self.backend.name}[{self.index}]"
        assert self.kv_used <= self.capacity, f"{name}: KV {self.kv_used} > capacity {self.capacity}"
        assert self._batch() <= self.max_batch, f"{name}: batch over max_batch"
        staged = [*self.prefilling, *self.staged, *self.ready]
        shared = self.block * self.cache.blocks if self.cache is not None else 0
        if self.paged:
            self._check_blocks(name, staged, shared)
        else:
            held = self._kv_held() - sum(r.cached for r in self.running) + sum(r.kv for r in staged) \
                + sum(self.sending.values())
            assert 0 <= held + shared <= self.kv_used, f"{name}: requests hold {held} KV tokens and the cache " \
                                                       f"{shared}, accounted {self.kv_used}"
        assert self.sum_ctx0 == sum(v[0] for v in self.running.values())
        for r, (ctx0, finish, _) in self.running.items():  # a request finishes when its context is whole
            assert finish == r.prompt_tokens + r.output_tokens - ctx0, f"{name}: {r} finishes at the wrong clock"
        if self.cache is not None:
            self.cache.check_invariants()
            for r in self.running:  # the blocks a running request reads are never evicted under it
                limit = r.context if self.paged else r.prompt_tokens
                assert self.cache.lookup(r.chain, limit) >= r.cached, f"{name}: {r} lost cached blocks"
        left = sum(self._prefill_left(r) for r in (*self.prefilling, *self.staged, *self.ready))
        assert self.prefilled_tokens + left == self.computed_tokens, f"{name}: prefill run differs from that admitted"
        if self.lora is not None:
            assert len(self.resident) <= self.lora.max_loras, f"{name}: more adapters resident than max_loras"
        if self.state == COLD:
            assert not self._batch() and not self.busy and not self.sending and not self.incoming, \
                f"{name}: a cold replica holds work"
        if self.kvmem is not None:
            self.kvmem.check_invariants(name)

    def _check_blocks(self, name: str, admitted: list[Request], shared: int) -> None:
        """Paged accounting: the replica's blocks are its requests' private blocks and the cache's, within its
        capacity, and each running request holds the blocks of its KV (through the iterations planned)."""
        block = self.block
        assert self.kv_used % block == 0 and self.capacity % block == 0, f"{name}: KV not in whole blocks"
        assert set(self.table) == {*self.running, *admitted}, f"{name}: block tables and admitted requests differ"
        held = sum(r.kv for r in self.table) + sum(h for _, h in self.finishing)
        assert held + shared == self.kv_used, f"{name}: requests hold {held} KV tokens in blocks and the cache " \
                                              f"{shared}, accounted {self.kv_used}"
        ahead = max(self.planned, 1)  # the iterations planned (or about to be): their blocks may be taken
        for r in self.running:
            c = self.context(r)
            assert r.kv % block == 0 and 0 <= r.kv <= self.table[r] * block, f"{name}: {r} holds {r.kv} tokens"
            assert self._blocks(c - 1) <= self.table[r] <= self._blocks(c - 1 + ahead), \
                f"{name}: {r} at context {c} holds {self.table[r]} blocks"


@mypyc_attr(allow_interpreted_subclasses=True)
class LLMBackend:
    """The replicas of one model, their queues and their lifecycle (see the module docstring)."""

    timeline: Any = None  # a hermes_env.sim.timeline.TimelineRecorder when the run records one

    def __init__(self, cfg: LLMBackendConfig, engine: EventScheduler, queue_factory: Callable[..., WaitQueue],
                 on_done: Callable[[Request, float], None], on_failed: Callable[[Request, float], None],
                 on_decision: Callable[[WaitQueue, float, Callable[[float], None]], None] | None = None,
                 router: Any = None, retention: Any = None, disagg: Any = None) -> None:
        self.cfg, self.name = cfg, cfg.name
        self.retention = retention  # a retention policy (hermes_env.sim.retention), None: vLLM's LRU release
        self.engine, self.on_done, self.on_failed = engine, on_done, on_failed
        self.on_decision = on_decision  # told when an external policy must choose; gets a resume callback
        self.migrator: Any = None  # a hermes_env.cluster.migration.Migrator when a migration policy runs
        self.router = router  # None: one shared queue, replicas pull (late binding)
        self.queue = queue_factory(cfg.name, None)
        self.remote = RemoteStore(cfg.block_size) if cfg.remote_store is not None else None
        placed = [(kind, n < kind.replicas) for kind in cfg.kinds for n in range(kind.max_replicas)]  # warm first
        make = sys.modules[__name__].Replica  # looked up when called: a patched llm.Replica holds compiled too
        self.replicas = [make(self, i, self.queue if router is None else queue_factory(cfg.name, i), kind, warm)
                         for i, (kind, warm) in enumerate(placed)]
        self.handoff: Any = None  # the hand-off path of a disaggregated backend (hermes_env.cluster.disagg)
        if cfg.disaggregation is not None:
            from hermes_env.cluster.disagg import Handoff  # it builds on this module

            require(router is not None or getattr(disagg, "name", "colocated") == "colocated", "router",
                    f"{cfg.name} splits requests ({getattr(disagg, 'name', '')}): the prefill pool needs "
                    "per-replica queues",
                    "name a router (least_outstanding, prefix_affinity, ...) instead of shared")
            self.handoff = Handoff(self, cfg.disaggregation, disagg)
        self.completed = 0
        self.failed = 0
        self.load_starts = 0  # loads ordered because a request found no replica warm or loading
        self.scale_ups = self.scale_downs = 0
        self.gpu_seconds = 0.0  # GPU-seconds held by loading, warm or draining replicas
        # a lower bound on the GPU-seconds the work needs (Simulation adds each request's min_gpu_seconds)
        self.gpu_work_bound = 0.0
        # per kind, GPUs x the linear layers' asymptotic cost of a prefill token and of a decode token in a full
        # batch (attention left out): what no replica of the kind can serve a token faster than
        n = cfg.max_num_seqs
        self._token_costs = [(k.gpus_per_replica * k.latency.per_token,
                              k.gpus_per_replica * float(k.latency.linear_layers(float(n))) / n) for k in cfg.kinds]
        self._held = sum(r.state != COLD for r in self.replicas)
        self._held_gpus = sum(r.kind.gpus_per_replica for r in self.replicas if r.state != COLD)
        self._price_rate = sum(r.kind.gpus_per_replica * r.kind.price_per_gpu_hour for r in self.replicas
                               if r.state != COLD) / 3600.0  # currency per second held
        self._serving = self._held  # replicas warm or loading: a request needs a cold start without one
        self.gpu_cost = 0.0  # GPU-seconds held, each priced at its kind's price per GPU-hour
        self._last = 0.0

    # -- requests -------------------------------------------------------------------------------------
    def rejection(self, request: Request) -> str:
        """Why a replica could never serve ``request`` ("" if one can)."""
        need = request.prompt_tokens + request.output_tokens
        if need > self.cfg.max_model_len:
            return f"{need} tokens exceed max_model_len {self.cfg.max_model_len}"
        if need > self.cfg.kv_capacity_tokens:
            return f"{need} tokens exceed a replica's KV cache ({self.cfg.kv_capacity_tokens}, the smallest kind's)"
        return ""

    def submit(self, request: Request, now: float) -> None:
        request.failed = self.rejection(request)
        if request.failed:
            self.failed += 1
            self.on_failed(request, now)
            return
        if self.retention is not None and request.resumed:
            self._context_arrives(request.app, now)
        if self.router is None:
            self.queue.push(request, now)
            self._ensure_capacity(now)
            best, best_batch = None, 0  # an idle warm replica takes it, else the one with the smallest batch
            for replica in self.replicas:
                if replica.state != WARM:
                    continue
                if not replica.busy:
                    best = replica
                    break
                batch = replica._batch()
                if best is None or batch < best_batch:
                    best, best_batch = replica, batch
            if best is not None:
                best.poke(now)
            return
        candidates = self.candidates(now)
        if self.handoff is not None:
            candidates = self.handoff.first_pool(request, candidates, now)
        placed: Replica | None  # compiled, a router's None must not be taken for a Replica
        placed = candidates[0] if len(candidates) == 1 else self.router.route(self, request, candidates, now)
        if placed is not None:  # None: an external router places it later
            self.place(request, placed, now)

    def candidates(self, now: float) -> list[Replica]:
        """Replicas a router may place a request on: warm or loading (one is loaded if none is)."""
        found = [r for r in self.replicas if r.state in (WARM, LOADING)]
        if not found:
            self._ensure_capacity(now)
            found = [r for r in self.replicas if r.state in (WARM, LOADING)]
        return found

    def place(self, request: Request, replica: Replica, now: float) -> None:
        """A router's choice: ``request`` waits in ``replica``'s queue."""
        request.replica = replica
        replica.queue.push(request, now)
        replica.poke(now)

    def min_gpu_seconds(self, prefill_tokens: int, output_tokens: int) -> float:
        """GPU-seconds no engine can serve these tokens in: each prefill token at the linear layers' cost per
        token, each decode token shared by a full batch (``max_num_seqs``), KV reads left out, on the replica
        kind where that is least."""
        return min(prefill_tokens * p + output_tokens * d for p, d in self._token_costs)

    def isolated_service_time(self, prompt: int, output: int, cached: int) -> float:
        """Seconds to serve a request alone on the fastest replica kind for it (a relaxation's term)."""
        best = math.inf
        for kind in self.cfg.kinds:
            best = min(best, float(kind.latency.isolated_service_time(prompt, output, cached)))
        return best

    def claim_context(self, replica: Replica, app: Any, host_tokens: int, now: float) -> float:
        """``app``'s next request was admitted on ``replica``: its context there is used (returns when the
        blocks are readable), any other replica's copy is dropped."""
        for other in self.replicas:
            if other is not replica and other.kvmem is not None and app in other.kvmem.contexts:
                other.kvmem.drop(app, now)
        return replica.kvmem.claim(app, host_tokens, now)  # type: ignore[union-attr]

    def _context_arrives(self, app: Any, now: float) -> None:
        """``app``'s next request arrived: a policy that prefetches on arrival (KVFlow) starts here."""
        if not hasattr(self.retention, "on_arrival"):  # compiled, getattr's default costs an exception
            return
        on_arrival = self.retention.on_arrival
        for replica in self.replicas:
            ctx = replica.kvmem.contexts.get(app) if replica.kvmem is not None else None
            if ctx is not None:
                on_arrival(replica, ctx, now)

    def forget(self, app: Any, now: float) -> None:
        """``app`` has ended: drop every context held for it."""
        for replica in self.replicas:
            if replica.kvmem is not None and app in replica.kvmem.contexts:
                replica.kvmem.drop(app, now)

    def finish(self, request: Request, now: float) -> None:
        self.completed += 1
        if self.handoff is not None:
            self.handoff.finished(request)
        self.on_done(request, now)

    def routed_waiting(self) -> int:
        return len(self.queue) + sum(len(r.queue) for r in self.replicas if r.queue is not self.queue)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _account(self, now: float) -> None:
        self.gpu_seconds += self._held_gpus * (now - self._last)
        self.gpu_cost += self._price_rate * (now - self._last)
        self._last = now

    def gpu_seconds_until(self, now: float) -> float:
        self._account(now)
        return self.gpu_seconds

    def _set_state(self, replica: Replica, state: int, now: float) -> None:
        self._account(now)
        was_held, was_serving = replica.state != COLD, replica.state in (WARM, LOADING)
        replica.state = state
        change = (state != COLD) - was_held
        self._held += change
        self._held_gpus += change * replica.kind.gpus_per_replica
        self._price_rate += change * replica.kind.gpus_per_replica * replica.kind.price_per_gpu_hour / 3600.0
        self._serving += (state in (WARM, LOADING)) - was_serving
        if self.timeline is not None:
            self.timeline.replica_state(self, replica, now)

    def _ensure_capacity(self, now: float) -> None:
        """A request waits and no replica is warm or loading: load one (a cold start on its critical path)."""
        if not self._serving and self.scale_up(now):
            self.load_starts += 1
            self.scale_ups -= 1  # counted as an on-demand load, not an autoscaler's order

    def scale_up(self, now: float, kind: str | None = None) -> bool:
        """Start loading a cold replica (or take back a draining one), of ``kind`` if named, else the first in
        index order; False if none is cold or draining."""
        draining = next((r for r in self.replicas if r.state == DRAINING and kind in (None, r.kind.name)), None)
        if draining is not None:
            self._set_state(draining, WARM, now)
            self.scale_ups += 1
            draining.poke(now)
            return True
        cold = next((r for r in self.replicas if r.state == COLD and kind in (None, r.kind.name)), None)
        if cold is None:
            return False
        self._set_state(cold, LOADING, now)
        self.scale_ups += 1
        cold.ready_at = now + self.cfg.load_time(cold.kind)
        self.engine.at(cold.ready_at, self._loaded, cold)
        return True

    def _loaded(self, now: float, replica: Replica) -> None:
        if replica.state == LOADING:
            self._set_state(replica, WARM, now)
            replica.poke(now)

    def can_scale_up(self, kind: str | None = None) -> bool:
        return any(r.state in (COLD, DRAINING) and kind in (None, r.kind.name) for r in self.replicas)

    def can_scale_down(self) -> bool:
        return self._scale_down_victim() is not None

    def _scale_down_victim(self) -> Replica | None:
        """The warm replica to drain (the least loaded), keeping one warm while the shared queue has work."""
        warm = [r for r in self.replicas if r.state == WARM]
        if not warm or (self.router is None and len(warm) == 1 and len(self.queue)):
            return None
        return min(warm, key=lambda r: (r.outstanding, -r.index))

    def scale_down(self, now: float) -> bool:
        """Drain a warm replica: it takes no new work and goes cold when its work is done."""
        victim = self._scale_down_victim()
        if victim is None:
            return False
        self._set_state(victim, DRAINING, now)
        self.scale_downs += 1
        if self.migrator is not None:  # drain by migrating its running requests rather than waiting for them
            self.migrator.drain_next(victim, now)
        self.replica_idle(victim, now)
        return True

    def replica_idle(self, replica: Replica, now: float) -> None:
        """Called when a replica runs out of work: a draining one goes cold."""
        if replica.state == DRAINING and replica.idle and (replica.queue is self.queue or not len(replica.queue)) \
                and not replica.sending and not replica.incoming:
            self._set_state(replica, COLD, now)
            replica.version += 1

    def resample_future(self, rng: Any, redraw: Callable[[Request, Any], None]) -> None:
        """Redraw what a non-clairvoyant policy cannot know of the requests still waiting (not admitted, in
        the shared queue or a replica's): their output lengths (``redraw``, from their stage's believed
        distribution; a preempted one's beyond what it has generated). Admitted requests keep theirs."""
        queues = {id(q): q for q in (self.queue, *(r.queue for r in self.replicas))}
        for queue in queues.values():
            for request in queue:
                redraw(request, rng)

    def resample_admitted(self, rng: Any, redraw: Callable[[Request, Any], None], now: float) -> None:
        """Redraw what :meth:`resample_future` keeps: the output lengths of admitted requests, beyond what each
        has generated (:meth:`Replica.redraw_admitted`; a migrating request's too, its migration going on).
        For a planner that decides about running requests (migration), on a copy."""
        moving = self.migrator.by_request.values() if self.migrator is not None else ()
        alive = [m for m in moving if m.source.running.get(m.request, (0, 0, -1))[2] == m.admission]
        for replica in self.replicas:
            replica.redraw_admitted(rng, redraw, now)
        for m in moving:
            if m.phase == ON_LINK:
                redraw(m.request, rng)
        for m in alive:
            m.admission = m.source.running[m.request][2]

    def compact(self) -> None:
        """Drop stale bookkeeping of the replicas (see :meth:`Replica.compact`)."""
        for replica in self.replicas:
            replica.compact()

    def summary(self, now: float) -> dict[str, Any]:
        """The backend's figures up to ``now``, for the simulation summary."""
        reps = self.replicas
        gpu_seconds = self.gpu_seconds_until(now)
        busy = sum(r.busy_seconds * r.kind.gpus_per_replica for r in reps)
        context = sum(r.context_tokens for r in reps)
        cached, loaded = sum(r.cached_tokens for r in reps), sum(r.loaded_tokens for r in reps)
        return {"utilisation": busy / gpu_seconds if gpu_seconds else 0.0, "gpu_seconds": gpu_seconds,
                "gpu_cost": self.gpu_cost,
                "gpu_seconds_lower_bound": self.gpu_work_bound,
                "completed": self.completed, "failed": self.failed,
                "iterations": sum(r.iterations for r in reps), "preemptions": sum(r.preemptions for r in reps),
                "prefix_load_seconds": sum(r.load_seconds for r in reps),
                "longest_decode_stall_s": max(r.longest_iteration for r in reps),
                "prefix_cache": {"hit_rate": cached / context if context else 0.0,
                                 "remote_hit_rate": loaded / context if context else 0.0,
                                 "saved_prefill_tokens": cached + loaded, "prompt_tokens": context,
                                 "computed_tokens": sum(r.computed_tokens for r in reps), "cached_tokens": cached,
                                 "loaded_tokens": loaded,
                                 "evicted_blocks": sum(r.cache.evicted_blocks for r in reps if r.cache is not None)},
                "kv_memory": self._kv_memory_summary(now),
                "replica_loads_on_demand": self.load_starts, "scale_ups": self.scale_ups,
                "scale_downs": self.scale_downs, "adapter_loads": sum(r.adapter_loads for r in reps),
                **({"migration": self.migrator.summary()} if self.migrator is not None else {}),
                **({"disaggregation": self.handoff.summary()} if self.handoff is not None else {})}

    def _kv_memory_summary(self, now: float) -> dict[str, Any]:
        """Agentic KV memory figures: re-prefilled tokens of resumed calls (KV thrash), where resumed
        contexts came from, bytes copied each way, pinned-idle block-seconds."""
        reps = self.replicas
        resumed = sum(r.resumed_tokens for r in reps)
        out: dict[str, Any] = {"retention": getattr(self.retention, "name", "lru"), "resumed_tokens": resumed,
                               "reprefilled_tokens": sum(r.reprefilled_tokens for r in reps),
                               "resumed_gpu_hit_rate": sum(r.resumed_gpu for r in reps) / resumed if resumed else 0.0,
                               "resumed_host_hit_rate": sum(r.resumed_host for r in reps) / resumed if resumed else 0.0}
        keys = ("pinned_block_seconds", "bytes_h2d", "bytes_d2h", "offloads", "prefetches", "discards", "reclaims",
                "host_loaded_tokens", "host_lost_blocks", "offloaded_blocks", "prefetched_blocks")
        parts = [r.kvmem.summary(now) for r in reps if r.kvmem is not None]
        out.update({k: sum(p[k] for p in parts) for k in keys})
        return out

    def check_invariants(self) -> None:
        for r in self.replicas:
            r.check_invariants()
        if self.migrator is not None:
            self.migrator.check_invariants()
        if self.handoff is not None:
            self.handoff.check_invariants()
        assert self._held == sum(r.state != COLD for r in self.replicas)
        assert self._held_gpus == sum(r.kind.gpus_per_replica for r in self.replicas if r.state != COLD)
        assert self._serving == sum(r.state in (WARM, LOADING) for r in self.replicas)
