"""The Gymnasium environments on the hermes_env simulator: an agent takes one or more kinds of decision
(scheduling, tool prewarm, LLM routing, LLM autoscaling) while heuristics take the others.

Every environment is the same class with a different set of *parts* it controls (:data:`PARTS`). A part
is a piece of the action: ``schedule`` (which waiting request a backend admits: ``Discrete(K)``),
``prewarm`` (per tool backend: nothing, warm an instance, release one: ``[3] * T``), ``route`` (which
replica of an LLM backend an arriving request waits at: ``Discrete(R)``) and ``scale`` (per LLM backend:
nothing, load a replica, release one: ``[3] * L``), and, with ``admission_control=True`` on
Scheduling-v0 and Joint-v0, ``admit`` (an arriving or deferred application: 0 admit, 1 defer, 2 reject:
``[3]``), and, with ``migration_control=True`` on Routing-v0 and Joint-v0, ``migrate`` (every
``migration_tick`` seconds, per LLM backend with two or more warm replicas: 0 no move, ``1 + s R + t`` move a
running request from replica ``s`` to ``t``: ``[1 + R * R]``), and on Routing-v0 and Joint-v0 where an LLM
backend is split into prefill and decode pools, ``split`` (the routed request runs colocated, 0, or is split, 1:
``[2]``). The simulation pauses whenever a controlled part owes a decision; orders parts (prewarm, scale) are
applied at every decision, choice parts (schedule, route, admit, migrate; split with route) only at their own
kind of decision (slot 0 stands for "no choice" otherwise).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hermes_env.catalog import config_path
from hermes_env.envs.features import (
    ADMISSION_FEATURES,
    BACKEND_FEATURES,
    DECISION_KINDS,
    DISAGG_FEATURES,
    GLOBAL_FEATURES,
    KIND_FEATURES,
    REPLICA_FEATURES,
    REPLICA_KIND_FEATURES,
    FeatureBuilder,
)
from hermes_env.envs.render import render_ansi, render_rgb
from hermes_env.errors import require
from hermes_env.pdgraph.entropy import visit_probabilities
from hermes_env.pdgraph.graph import BACKEND_KINDS, END, backend_kind
from hermes_env.sim.policies import (
    ExternalAdmission,
    ExternalAutoscaler,
    ExternalDisagg,
    ExternalMigration,
    ExternalPrewarm,
    ExternalRouter,
    ExternalScheduler,
    ResidualAutoscaler,
    make_admission,
    make_autoscaler,
    make_disagg,
    make_migration,
    make_prewarm,
    make_retention,
    make_router,
    make_scheduler,
)
from hermes_env.sim.retention import RETAIN_ACTIONS, ExternalRetention
from hermes_env.sim.simulator import ExperimentConfig, Simulation, Snapshot, copy_state, inline_parts
from hermes_env.sim.timeline import TimelineRecorder
from hermes_env.sim.workload import TIERS
from hermes_env.validation import as_integer, as_number, load_yaml

NOOP, WARM_UP, RELEASE = 0, 1, 2  # the orders of the prewarm and scale parts (load = WARM_UP)
PARTS = DECISION_KINDS  # schedule, prewarm, route, scale
PRIORITIES = 3  # a retention decision's eviction priority: 0 to 2, higher goes first under memory pressure
# features of a pending retention decision (observation key "kv"): the context, its replica's memory, the forecast
KV_FEATURES = ("context_tokens", "context_share", "kv_in_use", "kv_pinned", "host_in_use", "round_trip",
               "next_use_probability", "next_use_mean", "next_use_within_round_trip", "contexts_held", "queue")
ADMIT_PART = "admit"  # the admission part, added by admission_control=True
MIGRATE_PART = "migrate"  # the migration part, added by migration_control=True
SPLIT_PART = "split"  # colocated (0) or split (1), with the route part where a backend is disaggregated
CHOICE_PARTS = ("schedule", "route", ADMIT_PART, MIGRATE_PART)  # parts that choose at their own decision only
BOUND = 1e3  # every feature is a fraction, a flag or a log1p of seconds or tokens: far inside this
NODE_FEATURES = (*(f"kind_{k}" for k in BACKEND_KINDS), "current", "visit_probability", "mean_demand", "width")


def load_experiment(config: str | Path | dict | ExperimentConfig, overrides: dict | None) -> ExperimentConfig:
    """An experiment from a name under configs/experiments, a YAML path, a dict or an ExperimentConfig;
    ``overrides`` is merged into the experiment's dict (e.g. ``{"workload": {"num_applications": 50}}``)."""
    if isinstance(config, ExperimentConfig):
        require(not overrides, "overrides", "cannot apply to a built ExperimentConfig", "pass a dict or a path")
        return config
    base = None
    if isinstance(config, str | Path):
        path = config_path("experiments", config)
        base = path.parent
        spec = load_yaml(path)
        require(isinstance(spec, dict), str(path), "must be a mapping with 'cluster' and 'workload'")
        spec = inline_parts(spec, base)  # so that overrides reach into the parts
    else:
        require(isinstance(config, dict), "config", f"must be a name, a path, a dict or an ExperimentConfig, "
                f"got {type(config).__name__}")
        spec = inline_parts(copy.deepcopy(config), None)
    for key, value in (overrides or {}).items():
        require(key in ("cluster", "workload"), f"overrides.{key}", "is not an experiment part",
                "override 'cluster' or 'workload' fields")
        require(isinstance(value, dict), f"overrides.{key}", "must be a mapping")
        spec[key] = _merge(spec.get(key, {}), value)
    return ExperimentConfig.from_dict(spec, base=base)


def _timeline_path(timeline: Any) -> Path | None:
    """The ``timeline`` keyword: None, or a .json path in an existing folder."""
    if timeline is None:
        return None
    require(isinstance(timeline, str | Path), "timeline", f"must be a path, got {type(timeline).__name__}")
    path = Path(timeline)
    require(path.suffix == ".json", "timeline", f"{str(path)!r} does not end in .json", "name a .json file")
    require(path.parent.is_dir(), "timeline", f"folder {str(path.parent)!r} does not exist", "create it first")
    return path


def as_action_integer(action: Any) -> int:
    """A ``Discrete`` action: a Python or NumPy integer, or an integer array holding one value."""
    value = action
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.integer):
        value = value.reshape(()).item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"the action must be an integer slot (an element of the action space), got {action!r} "
                        f"({type(action).__name__})")
    return int(value)


def as_action_vector(action: Any, n: int) -> np.ndarray:
    """A ``MultiDiscrete`` action: ``n`` integers (a list, tuple or integer array)."""
    arr = np.asarray(action)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) and arr.shape == (n,)):
        raise TypeError(f"the action must be {n} integers (an element of the action space), got {action!r}")
    return arr.astype(np.int64)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class HermesEnv(gym.Env):
    """The shared machinery of the environments (see each subclass's docstring for its spaces and rewards)."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    controls: tuple[str, ...] = ("schedule",)
    default_config = "contended"
    admission_allowed = False  # whether admission_control=True may add the admit part
    migration_allowed = False  # whether migration_control=True may add the migrate part

    def __init__(self, config: str | Path | dict | ExperimentConfig | None = None, overrides: dict | None = None,
                 scheduler: str = "gittins", prewarm: str = "none", router: str = "shared", autoscaler: str = "fixed",
                 retention: str = "lru", slots: int = 64, prewarm_tick: float | None = None,
                 autoscale_tick: float = 5.0,
                 max_steps: int | None = None, max_time: float | None = None, reward_scale: float = 1.0,
                 idle_cost_weight: float = 0.0, slo_miss_weight: float = 0.0, gpu_cost_weight: float | None = None,
                 invalid_action: str = "penalty", invalid_action_penalty: float = 1.0,
                 graph_observation: bool = False, render_mode: str | None = None, admission: str = "none",
                 admission_control: bool = False, timeline: str | Path | None = None,
                 timeline_window: tuple[float, float] | None = None, migration: str = "none",
                 migration_control: bool = False, migration_tick: float = 1.0, disagg: str = "colocated",
                 residual: str | None = None) -> None:
        self.experiment = load_experiment(self.default_config if config is None else config, overrides)
        self.controls = self._controls()
        as_integer(slots, "slots", low=1, high=100_000)
        require(invalid_action in ("raise", "penalty"), "invalid_action", f"must be 'raise' or 'penalty', got "
                f"{invalid_action!r}")
        require(render_mode is None or render_mode in self.metadata["render_modes"], "render_mode",
                f"must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        as_number(reward_scale, "reward_scale", low=0, low_open=True)
        gpu_cost_weight = self.default_gpu_cost_weight if gpu_cost_weight is None else gpu_cost_weight
        for name, value in (("idle_cost_weight", idle_cost_weight), ("slo_miss_weight", slo_miss_weight),
                            ("gpu_cost_weight", gpu_cost_weight), ("invalid_action_penalty", invalid_action_penalty)):
            as_number(value, name, low=0)
        if prewarm_tick is not None:
            as_number(prewarm_tick, "prewarm_tick", low=0, low_open=True)
        as_number(autoscale_tick, "autoscale_tick", low=0, low_open=True)
        as_number(migration_tick, "migration_tick", low=0, low_open=True)
        if max_steps is not None:
            as_integer(max_steps, "max_steps", low=1)
        if max_time is not None:
            as_number(max_time, "max_time", low=0, low_open=True)
        self.timeline, self.timeline_window = _timeline_path(timeline), timeline_window
        if timeline_window is not None:
            require(timeline is not None, "timeline_window", "applies to a timeline", "give timeline='PATH.json'")
            TimelineRecorder(timeline_window)  # validates it
        self.episode = -1  # the index of the episode in progress (reset counts them)
        self.policy_names = {"schedule": scheduler, "prewarm": prewarm, "route": router, "scale": autoscaler,
                             ADMIT_PART: admission, "retain": retention, MIGRATE_PART: migration,
                             SPLIT_PART: disagg}
        # validate the heuristics' names now
        make_scheduler(scheduler), make_prewarm(prewarm), make_autoscaler(autoscaler), make_admission(admission)
        make_retention(retention), make_migration(migration), make_disagg(disagg)
        if self._opt_in("admission", admission_control, admission, self.admission_allowed, "Scheduling-v0"):
            require(slo_miss_weight > 0, "slo_miss_weight", "is 0: a rejected application leaves the system at "
                    "once, so the time-in-system reward alone pays the agent to reject", "price a rejection "
                    "(an SLO miss) with slo_miss_weight > 0")
            self.controls = (*self.controls, ADMIT_PART)
        if self._opt_in("migration", migration_control, migration, self.migration_allowed, "Routing-v0"):
            self.controls = (*self.controls, MIGRATE_PART)
        self.migration_tick = migration_tick
        if router != "shared":
            make_router(router)
        if residual is not None:
            require(isinstance(residual, str), "residual", f"must be an autoscaler name, got {residual!r}")
            require("scale" in self.controls, "residual", f"is for the agent's scale orders, which "
                    f"{type(self).__name__} does not take", "use Autoscaling-v0 or Joint-v0, or leave residual unset")
            ResidualAutoscaler(make_autoscaler(residual), ExternalAutoscaler(autoscale_tick))  # validates it
        self.residual = residual
        self.slots, self.prewarm_tick, self.autoscale_tick = slots, prewarm_tick, autoscale_tick
        self.max_steps, self.max_time = max_steps, max_time
        self.reward_scale, self.idle_cost_weight, self.slo_miss_weight = reward_scale, idle_cost_weight, slo_miss_weight
        self.gpu_cost_weight = gpu_cost_weight
        self.invalid_action, self.invalid_action_penalty = invalid_action, invalid_action_penalty
        self.graph_observation, self.render_mode = graph_observation, render_mode
        cluster = self.experiment.cluster
        self.backend_names = [b.name for b in (*cluster.llm_backends, *cluster.tool_backends)]
        self.tool_names = [b.name for b in cluster.tool_backends]
        self.llm_names = [b.name for b in cluster.llm_backends]
        self.replica_rows = max((b.max_replicas for b in cluster.llm_backends), default=1)
        if "prewarm" in self.controls:
            require(len(self.tool_names) > 0, "config.cluster.tool_backends", "is empty: nothing to prewarm")
        if "retain" in self.controls:
            require(any(b.enable_prefix_caching for b in cluster.llm_backends), "config.cluster.llm_backends",
                    "has no prefix cache: no KV context to retain", "use an engine with enable_prefix_caching")
        if "route" in self.controls or "scale" in self.controls:
            require(len(self.llm_names) > 0, "config.cluster.llm_backends", "is empty: no LLM replicas to control")
        graphs = [m.graph for m in self.experiment.workload.applications]
        self.max_stages = max(len(g.stages) for g in graphs)
        self.features = FeatureBuilder(self.backend_names, slots, self.replica_rows)
        self._graph_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # a backend of several replica kinds has one "load one of this kind" order per kind after the three
        self.replica_kinds = {b.name: [k.name for k in b.kinds] for b in cluster.llm_backends}
        self._part_sizes = {"schedule": [slots], "prewarm": [3] * len(self.tool_names), "route": [self.replica_rows],
                            "scale": [3 + len(k) * (len(k) > 1) for k in self.replica_kinds.values()],
                            ADMIT_PART: [3], "retain": [len(RETAIN_ACTIONS), PRIORITIES],
                            MIGRATE_PART: [1 + self.replica_rows ** 2], SPLIT_PART: [2]}
        self.heterogeneous = any(len(k) > 1 for k in self.replica_kinds.values())
        self.observation_space = self._observation_space()
        self.action_space = self._action_space()
        self.sim: Simulation | None = None

    default_gpu_cost_weight = 0.0

    def _opt_in(self, kind: str, control: Any, heuristic: str, allowed: bool, env_id: str) -> bool:
        """Whether the agent takes ``kind``'s decisions (``KIND_control=True``): only on the ids that allow it,
        and only with the heuristic ``kind`` left at ``none``."""
        flag = f"{kind}_control"
        require(isinstance(control, bool), flag, f"must be True or False, got {control!r}")
        if control:
            require(allowed, flag, f"is not available on {type(self).__name__}", f"use {env_id} or Joint-v0")
            require(heuristic == "none", kind, f"is {heuristic!r}, but {flag} gives the agent the {kind} "
                    f"decisions", f"leave {kind} at 'none', or {flag} False")
        return control

    def _controls(self) -> tuple[str, ...]:
        """The parts this environment controls (a class's own; Joint-v0 adds retention where KV memory is
        modelled; Routing-v0 and Joint-v0 add the split choice where a backend is disaggregated)."""
        return type(self).controls

    def _disaggregated(self) -> bool:
        return any(b.disaggregation is not None for b in self.experiment.cluster.llm_backends)

    # -- spaces -----------------------------------------------------------------------------------
    def _observation_space(self) -> spaces.Dict:
        nb, k = len(self.backend_names), self.slots
        n_req = FeatureBuilder.request_features(nb)
        obs = {
            "requests": spaces.Box(-BOUND, BOUND, (k, n_req), np.float32),
            "request_mask": spaces.MultiBinary(k),
            "backends": spaces.Box(-BOUND, BOUND, (nb, len(BACKEND_FEATURES)), np.float32),
            "replicas": spaces.Box(-BOUND, BOUND, (self.replica_rows, len(REPLICA_FEATURES)), np.float32),
            "global": spaces.Box(-BOUND, BOUND, (len(GLOBAL_FEATURES),), np.float32),
        }
        if self.heterogeneous:
            n_kinds = max(len(k) for k in self.replica_kinds.values())
            obs["kinds"] = spaces.Box(-BOUND, BOUND, (len(self.llm_names), n_kinds, len(KIND_FEATURES)), np.float32)
            obs["replica_kinds"] = spaces.Box(-BOUND, BOUND, (self.replica_rows, len(REPLICA_KIND_FEATURES)),
                                              np.float32)
        if ADMIT_PART in self.controls:
            obs["admission"] = spaces.Box(-BOUND, BOUND, (len(ADMISSION_FEATURES),), np.float32)
        if self.graph_observation:
            m = self.max_stages
            obs["graph_nodes"] = spaces.Box(-BOUND, BOUND, (k, m, len(NODE_FEATURES)), np.float32)
            obs["graph_edges"] = spaces.Box(0.0, 1.0, (k, m, m + 1), np.float32)
            obs["graph_node_mask"] = spaces.MultiBinary((k, m))
        if "retain" in self.controls:
            obs["kv"] = spaces.Box(-BOUND, BOUND, (len(KV_FEATURES),), np.float32)
        if SPLIT_PART in self.controls:
            obs["disagg"] = spaces.Box(-BOUND, BOUND, (self.replica_rows, len(DISAGG_FEATURES)), np.float32)
        return spaces.Dict(obs)

    def _action_space(self) -> spaces.Space:
        sizes = [n for part in self.controls for n in self._part_sizes[part]]
        if self.controls in (("schedule",), ("route",)):
            return spaces.Discrete(sizes[0])
        return spaces.MultiDiscrete(sizes)

    # -- episode ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """``options={"simulation_seed": s}`` runs the workload of ``Simulation(..., seed=s)`` (the same
        arrivals and demands a headless run of that seed has), instead of one drawn from ``seed``."""
        super().reset(seed=seed)
        sim_seed = int(self.np_random.integers(2**31 - 1))
        if options and "simulation_seed" in options:
            sim_seed = as_integer(options["simulation_seed"], "options.simulation_seed", low=0)
        names = self.policy_names
        c = self.controls
        self.episode += 1
        self.sim = Simulation(
            self.experiment, seed=sim_seed,
            timeline=None if self.timeline is None else TimelineRecorder(self.timeline_window),
            scheduler=ExternalScheduler() if "schedule" in c else make_scheduler(names["schedule"]),
            prewarm=ExternalPrewarm(self.prewarm_tick) if "prewarm" in c else make_prewarm(names["prewarm"]),
            router=ExternalRouter() if "route" in c else names["route"],
            autoscaler=self._scale_policy() if "scale" in c else make_autoscaler(names["scale"]),
            admission=ExternalAdmission() if ADMIT_PART in c else names[ADMIT_PART],
            retention=ExternalRetention() if "retain" in c else names["retain"],
            migration=ExternalMigration(self.migration_tick) if MIGRATE_PART in c else names[MIGRATE_PART],
            disagg=ExternalDisagg() if SPLIT_PART in c else names[SPLIT_PART])
        self.features.bind(self.sim)
        self.steps = 0
        self._last = (0.0, 0.0, 0, 0.0)  # Simulation.totals at the last step
        self._episode_over = False
        # When no decision is ever needed (a light load), reset simulates the whole episode: the first
        # step then only reports its end, with the reward of everything simulated so far.
        self.decision = self.sim.run_until_decision()
        self._refresh()
        return self._observation(), self._info(0.0, invalid=False)

    def _scale_policy(self) -> Any:
        """The agent's side of autoscaling: its orders alone, or added to the native heuristic ``residual``."""
        agent = ExternalAutoscaler(self.autoscale_tick)
        return agent if self.residual is None else ResidualAutoscaler(make_autoscaler(self.residual), agent)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        self._require_episode("step")
        require(not self._episode_over, "step", "called after the episode ended (terminated or truncated)",
                "call reset() to start a new episode")
        start = self.sim.engine.now
        penalty = self._apply(action) if self.decision is not None else 0.0
        self.steps += 1
        self.decision = self.sim.run_until_decision()
        truncated = (self.max_steps is not None and self.steps >= self.max_steps) or (
            self.max_time is not None and self.sim.engine.now >= self.max_time)
        terminated = self.decision is None
        self._episode_over = terminated or truncated
        self._refresh()
        reward = self._reward() - penalty
        info = self._info(self.sim.engine.now - start, invalid=penalty > 0)
        if self._episode_over and self.timeline is not None:
            info["timeline"] = self.timeline_file(self.episode)
            self.sim.timeline.write(info["timeline"])
        return self._observation(), reward, terminated, bool(truncated and not terminated), info

    def timeline_file(self, episode: int) -> Path:
        """Where episode ``episode``'s timeline goes: ``timeline`` with the index before its suffix."""
        return self.timeline.with_name(f"{self.timeline.stem}-{episode}{self.timeline.suffix}")

    def _require_episode(self, what: str) -> None:
        require(self.sim is not None, what, "called before reset()", "call reset() first")

    # -- planning: snapshots of the episode ---------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The episode's state (the simulation's and the environment's own: the pending decision, the step
        count, the reward's last totals), for :meth:`restore`; cheap enough to take at every decision (see
        :meth:`Simulation.snapshot`). Wrappers' own state (``TimeLimit``'s count) is not in it: call it on
        ``env.unwrapped``."""
        self._require_episode("snapshot")
        self.sim.compact()
        snap = object.__new__(type(self))
        copy_state([(self.sim, Simulation.__new__(Simulation)), (self, snap)], self.sim, self._static())
        return Snapshot(snap)

    def restore(self, snap: Snapshot) -> None:
        """Bring the episode back to ``snap``: stepping on with the same actions gives, bit for bit, what
        stepping on from the snapshot's moment gave (observations, rewards, the end)."""
        require(isinstance(snap, Snapshot) and isinstance(snap.copy, HermesEnv), "restore",
                f"takes an environment's Snapshot, got {snap!r}", "pass what env.unwrapped.snapshot() returned")
        source = snap.copy
        target = self.sim if self.sim is not None else Simulation.__new__(Simulation)
        copy_state([(source.sim, target), (source, self)], source.sim, self._static())

    def _static(self) -> tuple[Any, ...]:
        """What snapshots share rather than copy: the spaces and the graph cache (no step changes them)."""
        return (self.observation_space, self.action_space, self._graph_cache, self.metadata)

    # -- pickling: caches that can be rebuilt stay out -----------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_graph_cache"] = {}
        return state

    def _reward(self) -> float:
        """Minus the applications in the system integrated over the step (so the undiscounted return is
        minus the sum of completion times, failed applications counted until they failed), minus the
        priced terms: idle warm tool cost, SLO misses (a failure is one) and GPU-seconds held."""
        area, idle, missed, gpu = self.sim.totals()
        last_area, last_idle, last_missed, last_gpu = self._last
        cost = (area - last_area + self.idle_cost_weight * (idle - last_idle)
                + self.slo_miss_weight * (missed - last_missed) + self.gpu_cost_weight * (gpu - last_gpu))
        self._last = (area, idle, missed, gpu)
        return float(-cost * self.reward_scale)  # scaled as a whole, so the priced terms keep their weights

    def _info(self, dt: float, invalid: bool) -> dict:
        """Every key has one type and shape at every decision and in every id (sentinels: "" and -1), so
        that a vector environment can stack the infos of copies at different kinds of decision."""
        sim = self.sim
        d = self.decision
        replica = -1 if d is None or d.queue is None or d.queue.replica is None else d.queue.replica
        return {"dt": dt, "sim_time": sim.engine.now, "action_mask": self.action_masks(), "invalid_action": invalid,
                "decision": "" if d is None else d.kind, "backend": "" if d is None else d.backend,
                "replica": int(replica),
                "completed": len(sim.recorder.completion_times), "failed": sim.recorder.failed,
                "in_system": sim.in_system,
                "admission_tier": TIERS.index(d.app.tier) if d is not None and d.kind == ADMIT_PART else -1,
                "rejected": sum(t["rejected"] for t in sim.recorder.tiers.values()), "deferred": len(sim.deferred),
                "gpu_seconds": sum(b.gpu_seconds_until(sim.engine.now) for b in sim.llm_backends.values())}

    # -- observation ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Candidates of the pending decision: the oldest waiting requests of a scheduling decision (in
        arrival order), the request a routing decision places."""
        d = self.decision
        if d is None:
            self.candidates = []
        elif d.kind == "schedule":
            self.candidates = d.queue.waiting[: self.slots]
        elif d.kind == "route":
            self.candidates = [d.request]
        elif d.kind == "retain":
            self.candidates = [d.context.request]  # the call that just ended: its application's features
        else:
            self.candidates = []

    def _observation(self) -> dict:
        d = self.decision
        if d is None:
            obs = self.features.observation([], "", self.sim.engine.now)
        else:
            kind = d.kind if d.kind in DECISION_KINDS else None  # a retention decision has no flag of its own
            obs = self.features.observation(self.candidates, d.backend, self.sim.engine.now, kind,
                                            request=d.request if d.kind == "route" else None,
                                            replica_candidates=d.candidates,
                                            deciding_replica=d.queue.replica if d.queue is not None else None)
        if self.heterogeneous:
            obs["kinds"] = self.features.kinds(self.observation_space["kinds"].shape[1])
            obs["replica_kinds"] = self.features.replica_kinds(
                self.sim.llm_backends.get(d.backend) if d is not None else None)
        if ADMIT_PART in self.controls:
            obs["admission"] = self.features.admission(d.app if d is not None else None, self.sim.engine.now)
        if self.graph_observation:
            obs.update(self._graphs())
        if "retain" in self.controls:
            obs["kv"] = self._kv_features()
        if SPLIT_PART in self.controls:
            obs["disagg"] = self.features.disagg(self.sim.llm_backends.get(d.backend) if d is not None else None)
        return obs

    def _kv_features(self) -> np.ndarray:
        """The pending retention decision's context and memory (zeros at other decisions)."""
        d = self.decision
        out = np.zeros(len(KV_FEATURES), np.float32)
        if d is None or d.kind != "retain":
            return out
        ctx, replica = d.context, d.candidates[0]
        mem, cap = replica.kvmem, replica.capacity
        out_s, back_s = self.sim.retention.round_trip(replica, ctx)
        trip = out_s + back_s
        nu = ctx.memo
        p = 0.0 if nu is None or nu.time is None else nu.probability
        mean = 0.0 if nu is None or nu.time is None else nu.time.mean
        within = 0.0 if nu is None or nu.time is None or not math.isfinite(trip) else nu.within(trip)
        host = mem.host.used * replica.block / cap if mem.host is not None else 0.0
        trip_feature = math.log1p(trip) if math.isfinite(trip) else BOUND / 10  # no host tier: no round trip
        out[:] = (math.log1p(ctx.tokens), ctx.tokens / cap, replica.kv_used / cap,
                  mem.pinned_blocks * replica.block / cap, host, trip_feature, p, math.log1p(mean), within,
                  math.log1p(len(mem.contexts)), math.log1p(len(replica.queue)))
        return out

    def _graph_static(self, template: str) -> tuple[np.ndarray, np.ndarray]:
        """The parts of a template's graph observation that do not depend on progress (kept per template):
        node features with the two progress columns at 0, and the transition matrix."""
        if template not in self._graph_cache:
            m = self.max_stages
            model = self.sim.demand_model(template)
            graph = model.graph
            index = {s.name: i for i, s in enumerate(graph.stages)}
            nodes = np.zeros((m, len(NODE_FEATURES)), np.float32)
            edges = np.zeros((m, m + 1), np.float32)  # [i, j] = P(stage i -> stage j); column m: -> end
            for i, stage in enumerate(graph.stages):
                states = np.flatnonzero(model.space.stage_of == i)
                mean = np.mean([model.lattice.mean(model.copy_pmf[s]) for s in states])
                width = 1.0 if stage.fanout is None else stage.fanout.mean
                kind = backend_kind(stage.backend)
                nodes[i] = [*(float(kind == b) for b in BACKEND_KINDS), 0.0, 0.0, math.log1p(mean), width]
                for t in stage.next:
                    edges[i, m if t.to == END else index[t.to]] += t.p
                if not stage.next:
                    edges[i, m] = 1.0
            self._graph_cache[template] = (nodes, edges)
        return self._graph_cache[template]

    def _graphs(self) -> dict:
        k, m = self.slots, self.max_stages
        nodes = np.zeros((k, m, len(NODE_FEATURES)), np.float32)
        edges = np.zeros((k, m, m + 1), np.float32)
        node_mask = np.zeros((k, m), np.int8)
        current, visited = NODE_FEATURES.index("current"), NODE_FEATURES.index("visit_probability")
        for slot, r in enumerate(self.candidates):
            app = r.app
            space = self.sim.demand_model(app.template).space
            nodes[slot], edges[slot] = self._graph_static(app.template)
            n = len(app.mix.graph.stages)
            node_mask[slot, :n] = 1
            nodes[slot, space.stage_of[app.current.state], current] = 1.0
            visit = visit_probabilities(space, app.current.state)
            nodes[slot, :n, visited] = np.bincount(space.stage_of, weights=visit, minlength=n)
        return {"graph_nodes": nodes, "graph_edges": edges, "graph_node_mask": node_mask}

    # -- actions ----------------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """The valid actions, part after part (sb3-contrib's MultiDiscrete convention: the valid values of
        each dimension, concatenated)."""
        self._require_episode("action_masks")
        return np.concatenate([self._part_mask(part) for part in self.controls])

    def _part_mask(self, part: str) -> np.ndarray:
        d = self.decision
        if part == SPLIT_PART:  # 1 only at a routing decision of a disaggregated backend, for a request that decodes
            handoff = self.sim.llm_backends[d.backend].handoff if d is not None and d.kind == "route" else None
            return np.array([True, handoff is not None and handoff.may_split(d.request, d.candidates)])
        if part == "retain":
            actions = np.zeros(len(RETAIN_ACTIONS), dtype=bool)
            if d is not None and d.kind == "retain":
                host = d.candidates[0].kvmem.host is not None
                actions[:] = [True, True, host, host, True]  # offloading needs a host tier
                return np.concatenate([actions, np.ones(PRIORITIES, dtype=bool)])
            actions[0] = True  # no retention decision now: 0 stands for "nothing" (ignored)
            return np.concatenate([actions, np.eye(PRIORITIES, dtype=bool)[0]])
        if part == ADMIT_PART and d is not None and d.kind == part:
            now = self.sim.engine.now
            return np.array([True, self.sim.may_defer(d.app, now), self.sim.may_reject(d.app)])
        if part == MIGRATE_PART and d is not None and d.kind == part:
            mask = np.zeros(self._part_sizes[part][0], dtype=bool)
            mask[0] = True
            backend, rows = self.sim.llm_backends[d.backend], self.replica_rows
            for src in backend.replicas:
                for dst in backend.replicas:
                    mask[1 + src.index * rows + dst.index] = backend.migrator.pick(src, dst) is not None
            return mask
        if part in CHOICE_PARTS:
            mask = np.zeros(self._part_sizes[part][0], dtype=bool)
            if d is not None and d.kind == part:
                valid = range(len(self.candidates)) if part == "schedule" else [r.index for r in d.candidates]
                mask[list(valid)] = True
            else:
                mask[0] = True  # no choice of this kind now: 0 stands for "nothing" (ignored)
            return mask
        out = []
        if part == "prewarm":
            for name in self.tool_names:  # the backend's own rule, so that the mask and the order agree
                b = self.sim.tool_backends[name]
                out += [True, b.can_prewarm(), b.can_release()]
        else:
            for name in self.llm_names:
                b = self.sim.llm_backends[name]
                out += [True, b.can_scale_up(), b.can_scale_down()]
                kinds = self.replica_kinds[name]
                out += [b.can_scale_up(k) for k in kinds] if len(kinds) > 1 else []
        return np.array(out, dtype=bool)

    def _invalid(self, message: str) -> float:
        """An action outside the mask: raise, or count the penalty (the caller applies the fallback)."""
        if self.invalid_action == "raise":
            raise ValueError(f"{message}; use action_masks() (or invalid_action='penalty')")
        return self.invalid_action_penalty

    def _parts(self, action: Any) -> dict[str, np.ndarray]:
        """The action split into its parts, type-checked (an element of the action space, or TypeError)."""
        if isinstance(self.action_space, spaces.Discrete):
            return {self.controls[0]: np.array([as_action_integer(action)])}
        flat = as_action_vector(action, len(self.action_space.nvec))
        out, i = {}, 0
        for part in self.controls:
            n = len(self._part_sizes[part])
            out[part] = flat[i:i + n]
            i += n
        return out

    def _apply(self, action: Any) -> float:
        """Check every part against the mask, then apply the orders and the decision's own choice (a step
        is atomic: with invalid_action='raise' nothing happens before the error)."""
        parts = self._parts(action)
        d = self.decision
        penalty, orders = 0.0, []
        for part, values in parts.items():
            mask = self._part_mask(part)
            if part == "retain":
                action, priority = int(values[0]), int(values[1])
                acts, prios = mask[:len(RETAIN_ACTIONS)], mask[len(RETAIN_ACTIONS):]
                valid = 0 <= action < len(acts) and acts[action] and 0 <= priority < PRIORITIES and prios[priority]
                if not valid:
                    penalty += self._invalid(f"retention action ({action}, {priority}) is masked out (valid actions: "
                                             f"{np.flatnonzero(acts).tolist()}, priorities "
                                             f"{np.flatnonzero(prios).tolist()})")
                    action, priority = 1 if acts[1] else 0, int(np.flatnonzero(prios)[0])  # fallback: pin
                if d.kind == "retain":
                    orders.append((part, (action, priority)))
                continue
            if part == SPLIT_PART:
                split = int(values[0])
                if not (0 <= split < 2 and mask[split]):
                    penalty += self._invalid(f"split {split} is masked out (valid: {np.flatnonzero(mask).tolist()})")
                    split = 0  # the fallback: colocated
                orders.append((part, split))
                continue
            if part in CHOICE_PARTS:
                choice = int(values[0])
                if not (0 <= choice < len(mask) and mask[choice]):
                    penalty += self._invalid(f"action {choice} is masked out for {part} (valid: "
                                             f"{np.flatnonzero(mask).tolist()})")
                    # the fallback: the oldest request, the lowest replica, admission
                    choice = int(np.flatnonzero(mask)[0])
                if d.kind == part:
                    orders.append((part, choice))
                continue
            names = self.tool_names if part == "prewarm" else self.llm_names
            allowed_each = np.split(mask, np.cumsum(self._part_sizes[part])[:-1])
            for name, order, allowed in zip(names, values, allowed_each, strict=True):
                if 0 <= order < len(allowed) and allowed[order]:
                    if order != NOOP:
                        orders.append((part, (name, int(order))))
                else:
                    kinds = f", 3+k load one of replica kind k {self.replica_kinds[name]}" if len(allowed) > 3 else ""
                    penalty += self._invalid(f"order {order} for {name} is masked out (0 nothing, 1 "
                                             f"{'warm' if part == 'prewarm' else 'load'} one: needs a cold one, 2 "
                                             f"release one: needs one that can go{kinds})")
        split = dict(orders).get(SPLIT_PART, 0) if d.kind == "route" else 0
        orders = [o for o in orders if o[0] != SPLIT_PART]
        if split:  # a split request starts in the prefill pool
            replica = dict(orders)["route"]
            if d.candidates[[r.index for r in d.candidates].index(replica)].role != "prefill":
                penalty += self._invalid(f"split 1 with replica {replica}, not a prefill replica (prefill: "
                                         f"{[r.index for r in d.candidates if r.role == 'prefill']})")
                split = 0  # the fallback: colocated on the replica chosen
        now = self.sim.engine.now
        choice = None
        for part, order in orders:
            if part == "prewarm":
                (self.sim.prewarm if order[1] == WARM_UP else self.sim.release)(order[0], now)
            elif part == "scale" and order[1] == RELEASE:
                self.sim.scale_down(order[0], now)
            elif part == "scale":
                kind = None if order[1] == WARM_UP else self.replica_kinds[order[0]][order[1] - 3]
                self.sim.scale_up(order[0], now, kind)
            else:
                choice = order
        if d.kind == "schedule":
            self.sim.resolve(d.queue.waiting.index(self.candidates[choice]))
        elif d.kind == "retain":
            self.sim.resolve(choice)
        elif d.kind == "route":
            if split:
                self.sim.llm_backends[d.backend].handoff.mark_split(d.request)
            self.sim.resolve(next(i for i, r in enumerate(d.candidates) if r.index == choice))
        elif d.kind == ADMIT_PART:
            self.sim.resolve(choice)
        elif d.kind == MIGRATE_PART:
            self.sim.resolve(divmod(choice - 1, self.replica_rows) if choice else None)
        else:
            self.sim.resolve()
        return penalty

    # -- rendering --------------------------------------------------------------------------------
    def render(self) -> str | np.ndarray | None:
        self._require_episode("render")
        if self.render_mode == "ansi":
            return render_ansi(self.sim, self.decision)
        if self.render_mode == "rgb_array":
            return render_rgb(self.sim)
        return None


_OBSERVATION_DOC = """
    **Observation** (``spaces.Dict``; ``K = slots``, ``B`` backends, ``R`` the most replicas of any LLM
    backend; every column is documented in docs/environments.md):

    - ``requests`` ``(K, F)``: the candidates of the decision: the oldest ``K`` requests waiting at the
      deciding queue, in arrival order (a scheduling decision), or the request being placed (a routing
      decision). Per request: its application's Gittins index and remaining-demand mean, std, median and
      90th percentile (log seconds, from its PDGraph at its current stage), attained service, waiting
      time, time in system, real-time flag, SLO slack, backend kind, prompt tokens, unfinished copies,
      structural entropy; then for every backend the probability and expected time of next use. No
      realised output length or service time is ever observed.
    - ``request_mask`` ``(K,)``: 1 where a slot holds a request.
    - ``backends`` ``(B, 14)``: deciding flag, kind, queue length, load, warm/warming/cold fractions
      (tool instances or LLM replicas), time until warm, KV cache in use, and the PDGraph forecast of a
      request within its warm-up time and within a minute.
    - ``replicas`` ``(R, 13)``: the replicas of the LLM backend the decision concerns (zeros otherwise):
      candidate and deciding flags, state, time until warm, queue, batch, KV in use, the fraction of the
      request's prompt its prefix cache holds, whether the request's adapter is resident.
    - ``global`` ``(8,)``: applications in the system, time, completed and failed fractions, the kind
      of decision (schedule, prewarm, route, scale).
    - on a cluster with a backend of several replica kinds (GPU types) only: ``kinds`` ``(L, K, 6)``: per LLM
      backend and kind, its decode and prefill speed against the backend's first kind, log1p of its price per
      replica-hour, its KV capacity against the first kind's, the fractions of its replicas serving and cold;
      ``replica_kinds`` ``(R, 3)``: the speeds and price of each replica of the decision's LLM backend.
    - with ``admission_control=True``: ``admission`` ``(14,)``: the application an admission decision
      concerns (deciding flag, tier, real-time flag, SLO, time since arrival, PDGraph remaining-demand mean
      and 90th percentile, may defer, may reject, time it may still be deferred; zeros at other decisions),
      and the applications deferred now and requests waiting at every backend.
    - with ``graph_observation=True``: ``graph_nodes`` ``(K, S, 8)``, ``graph_edges`` ``(K, S, S+1)``
      and ``graph_node_mask`` ``(K, S)``: each candidate's PDGraph, ``S`` the most stages of any template.
"""

_REWARD_DOC = """
    **Reward**: minus the applications in the system integrated over the simulated time since the last
    step (``info["dt"]``): the undiscounted return is minus the sum of completion times (a failed
    application counts until it fails). Priced terms subtract ``idle_cost_weight`` times the idle warm
    tool cost, ``slo_miss_weight`` per SLO miss (a failure is one) and ``gpu_cost_weight`` per GPU-second
    held by LLM replicas. The whole is multiplied by ``reward_scale`` (for the learner's value scale; the
    weights keep their meaning). A masked-out action is replaced by the
    documented fallback and costs ``invalid_action_penalty`` (``info["invalid_action"]``); with
    ``invalid_action="raise"`` it raises instead (for debugging), before any part of the step applies.
    An action that is not an element of the action space raises ``TypeError``.

    **Episode end**: ``terminated`` once every application of the workload has ended (completed or
    failed; the last step simulates to the end); ``truncated`` after ``max_steps`` steps or ``max_time``
    simulated seconds. An episode that needs no decision ends on its first step.

    **Timeline**: with ``timeline="runs/tl.json"`` the step that ends an episode (terminated or
    truncated) writes its Chrome/Perfetto trace-event JSON (docs/timeline.md) to ``runs/tl-<k>.json``,
    ``k`` the episode's index from 0 (the ``k``-th ``reset``), and puts the path in that step's
    ``info["timeline"]``. ``timeline_window=(start, end)`` keeps those simulated seconds only. In a
    truncated episode's timeline the requests still waiting or running have spans up to its end, marked
    ``open``; an episode left before its end (``reset`` again) writes nothing.
"""


class SchedulingEnv(HermesEnv):
    __doc__ = """``hermes_env/Scheduling-v0``: choose which waiting request a backend admits next.

    The simulation pauses at every decision point: a backend (an LLM replica at an iteration boundary, a
    tool instance with a free slot) can admit a request and two or more wait for it; with one, it is
    admitted without asking. Prewarm, routing and autoscaling follow the heuristics ``prewarm``
    (default ``none``), ``router`` (``shared``) and ``autoscaler`` (``fixed``).
""" + _OBSERVATION_DOC + """
    **Action**: ``Discrete(K)``, the slot to admit. ``action_masks()`` and ``info["action_mask"]`` give the
    valid slots; a masked-out slot admits the oldest waiting request instead.

    **Admission** (``admission_control=True``): the simulation also pauses when an application arrives and
    when a deferred one is reconsidered (whenever another application ends); the action becomes
    ``MultiDiscrete([K, 3])``: the slot, and 0 admit, 1 defer, 2 reject. At an admission decision only slot
    0 is unmasked; defer is unmasked while the application's tier allows it (``max_defer`` from arrival),
    reject where its tier allows it (``critical`` by default neither); elsewhere only 0. A masked-out order
    admits. A rejection is a failure: ``slo_miss_weight`` must price it (required > 0). Without
    ``admission_control``, ``admission`` names the heuristic that decides (default ``none``: admit all).
""" + _REWARD_DOC
    controls = ("schedule",)
    admission_allowed = True


class PrewarmEnv(HermesEnv):
    __doc__ = """``hermes_env/Prewarm-v0``: decide which tool backends to warm up or release.

    The simulation pauses when an application arrives, issues a stage or completes, and every
    ``prewarm_tick`` seconds if set. Scheduling follows the heuristic ``scheduler`` (default
    ``gittins``); routing and autoscaling ``router`` and ``autoscaler``.
""" + _OBSERVATION_DOC + """
    **Action**: ``MultiDiscrete([3] * T)`` over the ``T`` tool backends: 0 nothing, 1 start warming one
    cold instance, 2 release one idle instance that no waiting request needs. ``action_masks()``
    concatenates the three valid flags of each backend; a masked-out order is skipped. Set
    ``idle_cost_weight`` to make warm capacity cost something.
""" + _REWARD_DOC
    controls = ("prewarm",)


class RoutingEnv(HermesEnv):
    __doc__ = """``hermes_env/Routing-v0``: place every arriving LLM request on a replica of its backend.

    The simulation pauses whenever a request reaches an LLM backend with two or more replicas warm or
    loading; the request then waits in the chosen replica's queue, served in the order of the heuristic
    ``scheduler`` (default ``gittins``). Prewarm and autoscaling follow ``prewarm`` and ``autoscaler``.
    The default experiment is ``routing``: long-context and short requests on four replicas.
""" + _OBSERVATION_DOC + """
    **Action**: ``Discrete(R)``, the replica's index within its backend. The mask holds the replicas warm
    or loading (``replicas[:, candidate]``); a masked-out index places the request on the first of them.

    **Migration** (``migration_control=True``): every ``migration_tick`` seconds (default 1) the simulation
    also pauses once per LLM backend with two or more warm replicas, and the action becomes
    ``MultiDiscrete([R, 1 + R * R])``: the replica, and 0 no move or ``1 + s R + t``: move one running request
    from replica ``s`` to replica ``t`` by live migration (the request Llumnix would pick: the shortest
    context that can move; docs/simulator.md, "Request migration"). A pair is unmasked when ``s`` has such a
    request for ``t`` (``t`` warm with room for its context so far and a batch slot, ``s`` sending nothing
    else); a masked-out move is no move. Without ``migration_control``, ``migration`` names the heuristic
    that decides (default ``none``: requests stay where they were admitted; ``llumnix``, ``oracle``).
    Where an LLM backend is split into prefill and decode pools (``disaggregation``), ``MultiDiscrete([R, 2])``:
    the replica and the split choice (0 colocated: prefill and decode on that replica; 1 split: prefill there,
    which must be a prefill replica, then decode in the decode pool), the observation has ``disagg`` ``(R, 4)``
    (each replica's pool, log1p of the KV it holds for split requests, log1p of split requests waiting for its
    KV room), and split 1 is masked out for a request of one output token or without a prefill replica among the
    candidates; split 1 with a decode replica is invalid (penalty; the request runs colocated there).
""" + _REWARD_DOC
    controls = ("route",)
    default_config = "routing"
    migration_allowed = True

    def _controls(self) -> tuple[str, ...]:
        return (*type(self).controls, SPLIT_PART) if self._disaggregated() else type(self).controls


class AutoscalingEnv(HermesEnv):
    __doc__ = """``hermes_env/Autoscaling-v0``: load and release LLM replicas, paying for GPU time.

    Every ``autoscale_tick`` seconds (default 5) the simulation pauses for one order per LLM backend.
    Loading takes the replica's weights over its load tier's bandwidth plus the engine start; a request
    that finds no replica warm or loading starts a load itself (on its critical path). Scheduling,
    prewarm and routing follow the heuristics. The default experiment is ``autoscaling``: a bursty,
    time-varying load on a backend of up to four replicas; ``gpu_cost_weight`` defaults to 1 here (an
    application-second in the system costs as much as a GPU-second held).
""" + _OBSERVATION_DOC + """
    **Action**: ``MultiDiscrete([3] * L)`` over the ``L`` LLM backends: 0 nothing, 1 load a replica (a
    cold one, or take back a draining one), 2 release one (the least loaded warm replica drains and goes
    cold when its work is done). A backend of ``K > 1`` replica kinds (GPU types) has ``3 + K`` orders: 3 + k
    loads a replica of kind k (its config's ``replica_kinds`` order); 1 loads the first cold one. A
    masked-out order is skipped.

    **Residual control** (``residual="queue_threshold"``, any registered autoscaler; default None): the named
    native heuristic keeps running inside the simulation at its own cadence (its tick, and every decision
    point if it reacts) and the agent's orders add to it every ``autoscale_tick`` seconds. At an instant
    where both are due the agent acts after the native tick, so its observation and mask show the native
    heuristic's orders; the native heuristic may reverse an order at its next tick. The mask is the
    backend's own rule, as without residual control (a release needs a warm replica and keeps one while
    the shared queue has work). Ordering nothing gives the native heuristic's run, bit for bit.
""" + _REWARD_DOC
    controls = ("scale",)
    default_config = "autoscaling"
    default_gpu_cost_weight = 1.0


class JointEnv(HermesEnv):
    __doc__ = """``hermes_env/Joint-v0``: every decision kind together, as one ``MultiDiscrete`` action.

    The simulation pauses at scheduling decisions, prewarm decisions (arrivals, stage issues,
    completions, the prewarm tick), routing decisions and autoscaling ticks.
""" + _OBSERVATION_DOC + """
    **Action**: ``MultiDiscrete([K] + [3] * T + [R] + [3] * L)``: the slot to admit, one order per tool
    backend, the replica to place on, one order per LLM backend. The orders apply at every decision;
    the slot only at a scheduling decision and the replica only at a routing decision (elsewhere only 0
    is unmasked for them, and ignored). Where an LLM backend has a host KV tier (``host_kv_tier``: KV
    memory is modelled), KVCache-v0's ``[5, 3]`` retention part follows, applied only at a retention
    decision, and the observation has its ``kv`` key. With ``admission_control=True`` a last ``[3]`` is the
    admission order, as in Scheduling-v0 (admission decisions pause the simulation too). Where an LLM backend is
    disaggregated, Routing-v0's ``[2]`` split part follows the retention part (applied only at a routing decision)
    and the observation has its ``disagg`` key; then the admission part, and with ``migration_control=True`` a
    last ``[1 + R * R]``, the migration choice, as in Routing-v0.
""" + _REWARD_DOC
    controls = PARTS
    admission_allowed = True
    migration_allowed = True

    def _controls(self) -> tuple[str, ...]:
        kv = any(b.host_kv_tier is not None for b in self.experiment.cluster.llm_backends)
        return (*PARTS, *(("retain",) if kv else ()), *((SPLIT_PART,) if self._disaggregated() else ()))


class KVCacheEnv(HermesEnv):
    __doc__ = """``hermes_env/KVCache-v0``: decide what happens to an application's KV context while it waits.

    The simulation pauses at every *tool boundary*: an LLM call that continues its application's
    conversation has finished and the application goes on; its context (every block after the template's
    shared system prompt) is on its replica's GPU, free in the LRU prefix cache until the agent answers
    (an agent that always releases is vLLM's ``lru``). Everything else follows heuristics
    (``scheduler`` default ``fcfs``, ``router`` default ``session_sticky``, ``prewarm``, ``autoscaler``).
    The default experiment is ``agent-kv``: SWE-agent sessions on two Qwen2.5-32B H200 replicas whose KV
    cache cannot hold every session's context, each with a host-memory tier (docs/simulator.md, "Agentic KV
    memory").
""" + _OBSERVATION_DOC + """
    - ``kv`` ``(11,)``: the pending context's tokens (log) and share of the replica's KV cache, the cache in
      use and pinned, the host tier in use (fractions of the GPU cache), the copy round trip (log s), the
      PDGraph forecast of the application's next call to the backend (probability, mean log s, probability
      within the round trip), the contexts held on the replica and its queue (log). The candidate request
      (slot 0 of ``requests``) is the call that just ended.

    **Action**: ``MultiDiscrete([5, 3])``: what to do with the context (0 release it to the LRU prefix cache,
    vLLM's behaviour; 1 keep it pinned on the GPU until the next call, unless memory pressure frees it;
    2 offload it to host memory and prefetch it when the PDGraph forecast says the next call is near;
    3 offload it and load it when the next call comes; 4 discard it), and its eviction priority under
    memory pressure (0 to 2: higher goes first; pressure offloads, with a forecast-timed prefetch). Offloads
    are masked out without a host tier; a masked-out action pins.
""" + _REWARD_DOC
    controls = ("retain",)
    default_config = "agent-kv"

    def __init__(self, config: str | Path | dict | ExperimentConfig | None = None, overrides: dict | None = None,
                 scheduler: str = "fcfs", router: str = "session_sticky", **kwargs: Any) -> None:
        super().__init__(config, overrides, scheduler=scheduler, router=router, **kwargs)
