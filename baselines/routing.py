"""Reference routers: which replica of an LLM backend an arriving request waits at (``shared``, no
routing, is in the core). Each docstring says which production router it reads."""

from __future__ import annotations

from typing import Any

import numpy as np

from hermes_env.cluster.llm import LOADING
from hermes_env.cluster.request import Request
from hermes_env.sim.policies import Router, register_router


def _least_outstanding(candidates: list[Any]) -> Any:
    return min(candidates, key=lambda r: (r.outstanding, r.index))


def _prefill_per_token(latency: Any) -> float:
    """Seconds a prompt token costs to prefill (a 1,024-token prompt's time per token)."""
    return float(latency.prefill_time(1024.0)) / 1024.0


def _until_warm(replica: Any, now: float) -> float:
    """Seconds until a loading replica serves (0 for a warm one)."""
    return max(replica.ready_at - now, 0.0) if replica.state == LOADING else 0.0


@register_router("round_robin")
class RoundRobin(Router):
    """Each request to the next replica in turn (vLLM production stack's default router)."""

    def __init__(self) -> None:
        self.turn = 0

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        self.turn += 1
        return candidates[(self.turn - 1) % len(candidates)]


@register_router("random")
class RandomRouter(Router):
    """A replica drawn uniformly (its own random stream per simulation and backend)."""

    def bind(self, sim: Any) -> None:
        self.seed, self.rngs = sim.seed, {}

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        rng = self.rngs.get(backend.name)
        if rng is None:
            rng = self.rngs[backend.name] = np.random.default_rng([self.seed, 6, len(self.rngs)])
        return candidates[int(rng.integers(len(candidates)))]


@register_router("least_outstanding")
class LeastOutstanding(Router):
    """The replica with the fewest requests routed to it and not finished (least outstanding requests, as
    Envoy and the vLLM production stack's load-aware mode balance)."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        return _least_outstanding(candidates)


@register_router("least_kv")
class LeastKV(Router):
    """The replica with the smallest fraction of its KV cache in use by requests (prefix-cache blocks that
    no request reads count as free), ties to the least outstanding (KV-utilisation-aware routing as in
    llm-d's scorers)."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        return min(candidates, key=lambda r: ((r.capacity - r.free_tokens()) / r.capacity, r.outstanding, r.index))


@register_router("prefix_affinity")
class PrefixAffinity(Router):
    """The replica whose prefix cache holds the longest prefix of the request's prompt, among those whose
    outstanding requests are within ``load_cap`` of the least loaded (a cache-aware router with a load
    guard, after SGLang's router and Mooncake's conductor); without a hit, the least outstanding. Needs
    ``enable_prefix_caching`` to find anything."""

    def __init__(self, load_cap: int = 8) -> None:
        self.load_cap = load_cap

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        least = min(r.outstanding for r in candidates)
        eligible = [r for r in candidates if r.outstanding <= least + self.load_cap]
        best, best_hit = None, 0
        for r in eligible:
            hit = r.prefix_hit(request)
            if hit > best_hit or (hit == best_hit and best is not None and hit and r.outstanding < best.outstanding):
                best, best_hit = r, hit
        return best if best is not None else _least_outstanding(candidates)


@register_router("session_sticky")
class SessionSticky(Router):
    """An application's calls stay on the replica that served its last call to the backend (session
    affinity, vLLM production stack's session router); its first call, or one whose replica is gone, goes
    to the least outstanding."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        index = request.app.replicas.get(backend.name)
        for r in candidates:
            if r.index == index:
                return r
        return _least_outstanding(candidates)


@register_router("oracle")
class ClairvoyantLeastWork(Router):
    """A clairvoyant heuristic, not achievable and not a bound: the replica where the request would finish
    first if replicas served their work one request at a time, knowing every request's output length: the
    time until it is warm, the realised work already routed to it (prefill tokens left and output tokens
    left of every request it holds, priced by the latency model at batch 1) and this request's own work
    there (its prefill less what that replica's prefix cache holds, and its output). Continuous batching
    shares a replica among its requests, so this bounds nothing; it is the reference with hindsight that a
    router could approach."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        lat = backend.cfg.latency
        prefill_per_token = _prefill_per_token(lat)
        decode = float(lat.linear_layers(1.0))

        def finish(replica: Any) -> float:
            waiting = list(replica.queue) if replica.queue is not backend.queue else []
            admitted = [*replica.running, *replica.prefilling, *replica.staged, *replica.ready]
            prefill = sum(r.context for r in waiting) + sum(replica._prefill_left(r)
                                                             for r in admitted if r not in replica.running)
            output = sum(r.output_tokens - r.generated for r in (*waiting, *admitted))
            hit = replica.prefix_hit(request)
            own = (request.prompt_tokens - hit) * prefill_per_token + request.output_tokens * decode
            return _until_warm(replica, now) + prefill * prefill_per_token + output * decode + own

        return min(candidates, key=lambda r: (finish(r), r.index))


@register_router("expected_finish")
class ExpectedFinish(Router):
    """Speed-aware routing for a backend whose replicas differ (GPU kinds): the replica where the request is
    expected to finish first, each priced by its own latency profile (after the expected-completion-time
    routers of heterogeneous serving, e.g. Helix and Mélange's SLO-aware placement). Not clairvoyant: an
    output length is its PDGraph stage's mean, never the realised one. A replica's expected finish is the time
    until it is warm, plus the prefill of its backlog (prompt tokens left of what it holds and what waits in
    its queue) and of the request (less its prefix-cache hit) at the profile's cost per prefill token, plus the
    request's expected output tokens at the profile's decode iteration time for the batch it would join
    (running, admitted and waiting requests plus itself, at most ``max_num_seqs``) over contexts of its prompt.
    On identical replicas it is a least-work router."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        stage = request.app.mix.graph.stage(request.app.runs[request.run_index].stage)
        expected_out = stage.output_tokens.mean if stage.output_tokens is not None else 1.0
        return min(candidates, key=lambda r: (self.expected_finish(backend, r, request, expected_out, now), r.index))

    @staticmethod
    def expected_finish(backend: Any, replica: Any, request: Request, expected_out: float, now: float) -> float:
        lat = replica.latency
        waiting = list(replica.queue) if replica.queue is not backend.queue else []
        admitted = [*replica.prefilling, *replica.staged, *replica.ready]
        backlog = sum(r.context for r in waiting) + sum(replica._prefill_left(r) for r in admitted)
        hit = replica.prefix_hit(request)
        batch = min(len(replica.running) + len(admitted) + len(waiting) + 1, backend.cfg.max_num_seqs)
        decode = lat.iteration_time(batch, kv_tokens=batch * request.prompt_tokens,
                                    max_context=request.prompt_tokens)
        return (_until_warm(replica, now) + (backlog + request.prompt_tokens - hit) * _prefill_per_token(lat)
                + expected_out * decode)
