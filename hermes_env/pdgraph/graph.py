"""The PDGraph (Probabilistic Demand Graph) of an LLM application.

An application is a graph of *stages*. Each stage runs on one backend, named ``kind:name``:

* ``llm:<model>`` stages carry ``prompt_tokens`` and ``output_tokens`` distributions; the prompt may
  grow by ``prompt_growth_per_iteration`` tokens for each iteration of the loops around the stage
  (an agent's context accumulates observations); ``prefix_reuse`` is the fraction of the prompt that
  repeats a prefix computed before the run and kept in a remote prefix store (CALVO's setting);
  ``system_prompt_tokens`` leading tokens are the same for every application of the template (a system
  prompt, few-shot examples); ``context: continue`` makes the prompt extend the application's previous
  call on that backend (its prompt and answer; the prompt's length is still the stage's own), ``context:
  append`` makes ``prompt_tokens`` the tokens the call *adds* to the conversation so far (the prompt is the
  whole conversation plus them, as an agent's context grows call by call; the demand model prices the
  added tokens, which is the prefill a prefix cache leaves to compute), and ``fresh`` (the default)
  starts a new conversation; these say which KV blocks a replica's prefix cache can reuse;
  ``adapter`` names the LoRA adapter the stage runs with (``any``: the one the workload gives the
  application);
* ``tool:``, ``dnn:`` and ``api:`` stages carry a ``service_time`` distribution in seconds.

A stage may fan out: ``fanout`` is an integer distribution of the number of parallel copies,
all joined before the next stage (map-reduce, debate agents, parallel searches).

Transitions (``next``) carry probabilities that sum to 1 per stage; the target ``end`` finishes the
application and a stage without ``next`` also finishes it. A transition with ``max_iterations``
is a *loop edge*: it must close a cycle and may be taken at most that many times per entry into
its loop. Once the bound is reached the edge is closed and the application goes to ``on_limit``
when given, otherwise the other transitions are renormalised. Every cycle must contain a loop
edge, so every application finishes.

A loop's counter resets when the application leaves the loop's body (the stages on paths from the
loop head to the loop edge's source), which gives nested loops their usual meaning.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hermes_env.errors import ConfigError, require
from hermes_env.pdgraph.distributions import Distribution, distribution_from_spec
from hermes_env.validation import choice, integer, load_yaml

END = "end"
BACKEND_KINDS = ("llm", "tool", "dnn", "api")
_PROB_TOL = 1e-6
# States of a PDGraph's chain (stage, loop counters): far beyond the library's (264 at most), and enumerated
# in seconds; a loop bound of 10^8 made the enumeration run for hours.
MAX_STATES = 100_000


def backend_kind(backend: str) -> str:
    """The part of ``kind:name`` before the colon."""
    return backend.split(":", 1)[0]


@dataclass(frozen=True)
class Transition:
    to: str
    p: float
    max_iterations: int | None = None
    on_limit: str | None = None

    @property
    def is_loop(self) -> bool:
        return self.max_iterations is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"to": self.to, "p": self.p}
        if self.max_iterations is not None:
            out["max_iterations"] = self.max_iterations
        if self.on_limit is not None:
            out["on_limit"] = self.on_limit
        return out


@dataclass(frozen=True)
class Stage:
    name: str
    backend: str
    service_time: Distribution | None = None
    prompt_tokens: Distribution | None = None
    output_tokens: Distribution | None = None
    prompt_growth_per_iteration: float = 0.0
    prefix_reuse: float = 0.0
    system_prompt_tokens: int = 0
    context: str = "fresh"
    adapter: str | None = None
    fanout: Distribution | None = None
    next: tuple[Transition, ...] = ()
    description: str = ""

    @cached_property  # asked for every request issued; the stage is frozen
    def is_llm(self) -> bool:
        return backend_kind(self.backend) == "llm"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "backend": self.backend}
        if self.description:
            out["description"] = self.description
        for key in ("service_time", "prompt_tokens", "output_tokens", "fanout"):
            dist = getattr(self, key)
            if dist is not None:
                out[key] = dist.to_dict()
        if self.prompt_growth_per_iteration:
            out["prompt_growth_per_iteration"] = self.prompt_growth_per_iteration
        if self.prefix_reuse:
            out["prefix_reuse"] = self.prefix_reuse
        if self.system_prompt_tokens:
            out["system_prompt_tokens"] = self.system_prompt_tokens
        if self.context != "fresh":
            out["context"] = self.context
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.next:
            out["next"] = [t.to_dict() for t in self.next]
        return out


@dataclass(frozen=True)
class PDGraph:
    """An application template. Build with the constructor, :meth:`from_dict` or :meth:`from_yaml`.

    Construction validates the graph and raises :class:`~hermes_env.errors.ConfigError` naming the
    stage and field at fault. ``known_backends``, when given, restricts the backends stages may use.
    """

    name: str
    stages: tuple[Stage, ...]
    entry: str = ""
    description: str = ""
    sources: tuple[str, ...] = ()
    known_backends: frozenset[str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.entry and self.stages:
            object.__setattr__(self, "entry", self.stages[0].name)
        _validate(self)
        # Building the state space finishes the validation (interlocking loops, dead states); it is kept,
        # since every analysis and simulation of the graph needs it.
        object.__setattr__(self, "_space", StateSpace(self))

    # -- lookup -----------------------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"PDGraph {self.name!r} has no stage {name!r}")

    @property
    def backends(self) -> tuple[str, ...]:
        """Backends used by the application, in first-use order."""
        return tuple(dict.fromkeys(s.backend for s in self.stages))

    def loop_edges(self) -> list[tuple[str, Transition]]:
        return [(s.name, t) for s in self.stages for t in s.next if t.is_loop]

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "entry": self.entry}
        if self.description:
            out["description"] = self.description
        if self.sources:
            out["sources"] = list(self.sources)
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], known_backends: Iterable[str] | None = None) -> PDGraph:
        require(isinstance(spec, Mapping), "pdgraph", "must be a mapping with 'name' and 'stages'")
        unknown = set(spec) - {"name", "entry", "description", "sources", "stages"}
        if unknown:
            raise ConfigError(f"pdgraph.{sorted(unknown)[0]}", "is not a PDGraph field",
                              "use name, entry, description, sources, stages")
        require(isinstance(spec.get("name"), str) and spec["name"], "pdgraph.name", "must be a non-empty string")
        raw_stages = spec.get("stages")
        require(isinstance(raw_stages, list) and raw_stages, "pdgraph.stages", "must be a non-empty list")
        stages = tuple(_stage_from_dict(s, f"stages[{i}]") for i, s in enumerate(raw_stages))
        sources = spec.get("sources", ())
        require(isinstance(sources, list | tuple), "pdgraph.sources", "must be a list of strings")
        return cls(
            name=spec["name"],
            stages=stages,
            entry=spec.get("entry", ""),
            description=spec.get("description", ""),
            sources=tuple(str(s) for s in sources),
            known_backends=frozenset(known_backends) if known_backends is not None else None,
        )

    @classmethod
    def from_yaml(cls, path: str | Path, known_backends: Iterable[str] | None = None) -> PDGraph:
        return cls.from_dict(load_yaml(path, "pdgraph"), known_backends)

    # -- derived objects --------------------------------------------------------------------
    def state_space(self) -> StateSpace:
        """The finite Markov chain over (stage, loop counters) that this graph induces."""
        return self._space  # type: ignore[attr-defined]


_STAGE_KEYS = {
    "name", "backend", "service_time", "prompt_tokens", "output_tokens", "prompt_growth_per_iteration",
    "prefix_reuse", "system_prompt_tokens", "context", "adapter", "fanout", "next", "description",
}
CONTEXTS = ("fresh", "continue", "append")


def _stage_from_dict(spec: Any, where: str) -> Stage:
    require(isinstance(spec, Mapping), where, "must be a mapping")
    name = spec.get("name")
    require(isinstance(name, str) and name, f"{where}.name", "must be a non-empty string")
    where = f"stage '{name}'"
    unknown = set(spec) - _STAGE_KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", "is not a stage field",
                          f"use {', '.join(sorted(_STAGE_KEYS))}")
    backend = spec.get("backend")
    require(isinstance(backend, str), f"{where}.backend", "is missing", "e.g. 'llm:llama3-8b' or 'tool:python-sandbox'")
    dists = {k: distribution_from_spec(spec[k], f"{where}.{k}")
             for k in ("service_time", "prompt_tokens", "output_tokens", "fanout") if k in spec}
    raw_next = spec.get("next", [])
    require(isinstance(raw_next, list), f"{where}.next", "must be a list of {to, p} mappings")
    transitions = tuple(_transition_from_dict(t, f"{where}.next[{i}]") for i, t in enumerate(raw_next))
    growth = spec.get("prompt_growth_per_iteration", 0.0)
    require(isinstance(growth, int | float) and growth >= 0, f"{where}.prompt_growth_per_iteration",
            f"must be a number >= 0, got {growth!r}")
    reuse = spec.get("prefix_reuse", 0.0)
    require(isinstance(reuse, int | float) and 0 <= reuse <= 1, f"{where}.prefix_reuse",
            f"must be a fraction in [0, 1], got {reuse!r}")
    system = integer(spec, "system_prompt_tokens", where, 0, low=0, high=10_000_000)
    context = choice(spec, "context", where, CONTEXTS, "fresh")
    adapter = spec.get("adapter")
    require(adapter is None or (isinstance(adapter, str) and adapter), f"{where}.adapter",
            "must name a LoRA adapter, or be 'any' (the one the workload gives the application)")
    return Stage(name=name, backend=backend, next=transitions, prompt_growth_per_iteration=float(growth),
                 prefix_reuse=float(reuse), system_prompt_tokens=system, context=context, adapter=adapter,
                 description=str(spec.get("description", "")), **dists)


def _transition_from_dict(spec: Any, where: str) -> Transition:
    require(isinstance(spec, Mapping), where, "must be a mapping with 'to' and 'p'")
    unknown = set(spec) - {"to", "p", "max_iterations", "on_limit"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", "is not a transition field",
                          "use to, p, max_iterations, on_limit")
    require(isinstance(spec.get("to"), str), f"{where}.to", "must name a stage or 'end'")
    p = spec.get("p")
    require(isinstance(p, int | float) and not isinstance(p, bool), f"{where}.p", f"must be a number, got {p!r}")
    mi = spec.get("max_iterations")
    require(mi is None or (isinstance(mi, int) and not isinstance(mi, bool)), f"{where}.max_iterations",
            f"must be an integer, got {mi!r}")
    return Transition(to=spec["to"], p=float(p), max_iterations=mi, on_limit=spec.get("on_limit"))


# -- validation -------------------------------------------------------------------------------

def _validate(g: PDGraph) -> None:
    require(bool(g.name), "pdgraph.name", "must be a non-empty string")
    require(len(g.stages) > 0, "pdgraph.stages", "must contain at least one stage")
    names = [s.name for s in g.stages]
    seen: set[str] = set()
    for s in g.stages:
        require(s.name not in seen, f"stage '{s.name}'.name", "is used by two stages", "give each stage a unique name")
        require(s.name != END, f"stage '{s.name}'.name", f"'{END}' is reserved for finishing the application")
        seen.add(s.name)
    require(g.entry in seen, "pdgraph.entry", f"names no stage: {g.entry!r}", f"use one of {names}")
    for s in g.stages:
        _validate_stage(s, seen, g.known_backends)
    _forward_order(g)  # raises on a cycle without a loop edge
    for src, t in g.loop_edges():
        body = loop_body(g, src, t.to)
        require(src in body, f"stage '{src}'.next[to={t.to}].max_iterations",
                f"marks a loop edge, but '{t.to}' does not lead back to '{src}'",
                "remove max_iterations from an edge that closes no cycle")
    _check_reachable(g)


def _validate_stage(s: Stage, names: set[str], known_backends: frozenset[str] | None) -> None:
    where = f"stage '{s.name}'"
    require(":" in s.backend and backend_kind(s.backend) in BACKEND_KINDS, f"{where}.backend",
            f"unknown backend {s.backend!r}", f"name it kind:name with kind one of {', '.join(BACKEND_KINDS)}")
    if known_backends is not None:
        require(s.backend in known_backends, f"{where}.backend", f"unknown backend {s.backend!r}",
                f"the cluster offers {sorted(known_backends)}")
    if s.is_llm:
        for key in ("prompt_tokens", "output_tokens"):
            require(getattr(s, key) is not None, f"{where}.{key}", "is missing", "LLM stages need token distributions")
        require(s.service_time is None, f"{where}.service_time", "is not allowed on an LLM stage",
                "give prompt_tokens and output_tokens; the cost model turns them into seconds")
    else:
        require(s.service_time is not None, f"{where}.service_time", "is missing",
                "non-LLM stages need a service_time distribution in seconds")
        for key in ("prompt_tokens", "output_tokens"):
            require(getattr(s, key) is None, f"{where}.{key}", f"is only allowed on llm: stages, not {s.backend}")
        require(s.prompt_growth_per_iteration == 0, f"{where}.prompt_growth_per_iteration",
                "is only allowed on llm: stages")
        for key in ("prefix_reuse", "system_prompt_tokens", "adapter"):
            require(not getattr(s, key), f"{where}.{key}", "is only allowed on llm: stages")
        require(s.context == "fresh", f"{where}.context", "is only allowed on llm: stages")
    if s.prefix_reuse:
        require(not s.system_prompt_tokens and s.context == "fresh", f"{where}.prefix_reuse",
                "cannot be combined with system_prompt_tokens or a continued context",
                "prefix_reuse stands for a prefix computed before the run; the other two describe prefixes the "
                "run computes itself: use one")
    if s.fanout is not None:
        require(s.fanout.is_discrete, f"{where}.fanout", "must be a discrete or deterministic distribution of widths")
        values, _ = s.fanout.points()
        require(bool(np.all((values >= 1) & (values == np.round(values)))), f"{where}.fanout",
                f"widths must be integers >= 1, got {values.tolist()}")
    total = 0.0
    targets: set[str] = set()
    for i, t in enumerate(s.next):
        tw = f"{where}.next[{i}]"
        require(t.to in names or t.to == END, f"{tw}.to", f"names no stage: {t.to!r}", f"use a stage name or '{END}'")
        require(t.to not in targets, f"{tw}.to", f"'{t.to}' appears twice", "merge the two transitions")
        targets.add(t.to)
        require(0.0 <= t.p <= 1.0 and math.isfinite(t.p), f"{tw}.p", f"must be in [0, 1], got {t.p}")
        total += t.p
        if t.max_iterations is not None:
            require(t.max_iterations >= 1, f"{tw}.max_iterations", f"must be >= 1, got {t.max_iterations}")
            require(t.to != END, f"{tw}.max_iterations", f"a loop edge cannot go to '{END}'")
            if t.on_limit is not None:
                require(t.on_limit in names or t.on_limit == END, f"{tw}.on_limit", f"names no stage: {t.on_limit!r}")
            else:
                exit_p = sum(o.p for o in s.next if o is not t)
                require(exit_p > 0, f"{tw}.on_limit", "is needed: the other transitions have probability 0, so "
                        "nothing is left to take once the loop bound is reached",
                        "give on_limit (a stage or 'end') or an exit transition with p > 0")
        else:
            require(t.on_limit is None, f"{tw}.on_limit", "is only allowed on a loop edge (with max_iterations)")
    if s.next:
        require(abs(total - 1.0) <= _PROB_TOL, f"{where}.next", f"probabilities sum to {total:.6g}, not 1",
                "make the transition probabilities of each stage sum to 1")


def _forward_edges(g: PDGraph) -> dict[str, list[str]]:
    edges: dict[str, list[str]] = {s.name: [] for s in g.stages}
    for s in g.stages:
        for t in s.next:
            if not t.is_loop and t.to != END:
                edges[s.name].append(t.to)
            if t.is_loop and t.on_limit not in (None, END):
                edges[s.name].append(t.on_limit)  # type: ignore[arg-type]
    return edges


def _forward_order(g: PDGraph) -> list[str]:
    """Topological order of the graph without loop edges; a cycle there is an unbounded loop."""
    edges = _forward_edges(g)
    state: dict[str, int] = {}
    order: list[str] = []
    for root in edges:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            if i < len(edges[node]):
                stack.append((node, i + 1))
                nxt = edges[node][i]
                if state.get(nxt) == 1:
                    cycle = path[path.index(nxt):] + [nxt]
                    raise ConfigError(
                        f"stage '{node}'.next[to={nxt}]",
                        f"unbounded loop {' -> '.join(cycle)}",
                        "bound it: give the edge that closes the loop max_iterations",
                    )
                if nxt not in state:
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
                order.append(node)
    return order[::-1]


def _descendants(edges: Mapping[str, Sequence[str]], start: str) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def loop_body(g: PDGraph, source: str, head: str) -> frozenset[str]:
    """Stages on forward paths from ``head`` to ``source``: where the loop's counter is live."""
    edges = _forward_edges(g)
    reverse: dict[str, list[str]] = {n: [] for n in edges}
    for a, outs in edges.items():
        for b in outs:
            reverse[b].append(a)
    return frozenset(_descendants(edges, head) & _descendants(reverse, source))


def _check_reachable(g: PDGraph) -> None:
    edges: dict[str, list[str]] = {s.name: [] for s in g.stages}
    for s in g.stages:
        for t in s.next:
            for target in (t.to, t.on_limit):
                if target not in (None, END):
                    edges[s.name].append(target)  # type: ignore[arg-type]
    reached = _descendants(edges, g.entry)
    for s in g.stages:
        require(s.name in reached, f"stage '{s.name}'", f"is unreachable from the entry stage '{g.entry}'",
                "connect it with a transition or remove it")


# -- the induced state machine ----------------------------------------------------------------

@dataclass(frozen=True)
class LoopEdge:
    name: str  # "source->head"
    source: str
    head: str
    max_iterations: int
    on_limit: str | None
    body: frozenset[str]


class StateSpace:
    """The finite, acyclic Markov chain over (stage, loop counters) that a PDGraph induces.

    States are numbered 0..n-1 in topological order (state 0 is the entry), so that a backward
    pass over ``range(n - 1, -1, -1)`` sees every successor before its predecessors. ``END`` is -1.
    """

    END = -1

    def __init__(self, graph: PDGraph) -> None:
        self.graph = graph
        self.stage_names = [s.name for s in graph.stages]
        self._stage_index = {n: i for i, n in enumerate(self.stage_names)}
        self.loops = [
            LoopEdge(f"{src}->{t.to}", src, t.to, t.max_iterations or 0, t.on_limit, loop_body(graph, src, t.to))
            for src, t in graph.loop_edges()
        ]
        self._build()

    def _build(self) -> None:
        start = (self._stage_index[self.graph.entry], (0,) * len(self.loops))
        keys = [start]
        index = {start: 0}
        raw: list[dict[tuple[int, tuple[int, ...]] | None, float]] = []
        i = 0
        while i < len(keys):
            if len(keys) > MAX_STATES:
                loops = ", ".join(f"{lp.name} up to {lp.max_iterations}" for lp in self.loops)
                raise ConfigError(f"pdgraph {self.graph.name!r}", f"has more than {MAX_STATES:,} states (stages x "
                                  f"loop counters; loops {loops})", "lower the loops' max_iterations")
            moves = self._moves(*keys[i])
            raw.append(moves)
            for key in moves:
                if key is not None and key not in index:
                    index[key] = len(keys)
                    keys.append(key)
            i += 1
        order = self._topological(keys, raw, index)
        new_id = {old: new for new, old in enumerate(order)}
        self.keys = [keys[o] for o in order]
        self.stage_of = np.array([k[0] for k in self.keys], dtype=np.int64)
        self.iteration_of = np.array(
            [self._iteration(self.stage_names[s], c) for s, c in self.keys], dtype=np.int64)
        self.successors: list[np.ndarray] = []
        self.probabilities: list[np.ndarray] = []
        for o in order:
            moves = raw[o]
            self.successors.append(np.array(
                [self.END if k is None else new_id[index[k]] for k in moves], dtype=np.int64))
            self.probabilities.append(np.array(list(moves.values()), dtype=float))
        # next_state's tables as plain lists: bisect over a few floats beats numpy's per-call overhead
        self._cumulative = [np.cumsum(p).tolist() for p in self.probabilities]
        self._successor_list = [s.tolist() for s in self.successors]
        self._stage_at = [self.graph.stages[i] for i in self.stage_of.tolist()]
        self._id = {k: n for n, k in enumerate(self.keys)}

    def _moves(self, stage: int, counters: tuple[int, ...]) -> dict[tuple[int, tuple[int, ...]] | None, float]:
        s = self.graph.stages[stage]
        moves: dict[tuple[int, tuple[int, ...]] | None, float] = {}
        dropped = 0.0

        def add(target: str, p: float, c: list[int]) -> None:
            if target == END:
                key = None
            else:
                for j, loop in enumerate(self.loops):
                    if target not in loop.body:
                        c[j] = 0
                key = (self._stage_index[target], tuple(c))
            moves[key] = moves.get(key, 0.0) + p

        for t in s.next:
            c = list(counters)
            if t.is_loop:
                j = next(j for j, lp in enumerate(self.loops) if lp.source == s.name and lp.head == t.to)
                if c[j] < self.loops[j].max_iterations:
                    c[j] += 1
                    add(t.to, t.p, c)
                elif t.on_limit is not None:
                    add(t.on_limit, t.p, c)
                else:
                    dropped += t.p
            else:
                add(t.to, t.p, c)
        if not s.next:
            moves[None] = 1.0
        if dropped:
            require(dropped < 1.0 - _PROB_TOL, f"stage '{s.name}'.next",
                    f"leaves the application nowhere to go once its loop counters reach "
                    f"{self._counters_text(counters)}: every transition with p > 0 is a loop edge at its bound",
                    "give one of those loop edges on_limit, or an exit transition with p > 0")
            moves = {k: v / (1.0 - dropped) for k, v in moves.items()}
        return {k: v for k, v in moves.items() if v > 0}

    def _counters_text(self, counters: tuple[int, ...]) -> str:
        return "{" + ", ".join(f"{lp.name}: {c}" for lp, c in zip(self.loops, counters, strict=True)) + "}"

    def _topological(self, keys: list, raw: list[dict], index: dict) -> list[int]:
        order: list[int] = []
        state = [0] * len(keys)
        for root in range(len(keys)):
            if state[root]:
                continue
            stack = [(root, iter([index[k] for k in raw[root] if k is not None]))]
            state[root] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[node] = 2
                    order.append(node)
                elif state[nxt] == 1:
                    path = [n for n, _ in stack]
                    self._reject_cycle([keys[n] for n in path[path.index(nxt):]] + [keys[nxt]])
                elif state[nxt] == 0:
                    state[nxt] = 1
                    stack.append((nxt, iter([index[k] for k in raw[nxt] if k is not None])))
        order.reverse()
        return order

    def _reject_cycle(self, cycle: list[tuple[int, tuple[int, ...]]]) -> None:
        """Loop edges whose bodies overlap without nesting reset each other's counters, so neither bound
        is ever reached: name the loops and the cycle of states."""
        stages = [self.stage_names[stage] for stage, _ in cycle]
        loops = sorted({lp.name for lp in self.loops if any(s in lp.body for s in stages)})
        path = " -> ".join(f"{name} {self._counters_text(c)}" for name, (_, c) in zip(stages, cycle, strict=True))
        raise ConfigError(f"loops {', '.join(loops)}", f"interlock: their bodies overlap without nesting, so each "
                          f"resets the other's counter and the application can cycle forever ({path})",
                          "nest the loops (one body inside the other) or make their bodies disjoint")

    def _iteration(self, stage: str, counters: tuple[int, ...]) -> int:
        return sum(c for c, loop in zip(counters, self.loops, strict=True) if stage in loop.body)

    # -- queries ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.keys)

    def stage(self, state: int) -> Stage:
        return self._stage_at[state]

    def loop_counters(self, state: int) -> dict[str, int]:
        return {lp.name: c for lp, c in zip(self.loops, self.keys[state][1], strict=True)}

    def state_id(self, stage: str, loops: Mapping[str, int] | None = None) -> int:
        """The state of being at ``stage`` with the given loop counters (missing counters are 0)."""
        require(stage in self._stage_index, "progress.stage", f"names no stage of {self.graph.name!r}: {stage!r}")
        loops = dict(loops or {})
        names = [lp.name for lp in self.loops]
        for name in loops:
            require(name in names, f"progress.loops.{name}", "is not a loop of this application",
                    f"loops are {names}")
        key = (self._stage_index[stage], tuple(int(loops.get(n, 0)) for n in names))
        require(key in self._id, "progress", f"stage {stage!r} with loop counters {loops} is unreachable")
        return self._id[key]

    def next_state(self, state: int, rng: np.random.Generator) -> int:
        cum = self._cumulative[state]
        return self._successor_list[state][min(bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)]
