"""A request: one copy of one stage of an application, sent to one backend."""

from __future__ import annotations

from typing import Any


class Request:
    """Demand and timestamps of one request. ``app`` is the simulator's application object (opaque here).

    LLM requests carry ``prompt_tokens`` (of which ``prefix_tokens`` repeat a prefix computed before) and
    ``output_tokens``, and count ``generated`` tokens (kept across a
    preemption, whose recompute prefills the prompt and the generated tokens again); tool requests carry
    ``service_time``. ``key`` is the scheduling policy's priority (lower is served first)."""

    __slots__ = ("app", "run_index", "copy", "backend", "prompt_tokens", "output_tokens", "service_time",
                 "enqueued", "first_enqueued", "started", "first_token", "finished", "generated", "key",
                 "preemptions", "seq", "prefix_tokens")

    def __init__(self, app: Any, run_index: int, copy: int, backend: str, prompt_tokens: int = 0,
                 output_tokens: int = 0, service_time: float = 0.0, prefix_tokens: int = 0) -> None:
        self.app = app
        self.run_index = run_index
        self.copy = copy
        self.backend = backend
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.service_time = service_time
        self.prefix_tokens = prefix_tokens  # leading prompt tokens whose KV a prefix cache can fetch
        self.enqueued = self.first_enqueued = self.started = self.first_token = self.finished = -1.0
        self.generated = 0
        self.key: Any = 0.0
        self.preemptions = 0
        self.seq = 0

    def __repr__(self) -> str:
        return f"Request({self.backend}, run={self.run_index}, copy={self.copy}, key={self.key!r})"
