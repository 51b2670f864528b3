"""Prefill/decode disaggregation: the hand-off path of a backend split into a prefill and a decode pool.

A backend with a ``disaggregation`` section (:class:`~hermes_env.cluster.config.DisaggregationConfig`) gives its
first ``prefill_replicas`` replicas the role ``prefill`` and the others ``decode``. Every replica runs the same
engine (:mod:`hermes_env.cluster.llm`); the roles only say where a *split* request goes. On arrival the
backend's disaggregation policy (``hermes_env.sim.policies``, duck-typed here: ``split(backend, request, now)``)
says whether the request is split; a split request is routed among the prefill pool, any other among every
replica (colocated: prefill and decode on one replica, as without disaggregation).

**The hand-off.** When a split request's prefill ends on its prefill replica (which yields its first token)
it leaves the running set there but keeps its KV (``sending``) and queues at the decode replica with the
fewest outstanding requests (``incoming``; DistServe's and Splitwise's choice of decode instance). At each of
its iteration boundaries a decode replica takes its incoming requests first, in order, while its batch has a
slot and its KV cache has room for the request's context less what its own prefix cache holds (the blocks
it holds are not sent): it reserves that KV, and the transfer starts on the prefill replica's link
(:class:`~hermes_env.cluster.link.LinkQueue`, FIFO). While the KV is in flight the request holds KV on both
replicas, and only then; when the last byte arrives the prefill replica frees its copy (the prompt's whole
blocks stay in its prefix cache, unreferenced) and the request joins the decode replica's batch as a
prefilled one (a zero-token chunk, as a prompt served whole from a remote store). A request the decode pool
cannot take waits with its KV on the prefill replica (DistServe's pull: back-pressure on the prefill pool).
A decode replica preempts as any replica does: the victim is recomputed there.
"""

from __future__ import annotations

from typing import Any

from hermes_env.cluster.config import DisaggregationConfig
from hermes_env.cluster.link import LinkQueue
from hermes_env.cluster.llm import LOADING, WARM
from hermes_env.cluster.request import Request

PREFILL, DECODE = "prefill", "decode"


class Handoff:
    """The hand-off path of one disaggregated backend, and its counts."""

    def __init__(self, backend: Any, cfg: DisaggregationConfig, policy: Any) -> None:
        self.backend, self.cfg, self.policy = backend, cfg, policy
        for replica in backend.replicas:
            replica.role = PREFILL if replica.index < cfg.prefill_replicas else DECODE
        self.links = {r.index: LinkQueue(cfg.link) for r in backend.replicas if r.role == PREFILL}
        self.split_requests = 0  # requests the policy split
        self.local_decodes = 0  # split requests decoded on their prefill replica (no decode replica serving)
        self.token_slo_met = self.token_requests = 0  # finished requests, and those meeting both TTFT and TPOT SLOs
        self._prefilled_at: dict[Request, float] = {}  # requests waiting for the decode pool -> since when
        self.wait_seconds = 0.0  # summed over split requests: from the end of their prefill to their transfer's start

    def first_pool(self, request: Request, candidates: list[Any], now: float) -> list[Any]:
        """The replicas ``request`` may be routed to: the prefill pool's if the policy splits it (a request of
        one output token has nothing to decode), else ``candidates``."""
        request.split = False
        if self.may_split(request, candidates) and self.policy is not None and \
                self.policy.split(self.backend, request, now):
            pool = [r for r in candidates if r.role == PREFILL]
            if pool:
                request.split = True
                self.split_requests += 1
                return pool
        return candidates

    def may_split(self, request: Request, candidates: list[Any]) -> bool:
        """Whether ``request`` may be split among ``candidates`` (it has a decode phase, a prefill replica serves)."""
        return request.output_tokens > 1 and any(r.role == PREFILL for r in candidates)

    def mark_split(self, request: Request) -> None:
        """An external agent split ``request`` (placed on a prefill replica)."""
        request.split = True
        self.split_requests += 1

    def prefilled(self, replica: Any, r: Request, now: float) -> bool:
        """``r``'s prefill ended on prefill ``replica``: hold its KV there and queue it for a decode replica.
        False (it decodes where it is) when no decode replica is warm or loading."""
        pool = [d for d in self.backend.replicas if d.role == DECODE and d.state in (WARM, LOADING)]
        if not pool:
            self.local_decodes += 1
            return False
        target = min(pool, key=lambda d: (d.outstanding, d.index))
        replica.sending[r] = r.context - r.cached  # its private KV; its prompt's blocks stay referenced
        target.incoming.append(r)
        self._prefilled_at[r] = now
        target.poke(now)
        return True

    def receive(self, replica: Any, now: float) -> None:
        """At a decode replica's boundary: start the transfers of its incoming requests that fit, in order."""
        cache = replica.cache
        while replica.incoming and replica._batch() < replica.max_batch:
            r = replica.incoming[0]
            hit = replica.prefix_hit(r)
            if cache is not None and r.chain:
                cache.acquire(r.chain)
            if not replica._room(r.context - hit + replica._batch() + 1):
                if cache is not None and r.chain:
                    cache.release(r.chain)
                return
            replica.incoming.pop(0)
            self.wait_seconds += now - self._prefilled_at.pop(r)
            sender = r.replica
            done = self.links[sender.index].send(now, r.context - hit, replica.kv_bytes_per_token)
            r.cached, r.host, r.loaded, r.computed = hit, 0, 0, r.context - hit  # nothing left to prefill
            r.kv = r.context - hit
            replica.kv_used += r.kv
            r.replica, r.admitted_at = replica, now
            replica.staged.add(r)
            if self.backend.timeline is not None:
                self.backend.timeline.admitted(replica, r, now, done)
            self.backend.engine.at(done, self._arrived, sender, replica, r)

    def _arrived(self, now: float, sender: Any, replica: Any, r: Request) -> None:
        """The KV is on the decode replica: the prefill replica frees its copy, the request decodes."""
        sender.kv_used -= sender.sending.pop(r)
        if sender.cache is not None and r.chain:
            sender.cache.release(r.chain)
        sender.poke(now)
        replica._staged_ready(now, r)

    def finished(self, r: Request) -> None:
        """Count a finished request against the TTFT and TPOT SLOs (DistServe's goodput)."""
        tpot = r.tpot
        self.token_requests += 1
        self.token_slo_met += r.ttft <= self.cfg.ttft_slo and (tpot is None or tpot <= self.cfg.tpot_slo)

    def summary(self) -> dict[str, Any]:
        links = self.links.values()
        return {"policy": getattr(self.policy, "name", ""), "prefill_replicas": self.cfg.prefill_replicas,
                "link": self.cfg.link.name, "split_requests": self.split_requests,
                "local_decodes": self.local_decodes, "transfers": sum(q.transfers for q in links),
                "transferred_tokens": sum(q.tokens for q in links),
                "link_busy_seconds": sum(q.busy_seconds for q in links), "decode_wait_seconds": self.wait_seconds,
                "requests": self.token_requests, "token_slo_met": self.token_slo_met,
                "ttft_slo_s": self.cfg.ttft_slo, "tpot_slo_s": self.cfg.tpot_slo}

    def check_invariants(self) -> None:
        """Every split request past its prefill is in exactly one place: waiting for the decode pool (its KV on
        the prefill replica only) or in flight (its KV on both) or on its decode replica (KV there only)."""
        reps = self.backend.replicas
        sending = {r: p for p in reps for r in p.sending}
        incoming = [r for d in reps for r in d.incoming]
        assert len(set(incoming)) == len(incoming), "a request waits at two decode replicas"
        for p in reps:
            assert not p.sending or p.role == PREFILL, f"replica {p.index} sends KV but is not a prefill replica"
            for r in p.sending:
                where = [d for d in reps if r in d.incoming or r in d.staged]
                assert len(where) == 1 and where[0].role == DECODE, f"{r} held for sending, not awaited once"
                assert r not in p.running and r not in p.prefilling, f"{r} sent and still served by its sender"
        for r in incoming:
            assert r in sending, f"{r} awaited by a decode replica, its KV held nowhere"
