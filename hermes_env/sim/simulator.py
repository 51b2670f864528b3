"""The headless simulation: applications flowing through the cluster's backends.

    sim = Simulation(ExperimentConfig.from_yaml("configs/experiments/small.yaml"), scheduler="fcfs",
                     prewarm="none", seed=0)
    result = sim.run()                      # a SimulationResult: per-application rows and a summary
    result.summary["jct"]["mean"]

An application arrives, draws its realisation from its own random stream (so that every policy sees the
same demands), and issues its stages one after another: every parallel copy of a stage is a
:class:`~hermes_env.cluster.request.Request` sent to the stage's backend; when the last copy finishes,
the next stage is issued; after the last stage the application completes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.catalog import config_path
from hermes_env.cluster.config import ClusterConfig
from hermes_env.cluster.latency import IterationLatency, ProfileCost
from hermes_env.cluster.llm import LLMBackend
from hermes_env.cluster.queue import WaitQueue
from hermes_env.cluster.request import Request
from hermes_env.cluster.tool import WARM, ToolBackend
from hermes_env.errors import require
from hermes_env.pdgraph.demand import DemandModel, Progress
from hermes_env.pdgraph.graph import PDGraph
from hermes_env.pdgraph.sampling import StageRun, sample_realisation
from hermes_env.sim.engine import Engine
from hermes_env.sim.metrics import SimulationResult, summarise
from hermes_env.sim.policies import make_prewarm, make_scheduler
from hermes_env.sim.workload import ApplicationMix, WorkloadConfig, resolve_path, with_absolute_files
from hermes_env.validation import check_keys, load_yaml


def inline_parts(spec: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    """A copy of an experiment spec whose ``cluster`` and ``workload``, when given as YAML paths (relative to
    ``base``), are replaced by their contents, so that callers can override fields inside them."""
    out = dict(spec)
    for key in ("cluster", "workload"):
        part = spec.get(key)
        require(part is not None, f"experiment.{key}", "is missing", "give a mapping or a YAML path")
        if isinstance(part, str):
            path = resolve_path(part, base)
            out[key] = load_yaml(path, f"experiment.{key}")
            if key == "workload":
                out[key] = with_absolute_files(out[key], path.parent)
    return out


@dataclass(frozen=True)
class ExperimentConfig:
    cluster: ClusterConfig
    workload: WorkloadConfig

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], base: Path | None = None) -> ExperimentConfig:
        check_keys(spec, ("cluster", "workload", "description"), "experiment")
        parts = inline_parts(spec, base)
        cluster = ClusterConfig.from_dict(parts["cluster"])
        return cls(cluster, WorkloadConfig.from_dict(parts["workload"], cluster.backend_names, base=base))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        """An experiment YAML by path, or a packaged one by name (``contended``, ``default``)."""
        path = config_path("experiments", path)
        return cls.from_dict(load_yaml(path), base=path.parent)


@lru_cache(maxsize=256)
def shared_demand_model(graph: PDGraph, profiles: tuple[tuple[str, IterationLatency], ...]) -> DemandModel:
    return DemandModel(graph, ProfileCost(dict(profiles)))


@dataclass
class Decision:
    """A choice an external policy owes: ``schedule`` (which request ``queue`` admits next at ``backend``)
    or ``prewarm`` (which tool backends to warm or release)."""

    kind: str
    time: float
    backend: str
    queue: WaitQueue | None
    resume: Callable[[float], None] | None


class Application:
    """One application in the system: its realisation and how far it has got."""

    __slots__ = ("id", "mix", "arrival", "runs", "cursor", "pending", "completion", "queue_times", "service_times",
                 "issued_at")

    def __init__(self, app_id: int, mix: ApplicationMix, arrival: float, runs: tuple[StageRun, ...]) -> None:
        self.id, self.mix, self.arrival, self.runs = app_id, mix, arrival, runs
        self.cursor = 0  # index of the stage run in progress
        self.pending = 0  # its copies not yet finished
        self.completion = math.nan
        self.queue_times: list[float] = []  # per stage run: mean over copies of the wait before service
        self.service_times: list[float] = []  # per stage run: mean over copies of the time in service
        self.issued_at = 0.0

    @property
    def template(self) -> str:
        return self.mix.template

    @property
    def app_class(self) -> str:
        return self.mix.app_class

    @property
    def current(self) -> StageRun:
        return self.runs[self.cursor]

    @property
    def progress(self) -> Progress:
        """Its progress as policies read it: the current stage's state and unfinished copies, with the
        stage's attained service taken as 0 (decisions are made when a stage is issued)."""
        return Progress(self.current.state, 0.0, self.pending)


class Simulation:
    def __init__(self, config: ExperimentConfig, scheduler: Any = "fcfs", prewarm: Any = "none", seed: int = 0,
                 check_invariants: bool = False) -> None:
        self.config, self.seed, self.check = config, seed, check_invariants
        self.engine = Engine()
        self.scheduler = make_scheduler(scheduler) if isinstance(scheduler, str) else scheduler
        self.prewarm_policy = make_prewarm(prewarm) if isinstance(prewarm, str) else prewarm
        cluster_rng = np.random.default_rng([seed, 4])
        self.llm_backends = {c.name: LLMBackend(c, self.engine, WaitQueue(c.name, self.scheduler), self._done,
                                                self._decision_needed) for c in config.cluster.llm_backends}
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
        self._prefix_reuse = {(m.template, st.name): st.prefix_reuse for m in workload.applications
                              for st in m.graph.stages}
        # Applications arrive in index order whatever the policies do, so drawing each realisation from
        # one stream at arrival gives every policy the same demands (common random numbers).
        self._realisation_rng = np.random.default_rng([seed, 3])
        self.apps: list[Application] = []
        self.completed: list[Application] = []
        self.active: dict[int, Application] = {}  # in the system now, by id, in arrival order
        self._started = False
        self.in_system = 0
        self.stage_requests = 0
        self.slo_missed = 0
        self.token_latency: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self.pending: deque[Decision] = deque()  # choices an external policy owes, oldest first
        self._area, self._area_since = 0.0, 0.0  # integral of applications in the system over time
        self._demand_models: dict[str, DemandModel] = {}
        self._last_event = 0.0
        self.scheduler.bind(self)

    def __getstate__(self) -> dict:
        # PDGraph analyses are shared across simulations and rebuilt on demand: keep them out of pickles
        return {**self.__dict__, "_demand_models": {}}

    # -- running ----------------------------------------------------------------------------
    def run(self, until: float = math.inf) -> SimulationResult:
        """Run to the end (or ``until``) with the policies given; external policies need
        :meth:`run_until_decision` and :meth:`resolve` instead."""
        require(not getattr(self.scheduler, "external", False), "scheduler",
                "is external: drive the simulation with run_until_decision() and resolve()")
        self._start()
        if self.check:
            while len(self.engine) and self.engine.next_time() <= until and not self._finished():
                self.engine.step()
                self._check_invariants()
        else:
            self.engine.run(until, stop=self._finished)
        if until == math.inf:
            self._check_not_stalled()
        return summarise(self)

    def _check_not_stalled(self) -> None:
        """Every application completes unless events run out first, which would be a simulator bug:
        say where the work is stuck rather than report a short run as finished."""
        if self._finished() or len(self.engine) or self.pending:
            return
        stuck = {name: len(b.queue) for name, b in self.backends.items() if len(b.queue)}
        raise RuntimeError(f"the simulation ran out of events at t={self.engine.now:.6g} with "
                           f"{len(self.active)} applications unfinished and {len(self.apps)} of "
                           f"{self.config.workload.num_applications} arrived; requests waiting: {stuck}")

    def _count_area(self, now: float) -> None:
        self._area += self.in_system * (now - self._area_since)
        self._area_since = now

    def system_area(self) -> float:
        """The integral of the number of applications in the system up to now: by Little's law, the
        sum of their completion times once all have completed."""
        return self._area + self.in_system * (self.engine.now - self._area_since)

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

    # -- external decisions (the Gymnasium environments) ------------------------------------------
    def _decision_needed(self, queue: WaitQueue, now: float, resume: Callable[[float], None]) -> None:
        self.pending.append(Decision("schedule", now, queue.backend, queue, resume))

    def request_prewarm_decision(self, now: float) -> None:
        """Called by an external prewarm policy: pause so that the agent can order warm-ups/releases."""
        self.pending.append(Decision("prewarm", now, "", None, None))

    def run_until_decision(self) -> Decision | None:
        """Run until an external policy owes a choice (returned) or every application has completed (None)."""
        self._start()
        if not self.pending and not self._finished():
            self.engine.run(stop=lambda: bool(self.pending) or self._finished())
            self._check_not_stalled()
        return self.pending[0] if self.pending else None

    def resolve(self, choice: int | None = None) -> None:
        """Settle the oldest pending decision: for a scheduling decision, admit the waiting request at
        ``choice`` (an index of ``decision.queue.waiting``) and let the backend go on."""
        decision = self.pending.popleft()
        if decision.kind == "schedule":
            decision.queue.choose(int(choice))  # type: ignore[arg-type, union-attr]
            decision.resume(self.engine.now)  # type: ignore[misc]

    def _start(self) -> None:
        """Schedule the first arrival and the prewarm tick, once: later calls do nothing."""
        if self._started:
            return
        self._started = True
        self.prewarm_policy.start(self, 0.0)
        self.engine.at(float(self.arrival_times[0]), self._arrive, 0)
        if self.prewarm_policy.tick:
            self.engine.at(self.prewarm_policy.tick, self._tick)

    def _finished(self) -> bool:
        return len(self.completed) == self.config.workload.num_applications

    def _arrive(self, now: float, i: int) -> None:
        mix = self.config.workload.applications[self.app_mix[i]]
        runs = sample_realisation(self._spaces[mix.template], self._realisation_rng).runs
        app = Application(i, mix, now, runs)
        self.apps.append(app)
        self.active[i] = app
        self._count_area(now)
        self.in_system += 1
        if i + 1 < len(self.arrival_times):
            self.engine.at(float(self.arrival_times[i + 1]), self._arrive, i + 1)
        self._issue(app, now)

    def _issue(self, app: Application, now: float) -> None:
        run = app.current
        app.pending = run.width
        app.issued_at = now
        backend = self.backends[run.backend]
        self.prewarm_policy.decide(self, now)
        for copy in range(run.width):
            if run.tool_time is not None:
                req = Request(app, app.cursor, copy, run.backend, service_time=float(run.tool_time[copy]))
            else:
                prompt = int(run.prompt_tokens[copy])
                reuse = self._prefix_reuse[(app.template, run.stage)]
                req = Request(app, app.cursor, copy, run.backend, prompt, int(run.output_tokens[copy]),
                              prefix_tokens=int(prompt * reuse))
            self.stage_requests += 1
            backend.submit(req, now)

    def _done(self, request: Request, now: float) -> None:
        app: Application = request.app
        if request.output_tokens:  # an LLM request: time to first token, time per output token
            ttft, tpot = self.token_latency.setdefault((request.backend, app.app_class), ([], []))
            ttft.append(request.first_token - request.first_enqueued)
            if request.output_tokens > 1:
                tpot.append((request.finished - request.first_token) / (request.output_tokens - 1))
        app.pending -= 1
        self._stage_times(app, request)
        if app.pending:
            return
        app.cursor += 1
        if app.cursor < len(app.runs):
            self._issue(app, now)
        else:
            app.completion = now
            del self.active[app.id]
            self._count_area(now)
            self.in_system -= 1
            self.slo_missed += now - app.arrival > app.mix.slo
            self.completed.append(app)
            self.prewarm_policy.decide(self, now)

    def _stage_times(self, app: Application, request: Request) -> None:
        wait, service = request.started - request.first_enqueued, request.finished - request.started
        if len(app.queue_times) == app.cursor:
            app.queue_times.append(0.0)
            app.service_times.append(0.0)
        width = app.current.width
        app.queue_times[app.cursor] += wait / width
        app.service_times[app.cursor] += service / width

    def _tick(self, now: float) -> None:
        self.prewarm_policy.decide(self, now)
        if not self._finished():
            self.engine.at(now + self.prewarm_policy.tick, self._tick)

    # -- prewarm orders -----------------------------------------------------------------------
    def prewarm(self, backend: str, now: float) -> bool:
        require(backend in self.tool_backends, "prewarm.backend", f"{backend!r} is not a tool backend",
                f"tool backends: {sorted(self.tool_backends)}")
        return self.tool_backends[backend].prewarm(now)

    def release(self, backend: str, now: float) -> bool:
        require(backend in self.tool_backends, "release.backend", f"{backend!r} is not a tool backend",
                f"tool backends: {sorted(self.tool_backends)}")
        return self.tool_backends[backend].release(now)

    # -- invariants (tests) -------------------------------------------------------------------
    def _check_invariants(self) -> None:
        now = self.engine.now
        assert now >= self._last_event, f"time went back from {self._last_event} to {now}"
        self._last_event = now
        for b in self.tool_backends.values():
            b.check_invariants()
            free = any(i.state == WARM and i.busy < b.cfg.capacity for i in b.instances)
            assert not (len(b.queue) and free), f"{b.name}: requests wait while a warm slot is free"
        for b in self.llm_backends.values():
            b.check_invariants()
            idle = any(not r.busy and not r.loading and not r.loaded for r in b.replicas)
            assert not (len(b.queue) and idle), f"{b.name}: an idle replica while work waits"
