"""The queue of requests waiting at a backend, in the order a scheduling policy decides.

A policy either ranks requests with a static ``key(request, now)`` computed when the request joins the
queue (lower first; a heap keeps the order, O(log n)), or, when it defines ``select(backend, waiting,
now)``, chooses among all waiting requests at every decision point. A policy marked ``external`` (an
agent stepping a Gymnasium environment) chooses from outside the simulation: when a choice among two or
more requests is needed the queue raises :class:`DecisionPending`, the backend suspends, and the choice
arrives later through :meth:`WaitQueue.choose`."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from hermes_env.cluster.request import Request


class DecisionPending(Exception):
    """An external policy must choose among the waiting requests before the backend can go on."""


class WaitQueue:
    """Requests waiting at a backend (``replica`` is None) or at one replica of an LLM backend."""

    def __init__(self, backend: str, policy: Any, replica: int | None = None) -> None:
        self.backend = backend
        self.replica = replica
        self.policy = policy
        self.external = bool(getattr(policy, "external", False))
        self._select = getattr(policy, "select", None) or (self._external_choice if self.external else None)
        self._heap: list[tuple[Any, int, Request]] = []
        self._list: list[Request] = []
        self._seq = 0
        self._choice: int | None = None  # a select-policy's pick, kept from peek to pop

    def __len__(self) -> int:
        return len(self._list) if self._select else len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._list) if self._select else (r for _, _, r in self._heap)

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
        else:
            request.key = self.policy.key(request, now)
            heapq.heappush(self._heap, (request.key, self._seq, request))

    def peek(self, now: float) -> Request:
        if self._select:
            if self._choice is None:
                self._choice = self._chosen(now)
            return self._list[self._choice]
        return self._heap[0][2]

    def pop(self, now: float) -> Request:
        if self._select:
            i = self._choice if self._choice is not None else self._chosen(now)
            self._choice = None
            return self._list.pop(i)
        return heapq.heappop(self._heap)[2]

    @property
    def ordered_by_key(self) -> bool:
        """Whether the order is a key per request (a heap): admission may then look past the head."""
        return not self._select

    def restore(self, requests: list[Request]) -> None:
        """Put back requests popped but not admitted (skipped), with their keys and places unchanged."""
        for r in requests:
            heapq.heappush(self._heap, (r.key, r.seq, r))

    def choose(self, index: int) -> None:
        """An external policy's choice: the request at ``index`` of :attr:`waiting` goes next."""
        if not (0 <= index < len(self._list)):
            raise ValueError(f"choice {index} is not among the {len(self._list)} requests waiting at {self.backend}")
        self._choice = index

    @property
    def waiting(self) -> list[Request]:
        """The waiting requests in arrival order (the order of the slots an external policy sees)."""
        return self._list if self._select else [r for _, _, r in sorted(self._heap)]

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
