"""A run's life as a timeline a person can look at: Chrome/Perfetto trace-event JSON, and a PNG of it.

    tl = TimelineRecorder(window=(0.0, 120.0))
    Simulation(config, scheduler="fcfs", timeline=tl).run()
    tl.write("run.json")                     # open in https://ui.perfetto.dev or chrome://tracing
    draw_timeline(tl.trace(), "run.png")     # the static picture (matplotlib)

The recorder is off unless a :class:`~hermes_env.sim.simulator.Simulation` is given one: the backends
call it through a few hook points, each behind one ``is not None`` test, so a run without it does no
extra work. It keeps what it records in memory and lays it out when the trace is built.

**Layout** (docs/timeline.md). A *process* per backend, a *thread* (track) per replica and tool
instance. Requests overlap on a replica (a batch) and on a queue, so each request's stay is put on a
*lane* of its track: the lowest-numbered lane free when the stay begins (``replica 0 · lane 3``), so
that the spans of one thread never overlap unless nested. Per request, contiguous spans: ``queued``
(arrival, or preemption, to admission), ``kv load`` / ``adapter load`` (a remote prefix or a LoRA
adapter on its way) and ``staged`` (loaded, waiting for an iteration with budget), ``prefill`` (first
chunk to last; each ``chunk`` nested inside), ``decode`` (first token to the last, or to a
``preempted`` instant); a tool request is ``queued`` then ``call``. Their sum is the request's time
from its arrival at the backend to its end. The replica's own track holds its iterations (``prefill
iteration``: chunks and decodes together; ``decode``: a run of decode-only iterations) and ``loading``
spans; an instance's first lane its ``cold start`` / ``prewarm`` spans. Flow arrows join each stage's
last request to every request of the application's next stage. Counters: queue length per queue, KV
tokens per replica (held by requests, incl. the iteration's reservation, and by the prefix cache),
replicas and tool instances warm. A trace built before the run ends (``run(until=...)``, a truncated
episode) adds what is in flight up to now, marked ``open``: each admitted request's current phase and
each tool call in progress (after its wait), the requests waiting in queues, replicas loading,
instances warming.

**Size.** ``window=(start, end)`` keeps only spans, instants and counter values that overlap those
simulated seconds (and each counter's value when the window opens); ``max_events`` caps what is kept
(spans, instants and counter values; metadata, flows, queue lengths, opening values and in-flight spans
come on top).
Events past the cap are counted, not silently lost: the trace's ``otherData`` says how many were dropped
and from when, as do :attr:`TimelineRecorder.dropped` and :meth:`TimelineRecorder.note`.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from hermes_env.cluster.llm import STATE_NAMES
from hermes_env.cluster.tool import WARM, WARMING
from hermes_env.errors import ConfigError, require

US = 1e6  # trace-event timestamps are microseconds
DEFAULT_MAX_EVENTS = 1_000_000
LOADS = ("kv load", "adapter load")


class _Span:
    __slots__ = ("name", "start", "end", "args", "flows")

    def __init__(self, name: str, start: float, end: float, args: dict) -> None:
        self.name, self.start, self.end, self.args = name, start, end, args
        self.flows: list[tuple[str, int]] | None = None  # ("s" | "f", flow id) bound to this span


class _Stay:
    """A request's stay on a queue, a replica or an instance (or an instance's warm-up): one lane."""

    __slots__ = ("group", "start", "end", "spans", "instants")

    def __init__(self, group: tuple, start: float) -> None:
        self.group, self.start, self.end = group, start, math.inf
        self.spans: list[_Span] = []
        self.instants: list[tuple[str, float, dict]] = []


class _Life:
    """An admitted LLM request's phase on its replica."""

    __slots__ = ("stay", "phase", "since", "ready", "chunks", "last")

    def __init__(self, stay: _Stay, phase: str, since: float, ready: float) -> None:
        self.stay, self.phase, self.since, self.ready, self.chunks = stay, phase, since, ready, 0
        self.last: _Span | None = None  # its latest span of positive duration (a flow's source)


def _who(r: Any) -> dict[str, Any]:
    return {"app": r.app.id, "template": r.app.template, "run": r.run_index, "stage": r.app.runs[r.run_index].stage,
            "copy": r.copy}


class TimelineRecorder:
    """Records a simulation's spans, instants, flows and counters (see the module docstring)."""

    def __init__(self, window: tuple[float, float] | None = None, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if window is not None:
            require(isinstance(window, tuple | list) and len(window) == 2
                    and all(isinstance(x, int | float) and not isinstance(x, bool) for x in window)
                    and 0 <= window[0] < window[1], "timeline.window", f"must be (start, end) seconds with "
                    f"0 <= start < end, got {window!r}", "e.g. (0, 120)")
        require(isinstance(max_events, int) and not isinstance(max_events, bool) and max_events >= 1,
                "timeline.max_events", f"must be a positive integer, got {max_events!r}")
        self.window = (float(window[0]), float(window[1])) if window is not None else None
        self.max_events = max_events
        self.kept = 0
        self.dropped = 0
        self.dropped_from = math.inf  # the earliest simulated time of a dropped event
        self._sim: Any = None
        self._stays: dict[tuple, list[_Stay]] = defaultdict(list)  # lane group -> stays
        self._fixed: dict[tuple, list[_Span]] = defaultdict(list)  # a replica's own track -> spans
        self._fixed_instants: dict[tuple, list[tuple[str, float, dict]]] = defaultdict(list)
        self._counters: list[tuple[str, str, float, dict]] = []  # (backend, name, time, values)
        self._before: dict[tuple[str, str], dict] = {}  # each counter's last value before the window
        self._process_instants: list[tuple[str, str, float, dict]] = []
        self._life: dict[Any, _Life] = {}
        self._tail: dict[int, _Span] = {}  # application -> its last finished request's last span
        self._flow_in: dict[Any, list[int]] = {}  # request -> flows to bind to its first span
        self._flows = 0
        self._since: dict[tuple, tuple[float, str]] = {}  # replica loading / instance warming -> (since, why)
        self._calls: dict[Any, int] = {}  # tool requests in service -> their instance

    # -- keeping events ---------------------------------------------------------------------------
    def _keep(self, start: float, end: float) -> bool:
        """Whether an event over [start, end] is kept: inside the window and under the cap."""
        w = self.window
        if w is not None and (end < w[0] or start > w[1]):
            return False
        if self.kept >= self.max_events:
            self.dropped += 1
            self.dropped_from = min(self.dropped_from, start)
            return False
        self.kept += 1
        return True

    def _span(self, stay: _Stay, name: str, start: float, end: float, args: dict, r: Any = None) -> _Span | None:
        if not self._keep(start, end):
            return None
        span = _Span(name, start, end, args)
        if not stay.spans and not stay.instants:  # listed once it holds something (a window keeps few)
            self._stays[stay.group].append(stay)
        stay.spans.append(span)
        if r is not None and end > start and r in self._flow_in:
            span.flows = [("f", f) for f in self._flow_in.pop(r)]
        return span

    def _instant(self, stay: _Stay, name: str, now: float, args: dict) -> None:
        if self._keep(now, now):
            if not stay.spans and not stay.instants:
                self._stays[stay.group].append(stay)
            stay.instants.append((name, now, args))

    def _counter(self, backend: str, name: str, now: float, values: dict) -> None:
        if self.window is not None and now < self.window[0]:  # its value when the window opens is written
            self._before[backend, name] = values
            return
        if self._keep(now, now):
            self._counters.append((backend, name, now, values))

    # -- the simulation's hooks -----------------------------------------------------------------------
    def attach(self, sim: Any) -> None:
        """Called by the Simulation that owns the recorder: the backends start calling the hooks."""
        require(self._sim is None, "timeline", "is already attached to a simulation",
                "make one TimelineRecorder per run")
        self._sim = sim
        for b in sim.backends.values():
            b.timeline = self
        for b in sim.llm_backends.values():
            self._replica_counter(b, 0.0)
        for t in sim.tool_backends.values():
            self._instance_counter(t, 0.0)

    def issued(self, request: Any) -> None:
        """A stage's request is about to be submitted: a flow from the stage before, if there is one."""
        src = self._tail.get(request.app.id)
        if src is None:
            return
        self._flows += 1
        src.flows = [*(src.flows or ()), ("s", self._flows)]
        self._flow_in.setdefault(request, []).append(self._flows)

    def app_ended(self, app: Any) -> None:
        self._tail.pop(app.id, None)

    def refused(self, request: Any, now: float) -> None:
        if self._keep(now, now):
            self._process_instants.append((request.backend, "refused", now, {**_who(request), "why": request.failed}))
        self._flow_in.pop(request, None)

    # LLM replicas
    def admitted(self, replica: Any, r: Any, now: float, ready_at: float) -> None:
        """``r`` was admitted: its wait in the queue ends, its stay on the replica begins."""
        b = replica.backend
        queued = _Stay((b.name, "queue", replica.queue.replica), r.enqueued)
        queued.end = now
        self._span(queued, "queued", r.enqueued, now, {**_who(r), "preemptions": r.preemptions}, r)
        stay = _Stay((b.name, "replica", replica.index), now)
        if ready_at > now:
            phase = "kv load" if r.loaded else "adapter load"
        else:
            phase = "prefill"
        self._life[r] = _Life(stay, phase, now, ready_at)

    def iteration(self, replica: Any, now: float) -> None:
        """An iteration (or a run of decode iterations) ends at ``now``, before its progress is applied."""
        b, t0 = replica.backend, replica.t0
        track = (b.name, replica.index)
        cache = replica.block * replica.cache.blocks if replica.cache is not None else 0
        self._counter(b.name, f"KV replica {replica.index}", t0,
                      {"requests": replica.kv_used - cache, "prefix cache": cache})
        if replica.planned:
            if self._keep(t0, now):
                self._fixed[track].append(_Span("decode", t0, now, {"iterations": replica.planned,
                                                                    "batch": len(replica.running)}))
            return
        chunks = replica._chunks
        if self._keep(t0, now):
            self._fixed[track].append(_Span("prefill iteration", t0, now, {
                "prefill_tokens": sum(chunks.values()), "prefills": len(chunks), "decodes": len(replica.running),
                "load_stall_s": replica._load_stall}))
        for r, chunk in chunks.items():
            life = self._life[r]
            if life.phase in LOADS:
                who = _who(r)
                self._mark(life, self._span(life.stay, life.phase, life.since, life.ready,
                                               {**who, "remote_tokens": r.loaded, "adapter": r.adapter}, r))
                if t0 > life.ready:
                    self._mark(life, self._span(life.stay, "staged", life.ready, t0, who, r))
                life.phase, life.since = "prefill", t0
            life.chunks += 1
            self._span(life.stay, "chunk", t0, now, {"tokens": chunk})
            if chunk == replica._prefill_left(r):  # its prefill ends with this iteration
                self._mark(life, self._span(life.stay, "prefill", life.since, now, {
                    **_who(r), "context": r.context, "cached": r.cached, "remote": r.loaded,
                    "computed": r.context - r.cached - r.loaded, "chunks": life.chunks}, r))
                life.phase, life.since = "decode", now

    @staticmethod
    def _mark(life: _Life, span: _Span | None) -> None:
        if span is not None and span.end > span.start:
            life.last = span

    def idle(self, replica: Any, now: float) -> None:
        """The replica has run out of iterations: its KV counter drops to what it still holds."""
        cache = replica.block * replica.cache.blocks if replica.cache is not None else 0
        self._counter(replica.backend.name, f"KV replica {replica.index}", now,
                      {"requests": replica.kv_used - cache, "prefix cache": cache})

    def preempted(self, replica: Any, r: Any, now: float) -> None:
        life = self._life.pop(r)
        self._mark(life, self._span(life.stay, "decode", life.since, now, {**_who(r), "generated": r.generated}, r))
        self._instant(life.stay, "preempted", now, _who(r))
        life.stay.end = now

    def llm_done(self, r: Any, now: float) -> None:
        life = self._life.pop(r)
        self._mark(life, self._span(life.stay, "decode", life.since, now, {**_who(r), "output": r.output_tokens}, r))
        life.stay.end = now
        self._finished(r, life.last or (life.stay.spans[-1] if life.stay.spans else None))

    def _finished(self, r: Any, last: _Span | None) -> None:
        if r in self._flow_in and last is not None:  # every span had zero length: bind to the last
            last.flows = [*(last.flows or ()), *(("f", f) for f in self._flow_in.pop(r))]
        self._flow_in.pop(r, None)
        if last is not None and math.isnan(r.app.completion):  # the application goes on: flows start here
            self._tail[r.app.id] = last
        else:
            self._tail.pop(r.app.id, None)

    def replica_state(self, backend: Any, replica: Any, now: float) -> None:
        """After a replica's state changed (cold, loading, warm, draining)."""
        key, state = (backend.name, replica.index), STATE_NAMES[replica.state]
        if state == "loading":
            self._since[key] = (now, "")
        elif key in self._since:
            since, _ = self._since.pop(key)
            if self._keep(since, now):
                self._fixed[key].append(_Span("loading", since, now, {"seconds": now - since}))
        elif self._keep(now, now):
            self._fixed_instants[key].append((state, now, {}))
        self._replica_counter(backend, now)

    def _replica_counter(self, backend: Any, now: float) -> None:
        states = [STATE_NAMES[r.state] for r in backend.replicas]
        self._counter(backend.name, "replicas", now, {s: states.count(s) for s in ("warm", "loading", "draining")})

    # tool instances
    def instance_state(self, backend: Any, inst: Any, now: float, cause: str = "") -> None:
        """After a tool instance's state changed; ``cause`` says why one starts warming."""
        key = (backend.name, inst.index)
        if inst.state == WARMING:
            self._since[key] = (now, cause)
        elif key in self._since:
            since, why = self._since.pop(key)
            stay = _Stay((backend.name, "instance", inst.index), since)
            stay.end = now
            self._span(stay, why, since, now, {"instance": inst.index, "released": inst.state != WARM})
        self._instance_counter(backend, now)

    def _instance_counter(self, backend: Any, now: float) -> None:
        states = [i.state for i in backend.instances]
        self._counter(backend.name, "instances", now, {"warm": states.count(WARM), "warming": states.count(WARMING)})

    def tool_start(self, backend: Any, inst: Any, r: Any) -> None:
        """A tool request starts on ``inst`` (known, so that a trace built before it ends can show it)."""
        self._calls[r] = inst.index

    def tool_call(self, backend: Any, inst: Any, r: Any, now: float) -> None:
        """A tool request ends on ``inst``: its wait and its call."""
        del self._calls[r]
        who = _who(r)
        queued = _Stay((backend.name, "queue", None), r.enqueued)
        queued.end = r.started
        first = self._span(queued, "queued", r.enqueued, r.started, who, r)
        call = _Stay((backend.name, "instance", inst.index), r.started)
        call.end = now
        last = self._span(call, "call", r.started, now, {**who, "instance": inst.index}, r)
        self._finished(r, last or first)

    # -- the trace ---------------------------------------------------------------------------------------
    def trace(self) -> dict[str, Any]:
        """The trace-event JSON object: ``traceEvents`` and ``otherData`` (run, window, drops)."""
        require(self._sim is not None, "timeline", "has recorded nothing", "give it to a Simulation and run it")
        sim = self._sim
        events: list[dict] = []
        flows: list[tuple[str, int, int, int, float]] = []  # (ph, id, pid, tid, ts)

        def put_span(pid: int, tid: int, span: _Span, cat: str) -> None:
            ts = round(span.start * US, 3)  # the end rounded too, so that adjoining spans share a boundary
            events.append({"name": span.name, "cat": cat, "ph": "X", "ts": ts,
                           "dur": round(max(round(span.end * US, 3) - ts, 0.0), 3), "pid": pid, "tid": tid,
                           "args": span.args})
            for ph, fid in span.flows or ():
                flows.append((ph, fid, pid, tid, round((span.start + span.end) / 2 * US, 3)))

        names = [b.name for b in (*sim.llm_backends.values(), *sim.tool_backends.values())]
        pids = {name: i + 1 for i, name in enumerate(names)}
        for name, pid in pids.items():
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        tids: dict[int, int] = defaultdict(int)

        def thread(pid: int, label: str) -> int:
            tids[pid] += 1
            tid = tids[pid]
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": label}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
            return tid

        open_stays, open_spans, open_fixed = self._in_flight(sim)

        def lanes(pid: int, group: tuple, label: str, cat: str, bare_first: bool) -> None:
            stays = [*self._stays.get(group, ()), *open_stays.get(group, ())]
            lane_of = _assign_lanes(stays)
            lane_tids = [thread(pid, label if k == 0 and bare_first else f"{label} · lane {k}")
                         for k in range(max(lane_of, default=-1) + 1)]
            for stay, k in zip(stays, lane_of, strict=True):
                tid = lane_tids[k]
                spans = [*stay.spans, *open_spans.get(id(stay), ())]
                for span in sorted(spans, key=lambda s: (s.start, s.start - s.end)):
                    put_span(pid, tid, span, cat)
                for name, ts, args in stay.instants:
                    events.append({"name": name, "cat": cat, "ph": "i", "s": "t", "ts": round(ts * US, 3),
                                   "pid": pid, "tid": tid, "args": args})

        for b in sim.llm_backends.values():
            pid = pids[b.name]
            lanes(pid, (b.name, "queue", None), "queue", "request", True)
            for rep in b.replicas:
                i = rep.index
                tid = thread(pid, f"replica {i}")
                for span in (*self._fixed.get((b.name, i), ()), *open_fixed.get((b.name, i), ())):
                    put_span(pid, tid, span, "replica")
                for name, ts, args in self._fixed_instants.get((b.name, i), ()):
                    events.append({"name": name, "cat": "replica", "ph": "i", "s": "t", "ts": round(ts * US, 3),
                                   "pid": pid, "tid": tid, "args": args})
                lanes(pid, (b.name, "queue", i), f"replica {i} queue", "request", True)
                lanes(pid, (b.name, "replica", i), f"replica {i}", "request", False)
        for t in sim.tool_backends.values():
            pid = pids[t.name]
            lanes(pid, (t.name, "queue", None), "queue", "request", True)
            for inst in t.instances:
                lanes(pid, (t.name, "instance", inst.index), f"instance {inst.index}", "tool", True)
        opening = [(backend, name, self.window[0], values) for (backend, name), values in self._before.items()]
        for backend, name, ts, values in sorted([*opening, *self._counters], key=lambda c: c[2]):
            events.append({"name": name, "ph": "C", "ts": round(ts * US, 3), "pid": pids[backend], "tid": 0,
                           "args": values})
        for group in {*self._stays, *open_stays}:
            if group[1] == "queue":
                name = "queue" if group[2] is None else f"replica {group[2]} queue"
                waits = [*(x for st in self._stays.get(group, ()) for x in st.spans),
                         *(x for st in open_stays.get(group, ()) for x in open_spans[id(st)])]
                for ts, n in _queue_lengths(waits):
                    events.append({"name": name, "ph": "C", "ts": round(ts * US, 3), "pid": pids[group[0]], "tid": 0,
                                   "args": {"waiting": n}})
        for backend, name, ts, args in self._process_instants:
            events.append({"name": name, "cat": "request", "ph": "i", "s": "p", "ts": round(ts * US, 3),
                           "pid": pids[backend], "tid": 0, "args": args})
        paired = {fid for ph, fid, *_ in flows if ph == "s"} & {fid for ph, fid, *_ in flows if ph == "f"}
        for ph, fid, pid, tid, ts in flows:
            if fid in paired:
                events.append({"name": "application", "cat": "application", "ph": ph, "id": fid, "bp": "e",
                               "ts": ts, "pid": pid, "tid": tid})
        window = None if self.window is None else [w if math.isfinite(w) else None for w in self.window]
        other = {"simulated_seconds": sim.engine.now, "seed": sim.seed, "window_s": window,  # null: open-ended
                 "max_events": self.max_events, "kept_events": self.kept,
                 "window_opening_counters": len(opening),
                 "in_flight_spans": sum(x.args.get("open", False) for group in (*open_spans.values(),
                                                                                 *open_fixed.values()) for x in group),
                 "dropped_events": self.dropped,
                 "dropped_after_s": self.dropped_from if self.dropped else None,
                 "kv_capacity_tokens": {b.name: b.cfg.kv_capacity_tokens for b in sim.llm_backends.values()}}
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}

    def _in_flight(self, sim: Any) -> tuple[dict[tuple, list[_Stay]], dict[int, list[_Span]], dict[tuple, list[_Span]]]:
        """Spans still open when the trace is built (a run stopped early, a truncated episode): each
        request's current phase on its replica, the requests waiting in queues, replicas loading and
        instances warming, up to now, with ``open: true`` in their arguments. Tool calls in progress are
        not known until they end. Computed afresh on every call: building the trace changes nothing."""
        now, w = sim.engine.now, self.window
        stays: dict[tuple, list[_Stay]] = defaultdict(list)
        spans: dict[int, list[_Span]] = defaultdict(list)
        fixed: dict[tuple, list[_Span]] = defaultdict(list)
        if w is not None and now < w[0]:
            return stays, spans, fixed

        def add(stay: _Stay, span: _Span) -> None:
            if w is not None and (span.start > w[1] or span.end < w[0]):
                return
            if not stay.spans and id(stay) not in spans:
                stays[stay.group].append(stay)
            spans[id(stay)].append(span)

        for r, life in self._life.items():
            add(life.stay, _Span(life.phase, life.since, now, {**_who(r), "open": True}))
        for r, index in self._calls.items():
            add(_Stay((r.backend, "queue", None), r.enqueued), _Span("queued", r.enqueued, r.started, _who(r)))
            add(_Stay((r.backend, "instance", index), r.started),
                _Span("call", r.started, now, {**_who(r), "instance": index, "open": True}))
        for b in sim.backends.values():
            queues = {id(q): q for q in (b.queue, *(rep.queue for rep in getattr(b, "replicas", ())))}
            for q in queues.values():
                for r in q:
                    add(_Stay((b.name, "queue", q.replica), r.enqueued),
                        _Span("queued", r.enqueued, now, {**_who(r), "open": True}))
        for (name, index), (since, why) in self._since.items():
            if w is not None and since > w[1]:
                continue
            if name in sim.llm_backends:
                fixed[name, index].append(_Span("loading", since, now, {"open": True}))
            else:
                add(_Stay((name, "instance", index), since), _Span(why, since, now, {"instance": index, "open": True}))
        return stays, spans, fixed

    def write(self, path: str | Path) -> dict[str, Any]:
        """Write the trace-event JSON to ``path``; returns the trace."""
        trace = self.trace()
        # strict JSON (a browser's parser refuses NaN and Infinity); json.dumps is 4x faster than json.dump
        Path(path).write_text(json.dumps(trace, separators=(",", ":"), allow_nan=False))
        return trace

    def note(self) -> str:
        """One line on what was kept (and dropped) for the user."""
        text = f"{self.kept} events kept"
        if self.window is not None:
            text += f" in the window {self.window[0]:g}-{self.window[1]:g} s"
        if self.dropped:
            text += (f"; {self.dropped} dropped from t={self.dropped_from:.1f} s on (over max_events "
                     f"{self.max_events}: narrow the window or raise the cap)")
        return text


def _assign_lanes(stays: list[_Stay]) -> list[int]:
    """Each stay's lane: the lowest-numbered lane free when it begins (stays taken in order of start)."""
    order = sorted(range(len(stays)), key=lambda i: (stays[i].start, i))
    lane = [0] * len(stays)
    free: list[int] = []
    busy: list[tuple[float, int]] = []
    count = 0
    for i in order:
        s = stays[i]
        while busy and busy[0][0] <= s.start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            k = heapq.heappop(free)
        else:
            k, count = count, count + 1
        lane[i] = k
        end = max((x.end for x in s.spans), default=s.start)
        end = max(end, max((t for _, t, _ in s.instants), default=s.start))
        heapq.heappush(busy, (end if math.isinf(s.end) else max(s.end, end), k))
    return lane


def _queue_lengths(spans: list[_Span]) -> list[tuple[float, int]]:
    """The number waiting after every change, from the queued spans."""
    deltas: dict[float, int] = defaultdict(int)
    for span in spans:
        if span.end > span.start:
            deltas[span.start] += 1
            deltas[span.end] -= not span.args.get("open")  # still waiting when the trace ends
    n, out = 0, []
    for ts in sorted(deltas):
        n += deltas[ts]
        out.append((ts, n))
    return out


def parse_window(text: str, field: str = "--timeline-window") -> tuple[float, float]:
    """``"START:END"`` (seconds; either side may be empty: from 0, to the end) as a window."""
    parts = text.split(":")
    try:
        require(len(parts) == 2, field, f"must be START:END in seconds, got {text!r}", "e.g. 0:120 or 60:")
        start = float(parts[0]) if parts[0] else 0.0
        end = float(parts[1]) if parts[1] else math.inf
    except ValueError:
        raise ConfigError(field, f"must be START:END in seconds, got {text!r}", "e.g. 0:120 or 60:") from None
    require(0 <= start < end, field, f"needs 0 <= START < END, got {text!r}")
    return start, end


# -- the static picture ---------------------------------------------------------------------------------
COLOURS = {"queued": "#c7c7c7", "kv load": "#9467bd", "adapter load": "#e377c2", "staged": "#dbc4f0",
           "prefill": "#ff7f0e", "prefill iteration": "#ff7f0e", "decode": "#1f77b4", "call": "#2ca02c",
           "cold start": "#d62728", "prewarm": "#f4a6a6", "loading": "#8c564b"}
SKIPPED = ("chunk",)  # drawn inside their prefill span already


def matplotlib_pyplot(field: str) -> Any:
    """matplotlib's pyplot on the Agg backend, or a ConfigError naming ``field`` if it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(field, "needs matplotlib, which is not installed",
                          "pip install 'hermes_env[dev]', or matplotlib") from None
    return plt


def draw_timeline(trace: dict[str, Any] | str | Path, path: str | Path, window: tuple[float, float] | None = None,
                  title: str | None = None) -> None:
    """Draw a trace (the dict :meth:`TimelineRecorder.trace` builds, or its JSON file) as a PNG: a row per
    track (a replica's lanes in a band under it), spans coloured by phase, preemptions as red ticks,
    and under them the queue lengths, KV occupancy per replica and warm replicas and instances."""
    plt = matplotlib_pyplot("timeline PNG")
    if not isinstance(trace, dict):
        with open(trace) as f:
            trace = json.load(f)
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    rows = sorted((e["pid"], e["tid"], e["args"]["name"]) for e in events
                  if e["ph"] == "M" and e["name"] == "thread_name")
    row_of = {(pid, tid): i for i, (pid, tid, _) in enumerate(rows)}
    spans = [e for e in events if e["ph"] == "X" and e["name"] not in SKIPPED]
    lo, hi = window if window is not None else (0.0, max((e["ts"] + e["dur"] for e in spans), default=1e6) / US)
    hi = min(hi, max((e["ts"] + e["dur"] for e in spans), default=hi * US) / US) if math.isinf(hi) else hi
    n = max(len(rows), 1)
    height = max(min(0.16 * n, 60.0), 1.5)  # inches for the tracks: rows grow thinner past 375 of them
    fig = plt.figure(figsize=(13, 1.2 + height + 4.2))
    grid = fig.add_gridspec(4, 1, height_ratios=[height, 1.1, 1.1, 1.1], hspace=0.12)
    ax = fig.add_subplot(grid[0])
    from matplotlib.collections import PolyCollection

    bars: dict[str, list] = defaultdict(list)  # phase -> rectangles, drawn as one collection each
    least = (hi - lo) * 2e-4  # the narrowest bar drawn, so that short spans still show
    for e in spans:
        x0, x1, row = e["ts"] / US, e["ts"] / US + max(e["dur"] / US, least), row_of[e["pid"], e["tid"]]
        bars[e["name"]].append(((x0, row - 0.42), (x1, row - 0.42), (x1, row + 0.42), (x0, row + 0.42)))
    for name, rects in bars.items():
        ax.add_collection(PolyCollection(rects, facecolors=COLOURS.get(name, "#7f7f7f"), linewidths=0))
    marks = [(e["ts"] / US, row_of[e["pid"], e["tid"]]) for e in events if e["ph"] == "i" and e["name"] == "preempted"]
    if marks:
        ax.scatter(*zip(*marks, strict=True), marker="|", color="#d62728", s=30, linewidths=1.2, zorder=3)
    labels, ticks, pid_start = [], [], {}
    for i, (pid, _, name) in enumerate(rows):
        pid_start.setdefault(pid, i)
        if " · lane " not in name:  # a track's first row is labelled; its further lanes are not
            labels.append(name)
            ticks.append(i)
    for pid, start in pid_start.items():
        ax.axhline(start - 0.5, color="black", linewidth=0.6)
        ax.text(1.002, start - 0.4, procs.get(pid, str(pid)), transform=ax.get_yaxis_transform(), fontsize=7,
                va="top", ha="left", fontweight="bold")
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.tick_params(labelbottom=False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[k]) for k in COLOURS if k in bars]
    ax.legend(handles, [k for k in COLOURS if k in bars], fontsize=7, ncol=min(len(handles), 11), loc="lower left",
              bbox_to_anchor=(0.0, 1.0), frameon=False)
    if title:
        ax.set_title(title, fontsize=8, loc="right")
    counters: dict[tuple[int, str], list[tuple[float, dict]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "C":
            counters[e["pid"], e["name"]].append((e["ts"] / US, e["args"]))
    capacity = trace.get("otherData", {}).get("kv_capacity_tokens", {})
    panels = [("waiting", lambda name: "queue" in name, lambda a, pid: a["waiting"]),
              ("KV used %\n(dashed: cache)", lambda name: name.startswith("KV "),
               lambda a, pid: 100 * sum(a.values()) / capacity.get(procs.get(pid), math.inf)),
              ("warm", lambda name: name in ("replicas", "instances"), lambda a, pid: a["warm"])]
    for k, (ylabel, wanted, value) in enumerate(panels):
        cax = fig.add_subplot(grid[k + 1], sharex=ax)
        for (pid, name), points in sorted(counters.items()):
            if not wanted(name):
                continue
            points.sort(key=lambda p: p[0])
            xs = [x for x, _ in points] + [hi]
            ys = [value(a, pid) for _, a in points]
            line = cax.step(xs, [*ys, ys[-1]], where="post", linewidth=0.9, label=f"{procs.get(pid, pid)} {name}")
            if name.startswith("KV "):  # the prefix cache's share, dashed in the same colour
                cache = [100 * a["prefix cache"] / capacity.get(procs.get(pid), math.inf) for _, a in points]
                cax.step(xs, [*cache, cache[-1]], where="post", linewidth=0.7, linestyle="--",
                         color=line[0].get_color())
        cax.set_ylabel(ylabel, fontsize=7)
        cax.tick_params(labelsize=6)
        cax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        if k < 2:
            cax.tick_params(labelbottom=False)
    cax.set_xlabel("simulated time (s)", fontsize=7)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
