"""Written routers (docs/tasks.md, "Written policies"): score one with
``hermes-env evaluate --task routing-mix-mean --policy examples/policies/routers.py:CacheThenLoad``.

A router subclasses :class:`~hermes_env.sim.policies.Router` and defines ``route(backend, request, candidates,
now)``: it returns one of ``candidates``, the backend's replicas warm or loading, where the request will wait.
"""

from __future__ import annotations

from typing import Any

from hermes_env.sim.policies import Router


class LeastOutstanding(Router):
    """The replica with the fewest requests routed to it and not finished, ties to the lowest index: the
    built-in ``least_outstanding``, written here (the same runs, bit for bit)."""

    def route(self, backend: Any, request: Any, candidates: list[Any], now: float) -> Any:
        return min(candidates, key=lambda r: (r.outstanding, r.index))


class CacheThenLoad(Router):
    """Prefix affinity with a load cap: the replica whose prefix cache holds the most of the request's prompt,
    unless it has more than ``slack`` outstanding requests beyond the least loaded candidate, in which case
    the least loaded; ties to fewer outstanding requests, then the lowest index."""

    slack = 4

    def route(self, backend: Any, request: Any, candidates: list[Any], now: float) -> Any:
        least = min(r.outstanding for r in candidates)
        near = [r for r in candidates if r.outstanding <= least + self.slack]
        return min(near, key=lambda r: (-r.prefix_hit(request), r.outstanding, r.index))
