"""The queue of requests waiting at a backend, in the order a scheduling policy decides.

A policy either ranks requests with a static ``key(request, now)`` computed when the request joins the
queue (lower first; a heap keeps the order, O(log n)), or, when it defines ``select(backend, waiting,
now)``, chooses among all waiting requests at every decision point. A policy marked ``external`` (an
agent stepping a Gymnasium environment) chooses from outside the simulation: when a choice among two or
more requests is needed the queue raises :class:`DecisionPending`, the backend suspends, and the choice
arrives later through :meth:`WaitQueue.choose`.

A key-ordered queue keeps one heap per LoRA adapter (requests without one share a heap), so that an
admission pass can skip every request whose adapter cannot be loaded now (vLLM V1's rule) without taking
them out: :meth:`WaitQueue.peek` with an ``admissible`` test returns the first request in key order whose
adapter passes it, and marks, per adapter, how far the requests before it were skipped; the marks last until
:meth:`WaitQueue.end_pass`. A boundary then costs O(adapters + log n) instead of popping and pushing back
every skipped request."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

from hermes_env._mypyc import mypyc_attr
from hermes_env.cluster.request import Request


class DecisionPending(Exception):
    """An external policy must choose among the waiting requests before the backend can go on."""


@mypyc_attr(allow_interpreted_subclasses=True)
class WaitQueue:
    """Requests waiting at a backend (``replica`` is None) or at one replica of an LLM backend."""

    def __init__(self, backend: str, policy: Any, replica: int | None = None) -> None:
        self.backend = backend
        self.replica = replica
        self.policy = policy
        self.external = bool(getattr(policy, "external", False))
        self._select: Any = getattr(policy, "select", None) or (self._external_choice if self.external else None)
        self._heaps: dict[str | None, list[tuple[Any, int, Request]]] = {}  # per LoRA adapter (key-ordered)
        self._size = 0
        self._list: list[Request] = []
        self._seq = 0
        self._choice: int | None = None  # a select-policy's pick, kept from peek to pop
        # an admission pass (key-ordered): the request the last peek returned and its heap, the pass's
        # admissibility test, per adapter the position up to which its requests were skipped, and the skipped
        # requests taken out of their heap (an adapter admissible again later in the pass)
        self._peeked: tuple[tuple[Any, int, Request], list] | None = None
        self._admissible: Callable[[str], bool] | None = None
        self._passed: dict[str | None, tuple[Any, int]] = {}
        self._skipped: list[tuple[Any, int, Request]] = []

    def __len__(self) -> int:
        return len(self._list) if self._select else self._size

    def __iter__(self) -> Iterator[Request]:
        if self._select:
            return iter(self._list)
        return (r for entries in (*self._heaps.values(), self._skipped) for _, _, r in entries)

    def push(self, request: Request, now: float) -> None:
        request.enqueued = now
        if request.first_enqueued < 0:
            request.first_enqueued = now
        self._seq += 1
        request.seq = self._seq
        if self._select:
            self._list.append(request)
            self._choice = None
            if self.external and hasattr(self.policy, "key"):  # a planner: its base's key, fixed now as a heap's
                request.key = self.policy.key(request, now)
            return
        request.key = self.policy.key(request, now)
        if request.adapter in self._passed:  # pushed back during a pass (a preemption): not among the skipped
            self._unpass(request.adapter)
        heap = self._heaps.get(request.adapter)
        if heap is None:
            heap = self._heaps[request.adapter] = []
        heapq.heappush(heap, (request.key, self._seq, request))
        self._size += 1

    def peek(self, now: float, admissible: Callable[[str], bool] | None = None) -> Request | None:
        """The request that goes next. With ``admissible`` (key-ordered queues, in an admission pass): the
        first in key order whose adapter is None or admissible, the requests before it being skipped for the
        rest of the pass (until :meth:`end_pass`); None when every request left is skipped."""
        if self._select:
            if self._choice is None:
                self._choice = self._chosen(now)
            return self._list[self._choice]
        if admissible is None and len(self._heaps) == 1:
            heap = next(iter(self._heaps.values()))
            self._peeked = (heap[0], heap)
            return heap[0][2]
        self._admissible = admissible
        best: tuple[tuple[Any, int, Request], list] | None = None
        refused = []
        for adapter, heap in self._heaps.items():
            if not heap:
                continue
            if adapter is not None and admissible is not None and not admissible(adapter):
                refused.append(adapter)
                continue
            if adapter in self._passed:
                self._unpass(adapter)
                if not heap:
                    continue
            if best is None or heap[0] < best[0]:
                best = (heap[0], heap)
        if best is None:
            return None
        position = best[0][:2]
        for adapter in refused:  # skipped up to the request chosen
            if self._heaps[adapter][0][:2] < position:
                self._passed[adapter] = max(self._passed.get(adapter, position), position)
        self._peeked = best
        return best[0][2]

    def pop(self, now: float) -> Request:
        """Take the request :meth:`peek` returned (its head; the queue's head without a peek)."""
        if self._select:
            i = self._choice if self._choice is not None else self._chosen(now)
            self._choice = None
            return self._list.pop(i)
        if self._peeked is None or not self._peeked[1] or self._peeked[1][0] is not self._peeked[0]:
            self.peek(now, self._admissible)
        entry, heap = self._peeked  # type: ignore[misc]
        self._peeked = None
        heapq.heappop(heap)
        self._size -= 1
        return entry[2]

    def _unpass(self, adapter: str | None) -> None:
        """An adapter skipped earlier in the pass is considered again: its skipped requests leave its heap."""
        heap, mark = self._heaps[adapter], self._passed.pop(adapter)
        while heap and heap[0][:2] < mark:
            self._skipped.append(heapq.heappop(heap))

    def end_pass(self) -> None:
        """End an admission pass: skipped requests wait again, with their keys and places unchanged."""
        for entry in self._skipped:
            heapq.heappush(self._heaps[entry[2].adapter], entry)
        self._skipped.clear()
        self._passed.clear()
        self._peeked, self._admissible = None, None

    @property
    def ordered_by_key(self) -> bool:
        """Whether the order is a key per request (a heap): admission may then look past the head."""
        return not self._select

    def choose(self, index: int) -> None:
        """An external policy's choice: the request at ``index`` of :attr:`waiting` goes next."""
        if not (0 <= index < len(self._list)):
            raise ValueError(f"choice {index} is not among the {len(self._list)} requests waiting at {self.backend}")
        self._choice = index

    @property
    def waiting(self) -> list[Request]:
        """The waiting requests in arrival order (the order of the slots an external policy sees)."""
        if self._select:
            return self._list
        return [r for _, _, r in sorted(e for entries in (*self._heaps.values(), self._skipped) for e in entries)]

    def _external_choice(self, backend: str, waiting: list[Request], now: float) -> int:
        if len(waiting) == 1:
            return 0
        raise DecisionPending(backend)

    def _chosen(self, now: float) -> int:
        i = self._select(self.backend, self._list, now)
        i = int(i) if hasattr(i, "__index__") else i
        if not (isinstance(i, int) and 0 <= i < len(self._list)):
            raise ValueError(f"policy {type(self.policy).__name__} selected {i!r} among {len(self._list)} requests "
                             f"waiting at {self.backend}; select must return an index into the waiting list")
        return int(i)
