"""The headless simulation: applications flowing through the cluster's backends.

    sim = Simulation(ExperimentConfig.from_yaml("configs/experiments/small.yaml"), scheduler="fcfs",
                     prewarm="none", seed=0)
    result = sim.run()                      # a SimulationResult: per-application rows and a summary
    result.summary["jct"]["mean"]

An application arrives, draws its realisation from its own random stream (so that every policy sees the
same demands), and issues its stages one after another: every parallel copy of a stage is a
:class:`~hermes_env.cluster.request.Request` sent to the stage's backend; when the last copy finishes,
the next stage is issued; after the last stage the application completes. A request that an LLM
backend can never serve (longer than the model's context or a replica's KV cache) is refused: the
application then fails, with the reason recorded, and counts apart from the completed ones.

Before its first stage an application passes the admission policy (:mod:`hermes_env.sim.policies`;
``none``, the default, admits every one without being asked): admitted, it starts; rejected, it fails
(reason ``admission: rejected``); deferred, it waits in the system and is reconsidered whenever another
application ends, until its tier's ``max_defer`` from arrival is over (then it is rejected where its tier
allows, else admitted).

An LLM request's prompt is described as a chain of segments (:mod:`hermes_env.cluster.prefix`) from its
stage's PDGraph fields, so that prefix caches recognise what they hold: the template's system prompt
(shared by every application of the template), the application's previous call on the backend when the
stage continues its conversation (``context: continue``; after a fanned-out stage, its first copy's), a
prefix computed before the run (``prefix_reuse``), and fresh tokens.
"""

from __future__ import annotations

import copy
import gc
import math
import sys
import types
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env._mypyc import attributes, mypyc_attr, set_attributes
from hermes_env.catalog import config_path
from hermes_env.cluster.config import ClusterConfig
from hermes_env.cluster.latency import IterationLatency, ProfileCost
from hermes_env.cluster.llm import WARM as REPLICA_WARM
from hermes_env.cluster.llm import LLMBackend, Replica
from hermes_env.cluster.migration import Migrator
from hermes_env.cluster.prefix import Segment, chain_end, extend, truncate
from hermes_env.cluster.queue import WaitQueue
from hermes_env.cluster.request import Request, copy_slots
from hermes_env.cluster.tool import WARM, ToolBackend
from hermes_env.errors import require
from hermes_env.pdgraph.demand import DemandModel, Progress
from hermes_env.pdgraph.graph import PDGraph, Stage, StateSpace
from hermes_env.pdgraph.sampling import StageRun, sample_realisation, sample_tokens
from hermes_env.sim import retention as _retention  # noqa: F401 (registers the retention policies)
from hermes_env.sim.engine import Engine, fewer_collections
from hermes_env.sim.metrics import Recorder, SimulationResult, summarise
from hermes_env.sim.policies import (
    ADMISSION_ORDERS,
    ADMIT,
    DEFER,
    REJECT,
    make_admission,
    make_autoscaler,
    make_disagg,
    make_migration,
    make_prewarm,
    make_retention,
    make_router,
    make_scheduler,
)
from hermes_env.sim.timeline import TimelineRecorder
from hermes_env.sim.traces import BLOCK_TOKENS, BlockChains
from hermes_env.sim.workload import ApplicationMix, WorkloadConfig, resolve_path, with_absolute_files
from hermes_env.validation import check_keys, load_yaml


def inline_parts(spec: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    """A copy of an experiment spec whose ``cluster`` and ``workload``, when given as YAML paths (relative to
    ``base``) or as the names of packaged ones, are replaced by their contents, so that callers can override
    fields inside them."""
    out = dict(spec)
    for key in ("cluster", "workload"):
        part = spec.get(key)
        require(part is not None, f"experiment.{key}", "is missing", "give a mapping, a YAML path or a name")
        if isinstance(part, str):
            path = resolve_path(part, base)
            if path.suffix not in (".yaml", ".yml"):  # a packaged cluster or workload, by name
                path = config_path(f"{key}s", part, f"experiment.{key}")
            out[key] = load_yaml(path, f"experiment.{key}")
            if key == "workload":
                out[key] = with_absolute_files(out[key], path.parent)
    return out


@mypyc_attr(native_class=False)  # frozen: copied and pickled as Python does
@dataclass(frozen=True)
class ExperimentConfig:
    cluster: ClusterConfig
    workload: WorkloadConfig

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], base: Path | None = None) -> ExperimentConfig:
        check_keys(spec, ("cluster", "workload", "description"), "experiment")
        parts = inline_parts(spec, base)
        cluster = ClusterConfig.from_dict(parts["cluster"])
        return cls(cluster, WorkloadConfig.from_dict(parts["workload"], cluster, base=base))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """An experiment YAML by path, or a packaged one by name (``contended``, ``default``)."""
        path = config_path("experiments", path)
        return cls.from_dict(load_yaml(path), base=path.parent)


@lru_cache(maxsize=256)
def shared_demand_model(graph: PDGraph, profiles: tuple[tuple[str, IterationLatency], ...]) -> DemandModel:
    return DemandModel(graph, ProfileCost(dict(profiles)))


@mypyc_attr(native_class=False)  # copied and pickled with the environments, made once per decision
@dataclass
class Decision:
    """A choice an external policy owes: ``schedule`` (which request ``queue`` admits next at ``backend``),
    ``prewarm`` (which tool backends to warm or release), ``route`` (which of ``candidates`` replicas
    ``request`` waits at), ``scale`` (which LLM backends load or release a replica), ``admit`` (whether
    ``app``, arriving or deferred, is admitted, deferred or rejected), ``retain`` (what happens to
    ``context``, an application's KV context on ``candidates[0]``, until its next call) or ``migrate``
    (whether a running request of ``backend`` moves, and from which of its replicas to which)."""

    kind: str
    time: float
    backend: str
    queue: WaitQueue | None = None
    resume: Callable[[float], None] | None = None
    request: Request | None = None
    candidates: list[Replica] | None = None
    app: Application | None = None
    context: Any = None


ARRIVING, DEFERRED, ADMITTED, REJECTED = range(4)  # an application's admission state


@mypyc_attr(allow_interpreted_subclasses=True)  # copied and pickled (made by cls.__new__)
class Application:
    """One application in the system: its realisation and how far it has got."""

    __slots__ = ("id", "mix", "arrival", "runs", "cursor", "pending", "completion", "queue_times", "service_times",
                 "issued_at", "failed", "context", "adapter", "replicas", "trace_run", "lower_bound", "deferred_at",
                 "gate")

    def __init__(self, app_id: int, mix: ApplicationMix, arrival: float, runs: tuple[StageRun, ...],
                 adapter: str | None = None) -> None:
        self.id, self.mix, self.arrival, self.runs = app_id, mix, arrival, runs
        self.cursor = 0  # index of the stage run in progress
        self.pending = 0  # its copies not yet finished
        self.completion = math.nan
        self.queue_times: list[float] = []  # per stage run: mean over copies of the wait before service
        self.service_times: list[float] = []  # per stage run: mean over copies of the time in service
        self.issued_at = 0.0
        self.failed = ""  # why a backend refused one of its requests
        self.context: dict[str, tuple[int, tuple[Segment, ...]]] = {}  # per LLM backend: conversation tokens, chain
        self.adapter = adapter  # the LoRA adapter its stages with ``adapter: any`` use
        self.replicas: dict[str, int] = {}  # per LLM backend, the replica that served its last call
        self.trace_run = -1  # the stage run whose first copy is its trace request (-1: none)
        # a relaxation of its completion time: its stages back to back, each copy served alone (batch 1, no
        # queue, warm) with every prefix it could reuse already cached (see Simulation._issue)
        self.lower_bound = 0.0
        self.deferred_at = math.nan  # when admission first deferred it (NaN: never)
        self.gate = ARRIVING  # where admission has put it: ARRIVING, DEFERRED, ADMITTED or REJECTED

    @property
    def template(self) -> str:
        return self.mix.template

    @property
    def app_class(self) -> str:
        return self.mix.app_class

    @property
    def tier(self) -> str:
        return self.mix.tier

    @property
    def current(self) -> StageRun:
        return self.runs[self.cursor]

    def __deepcopy__(self, memo: dict) -> Application:
        return copy_slots(self, memo)

    def resample_future(self, space: StateSpace, rng: np.random.Generator) -> None:
        """Redraw what a non-clairvoyant policy cannot know of this application: the stages after the one in
        progress and their demands, from ``space`` (its believed PDGraph's), continuing from the current
        stage; all of it when no stage has been issued yet (it waits at the admission gate). The stages
        issued so far, and the copies in flight, are kept."""
        issued = self.cursor + 1 if self.pending or self.queue_times else 0
        if issued == 0:
            self.runs = sample_realisation(space, rng).runs
            self.trace_run = -1  # its trace tokens are unknowable too
            return
        state = space.next_state(self.runs[self.cursor].state, rng)
        future = () if state == StateSpace.END else sample_realisation(space, rng, start=state).runs
        self.runs = (*self.runs[:issued], *future)
        if self.trace_run >= issued:
            self.trace_run = -1

    @property
    def progress(self) -> Progress:
        """Its progress as policies read it: the current stage's state and unfinished copies, with the
        stage's attained service taken as 0 (decisions are made when a stage is issued)."""
        return Progress(self.current.state, 0.0, self.pending)


@mypyc_attr(native_class=False)  # frozen: copied and pickled as Python does
@dataclass(frozen=True)
class Snapshot:
    """A simulation's (or an environment's) state as ``snapshot()`` took it: a copy never run, for
    ``restore`` (running it would spend it)."""

    copy: Any


_LEAVES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, str, bytes, int, float)


def _reachable(root: Any) -> dict[int, Any]:
    """Every object reachable from ``root`` (an immutable experiment), by id: a deep copy's memo that
    shares them."""
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return seen


def _shared(sim: Simulation) -> dict[int, Any]:
    """The memo that makes a deep copy of ``sim``'s state share what no event changes: every object of the
    experiment (walked once per simulation), the applications' realisations (frozen, replaced rather than
    changed), the arrival arrays (replaced by ``resample_future``, never written), the PDGraph analyses and
    forecast caches; the history of ended applications is copied as a list of references; a rows file is not
    carried over. Everything else is deep-copied."""
    if sim._shared_ids is None:
        sim._shared_ids = _reachable(sim.config)
    memo = dict(sim._shared_ids)
    memo[id(sim._shared_ids)] = sim._shared_ids
    for value in (sim.arrival_times, sim.app_mix, sim._spaces, sim._stages, sim.forecasts, sim._demand_models):
        memo[id(value)] = value
    for app in (*sim.active.values(), *sim._gate):
        memo[id(app.runs)] = app.runs
        for run in app.runs:
            memo[id(run)] = run
    for runs in sim._drawn.values():
        memo[id(runs)] = runs
    rec = sim.recorder
    memo[id(rec.completed)] = list(rec.completed)
    if sim.request_log is not None:  # finished requests kept for a trace export: references too
        memo[id(sim.request_log)] = list(sim.request_log)
    if rec._file is not None:
        memo[id(rec._file)] = memo[id(rec._rows)] = None
    return memo


def copy_state(pairs: list[tuple[Any, Any]], sim: Simulation, shared: tuple[Any, ...] = ()) -> None:
    """Make each ``dst`` a deep copy of its ``src``, in order and with one memo, so that references between
    them (an environment's decision into its simulation) stay consistent; the copies share what
    :func:`_shared` names for ``sim``, and ``shared``. References to a ``src`` inside become references to its
    ``dst`` (a policy bound to the simulation is bound to the copy). Attributes are copied by name
    (:func:`~hermes_env._mypyc.attributes`): a compiled ``Simulation`` has no ``__dict__``."""
    memo = _shared(sim)
    for obj in shared:
        memo[id(obj)] = obj
    for src, dst in pairs:
        memo[id(src)] = dst
    for src, dst in pairs:
        set_attributes(dst, copy.deepcopy(attributes(src), memo))


@mypyc_attr(allow_interpreted_subclasses=True)  # copied, pickled and made by cls.__new__ (snapshots)
class Simulation:
    """One run of an experiment under a scheduler, a prewarm policy, a router, an autoscaler and an
    admission policy, a KV retention policy and a disaggregation policy (names from the registries, or policy
    objects; ``disagg`` acts only on backends configured with ``disaggregation``). ``keep_applications=False`` keeps
    memory flat over long runs (the summary does not need the applications), and ``rows_to`` streams the
    per-application rows to a CSV file as applications end. ``timeline`` records the run's life for a person
    to look at (:mod:`hermes_env.sim.timeline`; None, the default, costs nothing)."""

    def __init__(self, config: ExperimentConfig, scheduler: Any = "fcfs", prewarm: Any = "none", seed: int = 0,
                 router: Any = "shared", autoscaler: Any = "fixed", check_invariants: bool = False,
                 keep_applications: bool = True, rows_to: str | Path | None = None, admission: Any = "none",
                 timeline: TimelineRecorder | None = None, retention: Any = "lru", migration: Any = "none",
                 disagg: Any = "colocated") -> None:
        self.config, self.seed, self.check = config, seed, check_invariants
        # looked up when called, so that a patched simulator.Engine (a real-time engine) is used compiled too
        self.engine: Engine = sys.modules[__name__].Engine()
        # the policies: any object with the registry's methods (a planner may take a copy's place)
        self.scheduler: Any = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.prewarm_policy: Any = make_prewarm(prewarm) if isinstance(prewarm, str) else prewarm
        self.autoscaler: Any = make_autoscaler(autoscaler) if isinstance(autoscaler, str) else autoscaler
        self.admission: Any = make_admission(admission) if isinstance(admission, str) else admission
        self._admits = self.admission.name != "none"  # ``none`` is never asked: 0.2's runs, bit for bit
        self._deferred: dict[int, Application] = {}  # deferred applications, by id, in the order deferred
        self._asked: set[int] = set()  # applications whose admission an external policy owes
        self.router_name: str = router if isinstance(router, str) else router.name
        cluster_rng = np.random.default_rng([seed, 4])
        self.retention: Any = make_retention(retention) if isinstance(retention, str) else retention
        self.retention.bind(self)
        held = None if self.retention.name == "lru" else self.retention  # lru: the engine's own behaviour
        self.disagg: Any = make_disagg(disagg) if isinstance(disagg, str) else disagg
        self.disagg.bind(self)
        self.llm_backends = {c.name: LLMBackend(c, self.engine, self._queue, self._done, self._failed,
                                                self._decision_needed, self._router(router), held, self.disagg)
                             for c in config.cluster.llm_backends}
        self.migration: Any = make_migration(migration) if isinstance(migration, str) else migration
        if self.migration.name != "none":  # ``none``: no migrator, the engine's runs bit for bit
            for backend in self.llm_backends.values():
                # a split request's KV is on two replicas during its hand-off; moving it too is not modelled
                require(backend.cfg.disaggregation is None, "migration", f"is {self.migration.name!r}, but LLM "
                        f"backend {backend.cfg.name!r} is disaggregated (request migration between pools is "
                        "not modelled)", "use migration 'none' with a disaggregated backend")
                require(backend.cfg.kv_accounting == "tokens", "migration", f"is {self.migration.name!r}, but LLM "
                        f"backend {backend.cfg.name!r} counts KV as {backend.cfg.kv_accounting} (a migration "
                        "moves KV in tokens)", "use migration 'none', or kv_accounting: tokens")
                backend.migrator = Migrator(backend, backend.cfg.migration_link)
        self.tool_backends = {c.name: ToolBackend(c, self.engine, WaitQueue(c.name, self.scheduler), cluster_rng,
                                                  self._done, self._decision_needed)
                              for c in config.cluster.tool_backends}
        self.backends: dict[str, LLMBackend | ToolBackend] = {**self.llm_backends, **self.tool_backends}
        workload = config.workload
        n = workload.num_applications
        self.arrival_times = workload.arrivals.times(n, np.random.default_rng([seed, 1]))
        weights = np.array([m.weight for m in workload.applications])
        self.app_mix = np.random.default_rng([seed, 2]).choice(len(weights), size=n, p=weights / weights.sum())
        self._spaces = {m.template: m.graph.state_space() for m in workload.applications}
        self._stages: dict[tuple[str, str], Stage] = {(m.template, st.name): st for m in workload.applications
                                                      for st in m.graph.stages}
        self._system_prompts: dict[tuple[str, str], Segment] = {}
        # Applications arrive in index order whatever the policies do, so drawing each realisation from
        # one stream at arrival gives every policy the same demands (common random numbers).
        self._realisation_rng = np.random.default_rng([seed, 3])
        self._drawn: dict[int, tuple[StageRun, ...]] = {}  # realisations drawn ahead by peek_realisation
        self.forecasts: dict[Any, Any] = {}  # tables of hermes_env.sim.forecast, kept for the run
        self._trace = workload.trace
        self._agentic = workload.agentic
        self._blocks = BlockChains(self._agentic.trace.block_size if self._agentic is not None else BLOCK_TOKENS)
        self._shared_blocks: list[int] | None = None
        self._adapter_rng = np.random.default_rng([seed, 5])
        self.recorder = Recorder(keep_applications, rows_to)
        self.request_log: list[Request] | None = None  # set to [] to keep every finished request (a trace export)
        self.arrived = 0
        self.active: dict[int, Application] = {}  # in the system now, by id, in arrival order
        # an application-level admission gate (a black-box baseline's): at most max_active admitted at once
        self.max_active: int | None = getattr(self.scheduler, "max_active", None)
        self.admitted = 0
        self._gate: deque[Application] = deque()
        self._started = False
        self.in_system = 0
        self.stage_requests = 0
        self.slo_missed = 0
        self.pending: deque[Decision] = deque()  # choices an external policy owes, oldest first
        self._area, self._area_since = 0.0, 0.0  # integral of applications in the system over time
        self._demand_models: dict[str, DemandModel] = {}
        self._last_event = 0.0
        self._shared_ids: dict[int, Any] | None = None  # objects of the experiment, shared by snapshots
        for policy in (self.scheduler, *(b.router for b in self.llm_backends.values() if b.router is not None),
                       self.admission, self.migration):
            policy.bind(self)
        self.timeline = timeline
        if timeline is not None:
            timeline.attach(self)

    def _queue(self, backend: str, replica: int | None) -> WaitQueue:
        return WaitQueue(backend, self.scheduler, replica)

    def _router(self, router: Any) -> Any:
        """One router object per backend (its state, a round-robin position say, is per backend); None for
        the shared queue."""
        if not isinstance(router, str):
            return router
        return None if router == "shared" else make_router(router)

    @property
    def _scalers(self) -> tuple[Any, ...]:
        """The autoscalers that decide (a residual one's native heuristic, then its orders; else the one),
        read from ``autoscaler`` each time, so that a planner installed on a copy takes its place. (``hasattr``,
        not ``getattr`` with a default: compiled, the latter raises and formats an AttributeError per call.)"""
        scaler = self.autoscaler
        return scaler.parts if hasattr(scaler, "parts") else (scaler,)

    def __getstate__(self) -> dict:
        # PDGraph analyses are shared across simulations and rebuilt on demand, and the snapshots' memo of
        # the experiment's objects is walked again on demand: keep them out of pickles
        return {**attributes(self), "_demand_models": {}, "_shared_ids": None}

    def __setstate__(self, state: dict) -> None:
        set_attributes(self, state)

    @property
    def completed(self) -> list[Application]:
        """The applications that have ended (completed or failed), in the order they ended (kept only with
        ``keep_applications``)."""
        return self.recorder.completed

    @property
    def ended(self) -> int:
        return len(self.recorder.completion_times) + self.recorder.failed

    # -- running ----------------------------------------------------------------------------
    def run(self, until: float = math.inf) -> SimulationResult:
        """Run to the end (or ``until``) with the policies given; external policies need
        :meth:`run_until_decision` and :meth:`resolve` instead."""
        for name, policy in (("scheduler", self.scheduler), ("router", self.router_name),
                             *(("autoscaler", p) for p in self._scalers), ("admission", self.admission.name),
                             ("migration", self.migration)):
            require(not getattr(policy, "external", False) or hasattr(policy, "act"), name,
                    "is external: drive the simulation with run_until_decision() and resolve()")
            require(policy != "external", name, "is external: drive the simulation with run_until_decision() and "
                    "resolve()")
        self._start()
        if self._drivers():  # planners settle their own decisions between events
            while True:
                if not self.pending:  # (the engine runs an event before it checks stop)
                    self.engine.run(until, stop=self._paused)
                if not self.pending:
                    break
                self._settle_owned(self.pending[0])
        elif self.check:
            while len(self.engine) and self.engine.next_time() <= until and not self._finished():
                self.engine.step()
                self._check_invariants()
        else:
            self.engine.run(until, stop=self._finished)
        if until == math.inf:
            self._check_not_stalled()
            self.recorder.close()
        with fewer_collections():  # a row per kept application: thousands of survivors, as for the events
            return summarise(self)

    def _check_not_stalled(self) -> None:
        """Every application ends unless events run out first, which would be a simulator bug: say where
        the work is stuck rather than report a short run as finished."""
        if self._finished() or len(self.engine) or self.pending:
            return
        stuck = self.requests_waiting()
        raise RuntimeError(f"the simulation ran out of events at t={self.engine.now:.6g} with "
                           f"{len(self.active)} applications unfinished and {self.arrived} of "
                           f"{self.config.workload.num_applications} arrived; requests waiting: "
                           f"{ {k: v for k, v in stuck.items() if v} }")

    def requests_waiting(self) -> dict[str, int]:
        """Per backend, the requests waiting in its queues (an LLM backend's shared and per-replica ones)."""
        return {name: b.routed_waiting() if isinstance(b, LLMBackend) else len(b.queue)
                for name, b in self.backends.items()}

    def _count_area(self, now: float) -> None:
        self._area += self.in_system * (now - self._area_since)
        self._area_since = now

    def system_area(self) -> float:
        """The integral of the number of applications in the system up to now: by Little's law, the
        sum of their completion times once all have ended."""
        return self._area + self.in_system * (self.engine.now - self._area_since)

    def totals(self, now: float | None = None) -> tuple[float, float, int, float]:
        """What the environments' reward prices, accrued up to ``now`` (default: the current time): the
        applications in the system integrated over time, the idle warm tool cost, the SLO misses (a
        failure is one) and the GPU-seconds held by LLM replicas."""
        now = self.engine.now if now is None else now
        area = self._area + self.in_system * (now - self._area_since)
        return (area, sum(b.idle_cost_until(now) for b in self.tool_backends.values()), self.slo_missed,
                sum(b.gpu_seconds_until(now) for b in self.llm_backends.values()))

    @property
    def cost(self) -> ProfileCost:
        """LLM stages priced at their isolated service time under this cluster's latency profiles."""
        return ProfileCost({b.name: b.latency for b in self.config.cluster.llm_backends})

    def demand_model(self, template: str) -> DemandModel:
        """The PDGraph analysis of a workload template as the schedulers know it (its ``believed`` graph
        where the workload gives one), LLM stages priced by this cluster's latency profiles (built on
        first use, shared by every simulation of the same graph and profiles)."""
        if template not in self._demand_models:
            mix = next(m for m in self.config.workload.applications if m.template == template)
            profiles = tuple((b.name, b.latency) for b in self.config.cluster.llm_backends)
            self._demand_models[template] = shared_demand_model(mix.known_graph, profiles)
        return self._demand_models[template]

    # -- planning: snapshots and sampled futures ----------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A copy of the simulation's state that :meth:`restore` brings back, bit for bit: running on from a
        restored state gives exactly what running on from here would have. Taken between events (after
        :meth:`run_until_decision`, as the environments pause). The copy shares what never changes (the
        experiment, realisations, the workload's arrival arrays, forecast caches) and keeps the ended
        applications' history as a list of references, not copies (see :meth:`_shared`); everything else,
        including state a mechanism adds later, is deep-copied. A simulation streaming its rows to a file
        (``rows_to``) keeps streaming only in the original."""
        self.compact()
        snap = Simulation.__new__(Simulation)
        copy_state([(self, snap)], self)
        return Snapshot(snap)

    def restore(self, snap: Snapshot) -> None:
        """Bring this simulation back to ``snap`` (a snapshot of this or another simulation of the same
        experiment); the snapshot stays usable, so one snapshot may be restored any number of times."""
        require(isinstance(snap, Snapshot) and isinstance(snap.copy, Simulation), "restore",
                f"takes a Simulation's Snapshot, got {snap!r}", "pass what snapshot() returned")
        copy_state([(snap.copy, self)], snap.copy)

    def branch(self) -> Simulation:
        """An independent copy that runs on from here (one copy: a snapshot that is run rather than kept)."""
        return self.snapshot().copy

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Simulation:
        """A new simulation restored from ``snap`` (a planner's branch: one per candidate action)."""
        sim = cls.__new__(cls)
        sim.restore(snap)
        return sim

    def compact(self) -> None:
        """Let the backends drop stale entries of their lazy structures (a ``compact`` method: no later
        event changes), so that copies carry no finished requests."""
        for backend in self.backends.values():
            if hasattr(backend, "compact"):
                backend.compact()

    def resample_future(self, rng: np.random.Generator) -> None:
        """Redraw everything a non-clairvoyant policy cannot know, from the PDGraphs the schedulers believe
        (each template's ``believed`` graph where the workload gives one): the arrival times of applications
        yet to come (given the time of the last arrival and none since) and their templates, their
        realisations and adapters; the unissued stages of applications in the system
        (:meth:`Application.resample_future`); what each backend draws later and the demands of the
        requests waiting at it (tool cold starts, service times, output lengths: its ``resample_future``);
        a trace's tokens for applications yet to come. What has happened, the stages
        issued, prompts, and the requests in service are kept. Call it on a copy (:meth:`branch`, or a restored
        snapshot) to plan over a future the policy could not know; the original's future is untouched."""
        workload, i = self.config.workload, self.arrived
        spaces = {m.template: m.known_graph.state_space() for m in workload.applications}
        n = workload.num_applications
        if i < n:
            last = float(self.arrival_times[i - 1]) if i else 0.0
            times = self.arrival_times.copy()
            times[i:] = workload.arrivals.resample(n - i, last, self.engine.now, rng)
            weights = np.array([m.weight for m in workload.applications])
            mix = self.app_mix.copy()
            mix[i:] = rng.choice(len(weights), size=n - i, p=weights / weights.sum())
            self.arrival_times, self.app_mix = times, mix
            if self._started:  # the next arrival is on the calendar: move it
                self.engine.cancel(self._arrive)
                self.engine.at(float(times[i]), self._arrive, i)
        self._spaces = spaces
        self._drawn = {}
        self._trace = None  # applications to come draw their tokens from the template, not the trace
        self._realisation_rng, self._adapter_rng = (np.random.default_rng(rng.integers(2**63)) for _ in range(2))
        for app in (*self.active.values(), *self._gate):
            app.resample_future(spaces[app.template], rng)
        for backend in self.backends.values():
            if hasattr(backend, "resample_future"):
                backend.resample_future(rng, self._redraw_request)
        for decision in self.pending:  # a request being placed by a router waits in no queue yet
            if decision.request is not None:
                self._redraw_request(decision.request, rng)

    def resample_admitted(self, rng: np.random.Generator) -> None:
        """Also redraw the output lengths of the LLM requests already admitted (running or about to), beyond
        what each has generated (:meth:`LLMBackend.resample_admitted`), from the believed graphs: after
        :meth:`resample_future`, on a copy, for a planner whose decisions concern running requests (migration),
        which must not know how long they have left."""
        for backend in self.llm_backends.values():
            backend.resample_admitted(rng, self._redraw_request, self.engine.now)

    def _redraw_request(self, request: Request, rng: np.random.Generator) -> None:
        """A waiting request's demand as its believed stage would draw it: a tool request's service time, an
        LLM request's output (the prompt is known once issued; a preempted request keeps what it has
        generated and draws beyond it)."""
        app: Application = request.app
        space = self._spaces[app.template]
        run = app.runs[request.run_index]
        if request.output_tokens:
            _, output = sample_tokens(space.stage(run.state), run.iteration, 1, rng)
            request.output_tokens = max(int(output[0]), request.generated + 1)
        else:
            request.service_time = float(space.stage(run.state).service_time.sample(rng, 1)[0])  # type: ignore[union-attr, index]

    # -- external decisions (the Gymnasium environments) ------------------------------------------
    def _decision_needed(self, queue: WaitQueue, now: float, resume: Callable[[float], None]) -> None:
        self.pending.append(Decision("schedule", now, queue.backend, queue, resume))

    def request_prewarm_decision(self, now: float) -> None:
        """Called by an external prewarm policy: pause so that the agent can order warm-ups/releases."""
        self.pending.append(Decision("prewarm", now, ""))

    def request_route_decision(self, backend: LLMBackend, request: Request, candidates: list[Replica],
                               now: float) -> None:
        """Called by an external router: pause so that the agent can place ``request``."""
        self.pending.append(Decision("route", now, backend.name, request=request, candidates=candidates))

    def request_scale_decision(self, now: float) -> None:
        """Called by an external autoscaler on its tick: pause for the agent's load/release orders."""
        self.pending.append(Decision("scale", now, ""))

    def request_admission_decision(self, app: Application, now: float) -> None:
        """Called by an external admission policy: pause so that the agent can admit, defer or reject ``app``."""
        if app.id not in self._asked:
            self._asked.add(app.id)
            self.pending.append(Decision("admit", now, "", app=app))

    def request_retention_decision(self, replica: Replica, context: Any, now: float) -> None:
        """Called by an external retention policy at a tool boundary: pause for the agent's retention choice."""
        self.pending.append(Decision("retain", now, replica.backend.name, candidates=[replica], context=context))

    def request_migration_decisions(self, now: float) -> None:
        """Called by an external migration policy on its tick: pause once for each LLM backend with two or
        more warm replicas."""
        for name, backend in self.llm_backends.items():
            if sum(r.state == REPLICA_WARM for r in backend.replicas) >= 2:
                self.pending.append(Decision("migrate", now, name))

    def run_until_decision(self) -> Decision | None:
        """Run until an external policy owes a choice (returned) or every application has ended (None);
        a planner's decisions (a policy with ``act``) are settled on the way."""
        self._start()
        while True:
            if not self.pending and not self._finished():
                self.engine.run(stop=self._paused)
                self._check_not_stalled()
            if not self.pending or self.owner(self.pending[0]) is None:
                return self.pending[0] if self.pending else None
            self._settle_owned(self.pending[0])

    def owner(self, decision: Decision) -> Any:
        """The policy that settles ``decision`` itself (a planner: it has ``act``), or None (an agent)."""
        policy = {"schedule": self.scheduler, "prewarm": self.prewarm_policy, "scale": self._scalers[-1],
                  "admit": self.admission, "migrate": self.migration, "retain": self.retention}.get(decision.kind) \
            or self.llm_backends[decision.backend].router
        return policy if hasattr(policy, "act") else None

    def _settle_owned(self, decision: Decision) -> None:
        owner = self.owner(decision)
        require(owner is not None, "run", f"a {decision.kind} decision is owed to an agent",
                "drive the simulation with run_until_decision() and resolve()")
        owner.act(self, decision)
        require(not self.pending or self.pending[0] is not decision, type(owner).__name__,
                "act() left its decision unresolved", "end act() with sim.resolve(...)")

    def _drivers(self) -> bool:
        routers = [b.router for b in self.llm_backends.values()]
        return any(hasattr(p, "act") for p in (self.scheduler, self.prewarm_policy, *self._scalers, self.admission,
                                                self.migration, self.retention, *routers))

    def resolve(self, choice: Any = None) -> None:
        """Settle the oldest pending decision: for a scheduling decision, admit the waiting request at
        ``choice`` (an index of ``decision.queue.waiting``) and let the backend go on; for a routing
        decision, place the request on ``decision.candidates[choice]``; for an admission decision, apply the
        order ``choice`` (ADMIT, DEFER or REJECT) to ``decision.app``; for a retention decision, ``choice`` is
        ``(action, priority)`` (:class:`~hermes_env.sim.retention.ExternalRetention`); for a migration
        decision, None (no move) or ``(source, target)`` replica indices (:meth:`migrate_between`)."""
        decision = self.pending.popleft()
        now = self.engine.now
        if decision.kind == "schedule":
            decision.queue.choose(int(choice))  # type: ignore[arg-type, union-attr]
            decision.resume(now)  # type: ignore[misc]
        elif decision.kind == "route":
            replica = decision.candidates[int(choice)]  # type: ignore[arg-type, index]
            self.llm_backends[decision.backend].place(decision.request, replica, now)  # type: ignore[arg-type]
        elif decision.kind == "admit":
            app = decision.app
            self._asked.discard(app.id)  # type: ignore[union-attr]
            if app.gate in (ARRIVING, DEFERRED):  # type: ignore[union-attr]
                self._settle(app, int(choice), now)  # type: ignore[arg-type]
        elif decision.kind == "retain":
            self.retention.decide(decision.candidates[0], decision.context, choice, now)  # type: ignore[index]
        elif decision.kind == "migrate" and choice is not None:
            source, target = choice
            self.migrate_between(decision.backend, source, target, now)

    def _start(self) -> None:
        """Schedule the first arrival and the policies' ticks, once: later calls do nothing."""
        if self._started:
            return
        self._started = True
        self.prewarm_policy.start(self, 0.0)
        self.autoscaler.start(self, 0.0)
        self.engine.at(float(self.arrival_times[0]), self._arrive, 0)
        for policy in (self.prewarm_policy, *self._scalers, self.migration):
            if policy.tick:  # a residual autoscaler's orders act behind its native heuristic at an instant
                self.engine.at(policy.tick, self._tick, policy, len(self._scalers) > 1 and policy is self._scalers[-1])

    def _finished(self) -> bool:
        return self.ended == self.config.workload.num_applications

    def _paused(self) -> bool:
        """Whether the engine's loop stops for a decision owed, or the end."""
        return bool(self.pending) or self._finished()

    def _decision_point(self, now: float) -> None:
        self.prewarm_policy.decide(self, now)
        for scaler in self._scalers:
            if scaler.reacts:
                scaler.decide(self, now)

    def _tick(self, now: float, policy: Any, behind: bool = False, queued: bool = False) -> None:
        """``policy.decide`` every ``policy.tick`` seconds; ``behind``: after every other event due at the same
        instant (the tick is queued again at ``now``, behind them: a residual autoscaler's orders)."""
        if behind and not queued:
            self.engine.at(now, self._tick, policy, True, True)
            return
        policy.decide(self, now)
        if not self._finished():
            self.engine.at(now + policy.tick, self._tick, policy, behind)

    # -- applications -----------------------------------------------------------------------------
    def peek_realisation(self, i: int) -> tuple[StageRun, ...]:
        """The realised stages application ``i`` will have (clairvoyant policies only). Realisations are
        drawn in arrival order from their own stream, so drawing ahead gives exactly what arrival will."""
        for j in range(self.arrived + len(self._drawn), i + 1):
            self._drawn[j] = self._realise(j)
        return self._drawn[i]

    def _realise(self, i: int) -> tuple[StageRun, ...]:
        """Application ``i``'s stages: a draw from its PDGraph, its first LLM call taking trace request ``i``'s
        tokens when the workload replays a trace."""
        mix = self.config.workload.applications[self.app_mix[i]]
        if self._agentic is not None:  # the session itself, as a realisation of the PDGraph fitted to the trace
            return self._agentic.runs(i, self._spaces[mix.template])
        runs = sample_realisation(self._spaces[mix.template], self._realisation_rng).runs
        if self._trace is None:
            return runs
        k = next(k for k, run in enumerate(runs) if run.tool_time is None)
        prompt, output = runs[k].prompt_tokens.copy(), runs[k].output_tokens.copy()  # type: ignore[union-attr]
        prompt[0], output[0] = self._trace.prompt[i], max(int(self._trace.output[i]), 1)  # type: ignore[index]
        return (*runs[:k], replace(runs[k], prompt_tokens=prompt, output_tokens=output), *runs[k + 1:])

    def _arrive(self, now: float, i: int) -> None:
        mix = self.config.workload.applications[self.app_mix[i]]
        runs = self._drawn.pop(i) if self._drawn else self._realise(i)
        adapter = mix.draw_adapter(self._adapter_rng)
        app = Application(i, mix, now, runs, adapter)
        if self._trace is not None:
            app.trace_run = next(k for k, run in enumerate(runs) if run.tool_time is None)
        self.arrived += 1
        self.active[i] = app
        self._count_area(now)
        self.in_system += 1
        if i + 1 < len(self.arrival_times):
            self.engine.at(float(self.arrival_times[i + 1]), self._arrive, i + 1)
        if self._admits:
            self._consider(app, now)
        else:
            self._admit(app, now)

    # -- admission ----------------------------------------------------------------------------------
    def may_reject(self, app: Application) -> bool:
        """Whether ``app``'s tier lets admission refuse it."""
        return self.config.workload.tier(app.tier).reject

    def may_defer(self, app: Application, now: float) -> bool:
        """Whether ``app`` may be deferred at ``now``: its tier's ``max_defer`` from arrival is not over."""
        return now < app.arrival + self.config.workload.tier(app.tier).max_defer

    @property
    def deferred(self) -> list[Application]:
        """The applications deferred now, in the order they were first deferred."""
        return list(self._deferred.values())

    def _consider(self, app: Application, now: float) -> None:
        order = self.admission.admit(self, app, now)
        if order is not None:  # None: an external policy answers through resolve()
            self._settle(app, order, now)

    def _settle(self, app: Application, order: int, now: float) -> None:
        """Apply an admission order, once checked against what the application's tier allows."""
        tier = app.tier
        require(order in (ADMIT, DEFER, REJECT), "admission", f"{self.admission.name} gave the order {order!r}",
                "return ADMIT, DEFER or REJECT")
        allowed = {ADMIT: True, DEFER: self.may_defer(app, now), REJECT: self.may_reject(app)}[order]
        require(allowed, "admission", f"{self.admission.name} may not {ADMISSION_ORDERS[order]} application "
                f"{app.id} of tier {tier!r} at t={now:.6g}", f"check sim.may_defer / sim.may_reject, or change "
                f"workload.tiers.{tier}")
        if order == DEFER:
            if app.gate == ARRIVING:
                app.deferred_at = now
                self.engine.at(app.arrival + self.config.workload.tier(tier).max_defer, self._expire, app)
            app.gate = DEFERRED
            self._deferred[app.id] = app
            return
        self._deferred.pop(app.id, None)
        if order == ADMIT:
            self._admit(app, now)
        else:
            self._reject(app, now, "admission: rejected")

    def _reject(self, app: Application, now: float, reason: str) -> None:
        app.gate = REJECTED
        app.failed = reason
        self._end(app, now)

    def _expire(self, now: float, app: Application) -> None:
        """``app``'s time to be deferred is over: rejected if its tier allows, else admitted."""
        if app.gate != DEFERRED:
            return
        del self._deferred[app.id]
        if self.may_reject(app):
            self._reject(app, now, "admission: deferred past max_defer")
        else:
            self._admit(app, now)

    def _reconsider(self, now: float) -> None:
        """Ask again about every deferred application, oldest first (capacity may have freed up)."""
        for app in list(self._deferred.values()):
            if app.gate == DEFERRED:  # an earlier answer may have ended it meanwhile
                self._consider(app, now)

    def _admit(self, app: Application, now: float) -> None:
        app.gate = ADMITTED
        if self.max_active is not None and self.admitted >= self.max_active:
            self._gate.append(app)  # waits at the gate: in the system, not yet started
            return
        self.admitted += 1
        self._issue(app, now)

    def _issue(self, app: Application, now: float) -> None:
        run = app.current
        app.pending = run.width
        app.issued_at = now
        self._decision_point(now)
        if run.tool_time is not None:
            tool = self.tool_backends[run.backend]
            app.lower_bound += float(run.tool_time.max())
            for copy in range(run.width):
                self.stage_requests += 1
                req = Request(app, app.cursor, copy, run.backend, service_time=float(run.tool_time[copy]))
                if self.timeline is not None:
                    self.timeline.issued(req)
                tool.submit(req, now)
            return
        backend = self.llm_backends[run.backend]
        stage = self._stages[(app.template, run.stage)]
        adapter = app.adapter if stage.adapter == "any" else stage.adapter
        history = app.context.get(backend.name, (0, ()))[0]
        slowest = 0.0
        for copy in range(run.width):
            prompt = int(run.prompt_tokens[copy])  # type: ignore[index]
            prefix = int(prompt * stage.prefix_reuse)
            if self._agentic is not None:  # the trace row's blocks
                ids = self._agentic.blocks(app.id, app.cursor, copy)
                chain = self._blocks.chain(ids, prompt) if backend.cfg.enable_prefix_caching else ()
                own = len(chain)  # trace blocks may be shared by any session: none is retained as the app's own
            elif copy == 0 and app.cursor == app.trace_run and self._trace.block_ids is not None:  # type: ignore[union-attr]
                ids = self._trace.block_ids[app.id]  # type: ignore[union-attr]
                chain = self._blocks.chain(ids, prompt) if backend.cfg.enable_prefix_caching else ()
                own = len(chain)  # a trace's blocks are shared by every request that has them
            else:
                prompt, chain = self._prompt(app, stage, backend, prompt, prefix)
                own = 1 if chain and chain[0].shared else 0
            req = Request(app, app.cursor, copy, run.backend, prompt, int(run.output_tokens[copy]),  # type: ignore[index]
                          prefix_tokens=prefix, chain=chain, adapter=adapter)
            req.own = own
            if stage.context != "fresh":
                req.resumed = min(history, prompt)
            if self._agentic is not None:
                reusable = self._agentic.shared_tokens(app.id, app.cursor, copy)
            elif copy or app.cursor != app.trace_run:
                reusable = self._reusable(app, stage, history, prefix, copy)
            else:
                reusable = self._trace_shared(app.id)
            cached = min(reusable, prompt - 1)
            slowest = max(slowest, backend.isolated_service_time(prompt, req.output_tokens, cached))
            backend.gpu_work_bound += backend.min_gpu_seconds(prompt - cached, req.output_tokens)
            self.stage_requests += 1
            if self.timeline is not None:
                self.timeline.issued(req)
            backend.submit(req, now)
            if app.failed:
                return  # refused: the application has ended
        app.lower_bound += slowest

    @staticmethod
    def _reusable(app: Application, stage: Stage, history: int, prefix: int, copy: int) -> int:
        """Prompt tokens a perfect prefix cache would serve: the conversation so far (a continued or appended
        context), else the template's system prompt, else a prefix computed before the run."""
        if stage.context != "fresh" and history:
            return history
        return max(stage.system_prompt_tokens, prefix)

    def _trace_shared(self, i: int) -> int:
        """Tokens of trace request ``i``'s prompt in leading blocks that some other request of the trace also
        has (the most any prefix cache could serve it, whatever the order)."""
        if self._trace is None or self._trace.block_ids is None:
            return 0
        if self._shared_blocks is None:
            counts = Counter(ids[:k + 1] for ids in self._trace.block_ids for k in range(len(ids)))
            self._shared_blocks = [next((k for k in range(len(ids)) if counts[ids[:k + 1]] < 2), len(ids))
                                   for ids in self._trace.block_ids]
        return self._shared_blocks[i] * BLOCK_TOKENS

    def _prompt(self, app: Application, stage: Stage, backend: LLMBackend, sampled: int,
                prefix: int) -> tuple[int, tuple[Segment, ...]]:
        """The prompt's length (``sampled``, or the conversation so far plus ``sampled`` added tokens for
        ``context: append``) and, for the prefix caches, what it is made of (no chain without a cache)."""
        history, chain = app.context.get(backend.name, (0, ()))
        prompt = history + sampled if stage.context == "append" else sampled
        if not backend.cfg.enable_prefix_caching:
            return prompt, ()
        if stage.context != "fresh" and history:
            base = chain
        elif stage.system_prompt_tokens:
            key = (app.template, stage.name)
            if key not in self._system_prompts:
                self._system_prompts[key] = Segment(None, 0, stage.system_prompt_tokens, shared=True)
            base = (self._system_prompts[key],)
        elif prefix:  # computed before the run: in the remote store from the start
            base = (Segment(None, 0, prefix, shared=True),)
            if backend.remote is not None:
                backend.remote.publish(base, prefix)
        else:
            base = ()
        end = chain_end(base)
        return prompt, (truncate(base, prompt) if end >= prompt else extend(base, prompt - end))

    def _done(self, request: Request, now: float) -> None:
        app: Application = request.app
        if self.request_log is not None:
            self.request_log.append(request)
        if self.timeline is not None and request.backend in self.llm_backends:
            self.timeline.llm_done(request, now)
        if request.output_tokens:  # an LLM request: time to first token, time per output token
            ttft, tpot = request.ttft, request.tpot
            self.recorder.request(request.backend, app.app_class, ttft, tpot)
            if request.resumed:
                self.recorder.resumed(request.backend, ttft)
            if request.copy == 0:  # the conversation goes on from the first copy's prompt and answer
                app.context[request.backend] = (request.prompt_tokens + request.output_tokens, request.chain)
            if request.replica is not None:
                app.replicas[request.backend] = request.replica.index
        if app.failed:
            return  # a copy of a stage whose application failed meanwhile
        app.pending -= 1
        self._stage_times(app, request)
        if app.pending:
            return
        app.cursor += 1
        if app.cursor < len(app.runs):
            self._issue(app, now)
        else:
            self._end(app, now)

    def _failed(self, request: Request, now: float) -> None:
        """A backend refused ``request``: its application fails now (its other copies finish unheeded)."""
        app: Application = request.app
        if self.timeline is not None:
            self.timeline.refused(request, now)
        if app.failed:
            return
        app.failed = f"{request.backend}: {request.failed}"
        self._end(app, now)

    def _end(self, app: Application, now: float) -> None:
        app.completion = now
        for backend in self.llm_backends.values():
            if backend.retention is not None:
                backend.forget(app, now)
        del self.active[app.id]
        self._count_area(now)
        self.in_system -= 1
        self.slo_missed += bool(app.failed) or now - app.arrival > app.mix.slo
        self.recorder.application(app)
        if self.timeline is not None:
            self.timeline.app_ended(app)
        if app.gate == ADMITTED:
            self.admitted -= 1
            if self._gate:
                self.admitted += 1
                self._issue(self._gate.popleft(), now)
        self._decision_point(now)
        if self._deferred:
            self._reconsider(now)

    def _stage_times(self, app: Application, request: Request) -> None:
        wait, service = request.started - request.first_enqueued, request.finished - request.started
        if len(app.queue_times) == app.cursor:
            app.queue_times.append(0.0)
            app.service_times.append(0.0)
        width = app.current.width
        app.queue_times[app.cursor] += wait / width
        app.service_times[app.cursor] += service / width

    # -- orders of prewarm policies and autoscalers ---------------------------------------------------
    def prewarm(self, backend: str, now: float) -> bool:
        require(backend in self.tool_backends, "prewarm.backend", f"{backend!r} is not a tool backend",
                f"tool backends: {sorted(self.tool_backends)}")
        return self.tool_backends[backend].prewarm(now)

    def release(self, backend: str, now: float) -> bool:
        require(backend in self.tool_backends, "release.backend", f"{backend!r} is not a tool backend",
                f"tool backends: {sorted(self.tool_backends)}")
        return self.tool_backends[backend].release(now)

    def scale_up(self, backend: str, now: float, kind: str | None = None) -> bool:
        """Load a cold replica of an LLM backend, of replica kind ``kind`` if named (False if none is cold)."""
        require(backend in self.llm_backends, "scale.backend", f"{backend!r} is not an LLM backend",
                f"LLM backends: {sorted(self.llm_backends)}")
        kinds = [k.name for k in self.llm_backends[backend].cfg.kinds]
        require(kind is None or kind in kinds, "scale.kind", f"{backend} has no replica kind {kind!r}",
                f"its kinds: {kinds}")
        return self.llm_backends[backend].scale_up(now, kind)

    def scale_down(self, backend: str, now: float) -> bool:
        """Drain a warm replica of an LLM backend (False if none can go)."""
        require(backend in self.llm_backends, "scale.backend", f"{backend!r} is not an LLM backend",
                f"LLM backends: {sorted(self.llm_backends)}")
        return self.llm_backends[backend].scale_down(now)

    def migrate(self, backend: str, request: Request, target: int, now: float) -> bool:
        """Start moving running ``request`` of an LLM backend to its replica ``target`` (False if it cannot
        move now: :meth:`~hermes_env.cluster.migration.Migrator.why_not`)."""
        b = self.llm_backends[backend]
        require(b.migrator is not None, "migration", "is none: no request migrates",
                "run with a migration policy (llumnix)")
        require(0 <= target < len(b.replicas), "migration.target", f"{backend} has no replica {target}",
                f"give 0 to {len(b.replicas) - 1}")
        source = next((r for r in b.replicas if request in r.running), None)
        return source is not None and b.migrator.start(request, source, b.replicas[target], now)

    def migrate_between(self, backend: str, source: int, target: int, now: float) -> bool:
        """Move one running request from replica ``source`` to ``target`` of an LLM backend, the one Llumnix
        would pick (:meth:`~hermes_env.cluster.migration.Migrator.pick`); False if none can move."""
        b = self.llm_backends[backend]
        require(b.migrator is not None, "migration", "is none: no request migrates",
                "run with a migration policy (llumnix)")
        require(0 <= source < len(b.replicas) and 0 <= target < len(b.replicas), "migration",
                f"{backend} has no replica pair ({source}, {target})", f"give indices 0 to {len(b.replicas) - 1}")
        src, dst = b.replicas[source], b.replicas[target]
        request = b.migrator.pick(src, dst)
        return request is not None and b.migrator.start(request, src, dst, now)

    # -- invariants (tests) -------------------------------------------------------------------
    def _check_invariants(self) -> None:
        now = self.engine.now
        assert now >= self._last_event, f"time went back from {self._last_event} to {now}"
        self._last_event = now
        for tool in self.tool_backends.values():
            tool.check_invariants()
            free = any(i.state == WARM and i.busy < tool.cfg.capacity for i in tool.instances)
            assert not (len(tool.queue) and free), f"{tool.name}: requests wait while a warm slot is free"
        for b in self.llm_backends.values():
            b.check_invariants()
            for r in b.replicas:
                waiting = len(r.queue) and (r.queue is not b.queue or r.state == REPLICA_WARM)
                held = r.kvmem is not None and r.kvmem.pinned_blocks > 0  # TTL pins may hold admission back
                held = held or bool(r.sending) or bool(r.staged)  # so may KV held for a hand-off, or in flight
                assert not (waiting and r.state == REPLICA_WARM and r.idle and not r.deciding and not held), \
                    f"{b.name}[{r.index}]: an idle warm replica while work waits"
