"""Fitting a PDGraph from observed execution traces.

A trace is one run of an application: a list of steps, each a mapping with ``stage``, ``backend``
and the measured demand of every parallel copy: ``prompt_tokens`` and ``output_tokens`` lists for
LLM stages, a ``service_time`` list (seconds) otherwise. ``Realisation.to_trace()`` writes this
format, so a fitted graph can be checked against the one that generated the traces.

What is estimated, and how:

* the entry is the first stage of the traces, the stages and their backends are those observed;
* loop edges are the back edges of a depth-first search from the entry over observed transitions,
  and each loop's bound is the largest iteration count observed (a bound never reached in the
  traces cannot be seen; it is the maximum-likelihood bound all the same);
* transition probabilities are maximum-likelihood under the loop semantics of :mod:`graph`: a loop
  edge's probability is (times taken) / (visits at which it was open), the exits share the rest in
  proportion to their counts over all visits;
* prompt growth per iteration is the least-squares slope of prompt tokens against the iteration
  count, at least 0 and at most what leaves every observed prompt a token beyond its growth; demands
  become histograms (Freedman-Diaconis bins, at most 64), or a deterministic value when every
  observation is equal; fan-out widths become discrete
  distributions when any step had more than one copy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hermes_env.errors import ConfigError, require
from hermes_env.pdgraph.distributions import Deterministic, Discrete, Distribution, Histogram
from hermes_env.pdgraph.graph import END, PDGraph, Stage, Transition, backend_kind

Trace = Sequence[Mapping[str, Any]]
MAX_BINS = 64


def fit_pdgraph(traces: Sequence[Trace], name: str, description: str = "") -> PDGraph:
    """Estimate a PDGraph from ``traces`` (see the module docstring for the format)."""
    require(len(traces) > 0, "traces", "is empty", "give at least one trace")
    backends: dict[str, str] = {}
    entries = Counter()
    counts: dict[str, Counter] = defaultdict(Counter)
    for i, trace in enumerate(traces):
        require(len(trace) > 0, f"traces[{i}]", "is an empty trace")
        for j, step in enumerate(trace):
            where = f"traces[{i}][{j}]"
            require("stage" in step and "backend" in step, where, "needs 'stage' and 'backend'")
            known = backends.setdefault(step["stage"], step["backend"])
            require(known == step["backend"], f"{where}.backend",
                    f"stage {step['stage']!r} ran on {known!r} elsewhere, here on {step['backend']!r}")
            nxt = trace[j + 1]["stage"] if j + 1 < len(trace) else END
            counts[step["stage"]][nxt] += 1
        entries[trace[0]["stage"]] += 1
    require(len(entries) == 1, "traces", f"start at different stages {sorted(entries)}",
            "a PDGraph has one entry stage")
    entry = next(iter(entries))
    order = list(backends)
    loops = _back_edges(entry, order, counts)
    bodies = _loop_bodies(order, counts, loops)
    bounds, visits = _replay(traces, loops, bodies)
    stages = []
    for stage in order:
        transitions = _transitions(stage, counts[stage], loops, bounds, visits)
        stages.append(_stage(stage, backends[stage], transitions, traces, loops, bodies))
    return PDGraph(name=name, stages=tuple(stages), entry=entry, description=description)


def _back_edges(entry: str, order: list[str], counts: Mapping[str, Counter]) -> set[tuple[str, str]]:
    """The loop edges: one edge per cycle found by a depth-first search from the entry.

    A cycle's loop edge is where the decision to repeat is taken: the DFS back edge if its stage
    branches, else the nearest earlier edge on the cycle whose stage does (in generate -> test ->
    repair -> test, the loop edge is test -> repair, not repair -> test)."""
    loops: set[tuple[str, str]] = set()
    colour: dict[str, int] = {}
    rank = {s: i for i, s in enumerate(order)}

    def succ(u: str) -> list[str]:
        return sorted((v for v in counts[u] if v != END), key=rank.__getitem__)

    def branches(u: str) -> bool:
        return len(counts[u]) > 1

    stack = [(entry, iter(succ(entry)))]
    colour[entry] = 1
    while stack:
        u, it = stack[-1]
        v = next(it, None)
        if v is None:
            colour[u] = 2
            stack.pop()
        elif colour.get(v) == 1:
            path = [n for n, _ in stack]
            cycle = list(zip(path[path.index(v):], path[path.index(v) + 1:] + [v], strict=True))
            loops.add(next((e for e in reversed(cycle) if branches(e[0])), (u, v)))
        elif v not in colour:
            colour[v] = 1
            stack.append((v, iter(succ(v))))
    return loops


def _loop_bodies(order: list[str], counts: Mapping[str, Counter], loops: set[tuple[str, str]]) -> dict:
    forward = {u: [v for v in counts[u] if v != END and (u, v) not in loops] for u in order}
    reverse: dict[str, list[str]] = defaultdict(list)
    for u, vs in forward.items():
        for v in vs:
            reverse[v].append(u)

    def reach(edges: Mapping[str, list[str]], start: str) -> set[str]:
        seen, stack = {start}, [start]
        while stack:
            for n in edges.get(stack.pop(), []):
                if n not in seen:
                    seen.add(n)
                    stack.append(n)
        return seen

    return {(u, v): reach(forward, v) & reach(reverse, u) for u, v in loops}


def _walk(traces: Sequence[Trace], loops: set, bodies: Mapping):  # noqa: ANN202
    """Every step with the loop counters it ran under and the stage that followed it."""
    for trace in traces:
        counter = dict.fromkeys(loops, 0)
        for j, step in enumerate(trace):
            nxt = trace[j + 1]["stage"] if j + 1 < len(trace) else END
            yield step, dict(counter), nxt
            if (step["stage"], nxt) in loops:
                counter[(step["stage"], nxt)] += 1
            for loop in loops:
                if nxt not in bodies[loop]:
                    counter[loop] = 0


def _replay(traces: Sequence[Trace], loops: set, bodies: Mapping) -> tuple[dict, dict]:
    """Loop bounds (the most iterations seen) and, per stage, its visits: (counters, next stage)."""
    bounds: dict[tuple[str, str], int] = dict.fromkeys(loops, 0)
    visits: dict[str, list[tuple[dict, str]]] = defaultdict(list)
    for step, counter, nxt in _walk(traces, loops, bodies):
        visits[step["stage"]].append((counter, nxt))
        if (step["stage"], nxt) in loops:
            bounds[(step["stage"], nxt)] = max(bounds[(step["stage"], nxt)], counter[(step["stage"], nxt)] + 1)
    return bounds, visits


def _transitions(stage: str, outs: Counter, loops: set, bounds: Mapping, visits: Mapping) -> tuple[Transition, ...]:
    own_loops = [(stage, v) for v in outs if (stage, v) in loops]
    loop_p = {}
    for loop in own_loops:
        open_visits = [nxt for c, nxt in visits[stage] if c[loop] < bounds[loop]]
        loop_p[loop] = sum(nxt == loop[1] for nxt in open_visits) / len(open_visits)
    exits = {v: n for v, n in outs.items() if (stage, v) not in loops}
    exit_mass = 1.0 - sum(loop_p.values())
    total_exits = sum(exits.values())
    out = []
    for loop, p in loop_p.items():
        on_limit = None
        if exit_mass <= 1e-12:  # the loop always repeats until its bound: name where it then goes
            on_limit = max(exits, key=exits.__getitem__)
        out.append(Transition(loop[1], p, bounds[loop], on_limit))
    if exit_mass > 1e-12:
        out += [Transition(v, exit_mass * n / total_exits) for v, n in exits.items()]
    return tuple(out)


def _stage(name: str, backend: str, transitions: tuple[Transition, ...], traces: Sequence[Trace],
           loops: set, bodies: Mapping) -> Stage:
    steps = [(sum(c for lp, c in counter.items() if name in bodies[lp]), step)
             for step, counter, _ in _walk(traces, loops, bodies) if step["stage"] == name]
    widths = [len(s["output_tokens"] if backend_kind(backend) == "llm" else s["service_time"]) for _, s in steps]
    fanout = Discrete(*np.unique(widths, return_counts=True)) if max(widths) > 1 else None
    # a stage that always finishes the application is written without transitions, as in the library
    ends = dict(next=() if transitions == (Transition(END, 1.0),) else transitions, fanout=fanout)
    if backend_kind(backend) != "llm":
        times = np.concatenate([np.asarray(s["service_time"], dtype=float) for _, s in steps])
        return Stage(name, backend, service_time=_histogram(times, f"stage '{name}'.service_time"), **ends)
    iters = np.concatenate([np.full(len(s["prompt_tokens"]), it) for it, s in steps])
    prompt = np.concatenate([np.asarray(s["prompt_tokens"], dtype=float) for _, s in steps])
    output = np.concatenate([np.asarray(s["output_tokens"], dtype=float) for _, s in steps])
    growth = 0.0
    if len(np.unique(iters)) > 1:
        growth = max(0.0, float(np.round(np.polyfit(iters, prompt, 1)[0])))
        # no larger than leaves every observed prompt at least one token beyond its growth
        growth = min(growth, float(np.floor(np.min((prompt[iters > 0] - 1) / iters[iters > 0]))))
    return Stage(name, backend, prompt_tokens=_histogram(prompt - growth * iters, f"stage '{name}'.prompt_tokens"),
                 output_tokens=_histogram(output, f"stage '{name}'.output_tokens"),
                 prompt_growth_per_iteration=growth, **ends)


def _histogram(x: np.ndarray, field: str) -> Distribution:
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ConfigError(field, "has negative or non-finite measurements")
    if np.all(x == x[0]):
        return Deterministic(float(x[0]))
    edges = np.histogram_bin_edges(x, bins="fd")
    if len(edges) - 1 > MAX_BINS:
        edges = np.histogram_bin_edges(x, bins=MAX_BINS)
    weights, edges = np.histogram(x, bins=edges)
    return Histogram(edges, weights)
