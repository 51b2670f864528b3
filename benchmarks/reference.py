"""The speed benchmarks' reference workload, written once: a bare event loop over heapq in plain Python (each
event pops the next and pushes one, as the simulator's engine does), so that compiling the engine does not move
the reference it is measured against."""

from __future__ import annotations

import heapq


def bare_heapq_events(n: int) -> None:
    """Run ``n`` events that do nothing but schedule the next."""
    heap: list = []
    seq = 0

    def noop(now: float, i: int) -> None:
        nonlocal seq
        if i < n:
            seq += 1
            heapq.heappush(heap, (now + 1.0, seq, noop, (i + 1,)))

    heapq.heappush(heap, (0.0, 0, noop, (0,)))
    while heap:
        t, _, fn, args = heapq.heappop(heap)
        fn(t, *args)
