"""The policy interface shared by heuristics and learned agents, and the registry of named policies.

**Scheduling.** At a decision point (a backend has free capacity and requests wait for it) the backend
takes the next request in the policy's order. A policy defines either

* ``key(request, now)``: a priority fixed when the request joins the queue, lower first (FCFS, SJF, a
  Gittins index read when the stage is issued); the queue is a heap; or
* ``select(backend, waiting, now) -> int``: the index of the request to admit among all those waiting,
  asked at every decision point (a learned policy, or a rank that changes while requests wait).

``bind(sim)`` is called once before the run, so a policy can read the simulation (applications'
PDGraph models, backends' state). A request knows its application: ``request.app`` (an
:class:`~hermes_env.sim.simulator.Application`), with its template, class, arrival and progress.

**Routing.** An LLM backend with a router places each arriving request on one of its replicas:
``route(backend, request, candidates, now)`` returns one of ``candidates`` (replicas warm or loading).
The name ``shared`` stands for no router: one queue per backend, replicas pull from it (late binding).

**Autoscaling.** ``start(sim, now)`` at time 0, ``decide(sim, now)`` at every decision point (as for
prewarm) and every ``tick`` seconds; it acts through ``sim.scale_up(backend, now)`` (load a cold
replica) and ``sim.scale_down(backend, now)`` (drain a warm one). Whatever the autoscaler, a request that
finds no replica warm or loading starts a load (a cold start on its critical path).

**Residual autoscaling** (:class:`ResidualAutoscaler`): a *native* autoscaler runs at its own cadence
and a second policy's orders (an agent's, a planner's) add to it at that policy's cadence.

**KV retention** (:mod:`hermes_env.sim.retention`): what happens to an application's KV context between
its LLM calls (release to the LRU cache, pin, offload to host memory, prefetch, discard); ``lru`` is vLLM's.

**Migration** (:mod:`hermes_env.cluster.migration`): every ``tick`` seconds ``decide(sim, now)`` may move
running requests between replicas of an LLM backend through ``sim.migrate(backend, request, target, now)``;
``none`` (the default) never does, and then nothing of migration runs.
**Disaggregation.** On a backend split into prefill and decode pools (:mod:`hermes_env.cluster.disagg`),
``split(backend, request, now)`` says, as the request arrives, whether it prefills in the prefill pool and
decodes in the decode pool (True) or runs colocated on one replica (False); ``colocated`` never splits.

**Prewarm.** ``start(sim, now)`` at time 0; ``decide(sim, now)`` at every decision point (an
application arrives or issues a stage) and, when ``tick`` is set, every ``tick`` seconds. It acts through
``sim.prewarm(backend, now)`` and ``sim.release(backend, now)``.

**Admission.** ``admit(sim, app, now)`` when an application arrives, and again each time a deferred
one is reconsidered (whenever another application ends), returns ``ADMIT``, ``DEFER`` (it waits, in
the system, and is asked again; once its tier's ``max_defer`` seconds from arrival are over it is
rejected) or ``REJECT`` (it fails now, counted per tier); None when an external policy answers later
(``Simulation.resolve``). What a tier allows (``sim.may_reject(app)``, ``sim.may_defer(app, now)``) is
enforced. The application is the unit: its LLM and tool requests are never refused one by one. Names
may carry parameters after a colon (``token_bucket:1.6:10``), parsed by the class's ``from_arg``.

**Planners.** A policy marked ``external`` that defines ``act(sim, decision)`` settles its own decisions:
the simulation pauses for it as for an agent (between events, so it may copy the state and try each
option: ``Simulation.snapshot``) and calls ``act``, which must resolve the decision. Such policies run
headless and inside the environments like any other (``rollout:BASE`` in baselines).

**Written policies** (:mod:`hermes_env.sim.written`): ``path/to/file.py:Name`` wherever a name goes: a class
(or factory) in a file, subclassing the kind's base class here with the methods above.

Policies register by name (``@register_scheduler("fcfs")``); ``make_scheduler("fcfs")`` builds one.
Packages announce more through entry points, loaded only when needed: the ``hermes_env.policies`` group
(``baselines``, light) on the first lookup of a name, and the ``hermes_env.scheduler_families`` group
(``ppo`` from ``agents``, which imports torch) only when a name with that prefix (``ppo:PATH``) is asked for;
the ``hermes_env.env_policy_families`` group likewise announces policies that act through an environment's
observations (``agent:PATH``, :mod:`hermes_env.tasks`). The core never imports ``agents``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from hermes_env.cluster.request import Request
from hermes_env.errors import ConfigError, require
from hermes_env.sim.written import is_written, make_written

_PLUGINS_LOADED = False
_FAMILIES: dict[str, Callable[..., Any]] = {}  # scheduler families; other kinds' in _KIND_FAMILIES
_KIND_FAMILIES: dict[str, dict[str, Callable[..., Any]]] = {"scheduler": _FAMILIES, "prewarm": {}, "router": {},
                                                            "autoscaler": {}, "retention": {}, "migration": {},
                                                            "disagg": {}, "admission": {}}
_SCHEDULERS: dict[str, Callable[..., Any]] = {}
_PREWARMERS: dict[str, Callable[..., Any]] = {}
_ROUTERS: dict[str, Callable[..., Any]] = {}
_AUTOSCALERS: dict[str, Callable[..., Any]] = {}
_RETENTIONS: dict[str, Callable[..., Any]] = {}
_MIGRATIONS: dict[str, Callable[..., Any]] = {}
_DISAGGS: dict[str, Callable[..., Any]] = {}
_ADMISSIONS: dict[str, Callable[..., Any]] = {}
ADMIT, DEFER, REJECT = 0, 1, 2  # an admission decision (the order of the environments' admission part)
ADMISSION_ORDERS = ("admit", "defer", "reject")


def _registrar(registry: dict[str, Callable[..., Any]]) -> Callable[[str], Callable[[type], type]]:
    def register(name: str) -> Callable[[type], type]:
        def add(cls: type) -> type:
            registry[name] = cls
            cls.name = name
            return cls
        return add
    return register


def load_plugins() -> None:
    """Import the packages that register named policies through the ``hermes_env.policies`` entry-point
    group (``baselines``): the core never imports them, they announce themselves. A package whose own
    dependencies are missing is skipped with a warning."""
    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for entry_point in entry_points(group="hermes_env.policies"):
            try:
                entry_point.load()
            except ImportError as err:
                warnings.warn(f"policies of {entry_point.value!r} are unavailable: {err}", stacklevel=2)


def register_scheduler_family(prefix: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """Register a factory for scheduler names ``prefix:ARG`` (``ppo:runs/model.zip``)."""
    def add(factory: Callable[[str], Any]) -> Callable[[str], Any]:
        _FAMILIES[prefix] = factory
        return factory
    return add


def register_family(kind: str, prefix: str) -> Callable[[Callable[[str], Any]], Callable[[str], Any]]:
    """Register a factory for ``kind`` names ``prefix:ARG`` (``kind`` one of scheduler, prewarm, router,
    autoscaler): ``rollout:queue_threshold`` is an autoscaler, ``rollout:prefix_affinity`` a router."""
    require(kind in _KIND_FAMILIES, "kind", f"unknown policy kind {kind!r}", f"use one of {sorted(_KIND_FAMILIES)}")

    def add(factory: Callable[[str], Any]) -> Callable[[str], Any]:
        _KIND_FAMILIES[kind][prefix] = factory
        return factory
    return add


def families(kind: str) -> list[str]:
    """Prefixes of the ``kind``'s families (``rollout`` for ``rollout:BASE``)."""
    if kind == "scheduler":
        return scheduler_families()
    load_plugins()
    return sorted(_KIND_FAMILIES[kind])


def scheduler_families() -> list[str]:
    """Prefixes of scheduler families (``ppo`` for ``ppo:PATH``), registered or announced, none loaded."""
    load_plugins()  # baselines registers its families (blackbox:N) when it loads
    return sorted({*_FAMILIES, *(ep.name for ep in entry_points(group="hermes_env.scheduler_families"))})


def load_family(group: str, prefix: str, field: str) -> Callable[..., Any] | None:
    """The factory a package announces for names ``prefix:ARG`` in the entry-point ``group``, importing the
    package only now (``agents`` needs torch); ``None`` when no package announces ``prefix``. A package
    whose dependencies are missing is one error naming the extra its entry point declares
    (``ppo = "agents.scheduler:learned_scheduler [rl]"``)."""
    for entry_point in entry_points(group=group, name=prefix):
        try:
            return entry_point.load()
        except ImportError as err:
            extras = ",".join(entry_point.extras)
            raise ConfigError(field, f"'{prefix}:' policies are unavailable ({err})",
                              f"pip install 'hermes_env[{extras}]', torch first (see README)" if extras else
                              f"install what {entry_point.value.split(':')[0]!r} needs") from None
    return None


def _family(prefix: str) -> Callable[..., Any] | None:
    """The factory of a scheduler family, importing its package only now (the ``ppo`` family needs torch)."""
    if prefix not in _FAMILIES and (factory := load_family("hermes_env.scheduler_families", prefix, "scheduler")):
        _FAMILIES[prefix] = factory
    return _FAMILIES.get(prefix)


def _maker(registry: dict[str, Callable[..., Any]], kind: str) -> Callable[..., Any]:
    def make(name: str, **kwargs: Any) -> Any:
        require(isinstance(name, str), kind, f"must be a policy name, got {name!r}")
        load_plugins()  # light: baselines may register families (blackbox:N) as well as names
        if is_written(name):  # path/to/file.py:Name (hermes_env.sim.written)
            return make_written(kind, name, **kwargs)
        prefix, _, arg = name.partition(":")
        family = (_family(prefix) if kind == "scheduler" else _KIND_FAMILIES[kind].get(prefix)) if arg else None
        if family is not None:
            return family(arg, **kwargs)
        prefixes = families(kind)
        require(name in registry, kind, f"unknown {kind} {name!r}",
                f"use one of {sorted(registry)}" + "".join(f", {p}:ARG" for p in prefixes) + " or FILE.py:Name")
        return registry[name](**kwargs)
    return make


register_scheduler = _registrar(_SCHEDULERS)
register_prewarm = _registrar(_PREWARMERS)
register_router = _registrar(_ROUTERS)
register_autoscaler = _registrar(_AUTOSCALERS)
register_retention = _registrar(_RETENTIONS)
register_migration = _registrar(_MIGRATIONS)
register_disagg = _registrar(_DISAGGS)
make_scheduler = _maker(_SCHEDULERS, "scheduler")
make_prewarm = _maker(_PREWARMERS, "prewarm")
make_router = _maker(_ROUTERS, "router")
make_autoscaler = _maker(_AUTOSCALERS, "autoscaler")
make_retention = _maker(_RETENTIONS, "retention")
make_disagg = _maker(_DISAGGS, "disagg")
register_admission = _registrar(_ADMISSIONS)


def make_admission(name: str) -> Any:
    """An admission policy by name, with its parameters after a colon (``queue_threshold:8:16``)."""
    require(isinstance(name, str), "admission", f"must be a policy name, got {name!r}")
    load_plugins()
    if is_written(name):
        return make_written("admission", name)
    prefix, _, arg = name.partition(":")
    if arg and prefix in _KIND_FAMILIES["admission"]:  # a family (rollout:BASE, baselines/planners.py)
        return _KIND_FAMILIES["admission"][prefix](arg)
    require(prefix in _ADMISSIONS, "admission", f"unknown admission policy {prefix!r}",
            f"use one of {sorted(_ADMISSIONS)}" + "".join(f" or {p}:ARG" for p in sorted(_KIND_FAMILIES["admission"])))
    policy = _ADMISSIONS[prefix].from_arg(arg)
    policy.name = name
    return policy


def make_migration(name: str) -> Any:
    """A migration policy by name, with its parameters after a colon (``llumnix:50:500``)."""
    require(isinstance(name, str), "migration", f"must be a policy name, got {name!r}")
    load_plugins()
    prefix, _, arg = name.partition(":")
    family = _KIND_FAMILIES["migration"].get(prefix) if arg else None
    if family is not None:  # a planner over a heuristic: rollout:llumnix
        return family(arg)
    require(prefix in _MIGRATIONS, "migration", f"unknown migration policy {prefix!r}",
            f"use one of {sorted(_MIGRATIONS)}" + "".join(f", or {p}:BASE" for p in families("migration")))
    policy = _MIGRATIONS[prefix].from_arg(arg)
    policy.name = name
    return policy


def _names(registry: dict[str, Callable[..., Any]]) -> Callable[[], list[str]]:
    def names() -> list[str]:
        load_plugins()
        return sorted(registry)
    return names


scheduler_names = _names(_SCHEDULERS)
prewarm_names = _names(_PREWARMERS)
router_names = _names(_ROUTERS)
autoscaler_names = _names(_AUTOSCALERS)
retention_names = _names(_RETENTIONS)
migration_names = _names(_MIGRATIONS)
disagg_names = _names(_DISAGGS)
admission_names = _names(_ADMISSIONS)


def parse_numbers(arg: str, kind: str, usage: str, count: tuple[int, int]) -> list[float]:
    """The parameters of a policy name (``1.6:10`` of ``token_bucket:1.6:10``): positive numbers, as many as
    ``count`` allows; anything else is one error naming the usage."""
    parts = arg.split(":") if arg else []
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    require(count[0] <= len(values) == len(parts) <= count[1] and all(v > 0 for v in values), kind,
            f"bad parameters {arg!r}", f"name it {usage}, with positive numbers")
    return values


class SchedulingPolicy:
    name = ""

    def bind(self, sim: Any) -> None:
        """Called once before the run."""


class PrewarmPolicy:
    name = ""
    tick: float | None = None

    def start(self, sim: Any, now: float) -> None:
        """Called at time 0."""

    def decide(self, sim: Any, now: float) -> None:
        """Called at decision points and ticks."""


@register_scheduler("fcfs")
class FCFS(SchedulingPolicy):
    """First come, first served per request: the order in which requests first reached the backend
    (a preempted request keeps its place)."""

    def key(self, request: Request, now: float) -> float:
        return request.first_enqueued


@register_scheduler("app_fcfs")
class ApplicationFCFS(SchedulingPolicy):
    """Requests of earlier-arrived applications first, whatever stage they are in."""

    def key(self, request: Request, now: float) -> tuple[float, float]:
        return (request.app.arrival, request.first_enqueued)


@register_scheduler("gittins")
class Gittins(SchedulingPolicy):
    """Hermes: serve the application with the highest Gittins index of its remaining demand (from its
    PDGraph, at its current stage with its unfinished copies), read when the stage is issued. Ties go to
    the earlier request."""

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def key(self, request: Request, now: float) -> tuple[float, float]:
        app = request.app
        table = self.sim.demand_model(app.template).gittins_table
        return (-table.lookup(app.current.state, 0.0, app.pending), request.first_enqueued)


class ExternalScheduler(SchedulingPolicy):
    """The scheduling side of an agent outside the simulation (the Gymnasium environments): every choice
    among two or more waiting requests pauses the simulation until ``Simulation.resolve`` gives it."""

    name = "external"
    external = True


class ExternalPrewarm(PrewarmPolicy):
    """The prewarm side of an agent outside the simulation: every decision point (and every ``tick``
    seconds) pauses the simulation for the agent's warm/release orders."""

    name = "external"

    def __init__(self, tick: float | None = None) -> None:
        self.tick = tick

    def decide(self, sim: Any, now: float) -> None:
        sim.request_prewarm_decision(now)


@register_prewarm("none")
class NoPrewarm(PrewarmPolicy):
    """Backends stay cold until requested and cool after their configured keep-alive."""


@register_prewarm("always")
class AlwaysWarm(PrewarmPolicy):
    """Every tool instance is warm from the start and never released (no cold start, maximal idle cost)."""

    def start(self, sim: Any, now: float) -> None:
        for backend in sim.tool_backends.values():
            backend.pin_warm(now)


class AdmissionPolicy:
    name = ""

    @classmethod
    def from_arg(cls, arg: str) -> AdmissionPolicy:
        """The policy of a name's parameters (``ARG`` of ``NAME:ARG``, "" without); this one takes none."""
        require(not arg, "admission", f"{cls.name!r} takes no parameters, got {arg!r}", f"name it {cls.name}")
        return cls()

    def bind(self, sim: Any) -> None:
        """Called once before the run."""

    def admit(self, sim: Any, app: Any, now: float) -> int | None:
        """ADMIT, DEFER or REJECT ``app`` (see the module docstring)."""
        raise NotImplementedError


@register_admission("none")
class AdmitAll(AdmissionPolicy):
    """Every application is admitted at arrival (hermes_env 0.2's behaviour; the simulation does not even
    ask it)."""

    def admit(self, sim: Any, app: Any, now: float) -> int | None:
        return ADMIT


class ExternalAdmission(AdmissionPolicy):
    """The admission side of an agent outside the simulation: every arrival, and every reconsideration of
    a deferred application, pauses the simulation until ``Simulation.resolve`` gives the order, except
    where the application's tier allows neither deferring nor rejecting it (it is admitted without asking)."""

    name = "external"

    def admit(self, sim: Any, app: Any, now: float) -> int | None:
        if not sim.may_defer(app, now) and not sim.may_reject(app):
            return ADMIT
        sim.request_admission_decision(app, now)
        return None


class Router:
    name = ""

    def bind(self, sim: Any) -> None:
        """Called once before the run."""

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        """The replica (one of ``candidates``) that ``request`` waits at; None when an external policy
        will place it later (``backend.place``)."""
        raise NotImplementedError


@register_router("shared")
class SharedQueue(Router):
    """No routing: the replicas of a backend share one queue and each takes work at its next iteration
    boundary (late binding), as hermes_env 0.1 modelled every backend. A marker: the backend needs no
    router object for it."""


class DisaggPolicy:
    name = ""

    def bind(self, sim: Any) -> None:
        """Called once before the run."""

    def split(self, backend: Any, request: Request, now: float) -> bool:
        """Whether ``request`` is split (prefill pool, then decode pool) or runs colocated."""
        raise NotImplementedError


@register_disagg("colocated")
class Colocated(DisaggPolicy):
    """Every request prefills and decodes on one replica, of either pool: the backend as without
    disaggregation (its replicas all mixed)."""

    def split(self, backend: Any, request: Request, now: float) -> bool:
        return False


class ExternalDisagg(DisaggPolicy):
    """The disaggregation side of an agent outside the simulation: it chooses with the replica at the routing
    decision (the environments' ``split`` part marks the request through ``Handoff.mark_split``), so arrival
    splits nothing by itself."""

    name = "external"

    def split(self, backend: Any, request: Request, now: float) -> bool:
        return False


class Autoscaler:
    name = ""
    tick: float | None = None
    reacts = True  # called at decision points as well as on the tick

    def start(self, sim: Any, now: float) -> None:
        """Called at time 0."""

    def decide(self, sim: Any, now: float) -> None:
        """Called at decision points and ticks."""


@register_autoscaler("fixed")
class FixedReplicas(Autoscaler):
    """The replicas warm at the start stay warm and no other is loaded, except that a request finding no
    replica warm or loading loads one (the backend's own rule)."""


class ExternalRouter(Router):
    """The routing side of an agent outside the simulation: every placement among two or more replicas
    pauses the simulation until ``Simulation.resolve`` gives it."""

    name = "external"

    def bind(self, sim: Any) -> None:
        self.sim = sim

    def route(self, backend: Any, request: Request, candidates: list[Any], now: float) -> Any:
        self.sim.request_route_decision(backend, request, candidates, now)
        return None


class ExternalAutoscaler(Autoscaler):
    """The autoscaling side of an agent outside the simulation: every ``tick`` seconds the simulation
    pauses for its load/release orders."""

    name = "external"
    reacts = False  # only on the tick: arrivals and completions are too frequent for scaling decisions

    def __init__(self, tick: float) -> None:
        self.tick = tick

    def decide(self, sim: Any, now: float) -> None:
        sim.request_scale_decision(now)


class MigrationPolicy:
    """Moves running requests between replicas (:mod:`hermes_env.cluster.migration`) every ``tick`` seconds."""

    name = ""
    tick: float | None = None

    @classmethod
    def from_arg(cls, arg: str) -> MigrationPolicy:
        require(not arg, "migration", f"{cls.name!r} takes no parameters, got {arg!r}", f"name it {cls.name}")
        return cls()

    def bind(self, sim: Any) -> None:
        """Called once before the run."""

    def decide(self, sim: Any, now: float) -> None:
        """Called every ``tick`` seconds; acts through ``sim.migrate``."""


@register_migration("none")
class NoMigration(MigrationPolicy):
    """Requests stay on the replica that admitted them (vLLM's behaviour, the default): nothing of
    migration runs."""


class ExternalMigration(MigrationPolicy):
    """The migration side of an agent outside the simulation: every ``tick`` seconds, for each LLM backend
    with two or more warm replicas, the simulation pauses for its choice (no move, or a source and a target)."""

    name = "external"
    external = True

    def __init__(self, tick: float) -> None:
        self.tick = tick

    def decide(self, sim: Any, now: float) -> None:
        sim.request_migration_decisions(now)
class ResidualAutoscaler(Autoscaler):
    """Residual control: ``native`` (a heuristic) runs as it would alone, on its own tick and, if it reacts,
    at every decision point, and ``orders`` (an agent's :class:`ExternalAutoscaler`, a planner, any
    autoscaler) adds its loads and releases at its own cadence. Conflicts resolve by time: at an instant where
    both are due, the orders act after the native heuristic's tick (they see its loads and releases, and
    have the last word until its next tick, which may reverse them: the native heuristic keeps its own
    state). Every order goes through the backend's own rules (``can_scale_up``: a cold or draining replica;
    ``can_scale_down``: a warm one, keeping one while the shared queue has work), so neither can go below
    them. With orders that never order anything the run is the native heuristic's alone, bit for bit."""

    def __init__(self, native: Autoscaler, orders: Autoscaler) -> None:
        require(not hasattr(native, "act") and not isinstance(native, ResidualAutoscaler), "residual",
                f"the native autoscaler must be a heuristic, got {native.name!r}", "name a registered autoscaler")
        self.native, self.orders = native, orders
        self.parts = (native, orders)  # ticked one by one by the simulation, the orders behind
        self.name = f"residual:{native.name}+{orders.name}"

    def start(self, sim: Any, now: float) -> None:
        self.native.start(sim, now)
        self.orders.start(sim, now)
