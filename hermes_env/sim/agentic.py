"""NVIDIA Dynamo's agentic Mooncake traces: reading and writing the rows, replaying their sessions, and
converting them to and from PDGraphs.

The format (docs/traces.md cites the Dynamo sources it follows): one JSON object a line, one LLM request a
row. ``request_id`` names the row; ``input_length``, ``output_length`` and ``hash_ids`` (the ids of the
prompt's blocks of ``block_size`` tokens, the capture's trace block size) are Mooncake's; ``session_id``
is the trajectory. ``wait_for`` lists the rows whose completion the row waits for; once they have all
completed it waits ``delay`` (milliseconds, not tool time: the agent's own overhead or a user) plus
``tool_wait_ms`` and starts. A row that waits for nothing starts at its ``timestamp`` (milliseconds).
``branches`` (the rows it spawns) and ``prefix_reset`` (first row of a trajectory) describe structure
and do not schedule anything; ``tool_events`` and Dynamo's scheduling hints are read past. The aliases
``input_tokens``, ``output_tokens``, ``created_time`` and ``delay_ms`` are accepted.

A **session** (one application of the simulator) is a set of rows linked by ``wait_for`` (a sub-agent's
trajectory has its own ``session_id`` and joins its parent's session by ``wait_for``), and by starting
together under one ``session_id`` (parallel first calls, which wait for nothing). Its rows fall in
**waves**: a row without dependencies is in wave 0, any other one wave after the latest row it waits
for. The session replays as the realisation ``start, (tool, think, call)*``: each wave is one LLM stage
whose parallel copies are the wave's rows (a fan-out), and before it a ``tool`` stage whose copies are
the rows' ``tool_wait_ms`` and a ``think`` stage whose copies are their ``delay``, on a backend without
cold start or capacity limit (``api:user`` by default). A stage starts when the previous one has
finished entirely, so the replay is exact when every row of a wave waits for the whole previous wave,
rows of one wave wait equally long (tool and delay) and the roots start together (chains, fan-outs and
their joins); otherwise a row may start later than in the trace, and :attr:`AgenticTrace.inexact`
counts those sessions.

The PDGraph that the sessions' realisations belong to is fitted to them by :func:`fit_pdgraph`; it is
the one policies reason with on a replay, and ``hermes-env fit-trace --format dynamo-agentic`` writes it
(with an arrival process for the sessions) as a generator, reporting how well samples of it reproduce
the trace (:func:`fit_report`). :func:`rows_from_workload` goes the other way: agentic rows from a
workload's sampled applications.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.errors import ConfigError, require
from hermes_env.pdgraph.distributions import Discrete
from hermes_env.pdgraph.fit import fit_pdgraph
from hermes_env.pdgraph.graph import PDGraph, Stage, StateSpace
from hermes_env.pdgraph.sampling import StageRun, sample_realisation
from hermes_env.sim.traces import BLOCK_TOKENS, json_lines

FORMAT = "dynamo-agentic"
WAIT_BACKEND = "api:user"  # no cold start, unlimited capacity: a recorded wait replays as recorded
ALIASES = {"input_tokens": "input_length", "output_tokens": "output_length", "created_time": "timestamp",
           "delay_ms": "delay"}
FIELDS = ("request_id", "session_id", "timestamp", "input_length", "output_length", "hash_ids", "wait_for",
          "branches", "prefix_reset", "delay", "tool_wait_ms")
READ_PAST = ("tool_events", "priority", "strict_priority", "policy_class", "routing_constraints", "request_kind",
             "output_token_ids")


@dataclass(frozen=True)
class AgenticRow:
    """One LLM request. Times are milliseconds, as in the file; ``wait_for`` and ``branches`` are indices
    of rows (``wait_for``'s always earlier ones)."""

    request_id: str
    prompt: int
    output: int
    session_id: str | None = None
    timestamp: float | None = None
    hash_ids: tuple[int, ...] = ()
    wait_for: tuple[int, ...] = ()
    branches: tuple[int, ...] = ()
    delay: float = 0.0
    tool_wait: float = 0.0
    prefix_reset: bool | None = None

    @property
    def wait(self) -> float:
        """Seconds from the completion of the rows it waits for to its start."""
        return (self.delay + self.tool_wait) / 1000.0


@dataclass(frozen=True)
class Session:
    """Rows linked by ``wait_for`` or a common start: ``waves[k]`` are the rows of wave k (in file order),
    ``arrival`` the earliest start of its roots (seconds from the trace's first), ``exact`` whether its
    replay is."""

    waves: tuple[tuple[int, ...], ...]
    arrival: float
    exact: bool

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(sorted(i for wave in self.waves for i in wave))


@dataclass(frozen=True)
class AgenticTrace:
    path: str
    rows: tuple[AgenticRow, ...]
    sessions: tuple[Session, ...]  # in arrival order
    block_size: int = BLOCK_TOKENS

    @property
    def inexact(self) -> int:
        """Sessions whose replay may start a row later than the trace does (see the module docstring)."""
        return sum(not s.exact for s in self.sessions)

    def arrivals(self) -> np.ndarray:
        return np.array([s.arrival for s in self.sessions])

    def steps(self, session: Session, llm: str, wait: str) -> list[dict[str, Any]]:
        """The session as a run of stages, in the format :func:`hermes_env.pdgraph.fit.fit_pdgraph` reads."""
        out: list[dict[str, Any]] = []
        for k, wave in enumerate(session.waves):
            rows = [self.rows[i] for i in wave]
            if k:
                out.append({"stage": "tool", "backend": wait, "service_time": [r.tool_wait / 1000.0 for r in rows]})
                out.append({"stage": "think", "backend": wait, "service_time": [r.delay / 1000.0 for r in rows]})
            out.append({"stage": "call" if k else "start", "backend": llm, "prompt_tokens": [r.prompt for r in rows],
                        "output_tokens": [max(r.output, 1) for r in rows]})
        return out


# -- reading ----------------------------------------------------------------------------------------------
def load_agentic(path: str | Path, block_size: int = BLOCK_TOKENS) -> AgenticTrace:
    """An agentic Mooncake file; every malformed row is an error naming its line."""
    path = Path(path)
    require(path.is_file(), "workload.arrivals.trace", f"no file {str(path)!r}", "give the path of a JSONL file")
    return _load(str(path), os.path.getmtime(path), block_size)


@lru_cache(maxsize=8)
def _load(path: str, mtime: float, block_size: int) -> AgenticTrace:
    raw: list[tuple[int, dict[str, Any]]] = []
    for line, row in json_lines(path):
        both = [k for k in row if k in ALIASES and ALIASES[k] in row]
        require(not both, f"{path}: line {line}", f"has both {both[0]!r} and {ALIASES[both[0]]!r}" if both else "",
                "give one of the two names")
        raw.append((line, {ALIASES.get(k, k): v for k, v in row.items()}))
    require(bool(raw), path, "has no rows", "give one JSON object a line")
    return from_dicts([r for _, r in raw], path, [line for line, _ in raw], block_size)


def from_dicts(raw: Sequence[Mapping[str, Any]], path: str = "rows", lines: Sequence[int] | None = None,
               block_size: int = BLOCK_TOKENS) -> AgenticTrace:
    """Rows given as mappings (as in the file): checked, linked and grouped into sessions."""
    lines = list(lines) if lines is not None else list(range(1, len(raw) + 1))
    index: dict[str, int] = {}
    for i, row in enumerate(raw):
        where = f"{path}: line {lines[i]}"
        unknown = sorted(set(row) - set(FIELDS) - set(READ_PAST) - set(ALIASES))
        require(not unknown, where, f"has the unknown field {unknown[0]!r}" if unknown else "",
                f"an agentic Mooncake row has {', '.join(FIELDS)}")
        rid = row.get("request_id")
        require(isinstance(rid, str) and rid != "", where, "needs a 'request_id' (a non-empty string)")
        require(rid not in index, where, f"request_id {rid!r} is also on line {lines[index.get(rid, 0)]}",
                "give every row its own request_id")
        index[rid] = i
    rows = tuple(_row(row, i, index, raw, f"{path}: line {lines[i]}", block_size) for i, row in enumerate(raw))
    for i, row in enumerate(rows):
        for j in row.branches:
            require(i in rows[j].wait_for, f"{path}: line {lines[i]}",
                    f"branches names {rows[j].request_id!r}, which does not wait for this row",
                    "a spawned row lists its parent in wait_for")
    return AgenticTrace(path, rows, _sessions(rows), block_size)


def _ms(row: Mapping[str, Any], key: str, where: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    require(ok, where, f"{key} {value!r} must be a finite number of milliseconds >= 0")
    return float(value)


def _count(row: Mapping[str, Any], key: str, where: str, low: int) -> int | None:
    value = row.get(key)
    if value is None:
        return None
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low, where,
            f"{key} {value!r} must be an integer >= {low}")
    return int(value)


def _ids(row: Mapping[str, Any], key: str, where: str, kind: type) -> list:
    value = row.get(key, [])
    require(isinstance(value, list) and all(type(v) is kind for v in value), where,
            f"{key} must be a list of {'request ids' if kind is str else 'integers'}, got {value!r}")
    twice = [v for v in value if value.count(v) > 1] if kind is str and len(set(value)) < len(value) else []
    require(not twice, where, f"{key} lists {twice[0]!r} twice" if twice else "")
    return value


def _row(row: Mapping[str, Any], i: int, index: Mapping[str, int], raw: Sequence[Mapping[str, Any]], where: str,
         block_size: int) -> AgenticRow:
    rid = row["request_id"]
    session = row.get("session_id")
    require(session is None or isinstance(session, str), where, f"session_id {session!r} must be a string")
    hashes = _ids(row, "hash_ids", where, int)
    require(not hashes or min(hashes) >= 0, where, "hash_ids must be integers >= 0")
    output = _count(row, "output_length", where, 0)
    require(output is not None, where, "has no 'output_length'")
    prompt = _count(row, "input_length", where, 1)
    if prompt is None:
        require(bool(hashes), where, "has neither 'input_length' nor 'hash_ids'", "give the prompt's length")
        prompt = len(hashes) * block_size
    waits = []
    for ref in _ids(row, "wait_for", where, str):
        j = index.get(ref)
        require(j is not None, where, f"wait_for names {ref!r}, which no row has")
        require(j != i, where, f"wait_for names the row itself ({ref!r}): a cycle")
        if j > i:
            cycle = _path(ref, rid, index, raw)
            require(cycle is None, where, f"wait_for closes a cycle: {' -> '.join([rid, *(cycle or [])])}",
                    "a row can only wait for rows that finish before it starts")
            raise ConfigError(where, f"wait_for names {ref!r}, a later row", "list every row after the rows it waits "
                              "for (in order of start, as Dynamo writes them)")
        waits.append(j)
    branches = []
    for ref in _ids(row, "branches", where, str):
        require(ref in index, where, f"branches names {ref!r}, which no row has")
        branches.append(index[ref])
    timestamp, delay, tool = (_ms(row, k, where) for k in ("timestamp", "delay", "tool_wait_ms"))
    if not waits:
        require(timestamp is not None, where, "waits for nothing and has no 'timestamp'",
                "give its start in milliseconds, or the rows it waits for")
        require(not delay and not tool, where, "has a delay or tool_wait_ms but waits for nothing",
                "a row that waits for nothing starts at its timestamp")
    reset = row.get("prefix_reset")
    require(reset is None or isinstance(reset, bool), where, f"prefix_reset {reset!r} must be true or false")
    return AgenticRow(rid, prompt, output, session, timestamp, tuple(hashes), tuple(waits), tuple(branches),
                      delay or 0.0, tool or 0.0, reset)


def _path(start: str, goal: str, index: Mapping[str, int], raw: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """A chain of ``wait_for`` from ``start`` to ``goal`` (the ids after ``goal``'s row on it), if any."""
    seen, stack = {start}, [[start]]
    while stack:
        chain = stack.pop()
        row = raw[index[chain[-1]]]
        for ref in row.get("wait_for", []) if isinstance(row.get("wait_for"), list) else []:
            if ref == goal:
                return [*chain, goal]
            if ref in index and ref not in seen:
                seen.add(ref)
                stack.append([*chain, ref])
    return None


def _sessions(rows: Sequence[AgenticRow]) -> tuple[Session, ...]:
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    named: dict[tuple[str, float | None], int] = {}
    for i, row in enumerate(rows):
        for j in row.wait_for:
            parent[find(i)] = find(j)
        if row.session_id is not None and not row.wait_for:  # parallel first calls of one session
            parent[find(i)] = find(named.setdefault((row.session_id, row.timestamp), i))
    level = [0] * len(rows)
    members: dict[int, list[int]] = {}
    for i, row in enumerate(rows):  # wait_for names earlier rows: their levels are known
        level[i] = 1 + max(level[j] for j in row.wait_for) if row.wait_for else 0
        members.setdefault(find(i), []).append(i)
    first = min(r.timestamp for r in rows if not r.wait_for)  # type: ignore[type-var]
    sessions = []
    for idx in members.values():
        waves = tuple(tuple(i for i in idx if level[i] == k) for k in range(max(level[i] for i in idx) + 1))
        roots = [rows[i].timestamp for i in waves[0]]
        exact = len(set(roots)) == 1 and all(
            len({(rows[i].delay, rows[i].tool_wait) for i in wave}) == 1
            and all(set(rows[i].wait_for) == set(prev) for i in wave)
            for prev, wave in zip(waves, waves[1:], strict=False))
        sessions.append(Session(waves, (min(roots) - first) / 1000.0, exact))  # type: ignore[type-var, operator]
    return tuple(sorted(sessions, key=lambda s: (s.arrival, s.waves[0][0])))


# -- writing ----------------------------------------------------------------------------------------------
def row_dict(rows: Sequence[AgenticRow], i: int) -> dict[str, Any]:
    """Row ``i`` as Dynamo writes it (fields without a value left out)."""
    r = rows[i]
    out: dict[str, Any] = {"request_id": r.request_id}
    if r.session_id is not None:
        out["session_id"] = r.session_id
    if r.timestamp is not None:
        out["timestamp"] = r.timestamp
    out["input_length"], out["output_length"] = r.prompt, r.output
    if r.hash_ids:
        out["hash_ids"] = list(r.hash_ids)
    if r.wait_for:
        out["wait_for"] = [rows[j].request_id for j in r.wait_for]
    if r.branches:
        out["branches"] = [rows[j].request_id for j in r.branches]
    if r.prefix_reset is not None:
        out["prefix_reset"] = r.prefix_reset
    if r.wait_for:
        out["delay"] = r.delay
        if r.tool_wait:
            out["tool_wait_ms"] = r.tool_wait
    return out


def write_agentic(rows: Sequence[AgenticRow], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(len(rows)):
            fh.write(json.dumps(row_dict(rows, i)) + "\n")


# -- replay -----------------------------------------------------------------------------------------------
WAIT_POINTS = 256  # equal-mass points of a fitted tool or think stage's time


def fitted_graph(trace: AgenticTrace, llm: str, wait: str) -> PDGraph:
    """The PDGraph ``start, (tool, think, call)*`` fitted to every session of ``trace`` by
    :func:`~hermes_env.pdgraph.fit.fit_pdgraph`, but for the times of its ``tool`` and ``think`` stages:
    those are often exactly 0 (a call without tools, an agent without overhead), which a histogram
    cannot hold (the Freedman-Diaconis rule then gives one bin over the whole range), so each is the
    discrete distribution of its observed quantiles at ``WAIT_POINTS`` equal-mass points (equal ones
    merged): the empirical distribution itself when there are fewer observations."""
    name = f"agentic:{Path(trace.path).stem}"
    steps = [trace.steps(s, llm, wait) for s in trace.sessions]
    graph = fit_pdgraph(steps, name, f"fitted to the {len(trace.sessions)} sessions of {Path(trace.path).name}")
    stages = []
    for stage in graph.stages:
        if stage.name in ("tool", "think"):
            times = np.concatenate([step["service_time"] for session in steps for step in session
                                    if step["stage"] == stage.name])
            values, counts = np.unique(np.quantile(times, (np.arange(WAIT_POINTS) + 0.5) / WAIT_POINTS,
                                                   method="inverted_cdf"), return_counts=True)
            stage = replace(stage, service_time=Discrete(values, counts))
        stages.append(stage)
    return PDGraph(graph.name, tuple(stages), graph.entry, graph.description)


@lru_cache(maxsize=8)
def _fitted(path: str, mtime: float, block_size: int, llm: str, wait: str) -> PDGraph:
    return fitted_graph(_load(path, mtime, block_size), llm, wait)


@dataclass(frozen=True)
class AgenticReplay:
    """Sessions of an agentic trace as the simulator's applications: application ``i`` replays session
    ``sessions[i]`` as a realisation of ``graph`` (the PDGraph fitted to the trace)."""

    trace: AgenticTrace
    sessions: tuple[int, ...]
    graph: PDGraph
    llm_backend: str
    wait_backend: str
    shared: tuple[int, ...]  # per row: leading blocks that another row of the trace also has

    @classmethod
    def build(cls, path: str, block_size: int, sessions: Sequence[int], llm: str, wait: str) -> AgenticReplay:
        mtime = os.path.getmtime(path)
        trace = _load(path, mtime, block_size)
        return cls(trace, tuple(sessions), _fitted(path, mtime, block_size, llm, wait), llm, wait,
                   _shared(trace.rows))

    def runs(self, i: int, space: StateSpace) -> tuple[StageRun, ...]:
        """Application ``i``'s realisation: its session's waves and waits, states of ``space``."""
        steps = self.trace.steps(self.trace.sessions[self.sessions[i]], self.llm_backend, self.wait_backend)
        out, state = [], 0
        for k, step in enumerate(steps):
            if k:
                state = next(int(s) for s in space.successors[state]
                             if s != StateSpace.END and space.stage(int(s)).name == step["stage"])
            it = int(space.iteration_of[state])
            if "service_time" in step:
                out.append(StageRun(state, step["stage"], step["backend"], it, None, None,
                                    np.array(step["service_time"], dtype=float)))
            else:
                out.append(StageRun(state, step["stage"], step["backend"], it,
                                    np.array(step["prompt_tokens"], dtype=np.int64),
                                    np.array(step["output_tokens"], dtype=np.int64), None))
        return tuple(out)

    def row(self, i: int, run: int, copy: int) -> int:
        """The row that copy ``copy`` of LLM stage run ``run`` (0, 3, 6, ...) of application ``i`` replays."""
        return self.trace.sessions[self.sessions[i]].waves[run // 3][copy]

    def blocks(self, i: int, run: int, copy: int) -> tuple[int, ...]:
        return self.trace.rows[self.row(i, run, copy)].hash_ids

    def shared_tokens(self, i: int, run: int, copy: int) -> int:
        """Tokens of the row's prompt that a prefix cache could serve at most (see ``shared``)."""
        return self.shared[self.row(i, run, copy)] * self.trace.block_size


def _shared(rows: Sequence[AgenticRow]) -> tuple[int, ...]:
    """Per row, how many of its leading blocks another row also has (after the same blocks)."""
    ids: dict[tuple[int, int], int] = {}  # (prefix before, block) -> prefix id
    chains = []
    for r in rows:
        chain, last = [], -1
        for h in r.hash_ids:
            last = ids.setdefault((last, h), len(ids))
            chain.append(last)
        chains.append(chain)
    counts = Counter(p for chain in chains for p in chain)
    return tuple(next((k for k, p in enumerate(chain) if counts[p] < 2), len(chain)) for chain in chains)


# -- from a workload --------------------------------------------------------------------------------------
class _Blocks:
    """Block ids for generated prompts, following the simulator's prompt model (Simulation._prompt): a
    template stage's system prompt is the same blocks in every application, a continued or appended
    context the previous call's prompt and answer, the rest fresh blocks."""

    def __init__(self, size: int) -> None:
        self.size, self.next, self.system = size, 0, {}

    def fresh(self, n: int) -> list[int]:
        self.next += n
        return list(range(self.next - n, self.next))

    def prompt(self, base: list[int], prompt: int) -> list[int]:
        keep = base[:prompt // self.size]
        return keep + self.fresh(-(-prompt // self.size) - len(keep))

    def system_prompt(self, key: tuple[str, str], tokens: int) -> list[int]:
        if key not in self.system:
            self.system[key] = self.fresh(tokens // self.size)
        return self.system[key]


def rows_from_workload(sim: Any, n: int, block_size: int = BLOCK_TOKENS,
                       think_backends: Iterable[str] = (WAIT_BACKEND,)) -> list[AgenticRow]:
    """Agentic rows of the first ``n`` applications of a simulation's workload (its arrival times and
    sampled realisations, the same under the same seed). Application ``i`` is session ``s<i>``, its rows
    ``s<i>-0``, ``s<i>-1``, ...; each LLM stage run is a wave whose rows wait for every row of the
    previous one, after the stages between (each as long as its longest copy): ``delay`` for
    ``think_backends`` (a person), ``tool_wait_ms`` for the others. Tool stages before the first LLM call
    move its ``timestamp``; those after the last are not representable (rows are LLM requests only)."""
    think = set(think_backends)
    blocks = _Blocks(block_size)
    rows: list[AgenticRow] = []
    for i in range(n):
        mix = sim.config.workload.applications[sim.app_mix[i]]
        stages = {s.name: s for s in mix.graph.stages}
        start, first = float(sim.arrival_times[i]) * 1000.0, len(rows)
        prev: list[int] = []
        delay = tool = 0.0
        history: dict[str, tuple[int, list[int]]] = {}  # per backend: the conversation's tokens and block ids
        for run in sim.peek_realisation(i):
            if run.tool_time is not None:
                longest = float(run.tool_time.max()) * 1000.0
                delay, tool = (delay + longest, tool) if run.backend in think else (delay, tool + longest)
                continue
            stage = stages[run.stage]
            wave = list(range(len(rows), len(rows) + run.width))
            if prev and len(wave) > 1:
                rows[prev[0]] = replace(rows[prev[0]], branches=tuple(wave))
            for copy in range(run.width):
                prompt, output = int(run.prompt_tokens[copy]), int(run.output_tokens[copy])
                past = history.get(run.backend)
                if stage.context == "append" and past is not None:  # the conversation plus the sampled tokens
                    prompt += past[0]
                ids = blocks.prompt(_base(stage, mix.template, past, blocks), prompt)
                rows.append(AgenticRow(f"s{i}-{len(rows) - first}", prompt, output, f"s{i}",
                                       None if prev else start + delay + tool, tuple(ids), tuple(prev), (),
                                       delay if prev else 0.0, tool if prev else 0.0, not prev))
                if copy == 0:  # the conversation goes on from the first copy (as in the simulator)
                    conv = ids[:prompt // blocks.size]
                    history[run.backend] = (prompt + output,
                                            conv + blocks.fresh((prompt + output) // blocks.size - len(conv)))
            prev, delay, tool = wave, 0.0, 0.0
    return rows


def rows_from_run(sim: Any, block_size: int = BLOCK_TOKENS,
                  think_backends: Iterable[str] = (WAIT_BACKEND,)) -> list[AgenticRow]:
    """Agentic rows of a simulation that has run with ``sim.request_log = []``: its completed
    applications as :func:`rows_from_workload` writes them, with the run's own times: every row's
    ``timestamp`` is when the simulator issued it, and a row's ``delay`` and ``tool_wait_ms`` are the
    wall time of the tool stages before it (from their issue to their last copy's end: queueing and cold
    starts included, as a capture measures them), so they add up to the gap after the previous wave's
    last completion (a replayed agentic trace's ``think`` stages are ``delay``, its ``tool`` stages
    ``tool_wait_ms``). ``hash_ids`` are the prompts' blocks of ``block_size`` tokens as the simulator's
    prefix caches identify them (the segment holding a block's last token and its end,
    :mod:`hermes_env.cluster.prefix`): rows share ids exactly where the run's prompts share blocks."""
    require(sim.request_log is not None, "simulation", "kept no requests", "set sim.request_log = [] before run()")
    think = set(think_backends)
    replayed = sim.config.workload.agentic is not None
    by_app: dict[int, dict[int, list[Any]]] = {}
    for req in sim.request_log:
        by_app.setdefault(req.app.id, {}).setdefault(req.run_index, []).append(req)
    ids: dict[tuple[int, int], int] = {}
    rows: list[AgenticRow] = []
    for app_id in sorted(by_app):
        runs = by_app[app_id]
        app = runs[0][0].app
        if app.failed or len(runs) < len(app.runs):
            continue
        first, prev, delay, tool = len(rows), [], 0.0, 0.0
        for k, run in enumerate(app.runs):
            reqs = sorted(runs[k], key=lambda r: r.copy)
            issued = min(r.first_enqueued for r in reqs) * 1000.0
            if run.tool_time is not None:
                span = max(r.finished for r in reqs) * 1000.0 - issued
                thinking = run.stage == "think" if replayed else run.backend in think
                delay, tool = (delay + span, tool) if thinking else (delay, tool + span)
                continue
            wave = list(range(len(rows), len(rows) + len(reqs)))
            if prev and len(wave) > 1:
                rows[prev[0]] = replace(rows[prev[0]], branches=tuple(wave))
            for r in reqs:
                rows.append(AgenticRow(f"s{app_id}-{len(rows) - first}", r.prompt_tokens, r.output_tokens,
                                       f"s{app_id}", issued, tuple(_chain_ids(r.chain, r.prompt_tokens, block_size,
                                                                              ids)),
                                       tuple(prev), (), delay if prev else 0.0, tool if prev else 0.0, not prev))
            prev, delay, tool = wave, 0.0, 0.0
    return rows


def _chain_ids(chain: Sequence[Any], prompt: int, size: int, ids: dict[tuple[int, int], int]) -> list[int]:
    """Block ids of a prompt described by a chain of segments (none without one)."""
    out, j = [], 0
    if not chain:
        return out
    for end in [*range(size, prompt + 1, size), *([prompt] if prompt % size else [])]:
        while chain[j].start + chain[j].size < end:  # the segment holding the block's last token
            j += 1
        out.append(ids.setdefault((chain[j].uid, end), len(ids)))
    return out


def _base(stage: Stage, template: str, history: tuple[int, list[int]] | None, blocks: _Blocks) -> list[int]:
    if stage.context != "fresh" and history is not None:
        return history[1]
    if stage.system_prompt_tokens:
        return blocks.system_prompt((template, stage.name), stage.system_prompt_tokens)
    return []


# -- fit ------------------------------------------------------------------------------------------------
METRICS = ("calls a session", "waves a session", "prompt tokens", "output tokens", "tool wait s", "delay s")


def _measures(sessions: Iterable[list[StageRun] | tuple[StageRun, ...]]) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    for runs in sessions:
        llm = [r for r in runs if r.tool_time is None]
        out["calls a session"].append(sum(r.width for r in llm))
        out["waves a session"].append(len(llm))
        for r in llm:
            out["prompt tokens"] += r.prompt_tokens.tolist()  # type: ignore[union-attr]
            out["output tokens"] += r.output_tokens.tolist()  # type: ignore[union-attr]
        for r in runs:
            if r.tool_time is not None:
                out["tool wait s" if r.stage == "tool" else "delay s"] += r.tool_time.tolist()
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def fit_report(replay: AgenticReplay, samples: int = 4000, seed: int = 0) -> dict[str, dict[str, float]]:
    """How samples of the fitted PDGraph compare with the trace, per measure: means, the two-sample
    Kolmogorov-Smirnov distance and the relative errors of the median and the 90th percentile."""
    from scipy.stats import ks_2samp  # fitting only: keeps `import hermes_env` light

    space = replay.graph.state_space()
    trace = _measures(replay.runs(i, space) for i in range(len(replay.sessions)))
    rng = np.random.default_rng(seed)
    fit = _measures(sample_realisation(space, rng).runs for _ in range(samples))
    report = {}
    for m in METRICS:
        a, b = trace[m], fit[m]
        if not len(a) or not len(b):
            continue
        q = {p: (float(np.quantile(a, p)), float(np.quantile(b, p))) for p in (0.5, 0.9)}
        report[m] = {"trace mean": float(a.mean()), "fit mean": float(b.mean()),
                     "ks": float(ks_2samp(a, b).statistic),
                     **{f"p{round(100 * p)} error": abs(f - t) / t if t else abs(f - t) for p, (t, f) in q.items()}}
    return report
