"""Reference migration policies: which running request moves from which replica to which
(:mod:`hermes_env.cluster.migration`; ``none`` is in the core). Each docstring says what it reads."""

from __future__ import annotations

import math
from typing import Any

from hermes_env.cluster.llm import DRAINING, WARM
from hermes_env.sim.policies import MigrationPolicy, parse_numbers, register_migration


class _Pairing(MigrationPolicy):
    """Llumnix's trigger (Sun et al., OSDI 2024), as we read it: every ``tick`` seconds each replica's
    *freeness* is computed; replicas below ``low`` are sources, warm replicas above ``high`` targets, and the
    least free source sends one request to the freest target, the next to the next, while pairs last. A
    draining replica is a source whatever its freeness (Llumnix's scale-in: infinite virtual usage)."""

    tick = 0.25
    usage_name = ""

    def __init__(self, low: float = 50.0, high: float = 500.0) -> None:
        self.low, self.high = low, high

    @classmethod
    def from_arg(cls, arg: str) -> _Pairing:
        values = parse_numbers(arg, "migration", f"{cls.name}:LOW:HIGH (freeness thresholds: free KV tokens "
                               "per running request)", (0, 2))
        return cls(*values)

    def freeness(self, replica: Any) -> float:
        """Free KV tokens per running request once the replica's virtual usage is counted (lower is busier)."""
        if replica.state == DRAINING:
            return -math.inf
        return (replica.capacity - self.usage(replica)) / max(1, len(replica.running))

    def usage(self, replica: Any) -> float:
        raise NotImplementedError

    def pick(self, migrator: Any, source: Any, target: Any) -> Any:
        return migrator.pick(source, target)

    def decide(self, sim: Any, now: float) -> None:
        for backend in sim.llm_backends.values():
            migrator = backend.migrator
            live = [r for r in backend.replicas if r.state in (WARM, DRAINING) and r.running]
            sources = sorted((r for r in live if r.index not in migrator.sending),
                             key=lambda r: (self.freeness(r), r.index))
            targets = sorted((r for r in backend.replicas if r.state == WARM), key=lambda r: (-self.freeness(r),
                                                                                             r.index))
            for source, target in zip(sources, targets, strict=False):
                if self.freeness(source) >= self.low or self.freeness(target) <= self.high or source is target:
                    break
                request = self.pick(migrator, source, target)
                if request is not None:
                    migrator.start(request, source, target, now)


def _head_demand(replica: Any) -> int:
    """KV the request at the head of the replica's own queue needs (0 without one): Llumnix's virtual usage
    of a queued request, which makes a replica whose head request does not fit a source (de-fragmentation)."""
    queue = replica.queue
    if queue is replica.backend.queue or not len(queue):
        return 0
    head = next(iter(queue))
    return head.context


@register_migration("llumnix")
class Llumnix(_Pairing):
    """Llumnix's load-balancing and de-fragmentation rules on what a non-clairvoyant scheduler sees: a
    replica's virtual usage is the KV its requests hold now (the prefix cache's unreferenced blocks counted
    free) plus the context of the request at the head of its queue; the request moved is the running one
    with the shortest context (Llumnix prefers short sequences: the cheapest copy). ``llumnix:LOW:HIGH``
    sets the thresholds (default 50 and 500 free tokens per running request)."""

    def usage(self, replica: Any) -> float:
        return replica.capacity - replica.free_tokens() + _head_demand(replica)


@register_migration("oracle")
class OracleMigration(_Pairing):
    """Clairvoyant: Llumnix's rules knowing every running request's output length. A replica's usage is the
    KV its running requests will hold ``LOOKAHEAD`` decode iterations from now (each grows until it
    finishes, then holds nothing: the requests about to end free their memory, which the non-clairvoyant
    rule cannot see) plus its head request's; the request moved is the one with the most tokens left to
    decode (it would have grown longest where it was), among those that can move."""

    LOOKAHEAD = 256  # decode iterations: a few seconds

    def usage(self, replica: Any) -> float:
        ahead = self.LOOKAHEAD
        held = sum(replica.context(r) + ahead for r in replica.running
                   if r.prompt_tokens + r.output_tokens > replica.context(r) + ahead)
        return held + _head_demand(replica)

    def pick(self, migrator: Any, source: Any, target: Any) -> Any:
        movable = [r for r in source.running if not migrator.why_not(r, source, target)]
        return max(movable, key=lambda r: (r.prompt_tokens + r.output_tokens - source.context(r), -r.seq),
                   default=None)
