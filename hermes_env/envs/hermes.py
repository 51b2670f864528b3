"""The Gymnasium environments: scheduling, prewarming, or both, on the hermes_env simulator."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces

from hermes_env.envs.features import BACKEND_FEATURES, GLOBAL_FEATURES, FeatureBuilder
from hermes_env.envs.render import render_ansi, render_rgb
from hermes_env.errors import require
from hermes_env.pdgraph.entropy import visit_probabilities
from hermes_env.pdgraph.graph import BACKEND_KINDS, END, backend_kind
from hermes_env.sim.policies import ExternalPrewarm, ExternalScheduler, make_prewarm, make_scheduler
from hermes_env.sim.simulator import ExperimentConfig, Simulation, inline_parts

REPO_CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs" / "experiments"
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
        path = Path(config)
        if path.suffix not in (".yaml", ".yml"):
            path = REPO_CONFIGS / f"{config}.yaml"
            require(path.is_file(), "config", f"no experiment named {str(config)!r}",
                    f"use a YAML path or one of {sorted(p.stem for p in REPO_CONFIGS.glob('*.yaml'))}")
        require(path.is_file(), "config", f"no file {str(path)!r}")
        base = path.parent
        spec = inline_parts(yaml.safe_load(path.read_text()), base)  # so that overrides reach into the parts
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
                 idle_cost_weight: float = 0.0, slo_miss_weight: float = 0.0, invalid_action: str = "raise",
                 invalid_action_penalty: float = 1.0, graph_observation: bool = False,
                 render_mode: str | None = None) -> None:
        self.experiment = load_experiment(config, overrides)
        require(slots >= 1, "slots", f"must be >= 1, got {slots}")
        require(invalid_action in ("raise", "penalty"), "invalid_action", f"must be 'raise' or 'penalty', got "
                f"{invalid_action!r}")
        require(render_mode is None or render_mode in self.metadata["render_modes"], "render_mode",
                f"must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        require(reward_scale > 0, "reward_scale", f"must be > 0, got {reward_scale}")
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
        self.decision = self.sim.run_until_decision()
        self._refresh()
        return self._observation(), self._info(0.0)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        require(self.sim is not None, "step", "called before reset()")
        start = self.sim.engine.now
        penalty = self._apply(action)
        self.steps += 1
        self.decision = self.sim.run_until_decision()
        truncated = (self.max_steps is not None and self.steps >= self.max_steps) or (
            self.max_time is not None and self.sim.engine.now >= self.max_time)
        terminated = self.decision is None
        self._refresh()
        reward = self._reward() - penalty
        return self._observation(), reward, terminated, bool(truncated and not terminated), self._info(
            self.sim.engine.now - start)

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

    def _info(self, dt: float) -> dict:
        sim = self.sim
        return {"dt": dt, "sim_time": sim.engine.now, "action_mask": self.action_masks(),
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
        """Per tool backend: no-op always; warm if an instance is cold; release if one is idle."""
        out = []
        for name in self.tool_names:
            b = self.sim.tool_backends[name]
            can_warm = any(i.state == 0 for i in b.instances) and not b.pinned
            can_release = any(i.state != 0 and i.busy == 0 for i in b.instances) and not b.pinned
            out += [True, can_warm, can_release]
        return np.array(out, dtype=bool)

    def _choose(self, slot: int) -> float:
        """Resolve a scheduling decision with ``slot``; returns the penalty for an invalid choice."""
        valid = 0 <= slot < len(self.candidates)
        if not valid:
            if self.invalid_action == "raise":
                raise ValueError(f"action {slot} is masked out: {len(self.candidates)} requests wait at "
                                 f"{self.decision.backend}, so valid slots are 0..{len(self.candidates) - 1} "
                                 "(use action_masks(), or invalid_action='penalty')")
            slot = 0  # the penalised fallback: the oldest waiting request
        self.sim.resolve(self.decision.queue.waiting.index(self.candidates[slot]))
        return 0.0 if valid else self.invalid_action_penalty

    def _order(self, orders: np.ndarray) -> float:
        """Apply one warm/release order per tool backend; returns the penalty for invalid ones."""
        mask = self._tool_mask().reshape(-1, 3)
        penalty = 0.0
        now = self.sim.engine.now
        for name, order, allowed in zip(self.tool_names, orders, mask, strict=True):
            order = int(order)
            if not (0 <= order < 3 and allowed[order]):
                if self.invalid_action == "raise":
                    raise ValueError(f"order {order} for {name} is masked out (0 no-op, 1 warm an instance: needs a "
                                     "cold one, 2 release one: needs an idle warm one); use action_masks()")
                penalty += self.invalid_action_penalty
                continue
            if order == WARM_UP:
                self.sim.prewarm(name, now)
            elif order == RELEASE:
                self.sim.release(name, now)
        return penalty

    def _apply(self, action: Any) -> float:
        raise NotImplementedError

    def action_masks(self) -> np.ndarray:
        raise NotImplementedError

    # -- rendering --------------------------------------------------------------------------------
    def render(self) -> str | np.ndarray | None:
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
    ``info["action_mask"]`` give the valid slots. An invalid slot raises ``ValueError``; with
    ``invalid_action="penalty"`` it admits the oldest request instead and subtracts
    ``invalid_action_penalty``.

    **Reward**: minus the applications in the system integrated over the simulated time since the last
    step (``info["dt"]``), times ``reward_scale``; the undiscounted return is minus the sum of completion
    times. Optional: ``idle_cost_weight`` times the idle warm cost and ``slo_miss_weight`` per SLO miss.

    **Episode end**: ``terminated`` once every application of the workload has completed (the last step
    simulates to the end); ``truncated`` after ``max_steps`` steps or ``max_time`` simulated seconds.
    """

    def _action_space(self) -> spaces.Space:
        return spaces.Discrete(self.slots)

    def action_masks(self) -> np.ndarray:
        return self._slot_mask()

    def _apply(self, action: Any) -> float:
        return self._choose(int(action))


class PrewarmEnv(HermesEnv):
    """``hermes_env/Prewarm-v0``: decide which tool backends to warm up or release.

    The simulation pauses when an application arrives, issues a stage or completes, and every
    ``prewarm_tick`` seconds if set. Scheduling follows the heuristic ``scheduler`` (default ``gittins``).

    **Observation**: as in ``Scheduling-v0`` (the request slots are empty: there is no scheduling
    choice), with the ``global`` prewarm-decision flag set.

    **Action**: ``MultiDiscrete([3] * T)`` over the ``T`` tool backends: 0 no-op, 1 start warming one
    cold instance, 2 release one idle warm instance. ``action_masks()`` concatenates the three valid flags
    of each backend (sb3-contrib's MultiDiscrete convention). Invalid orders raise, or are skipped and
    penalised with ``invalid_action="penalty"``.

    **Reward and episode end**: as in ``Scheduling-v0``; set ``idle_cost_weight`` to make warm capacity
    cost something.
    """

    schedules, prewarms = False, True

    def _action_space(self) -> spaces.Space:
        require(len(self.tool_names) > 0, "config.cluster.tool_backends", "is empty: nothing to prewarm")
        return spaces.MultiDiscrete([3] * len(self.tool_names))

    def action_masks(self) -> np.ndarray:
        return self._tool_mask()

    def _apply(self, action: Any) -> float:
        penalty = self._order(np.asarray(action))
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
        return np.concatenate([self._slot_mask(), self._tool_mask()])

    def _apply(self, action: Any) -> float:
        action = np.asarray(action)
        penalty = self._order(action[1:])
        if self.decision.kind == "schedule":
            return penalty + self._choose(int(action[0]))
        self.sim.resolve()
        return penalty

