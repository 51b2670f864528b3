"""The Gymnasium environments: scheduling, prewarming, or both, on the hermes_env simulator."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hermes_env.catalog import config_path
from hermes_env.envs.features import BACKEND_FEATURES, GLOBAL_FEATURES, FeatureBuilder
from hermes_env.envs.render import render_ansi, render_rgb
from hermes_env.errors import require
from hermes_env.pdgraph.entropy import visit_probabilities
from hermes_env.pdgraph.graph import BACKEND_KINDS, END, backend_kind
from hermes_env.sim.policies import ExternalPrewarm, ExternalScheduler, make_prewarm, make_scheduler
from hermes_env.sim.simulator import ExperimentConfig, Simulation, inline_parts
from hermes_env.validation import as_integer, as_number, load_yaml

NOOP, WARM_UP, RELEASE = 0, 1, 2
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
    """The shared machinery of the three environments (see their docstrings for spaces and rewards)."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    schedules = True
    prewarms = False

    def __init__(self, config: str | Path | dict | ExperimentConfig = "contended", overrides: dict | None = None,
                 scheduler: str = "gittins", prewarm: str = "none", slots: int = 64, prewarm_tick: float | None = None,
                 max_steps: int | None = None, max_time: float | None = None, reward_scale: float = 1.0,
                 idle_cost_weight: float = 0.0, slo_miss_weight: float = 0.0, invalid_action: str = "penalty",
                 invalid_action_penalty: float = 1.0, graph_observation: bool = False,
                 render_mode: str | None = None) -> None:
        self.experiment = load_experiment(config, overrides)
        as_integer(slots, "slots", low=1, high=100_000)
        require(invalid_action in ("raise", "penalty"), "invalid_action", f"must be 'raise' or 'penalty', got "
                f"{invalid_action!r}")
        require(render_mode is None or render_mode in self.metadata["render_modes"], "render_mode",
                f"must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        as_number(reward_scale, "reward_scale", low=0, low_open=True)
        for name, value in (("idle_cost_weight", idle_cost_weight), ("slo_miss_weight", slo_miss_weight),
                            ("invalid_action_penalty", invalid_action_penalty)):
            as_number(value, name, low=0)
        if prewarm_tick is not None:
            as_number(prewarm_tick, "prewarm_tick", low=0, low_open=True)
        if max_steps is not None:
            as_integer(max_steps, "max_steps", low=1)
        if max_time is not None:
            as_number(max_time, "max_time", low=0, low_open=True)
        self.scheduler_name, self.prewarm_name = scheduler, prewarm
        make_scheduler(scheduler), make_prewarm(prewarm)  # validate the names now
        self.slots, self.prewarm_tick = slots, prewarm_tick
        self.max_steps, self.max_time = max_steps, max_time
        self.reward_scale, self.idle_cost_weight, self.slo_miss_weight = reward_scale, idle_cost_weight, slo_miss_weight
        self.invalid_action, self.invalid_action_penalty = invalid_action, invalid_action_penalty
        self.graph_observation, self.render_mode = graph_observation, render_mode
        cluster = self.experiment.cluster
        self.backend_names = [b.name for b in (*cluster.llm_backends, *cluster.tool_backends)]
        self.tool_names = [b.name for b in cluster.tool_backends]
        graphs = [m.graph for m in self.experiment.workload.applications]
        self.max_stages = max(len(g.stages) for g in graphs)
        self.features = FeatureBuilder(self.backend_names, slots)
        self._graph_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.observation_space = self._observation_space()
        self.action_space = self._action_space()
        self.sim: Simulation | None = None

    # -- spaces -----------------------------------------------------------------------------------
    def _observation_space(self) -> spaces.Dict:
        nb, k = len(self.backend_names), self.slots
        n_req = FeatureBuilder.request_features(nb)
        obs = {
            "requests": spaces.Box(-BOUND, BOUND, (k, n_req), np.float32),
            "request_mask": spaces.MultiBinary(k),
            "backends": spaces.Box(-BOUND, BOUND, (nb, len(BACKEND_FEATURES)), np.float32),
            "global": spaces.Box(-BOUND, BOUND, (len(GLOBAL_FEATURES),), np.float32),
        }
        if self.graph_observation:
            m = self.max_stages
            obs["graph_nodes"] = spaces.Box(-BOUND, BOUND, (k, m, len(NODE_FEATURES)), np.float32)
            obs["graph_edges"] = spaces.Box(0.0, 1.0, (k, m, m + 1), np.float32)
            obs["graph_node_mask"] = spaces.MultiBinary((k, m))
        return spaces.Dict(obs)

    def _action_space(self) -> spaces.Space:
        raise NotImplementedError

    # -- episode ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        sim_seed = int(self.np_random.integers(2**31 - 1))
        scheduler = ExternalScheduler() if self.schedules else make_scheduler(self.scheduler_name)
        prewarm = ExternalPrewarm(self.prewarm_tick) if self.prewarms else make_prewarm(self.prewarm_name)
        self.sim = Simulation(self.experiment, scheduler=scheduler, prewarm=prewarm, seed=sim_seed)
        self.features.bind(self.sim)
        self.steps = 0
        self._last_area = self._last_idle = 0.0
        self._last_missed = 0
        self._episode_over = False
        # When no decision is ever needed (a light load), reset simulates the whole episode: the first
        # step then only reports its end, with the reward of everything simulated so far.
        self.decision = self.sim.run_until_decision()
        self._refresh()
        return self._observation(), self._info(0.0, invalid=False)

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
        return self._observation(), reward, terminated, bool(truncated and not terminated), self._info(
            self.sim.engine.now - start, invalid=penalty > 0)

    def _require_episode(self, what: str) -> None:
        require(self.sim is not None, what, "called before reset()", "call reset() first")

    # -- pickling: caches that can be rebuilt stay out -----------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_graph_cache"] = {}
        return state

    def _reward(self) -> float:
        """Minus the applications in the system integrated over the step (so the undiscounted return is
        minus the sum of completion times), plus optional idle-cost and SLO-miss terms."""
        sim = self.sim
        area = sim.system_area()
        idle = sum(b.idle_cost_until(sim.engine.now) for b in sim.tool_backends.values())
        missed = sim.slo_missed
        reward = -(area - self._last_area) * self.reward_scale
        reward -= self.idle_cost_weight * (idle - self._last_idle) + self.slo_miss_weight * (missed - self._last_missed)
        self._last_area, self._last_idle, self._last_missed = area, idle, missed
        return float(reward)

    def _info(self, dt: float, invalid: bool) -> dict:
        sim = self.sim
        return {"dt": dt, "sim_time": sim.engine.now, "action_mask": self.action_masks(), "invalid_action": invalid,
                "decision": None if self.decision is None else self.decision.kind,
                "backend": None if self.decision is None else self.decision.backend,
                "completed": len(sim.completed), "in_system": sim.in_system}

    # -- observation ------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Candidates of the pending scheduling decision (the oldest waiting requests, in arrival order)."""
        d = self.decision
        self.candidates = d.queue.waiting[: self.slots] if d is not None and d.kind == "schedule" else []

    def _observation(self) -> dict:
        deciding = self.decision.backend if self.decision is not None else ""
        prewarm_decision = self.decision is not None and self.decision.kind == "prewarm"
        obs = self.features.observation(self.candidates, deciding, self.sim.engine.now, prewarm_decision)
        if self.graph_observation:
            obs.update(self._graphs())
        return obs

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
    def _slot_mask(self) -> np.ndarray:
        mask = np.zeros(self.slots, dtype=bool)
        if self.candidates:
            mask[: len(self.candidates)] = True
        else:
            mask[0] = True  # nothing to choose: slot 0 stands for "no scheduling choice" (ignored)
        return mask

    def _tool_mask(self) -> np.ndarray:
        """Per tool backend: no-op always; warm if an instance is cold; release if an idle instance is not
        needed by waiting requests (the backend's own rule, so the mask and the order agree)."""
        out = []
        for name in self.tool_names:
            b = self.sim.tool_backends[name]
            out += [True, b.can_prewarm(), b.can_release()]
        return np.array(out, dtype=bool)

    def _invalid(self, message: str) -> float:
        """An action outside the mask: raise, or count the penalty (the caller applies the fallback)."""
        if self.invalid_action == "raise":
            raise ValueError(f"{message}; use action_masks() (or invalid_action='penalty')")
        return self.invalid_action_penalty

    def _checked_slot(self, slot: int) -> tuple[int, float]:
        """The slot to admit and the penalty: an invalid slot falls back to the oldest request (0)."""
        if 0 <= slot < len(self.candidates):
            return slot, 0.0
        return 0, self._invalid(f"action {slot} is masked out: {len(self.candidates)} requests wait at "
                                f"{self.decision.backend}, so valid slots are 0..{len(self.candidates) - 1}")

    def _choose(self, slot: int) -> None:
        self.sim.resolve(self.decision.queue.waiting.index(self.candidates[slot]))

    def _checked_orders(self, orders: np.ndarray) -> tuple[list[tuple[str, int]], float]:
        """The valid warm/release orders and the penalty for the others, checked before any is applied
        (a step is atomic: with invalid_action='raise' nothing happens before the error)."""
        mask = self._tool_mask().reshape(-1, 3)
        valid, penalty = [], 0.0
        for name, order, allowed in zip(self.tool_names, orders, mask, strict=True):
            if 0 <= order < 3 and allowed[order]:
                valid.append((name, int(order)))
            else:
                penalty += self._invalid(f"order {order} for {name} is masked out (0 no-op, 1 warm an instance: "
                                         "needs a cold one, 2 release one: needs an idle one no waiting request needs)")
        return valid, penalty

    def _order(self, valid: list[tuple[str, int]]) -> None:
        now = self.sim.engine.now
        for name, order in valid:
            if order == WARM_UP:
                self.sim.prewarm(name, now)
            elif order == RELEASE:
                self.sim.release(name, now)

    def _apply(self, action: Any) -> float:
        raise NotImplementedError

    def action_masks(self) -> np.ndarray:
        raise NotImplementedError

    # -- rendering --------------------------------------------------------------------------------
    def render(self) -> str | np.ndarray | None:
        self._require_episode("render")
        if self.render_mode == "ansi":
            return render_ansi(self.sim, self.decision)
        if self.render_mode == "rgb_array":
            return render_rgb(self.sim)
        return None


class SchedulingEnv(HermesEnv):
    """``hermes_env/Scheduling-v0``: choose which waiting request a backend admits next.

    The simulation pauses at every decision point: a backend (an LLM replica at an iteration boundary, a
    tool instance with a free slot) can admit a request and two or more wait for it; with one, it is
    admitted without asking. Prewarming follows the heuristic ``prewarm`` (default ``none``).

    **Observation** (``spaces.Dict``; ``K = slots``, ``B`` backends):

    - ``requests`` ``(K, F)``: the oldest ``K`` requests waiting at the deciding backend, in arrival order
      (no oracle sizes). Per request (see ``features.REQUEST_BASE_FEATURES``): its application's Gittins
      index and remaining-demand mean, std, median and 90th percentile (log seconds, from the PDGraph at
      the application's current stage), attained service, waiting time, time in system, real-time flag,
      SLO slack, backend kind, prompt tokens, unfinished copies, structural entropy; then for every
      backend the probability and expected time of the application's next use of it.
    - ``request_mask`` ``(K,)``: 1 where a slot holds a request.
    - ``backends`` ``(B, 12)``: deciding flag, kind, queue length, load, warm/warming/cold fractions,
      time until warm, KV cache in use.
    - ``global`` ``(4,)``: applications in the system, time, completed fraction, prewarm-decision flag.
    - with ``graph_observation=True``: ``graph_nodes`` ``(K, S, 8)``, ``graph_edges`` ``(K, S, S+1)``
      (transition probabilities, last column to the end) and ``graph_node_mask`` ``(K, S)``: each
      candidate's PDGraph, ``S`` the most stages of any workload template.

    **Action**: ``Discrete(K)``, the slot to admit. ``action_masks()`` (sb3-contrib MaskablePPO) and
    ``info["action_mask"]`` give the valid slots. Every element of the action space is a legal input: a
    masked-out slot admits the oldest waiting request instead, subtracts ``invalid_action_penalty``
    from the reward and sets ``info["invalid_action"]`` (``invalid_action="raise"`` raises instead, for
    debugging). An action that is not an integer (``1.7``, ``"1"``) raises ``TypeError``.

    **Reward**: minus the applications in the system integrated over the simulated time since the last
    step (``info["dt"]``), times ``reward_scale``; the undiscounted return is minus the sum of completion
    times. Optional: ``idle_cost_weight`` times the idle warm cost and ``slo_miss_weight`` per SLO miss.

    **Episode end**: ``terminated`` once every application of the workload has completed (the last step
    simulates to the end); ``truncated`` after ``max_steps`` steps or ``max_time`` simulated seconds.
    """

    def _action_space(self) -> spaces.Space:
        return spaces.Discrete(self.slots)

    def action_masks(self) -> np.ndarray:
        self._require_episode("action_masks")
        return self._slot_mask()

    def _apply(self, action: Any) -> float:
        slot, penalty = self._checked_slot(as_action_integer(action))
        self._choose(slot)
        return penalty


class PrewarmEnv(HermesEnv):
    """``hermes_env/Prewarm-v0``: decide which tool backends to warm up or release.

    The simulation pauses when an application arrives, issues a stage or completes, and every
    ``prewarm_tick`` seconds if set. Scheduling follows the heuristic ``scheduler`` (default ``gittins``).

    **Observation**: as in ``Scheduling-v0`` (the request slots are empty: there is no scheduling
    choice), with the ``global`` prewarm-decision flag set.

    **Action**: ``MultiDiscrete([3] * T)`` over the ``T`` tool backends: 0 no-op, 1 start warming one
    cold instance, 2 release one idle warm instance. ``action_masks()`` concatenates the three valid flags
    of each backend (sb3-contrib's MultiDiscrete convention). A masked-out order is skipped and penalised
    (``invalid_action="raise"`` raises before any order of the step is applied).

    **Reward and episode end**: as in ``Scheduling-v0``; set ``idle_cost_weight`` to make warm capacity
    cost something.
    """

    schedules, prewarms = False, True

    def _action_space(self) -> spaces.Space:
        require(len(self.tool_names) > 0, "config.cluster.tool_backends", "is empty: nothing to prewarm")
        return spaces.MultiDiscrete([3] * len(self.tool_names))

    def action_masks(self) -> np.ndarray:
        self._require_episode("action_masks")
        return self._tool_mask()

    def _apply(self, action: Any) -> float:
        valid, penalty = self._checked_orders(as_action_vector(action, len(self.tool_names)))
        self._order(valid)
        self.sim.resolve()
        return penalty


class JointEnv(HermesEnv):
    """``hermes_env/Joint-v0``: scheduling and prewarming together, as one ``MultiDiscrete`` action.

    The simulation pauses at scheduling decision points and at prewarm decision points (arrivals, stage
    issues, completions, ticks). **Action**: ``MultiDiscrete([K] + [3] * T)``: the slot to admit (ignored at
    prewarm-only decisions, where only slot 0 is unmasked) and one order per tool backend. Observation,
    reward and episode end as in ``Scheduling-v0``.
    """

    schedules, prewarms = True, True

    def _action_space(self) -> spaces.Space:
        return spaces.MultiDiscrete([self.slots] + [3] * len(self.tool_names))

    def action_masks(self) -> np.ndarray:
        self._require_episode("action_masks")
        return np.concatenate([self._slot_mask(), self._tool_mask()])

    def _apply(self, action: Any) -> float:
        action = as_action_vector(action, 1 + len(self.tool_names))
        schedule = self.decision.kind == "schedule"
        slot, penalty = self._checked_slot(int(action[0])) if schedule else (0, 0.0)
        valid, order_penalty = self._checked_orders(action[1:])
        self._order(valid)
        if schedule:
            self._choose(slot)
        else:
            self.sim.resolve()
        return penalty + order_penalty

