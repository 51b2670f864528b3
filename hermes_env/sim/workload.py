"""Workloads: when applications arrive (Poisson, bursty, time-varying, trace replay) and which ones.

Random streams are separated so that every policy sees the same workload under one seed (common random
numbers): arrival times, the template and class of each application, and each application's own
realisation (drawn at arrival, in arrival order, from a stream of its own) never depend on what the
scheduler does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.cluster.config import ClusterConfig
from hermes_env.errors import require
from hermes_env.pdgraph.distributions import Histogram
from hermes_env.pdgraph.graph import PDGraph
from hermes_env.pdgraph.library import TEMPLATE_NAMES, load_template
from hermes_env.sim.agentic import FORMAT as AGENTIC
from hermes_env.sim.agentic import WAIT_BACKEND, AgenticReplay, load_agentic
from hermes_env.sim.traces import BLOCK_TOKENS, TRACE_NAMES, Trace, load_trace, trace_path
from hermes_env.validation import as_number, check_keys, choice, flag, integer, number

PROCESSES = ("poisson", "bursty", "time_varying", "trace")
MAX_RATE = 1e9  # arrivals per second: beyond any cluster, and far from float overflow in cumulative sums
CLASSES = ("real_time", "best_effort")
# Applications in a workload. A simulation draws 16 bytes per application up front (arrival time, template):
# 1.6 GB at the bound, which is also days of CPU at the engine's speed; 10**10 asked for 160 GB and crashed.
MAX_APPLICATIONS = 10**8
TIERS = ("critical", "standard", "sheddable")  # SLO tiers, most protected first
CLASS_TIER = {"real_time": "critical", "best_effort": "standard"}  # an entry's tier when it names none


@dataclass(frozen=True)
class TierConfig:
    """What an SLO tier allows an admission policy and the SLO its applications get when their entry gives
    none: ``reject`` (may the application be refused: default false for ``critical``, true otherwise) and
    ``max_defer`` (seconds after its arrival during which it may be deferred; once they are over, a deferred
    application is rejected: default 0 for ``critical``, 60 otherwise)."""

    name: str
    slo: float = math.inf
    reject: bool = True
    max_defer: float = 60.0

    @classmethod
    def default(cls, name: str) -> TierConfig:
        return cls(name, reject=False, max_defer=0.0) if name == "critical" else cls(name)

    @classmethod
    def from_dict(cls, name: str, spec: Any, where: str) -> TierConfig:
        check_keys(spec, ("slo", "reject", "max_defer"), where)
        base = cls.default(name)
        return cls(name, number(spec, "slo", where, math.inf, low=0, low_open=True, allow_inf=True),
                   flag(spec, "reject", where, base.reject),
                   number(spec, "max_defer", where, base.max_defer, low=0, high=1e9))


def tier_configs(spec: Any, where: str) -> dict[str, TierConfig]:
    """The workload's ``tiers`` section (every tier, defaults where not given); a name outside
    :data:`TIERS` is an error."""
    spec = {} if spec is None else spec
    require(isinstance(spec, Mapping), where, "must map tier names to {slo, reject, max_defer}",
            f"tiers: {list(TIERS)}")
    for name in spec:
        require(name in TIERS, f"{where}.{name}", "is not an SLO tier", f"use one of {list(TIERS)}")
    return {name: TierConfig.from_dict(name, spec[name], f"{where}.{name}") if name in spec
            else TierConfig.default(name) for name in TIERS}


def resolve_path(value: str, base: Path | None) -> Path:
    """A file named in a config: relative paths are relative to the config's folder ``base``."""
    return Path(value) if base is None or Path(value).is_absolute() else base / value


def with_absolute_files(spec: Any, folder: Path) -> Any:
    """A copy of a workload spec read from a YAML in ``folder`` whose files (PDGraph templates, an
    arrival trace) are absolute, so that the spec can be inlined into an experiment that lives elsewhere."""
    if not isinstance(spec, Mapping):
        return spec  # WorkloadConfig reports the malformed spec

    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value not in TEMPLATE_NAMES and value not in TRACE_NAMES:
            return str(resolve_path(value, folder).resolve())
        return value

    spec = dict(spec)
    if isinstance(spec.get("arrivals"), Mapping) and "trace" in spec["arrivals"]:
        spec["arrivals"] = {**spec["arrivals"], "trace": absolute(spec["arrivals"]["trace"])}
    if isinstance(spec.get("applications"), list):
        spec["applications"] = [
            {k: absolute(v) if k in ("template", "believed") else v for k, v in a.items()} if isinstance(a, Mapping)
            else a for a in spec["applications"]]
    return spec


@dataclass(frozen=True)
class ArrivalConfig:
    """``poisson`` at ``rate``/s; ``bursty``: gamma inter-arrivals of mean 1/rate and coefficient of
    variation ``cv``; ``time_varying``: Poisson whose rate follows ``schedule`` (a cycle of
    ``{duration, rate}`` pieces); ``trace``: the requests of a trace file (:mod:`hermes_env.sim.traces`: a
    shipped trace's name or a path), those arriving in ``window`` (seconds ``[start, end)``, default all),
    their times multiplied by ``time_scale`` or rescaled to a mean ``rate``. A trace with token counts
    gives every request its prompt and output (and prefix blocks); ``backend`` names the LLM backend that
    serves them when no application mix is given. ``format: dynamo-agentic`` reads NVIDIA Dynamo's agentic
    Mooncake rows (:mod:`hermes_env.sim.agentic`): the arrivals are its sessions' (``window`` and the
    scaling apply to them), ``block_size`` is the tokens of a hash id and ``wait_backend`` the tool backend
    its waits replay on."""

    process: str
    rate: float = 0.0
    cv: float = 1.0
    schedule: tuple[tuple[float, float], ...] = ()
    trace: str = ""
    time_scale: float = 1.0
    window: tuple[float, float] = (0.0, math.inf)
    backend: str = ""
    format: str = "auto"
    block_size: int = BLOCK_TOKENS
    wait_backend: str = WAIT_BACKEND

    def trace_data(self) -> Trace:
        """The trace's requests in the window, times scaled (only for ``process: trace``); for an agentic
        trace, the arrivals of its sessions (without token counts)."""
        if self.format == AGENTIC:
            sessions = self.agentic_sessions()
            times = load_agentic(self.trace, self.block_size).arrivals()[sessions]
            return Trace(self.trace, (times - times[0]) * self.time_scale, None, None, None)
        trace = load_trace(self.trace)
        if self.window != (0.0, math.inf):
            trace = trace.window(*self.window)
        return Trace(trace.path, trace.arrival * self.time_scale, trace.prompt, trace.output, trace.block_ids)

    def agentic_sessions(self) -> np.ndarray:
        """Indices of the agentic trace's sessions arriving in the window, in arrival order."""
        arrival = load_agentic(self.trace, self.block_size).arrivals()
        keep = np.flatnonzero((arrival >= self.window[0]) & (arrival < self.window[1]))
        require(len(keep) > 0, "workload.arrivals.window", f"holds no session of {self.trace} ({len(arrival)} "
                f"sessions over {arrival[-1]:.0f} s)", "choose a window inside the trace")
        return keep

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str, base: Path | None = None) -> ArrivalConfig:
        require(isinstance(spec, Mapping), where, "must be a mapping with 'process'")
        process = choice(spec, "process", where, PROCESSES)
        if process != "trace":
            check_keys(spec, ("process", "rate", "cv", "schedule"), where)
        if process in ("poisson", "bursty"):
            rate = number(spec, "rate", where, low=0, low_open=True, high=MAX_RATE)
            # cv is the gamma inter-arrival's coefficient of variation: shape 1/cv^2 underflows past 100
            return cls(process, rate, number(spec, "cv", where, 1.0, low=0, low_open=True, high=100.0))
        if process == "time_varying":
            raw = spec.get("schedule")
            require(isinstance(raw, list) and raw, f"{where}.schedule", "must be a non-empty list of {duration, rate}")
            pieces = []
            for i, piece in enumerate(raw):
                at = f"{where}.schedule[{i}]"
                check_keys(piece, ("duration", "rate"), at)
                pieces.append((number(piece, "duration", at, low=0, low_open=True, high=1e12),
                               number(piece, "rate", at, low=0, high=MAX_RATE)))
            require(max(r for _, r in pieces) > 0, f"{where}.schedule", "has no positive rate")
            return cls(process, schedule=tuple(pieces))
        check_keys(spec, ("process", "trace", "time_scale", "rate", "window", "backend", "format", "block_size",
                          "wait_backend"), where)
        trace = spec.get("trace")
        require(isinstance(trace, str), f"{where}.trace", "must name a shipped trace or a file",
                f"shipped traces: {list(TRACE_NAMES)}")
        path = str(trace_path(trace if trace in TRACE_NAMES else resolve_path(trace, base)))
        fmt = choice(spec, "format", where, ("auto", AGENTIC), "auto")
        for key in ("block_size", "wait_backend"):
            require(key not in spec or fmt == AGENTIC, f"{where}.{key}", f"goes with format: {AGENTIC}")
        block = integer(spec, "block_size", where, BLOCK_TOKENS, low=1, high=1 << 20)
        wait = spec.get("wait_backend", WAIT_BACKEND)
        require(isinstance(wait, str), f"{where}.wait_backend", "must name a tool backend")
        extra = {"format": fmt, "block_size": block, "wait_backend": wait}
        window = (0.0, math.inf)
        if "window" in spec:
            raw = spec["window"]
            require(isinstance(raw, list) and len(raw) == 2, f"{where}.window", "must be [start, end] in seconds")
            window = (as_number(raw[0], f"{where}.window[0]", low=0), as_number(raw[1], f"{where}.window[1]", low=0,
                                                                                  allow_inf=True))
            require(window[1] > window[0], f"{where}.window", "must end after it starts")
        require(not ("rate" in spec and "time_scale" in spec), f"{where}.rate", "cannot go with time_scale",
                "give a target rate, or a time_scale, not both")
        scale = number(spec, "time_scale", where, 1.0, low=0, low_open=True, high=1e9)
        backend = spec.get("backend", "")
        require(isinstance(backend, str), f"{where}.backend", "must name an LLM backend")
        arrivals = cls(process, trace=path, time_scale=scale, window=window, backend=backend, **extra)
        if "rate" in spec:  # rescale the trace's own rate to the one asked for
            rate = number(spec, "rate", where, low=0, low_open=True, high=MAX_RATE)
            arrivals = cls(process, trace=path, time_scale=arrivals.trace_data().rate / rate, window=window,
                           backend=backend, **extra)
        return arrivals

    def times(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """The first ``n`` arrival times."""
        if self.process == "poisson":
            return np.cumsum(rng.exponential(1.0 / self.rate, n))
        if self.process == "bursty":
            shape = 1.0 / self.cv**2
            return np.cumsum(rng.gamma(shape, 1.0 / (self.rate * shape), n))
        if self.process == "time_varying":
            return self._time_varying(n, rng)
        return self._trace(n)

    def resample(self, n: int, last: float, now: float, rng: np.random.Generator) -> np.ndarray:
        """``n`` arrival times after ``now`` as a policy that has seen the arrivals so far could believe
        them: the process continued given its last arrival at ``last`` and none since (Poisson: memoryless;
        bursty: the gamma gap in progress drawn beyond the time already elapsed; time-varying: the schedule
        continued from ``now``). A trace's future is unknowable: Poisson at the trace's mean rate stands for it."""
        if self.process == "bursty":
            from scipy import stats  # imported when first needed: keeps `import hermes_env` light

            gap = stats.gamma(1.0 / self.cv**2, scale=self.cv**2 / self.rate)
            # the gap in progress, by inversion of its tail beyond the time elapsed since the last arrival
            first = last + float(gap.isf(rng.random() * gap.sf(now - last)))
            return max(first, now) + np.concatenate(([0.0], np.cumsum(gap.rvs(n - 1, random_state=rng))))
        if self.process == "time_varying":
            return self._time_varying(n, rng, now)
        rate = self.rate if self.process == "poisson" else self.trace_data().rate
        return now + np.cumsum(rng.exponential(1.0 / rate, n))

    def _pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]:
        """A time-varying schedule's durations, rates, start times within the cycle, period, and expected
        count at each piece's end."""
        durations = np.array([d for d, _ in self.schedule])
        rates = np.array([r for _, r in self.schedule])
        starts = np.concatenate(([0.0], np.cumsum(durations)[:-1]))
        return durations, rates, starts, float(starts[-1] + durations[-1]), np.cumsum(durations * rates)

    def expected_arrivals(self, t: float) -> float:
        """The expected number of arrivals from 0 to ``t``: what a policy that knows the process (not its
        draws) forecasts (a time-varying schedule's cumulative rate; a trace's mean rate)."""
        if self.process != "time_varying":
            return (self.rate if self.process in ("poisson", "bursty") else self.trace_data().rate) * t
        durations, rates, starts, period, expected = self._pieces()
        c, within = divmod(t, period)
        i = min(int(np.searchsorted(starts, within, side="right")) - 1, len(rates) - 1)
        return c * expected[-1] + (expected[i] - durations[i] * rates[i]) + rates[i] * (within - starts[i])

    def _time_varying(self, n: int, rng: np.random.Generator, start: float = 0.0) -> np.ndarray:
        """``n`` arrivals of the cycling schedule after ``start``, by inverting its cumulative rate: unit-rate
        Poisson arrivals ``E_k`` (cumulative sums of exponentials) beyond the expected count at ``start`` map
        to the times at which the schedule's expected count reaches them. Work is proportional to the arrivals
        (times the log of the pieces), whatever the idle time between them: thinning at the peak rate drew
        candidates through every idle gap, and a long gap after a busy piece hung."""
        durations, rates, starts, period, expected = self._pieces()
        offset = self.expected_arrivals(start) if start > 0 else 0.0
        cycles, within = np.divmod(offset + np.cumsum(rng.exponential(1.0, n)), expected[-1])
        piece = np.minimum(np.searchsorted(expected, within, side="right"), len(rates) - 1)  # never a rate-0 piece
        before = expected[piece] - durations[piece] * rates[piece]
        times = cycles * period + starts[piece] + (within - before) / rates[piece]
        return np.maximum.accumulate(np.maximum(times, start))  # rounding at a piece's edge must not reorder

    def _trace(self, n: int) -> np.ndarray:
        times = self.trace_data().arrival
        require(len(times) >= n, "workload.num_applications", f"is {n}, but the trace has {len(times)} arrivals",
                "lower num_applications (or leave it out to replay the whole trace) or use a longer trace")
        return times[:n]


@dataclass(frozen=True)
class ApplicationMix:
    template: str
    graph: PDGraph
    weight: float
    app_class: str
    slo: float  # seconds from arrival to completion; inf when the class has none
    believed: PDGraph | None = None  # the PDGraph schedulers are given, when it is not the true one
    adapters: tuple[str, ...] = ()  # the LoRA adapters an application's ``adapter: any`` stages draw from
    adapter_probs: tuple[float, ...] = ()
    tier: str = "standard"  # its SLO tier (TIERS): what admission policies may do to it

    def draw_adapter(self, rng: np.random.Generator) -> str | None:
        """The adapter of one application (None when its stages name none as ``any``)."""
        if not self.adapters:
            return None
        return self.adapters[int(rng.choice(len(self.adapters), p=self.adapter_probs))]

    @property
    def known_graph(self) -> PDGraph:
        """The PDGraph every policy and observation reads (remaining demand, Gittins, next use): the
        ``believed`` one where the workload gives it (a stale or mis-fitted model), else the true one."""
        return self.graph if self.believed is None else self.believed


@dataclass(frozen=True)
class WorkloadConfig:
    """When applications arrive and which. With a trace that has token counts, request ``i`` of the trace
    gives its prompt and output (and prefix blocks) to the first LLM stage of application ``i``: of the
    single-stage template of the trace itself when ``applications`` is not given (its demand model the
    trace's own length distributions), else of the mix's application drawn for it. With an agentic trace,
    application ``i`` replays session ``i`` whole, a realisation of the PDGraph fitted to the trace."""

    arrivals: ArrivalConfig
    applications: tuple[ApplicationMix, ...]
    num_applications: int
    trace: Trace | None = None  # the requests whose tokens the applications take
    tiers: Mapping[str, TierConfig] | None = None  # every SLO tier's rules (tier_configs); None: the defaults
    agentic: AgenticReplay | None = None  # the sessions the applications replay (format: dynamo-agentic)

    def tier(self, name: str) -> TierConfig:
        return self.tiers[name] if self.tiers is not None else TierConfig.default(name)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], cluster: ClusterConfig, where: str = "workload",
                  base: Path | None = None) -> WorkloadConfig:
        check_keys(spec, ("arrivals", "applications", "num_applications", "tiers", "description"), where)
        tiers = tier_configs(spec.get("tiers"), f"{where}.tiers")
        arrivals = ArrivalConfig.from_dict(spec.get("arrivals"), f"{where}.arrivals", base)
        trace = arrivals.trace_data() if arrivals.process == "trace" else None
        if trace is not None and "num_applications" not in spec:
            n = len(trace)
        else:
            n = integer(spec, "num_applications", where, low=1, high=MAX_APPLICATIONS)
        if arrivals.format == AGENTIC:
            require("applications" not in spec, f"{where}.applications", "goes with no agentic trace",
                    "an agentic trace's sessions are the applications: leave applications out")
            replay = _agentic_replay(arrivals, cluster, f"{where}.arrivals")
            graph = replay.graph
            return cls(arrivals, (ApplicationMix(graph.name, graph, 1.0, "best_effort", math.inf),), n,
                       agentic=replay)
        apps = spec.get("applications")
        if apps is None and trace is not None and trace.has_tokens:
            mix: tuple[ApplicationMix, ...] = (_trace_mix(trace, arrivals.backend, cluster, f"{where}.arrivals"),)
        else:
            require(isinstance(apps, Sequence) and apps, f"{where}.applications", "must be a non-empty list",
                    "list the applications (a trace with token counts may leave them out)")
            mix = tuple(_mix_entry(a, f"{where}.applications[{i}]", cluster, base, tiers)
                        for i, a in enumerate(apps))
        require(math.isfinite(sum(m.weight for m in mix)), f"{where}.applications", "weights sum past float range",
                "give weights of a sensible scale (they are relative)")
        if trace is not None and trace.has_tokens:
            for m in mix:
                require(any(s.is_llm for s in m.graph.stages), f"{where}.applications",
                        f"{m.template!r} has no LLM stage to take the trace's tokens")
        return cls(arrivals, mix, n, trace if trace is not None and trace.has_tokens else None, tiers)


def _agentic_replay(arrivals: ArrivalConfig, cluster: ClusterConfig, where: str) -> AgenticReplay:
    """The sessions of an agentic trace on the cluster: LLM calls on ``backend`` (default: the first LLM
    backend), waits on ``wait_backend``."""
    llm = [b.name for b in cluster.llm_backends]
    require(bool(llm), where, "replays an agentic trace, but the cluster has no LLM backend")
    backend = arrivals.backend or llm[0]
    require(backend in llm, f"{where}.backend", f"{backend!r} is not an LLM backend of the cluster",
            f"use one of {llm}")
    tools = {b.name: b for b in cluster.tool_backends}
    require(arrivals.wait_backend in tools, f"{where}.wait_backend", f"{arrivals.wait_backend!r} is not a tool "
            "backend of the cluster", "add one without cold_start and with a large capacity (the default "
            "cluster's api:user), or name one")
    return AgenticReplay.build(arrivals.trace, arrivals.block_size, arrivals.agentic_sessions().tolist(), backend,
                               arrivals.wait_backend)


def _trace_mix(trace: Trace, backend: str, cluster: ClusterConfig, where: str) -> ApplicationMix:
    """The single-stage template of a trace's requests on ``backend`` (default: the cluster's first LLM
    backend), whose length distributions are the trace's own (histograms of 64 log-spaced bins)."""
    llm = [b.name for b in cluster.llm_backends]
    require(bool(llm), where, "replays a trace with token counts, but the cluster has no LLM backend")
    backend = backend or llm[0]
    require(backend in llm, f"{where}.backend", f"{backend!r} is not an LLM backend of the cluster",
            f"use one of {llm}")
    name = Path(trace.path).stem
    stage = {"name": "request", "backend": backend, "prompt_tokens": empirical(trace.prompt).to_dict(),
             "output_tokens": empirical(trace.output).to_dict()}
    graph = PDGraph.from_dict({"name": f"trace:{name}", "description": f"one request of the trace {name}",
                               "stages": [stage]})
    return ApplicationMix(graph.name, graph, 1.0, "best_effort", math.inf)


def empirical(values: np.ndarray, bins: int = 256) -> Histogram:
    """A histogram of positive counts over ``bins`` log-spaced bins from the smallest to the largest value."""
    x = np.maximum(np.asarray(values, dtype=float), 1.0)
    lo, hi = float(x.min()), float(x.max())
    edges = np.unique(np.geomspace(max(lo - 0.5, 0.5), hi + 0.5, bins + 1))
    counts, _ = np.histogram(x, edges)
    return Histogram(edges, counts / counts.sum())


def _load_graph(value: Any, where: str, base: Path | None) -> tuple[str, PDGraph]:
    require(isinstance(value, str | Mapping), where,
            "must name a library template or a YAML file, or be a PDGraph mapping")
    if isinstance(value, Mapping):
        graph = PDGraph.from_dict(value)
        return graph.name, graph
    if value in TEMPLATE_NAMES:
        return value, load_template(value)
    path = resolve_path(value, base)
    require(path.is_file(), where, f"is neither a library template nor a file: {value!r}",
            f"library templates: {list(TEMPLATE_NAMES)}")
    return value, PDGraph.from_yaml(path)


def _same_structure(true: PDGraph, believed: PDGraph, where: str) -> None:
    """A believed PDGraph may get probabilities and demands wrong, not the structure: the simulation
    reports progress as states of the true graph's state space, which the believed one must share."""
    a, b = true.state_space(), believed.state_space()
    same = len(a) == len(b) and all(
        a.stage(s).name == b.stage(s).name and a.stage(s).backend == b.stage(s).backend
        and a.iteration_of[s] == b.iteration_of[s] and list(a.successors[s]) == list(b.successors[s])
        for s in range(len(a)))
    require(same, where, f"{believed.name!r} does not have the stages, backends, transitions and loop bounds of "
            f"{true.name!r}", "give a PDGraph that differs from the template only in probabilities and demands")


def _mix_entry(spec: Any, where: str, cluster: ClusterConfig, base: Path | None,
               tiers: Mapping[str, TierConfig]) -> ApplicationMix:
    check_keys(spec, ("template", "weight", "class", "tier", "slo", "believed", "adapters"), where)
    name, graph = _load_graph(spec.get("template"), f"{where}.template", base)
    missing = [b for b in graph.backends if b not in cluster.backend_names]
    require(not missing, f"{where}.template", f"{name!r} needs backends the cluster lacks: {missing}",
            "add them to the cluster")
    _check_requests_fit(graph, cluster, f"{where}.template")
    believed = None
    if "believed" in spec:
        believed = _load_graph(spec["believed"], f"{where}.believed", base)[1]
        _same_structure(graph, believed, f"{where}.believed")
    weight = number(spec, "weight", where, 1.0, low=0, low_open=True, high=1e12)
    app_class = choice(spec, "class", where, CLASSES, "best_effort")
    tier = choice(spec, "tier", where, TIERS, CLASS_TIER[app_class])
    slo = number(spec, "slo", where, tiers[tier].slo, low=0, low_open=True, allow_inf=True)
    adapters, probs = _adapters(graph, cluster, spec.get("adapters"), f"{where}.adapters")
    return ApplicationMix(name, graph, weight, app_class, slo, believed, adapters, probs, tier)


def _check_requests_fit(graph: PDGraph, cluster: ClusterConfig, where: str) -> None:
    """An LLM stage whose smallest request exceeds its backend's limit would fail every application."""
    limits = {b.name: b.request_token_limit for b in cluster.llm_backends}
    for stage in graph.stages:
        if stage.is_llm:
            least = max(1, round(stage.prompt_tokens.ppf(0.0))) + max(1, round(stage.output_tokens.ppf(0.0)))
            require(least <= limits[stage.backend], where, f"stage {stage.name!r} of {graph.name!r} needs at least "
                    f"{least} tokens, more than {stage.backend} serves ({limits[stage.backend]}: max_model_len and "
                    "the KV cache)", "raise max_model_len or the GPU memory, or shorten the stage's tokens")


def _adapters(graph: PDGraph, cluster: ClusterConfig, spec: Any, where: str) -> tuple[tuple[str, ...],
                                                                                    tuple[float, ...]]:
    """The adapters an application draws its ``adapter: any`` from, with their popularity: ``uniform``
    (the default) or ``zipf`` with exponent ``s`` (the i-th adapter in the backend's list has weight
    1 / i^s), over the backend's adapters. Named adapters must be ones the backend serves."""
    lora = {b.name: b.lora for b in cluster.llm_backends}
    any_backends = {s.backend for s in graph.stages if s.adapter == "any"}
    for stage in graph.stages:
        if stage.adapter is None:
            continue
        served = lora.get(stage.backend)
        require(served is not None, f"stage '{stage.name}'.adapter", f"{stage.backend} serves no LoRA adapters",
                "give the backend a lora section, or remove the stage's adapter")
        require(stage.adapter == "any" or stage.adapter in served.adapters, f"stage '{stage.name}'.adapter",
                f"{stage.backend} does not serve the adapter {stage.adapter!r}",
                f"use one of {list(served.adapters)[:8]} or 'any'")
    require(len(any_backends) <= 1, f"pdgraph {graph.name!r}", "has 'adapter: any' stages on several backends",
            "an application draws one adapter: keep its 'any' stages on one backend")
    if not any_backends:
        require(spec is None, where, f"is given, but no stage of {graph.name!r} has 'adapter: any'")
        return (), ()
    names = lora[next(iter(any_backends))].adapters
    spec = {"popularity": "uniform"} if spec is None else spec
    check_keys(spec, ("popularity", "s"), where)
    popularity = choice(spec, "popularity", where, ("uniform", "zipf"))
    if popularity == "uniform":
        require("s" not in spec, f"{where}.s", "goes with popularity: zipf")
        weights = np.ones(len(names))
    else:
        weights = 1.0 / np.arange(1, len(names) + 1) ** number(spec, "s", where, 1.0, low=0, high=10)
    return names, tuple((weights / weights.sum()).tolist())
