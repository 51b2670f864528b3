"""A request: one copy of one stage of an application, sent to one backend."""

from __future__ import annotations

import copy
from typing import Any

from hermes_env._mypyc import mypyc_attr, slot_names

_ATOMIC = frozenset((int, float, str, bool, type(None)))


def copy_slots(obj: Any, memo: dict) -> Any:
    """A deep copy of an object with ``__slots__`` that copies numbers and strings by reference and the rest
    through ``memo`` (a simulation's snapshot copies every request and application in the system: this
    skips the generic reduce path, a few times faster). Slots added later are copied the same way."""
    cls: Any = type(obj)
    new = cls.__new__(cls)
    memo[id(obj)] = new
    for name in slot_names(cls):
        value = getattr(obj, name)
        setattr(new, name, value if type(value) in _ATOMIC else copy.deepcopy(value, memo))
    return new


@mypyc_attr(allow_interpreted_subclasses=True)
class Request:
    """Demand and timestamps of one request. ``app`` is the simulator's application object (opaque here).

    LLM requests carry ``prompt_tokens`` and ``output_tokens`` and count ``generated`` tokens (kept across
    a preemption, whose recompute prefills the prompt and the generated tokens again). ``chain`` says what
    the prompt is made of (:mod:`hermes_env.cluster.prefix`), so that prefix caches recognise what they
    hold; ``prefix_tokens`` is the part of the prompt computed before the run, in a remote prefix store
    (a stage's ``prefix_reuse``); ``adapter`` the LoRA adapter it runs with. While admitted, ``cached``
    tokens come from the replica's prefix cache, ``loaded`` from the remote store, ``host`` from the replica's
    host KV tier, ``computed`` counts the
    prefill tokens done so far and ``kv`` the KV tokens it holds outside the prefix cache.

    Tool requests carry ``service_time``. ``key`` is the scheduling policy's priority (lower is served
    first); ``failed`` says why the backend refused the request ("" if it did not)."""

    __slots__ = ("app", "run_index", "copy", "backend", "prompt_tokens", "output_tokens", "service_time",
                 "enqueued", "first_enqueued", "started", "first_token", "finished", "generated", "key",
                 "preemptions", "seq", "prefix_tokens", "chain", "adapter", "replica", "cached", "loaded",
                 "computed", "kv", "failed", "admitted_at", "host", "resumed", "own", "split", "answer")

    def __init__(self, app: Any, run_index: int, copy: int, backend: str, prompt_tokens: int = 0,
                 output_tokens: int = 0, service_time: float = 0.0, prefix_tokens: int = 0,
                 chain: tuple = (), adapter: str | None = None) -> None:
        self.app = app
        self.run_index = run_index
        self.copy = copy
        self.backend = backend
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.service_time = service_time
        self.prefix_tokens = prefix_tokens
        self.chain = chain
        self.adapter = adapter
        self.replica: Any = None  # the replica it was routed to (LLM requests under a router)
        self.enqueued = self.first_enqueued = self.started = self.first_token = self.finished = -1.0
        self.admitted_at = -1.0
        self.generated = 0
        self.cached = self.loaded = self.computed = self.kv = 0
        self.host = 0  # tokens loaded from its replica's host KV tier (agentic KV memory)
        self.resumed = 0  # prompt tokens an earlier call of its application computed (its conversation so far)
        self.own = 0  # index in ``chain`` of the first segment only its application has (the rest is shared)
        self.key: Any = 0.0
        self.preemptions = 0
        self.seq = 0
        self.failed = ""
        self.split = False  # prefilled on a prefill replica, decoded on a decode one (hermes_env.cluster.disagg)
        # its answer's segment, made (and appended to ``chain``) when it is preempted under vLLM's block accounting,
        # which caches the blocks it generated (hermes_env.cluster.llm); None until then
        self.answer: Any = None

    def __deepcopy__(self, memo: dict) -> Request:
        return copy_slots(self, memo)

    @property
    def context(self) -> int:
        """Tokens of context it holds once prefilled: its prompt and what it has generated."""
        return self.prompt_tokens + self.generated

    @property
    def ttft(self) -> float:
        """Time to first token: from first reaching the backend to its first output token."""
        return self.first_token - self.first_enqueued

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (None for a one-token answer)."""
        return (self.finished - self.first_token) / (self.output_tokens - 1) if self.output_tokens > 1 else None

    def __repr__(self) -> str:
        return f"Request({self.backend}, run={self.run_index}, copy={self.copy}, key={self.key!r})"
