"""The task suite: named tasks on which learned and heuristic policies are scored alike.

A task (``configs/tasks/NAME.yaml``, listed by ``hermes-env tasks``) is an environment id and its
keyword arguments, an objective, training seeds and held-out evaluation seeds, the simplest heuristic and
the achievable heuristics tried for the best one, a clairvoyant heuristic (it knows the future: reported
beside the others, never the best heuristic, never a bound), and optionally a held-out workload
(``heldout``: overrides of the experiment a learned policy never trained on).
Every objective is lower-is-better, per episode:

* ``mean`` / ``p95``: the completion time's mean / 95th percentile (seconds);
* ``slo_miss``: the fraction of real-time applications that miss their SLO (failures count as misses);
* ``cost``: mean completion time + ``gpu_cost_weight`` x GPU-seconds per application + ``idle_cost_weight`` x
  idle warm tool cost per application (the environment's reward, per application).

The **bound** of an episode is the objective of the relaxation every policy is bounded by: each
application served alone, warm, with every reusable prefix cached (``jct_lower_bound``), GPU-seconds at the
engine's best cost per token (``gpu_seconds_lower_bound``), no idle cost; for ``slo_miss``, the applications
that miss even alone. It is a bound, not a target: how much of the gap is reachable is unknown.

A policy is scored on the same simulated workloads as the references (``options={"simulation_seed": s}``
for the environment, ``seed=s`` for a headless run). The normalised score of an episode is
``(policy - simplest) / (bound - simplest)`` (0: the simplest heuristic, 1: the bound), as Atari's
human-normalised score; :func:`evaluate` reports means over the held-out seeds with 95% confidence
half-widths.

Policies (:func:`run_policy`): a registered heuristic for the part the task's environment controls
(``gittins``, ``prefix_affinity``, ``queue_threshold``, ...; for ``Joint-v0`` four names joined by ``+``:
``gittins+pdgraph+shared+fixed``), ``random`` (uniform over the valid actions), ``ppo:PATH`` / ``rllib:PATH``
(checkpoints run as schedulers), or ``agent:PATH`` (a MaskablePPO checkpoint acting in the environment;
``agent:NAME`` a checkpoint shipped in agents/checkpoints). Families of policies acting in the environment
(``agent``) are announced by the ``hermes_env.env_policy_families`` entry-point group: ``agents`` registers
itself, the core never imports it, and without the ``[rl]`` extra an ``agent:`` policy is one error naming it.
A written policy, ``path/to/file.py:Name`` (:mod:`hermes_env.sim.written`), runs as a heuristic does. On a task
whose ``env_kwargs`` name a ``residual`` autoscaler, a headless policy's scale orders add to that native
heuristic, as an agent's would (``fixed``: the native heuristic alone).

A task file is checked whole when it loads (its fields, its environment's keyword arguments, its heuristics'
names, its seed ranges); :func:`evaluate` then builds the environment and both policies before any episode
runs, so bad input fails before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.catalog import config_path, names
from hermes_env.errors import ConfigError, require
from hermes_env.sim.metrics import mean_ci
from hermes_env.sim.policies import (
    ResidualAutoscaler,
    load_family,
    make_admission,
    make_autoscaler,
    make_prewarm,
    make_retention,
    make_router,
    make_scheduler,
)
from hermes_env.validation import as_integer, check_keys, choice, load_yaml

OBJECTIVES = ("mean", "p95", "slo_miss", "cost")
PARTS = {"hermes_env/Scheduling-v0": "schedule", "hermes_env/Prewarm-v0": "prewarm",
         "hermes_env/Routing-v0": "route", "hermes_env/Autoscaling-v0": "scale", "hermes_env/Joint-v0": "joint",
         "hermes_env/KVCache-v0": "retain"}
POLICY_ARGS = {"schedule": "scheduler", "prewarm": "prewarm", "route": "router", "scale": "autoscaler",
               "admit": "admission", "retain": "retention"}
JOINT_ARGS = ("scheduler", "prewarm", "router", "autoscaler")  # a Joint-v0 heuristic's four names, in order
MAKERS = {"scheduler": make_scheduler, "prewarm": make_prewarm, "router": make_router, "autoscaler": make_autoscaler,
          "admission": make_admission, "retention": make_retention}
SECTIONS = ("headroom", "controls")  # suite v2: a planner beats the best heuristic by 10% or more, or not
ENV_POLICY_FAMILIES = "hermes_env.env_policy_families"
MAX_SEED = 2**32 - 1  # as hermes-env simulate --seed


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    env_id: str
    env_kwargs: dict[str, Any]
    objective: str
    simplest: str
    heuristics: tuple[str, ...]
    train_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    found: str  # how the task was chosen
    clairvoyant: str = ""
    heldout: dict[str, Any] = field(default_factory=dict)
    learned: tuple[str, ...] = ()  # shipped learned policies (specs), evaluated in the leaderboard

    section: str = "controls"  # suite v2's: "headroom" (a measured planner margin of 10% or more) or "controls"

    @property
    def part(self) -> str:
        """The decision kind the task's heuristics and planner take: the environment's, or ``admit`` where a
        Scheduling-v0 task gives the agent admission (``admission_control: true``)."""
        return "admit" if self.env_kwargs.get("admission_control") else PARTS[self.env_id]

    @classmethod
    def from_yaml(cls, name_or_path: str | Path) -> Task:
        path = config_path("tasks", name_or_path, "task")
        spec = load_yaml(path, "task")
        where = f"task {path.stem}"
        check_keys(spec, ("description", "env_id", "env_kwargs", "objective", "simplest", "heuristics", "train_seeds",
                          "eval_seeds", "found", "heldout", "learned", "clairvoyant", "section"), where)
        env_id = choice(spec, "env_id", where, tuple(PARTS))
        seeds = {}
        for key in ("train_seeds", "eval_seeds"):
            raw = spec.get(key)
            require(isinstance(raw, list) and len(raw) == 2, f"{where}.{key}", "must be [first, count]",
                    "give the first seed and how many, such as [1000, 10]")
            first = as_integer(raw[0], f"{where}.{key}[0]", low=0, high=MAX_SEED)
            count = as_integer(raw[1], f"{where}.{key}[1]", low=1, high=MAX_SEED + 1 - first)
            seeds[key] = tuple(range(first, first + count))
        require(not set(seeds["train_seeds"]) & set(seeds["eval_seeds"]), f"{where}.eval_seeds",
                "overlap the training seeds", "held-out seeds must be new")
        kwargs = spec.get("env_kwargs") or {}
        part = "admit" if kwargs.get("admission_control") else PARTS[env_id]
        check_keys(kwargs, _env_keywords(), f"{where}.env_kwargs")
        heuristics = _texts(spec, "heuristics", where)
        require(bool(heuristics), f"{where}.heuristics", "is empty", "list the heuristics the best one is chosen from")
        simplest, clairvoyant = _text(spec, "simplest", where), _text(spec, "clairvoyant", where, "")
        for at, name in ((f"{where}.simplest", simplest), (f"{where}.clairvoyant", clairvoyant),
                         *((f"{where}.heuristics[{i}]", h) for i, h in enumerate(heuristics))):
            if name and name != "random":
                _heuristic(part, name, at)
        heldout = spec.get("heldout") or {}
        require(isinstance(heldout, dict), f"{where}.heldout", "must be a mapping of experiment overrides")
        return cls(path.stem, _text(spec, "description", where, ""), env_id, dict(kwargs),
                   choice(spec, "objective", where, OBJECTIVES), simplest, tuple(heuristics), seeds["train_seeds"],
                   seeds["eval_seeds"], _text(spec, "found", where, ""), clairvoyant, dict(heldout),
                   tuple(_texts(spec, "learned", where)), choice(spec, "section", where, SECTIONS, "controls"))

    def shortened(self, fraction: float) -> Task:
        """The task with ``fraction`` of its applications per episode (at least 30; 1 or more: the task
        itself), so that slow policies (planners, their distilled students' teachers) fit a small machine."""
        if fraction >= 1.0:
            return self
        n = max(30, round(fraction * self.env().experiment.workload.num_applications))
        overrides = _merge(self.env_kwargs.get("overrides") or {}, {"workload": {"num_applications": n}})
        return replace(self, env_kwargs={**self.env_kwargs, "overrides": overrides})

    def env(self, heldout: bool = False) -> Any:
        import gymnasium as gym

        import hermes_env  # noqa: F401  (registers the ids)

        kwargs = dict(self.env_kwargs)
        if heldout:
            require(bool(self.heldout), f"task {self.name}.heldout", "is not given",
                    "give the task a held-out workload, or evaluate without --heldout")
            kwargs["overrides"] = _merge(kwargs.get("overrides") or {}, self.heldout)
        try:
            return gym.make(self.env_id, **kwargs).unwrapped
        except ConfigError as err:  # a bad keyword's value or held-out override: name it in the task file
            head = err.field.split(".")[0].split("[")[0]
            part = "env_kwargs" if head in self.env_kwargs else "heldout" if heldout and head in self.heldout else None
            if part is None:
                raise
            raise ConfigError(f"task {self.name}.{part}.{err.field}", err.problem, err.fix) from None


def task_names() -> list[str]:
    return names("tasks")


def _env_keywords() -> list[str]:
    """The keyword arguments every environment takes (they share :class:`HermesEnv`'s)."""
    import inspect

    from hermes_env.envs.hermes import HermesEnv

    return [k for k in inspect.signature(HermesEnv.__init__).parameters if k != "self"]


def _text(spec: dict, key: str, where: str, default: str | None = None) -> str:
    require(key in spec or default is not None, f"{where}.{key}", "is missing", "give a policy name")
    value = spec.get(key, default)
    require(isinstance(value, str), f"{where}.{key}", f"must be a text, got {value!r}")
    return value


def _texts(spec: dict, key: str, where: str) -> list[str]:
    value = spec.get(key, [])
    require(isinstance(value, list) and all(isinstance(v, str) for v in value), f"{where}.{key}",
            f"must be a list of names, got {value!r}")
    return value


def _heuristic(part: str, spec: str, field: str) -> dict[str, str]:
    """The policy names of a headless run of heuristic ``spec`` (only the task's part; the environment's
    defaults fill the others), each built once so that an unknown name fails here, naming ``field``."""
    if part == "joint":
        names = spec.split("+")
        require(len(names) == 4, field, f"{spec!r} names {len(names)} policies",
                "name a Joint-v0 heuristic as scheduler+prewarm+router+autoscaler")
        policies = dict(zip(JOINT_ARGS, names, strict=True))
    else:
        policies = {POLICY_ARGS[part]: spec}
    for arg, name in policies.items():
        if name != "shared" or arg != "router":
            try:
                MAKERS[arg](name)
            except ConfigError as err:
                raise ConfigError(field, err.problem, err.fix) from None
    return policies


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- one episode of a policy ---------------------------------------------------------------------------

def episode_objective(task: Task, env: Any, summary: dict[str, Any]) -> tuple[float, float]:
    """The objective of an episode (``summary`` of its simulation in ``env``) and its bound."""
    n = max(summary["applications"], 1)
    if task.objective in ("mean", "p95"):
        key = "mean" if task.objective == "mean" else "p95"
        return summary["jct"].get(key, math.inf), summary["jct_lower_bound"].get(key, math.inf)
    if task.objective == "slo_miss":
        met = summary["slo_miss_counts"]
        return met["missed"] / max(met["with_slo"], 1), met["missed_alone"] / max(met["with_slo"], 1)
    value = (summary["jct"].get("mean", math.inf) + env.gpu_cost_weight * summary["gpu_seconds"] / n
             + env.idle_cost_weight * summary["idle_warm_cost"] / n)
    bound = summary["jct_lower_bound"].get("mean", math.inf) + env.gpu_cost_weight * summary[
        "gpu_seconds_lower_bound"] / n
    return value, bound


def run_policy(task: Task, spec: str, seed: int, heldout: bool = False) -> tuple[float, float]:
    """The objective and bound of one episode of ``spec`` on the workload of simulation seed ``seed``."""
    env, run = _prepare(task, spec, seed, heldout)
    return episode_objective(task, env, run())


def _prepare(task: Task, spec: str, seed: int, heldout: bool = False) -> tuple[Any, Any]:
    """The environment of one episode of ``spec`` and a function that runs it and returns its summary, every
    part built: bad input (the environment's arguments, the policy) fails here, before the episode runs.
    ``random`` and the announced families (``agent:PATH``) act in the environment; a heuristic runs headless."""
    env = task.env(heldout)
    act = _actor(env, spec, seed)
    if act is not None:
        return env, lambda: episode(env, act, seed)
    from hermes_env.sim import Simulation

    policies = {arg: env.policy_names[part] for part, arg in POLICY_ARGS.items()}
    policies.update(_heuristic(task.part, spec, "policy"))
    if env.residual is not None:  # the heuristic's orders add to the native autoscaler, as the agent's would
        native, orders = make_autoscaler(env.residual), make_autoscaler(policies["autoscaler"])
        policies["autoscaler"] = ResidualAutoscaler(native, orders)
    sim = Simulation(env.experiment, seed=seed, keep_applications=False, **policies)
    price_planners(task, env, sim)
    return env, lambda: sim.run().summary


def planner_weights(task: Task, env: Any) -> dict[str, float]:
    """The rollout cost a planner minimises for ``task`` (``rollout:BASE``, :mod:`baselines.planners`): the
    environment's reward (applications in the system over time, priced idle cost and GPU-seconds); for
    ``slo_miss``, the misses, with the time in the system only to break ties. ``mean`` and ``p95`` both
    get the time in the system (the sum of completion times: the tail has no additive form)."""
    if task.objective == "slo_miss":
        return {"area": 1e-3, "slo_miss": 1.0}
    if task.objective == "cost":
        return {"area": 1.0, "gpu": env.gpu_cost_weight, "idle": env.idle_cost_weight}
    return {"area": 1.0}


def price_planners(task: Task, env: Any, sim: Any) -> None:
    """Give every planner among ``sim``'s policies (those with ``price``) the task's rollout cost."""
    routers = [b.router for b in sim.llm_backends.values()]
    scalers = getattr(sim.autoscaler, "parts", (sim.autoscaler,))  # a residual autoscaler's native and orders
    for policy in {id(p): p for p in (sim.scheduler, sim.prewarm_policy, *scalers, sim.admission, sim.retention,
                                      sim.migration, *routers)}.values():
        if hasattr(policy, "price"):
            policy.price(**planner_weights(task, env))


def _actor(env: Any, spec: str, seed: int) -> Any:
    """``act(observation, action_mask)`` of a policy acting in ``env``: uniform random valid actions, or a
    family's (``agent:PATH``, announced by the ``hermes_env.env_policy_families`` entry points); None for a
    heuristic."""
    prefix, _, arg = spec.partition(":")
    factory = load_family(ENV_POLICY_FAMILIES, prefix, "policy") if arg else None
    if factory is not None:
        return factory(arg, env)
    if spec != "random":
        return None
    rng = np.random.default_rng(seed)
    if hasattr(env.action_space, "n"):
        return lambda obs, mask: int(rng.choice(np.flatnonzero(mask)))
    splits = np.cumsum(env.action_space.nvec)[:-1]
    return lambda obs, mask: np.array([rng.choice(np.flatnonzero(p)) for p in np.split(mask, splits)])


def episode(env: Any, act: Any, seed: int) -> dict[str, Any]:
    """The summary of one episode on simulation seed ``seed``, ``act(observation, action_mask)`` acting."""
    from hermes_env.sim.metrics import summarise

    obs, info = env.reset(seed=seed, options={"simulation_seed": seed})
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(act(obs, info["action_mask"]))
        done = terminated or truncated
    return summarise(env.sim).summary


# -- scores -------------------------------------------------------------------------------------------

def evaluate(task: Task, spec: str, seeds: tuple[int, ...] | None = None, heldout: bool = False,
             simplest: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """``spec``'s objective and normalised score on the held-out seeds (default), with the simplest
    heuristic's and the bound on the same seeds (``simplest``: those runs, if already made)."""
    seeds = task.eval_seeds if seeds is None else seeds
    require(len(seeds) > 0, "seeds", "is empty", "evaluate on at least one seed")
    for name in {spec, task.simplest}:  # both built before any episode runs
        _prepare(task, name, seeds[0], heldout)
    simplest = simplest or [run_policy(task, task.simplest, s, heldout) for s in seeds]
    mine = simplest if spec == task.simplest else [run_policy(task, spec, s, heldout) for s in seeds]
    bounds = [b for _, b in simplest]
    norm = [(m - s) / (b - s) if b != s else 0.0 for (m, _), (s, _), b in zip(mine, simplest, bounds, strict=True)]
    return {"task": task.name, "policy": spec, "seeds": list(seeds), "heldout": heldout,
            "objective": mean_ci([m for m, _ in mine]), "simplest": mean_ci([s for s, _ in simplest]),
            "bound": mean_ci(bounds), "normalised": mean_ci(norm), "per_seed": [m for m, _ in mine],
            "per_seed_bound": bounds, "runs": mine, "simplest_runs": simplest}


def paired(policy: dict[str, Any], reference: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``policy`` against ``reference`` on the same seeds: the difference of their objectives (negative:
    the policy is better) and the share of the reference's gap to the bound the policy closes (over the
    seeds where the reference has a gap), each a mean with its 95% confidence half-width."""
    a, b, bound = (np.asarray(x) for x in (policy["per_seed"], reference["per_seed"], reference["per_seed_bound"]))
    gap = np.where(b != bound, b - bound, np.nan)
    closed = (b - a) / gap
    return {"difference": mean_ci(a - b), "gap_closed": mean_ci(closed[~np.isnan(closed)])}


def format_score(result: dict[str, Any]) -> str:
    o, s, b, n = result["objective"], result["simplest"], result["bound"], result["normalised"]
    half = (lambda x, f: f" +- {x:{f}}" if math.isfinite(x) else "")  # noqa: E731 (one seed: no interval)
    count = len(result["seeds"])
    return (f"{result['task']}{' (held-out workload)' if result['heldout'] else ''}: {result['policy']} "
            f"{o[0]:.4g}{half(o[1], '.2g')} (simplest {s[0]:.4g}, bound {b[0]:.4g}); normalised score "
            f"{n[0]:.3f}{half(n[1], '.3f')} over {count} held-out seed{'s' if count > 1 else ' (no interval)'}")


def leaderboard(out: Path, tasks: list[str] | None = None, progress: bool = True, workers: int = 1,
                planner: str = "", written: tuple[str, ...] = ()) -> str:
    """Evaluate every task's references and learned policies and write the table (docs/tasks.md); tasks
    run in ``workers`` processes (each task's runs stay in one, so results do not depend on it). With
    ``planner`` (a spec where ``{best}`` stands for the task's best heuristic: ``rollout:{best}``), the
    planner column holds that achievable reference (slow: it copies the simulation at its decisions).
    ``written`` policies (``FILE.py:Name``, :mod:`hermes_env.sim.written`) go to every task of their decision
    kind, on the same seeds: the written column holds the best of them on the training seeds (chosen as the
    best heuristic is), and a section pairs each with the best heuristic. Whatever follows :data:`KEPT` in
    ``out`` (hand-written documentation) is kept."""
    import subprocess
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from hermes_env.sim.written import kind_of

    names = tasks or task_names()
    kinds = {spec: kind_of(spec, "--written") for spec in written}  # each built once, its kind known
    fitting = {}
    for name in names:  # every task and learned policy is built once before the first episode runs
        task = Task.from_yaml(name)
        for spec in task.learned:
            _prepare(task, spec, task.eval_seeds[0])
        if task.heldout:
            task.env(heldout=True)
        fitting[name] = tuple(spec for spec, kind in kinds.items() if POLICY_ARGS.get(task.part) == kind)
    for spec, kind in kinds.items():
        require(any(spec in specs for specs in fitting.values()), "--written", f"{spec!r} is a {kind}, and none "
                "of the tasks takes one", f"add a task of that decision kind, or leave {spec!r} out")
    row = partial(_task_row, planner=planner, written=fitting)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(row, names))
    else:
        rows = [row(name) for name in names]
    if progress:
        for task, best, scores, learned, _, mine in rows:
            print(f"{task.name}: best heuristic {best}; " + "; ".join(
                format_score(r) for r in (*scores.values(), *learned.values(), *mine.values())))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    kept = out.read_text().partition(KEPT)[2] if out.is_file() else ""
    text = _markdown(rows, commit) + (f"\n{KEPT}{kept}" if kept else "")
    out.write_text(text)
    return text


KEPT = "<!-- written by hand below: kept when the leaderboard is regenerated -->"


def _task_row(name: str, planner: str = "", written: dict[str, tuple[str, ...]] | None = None) -> tuple:
    """One task's references (the best heuristic chosen on the training seeds, scored on the held-out
    ones; the planner on it, when asked), learned policies, held-out workload and written policies (those of
    ``written[name]``, the best of them chosen on the training seeds as the best heuristic is)."""
    task = Task.from_yaml(name)
    mine = (written or {}).get(name, ())
    train = {h: np.mean([run_policy(task, h, s)[0] for s in task.train_seeds]) for h in (*task.heuristics, *mine)}
    best = min(task.heuristics, key=train.get)
    simplest = evaluate(task, task.simplest)
    references = [("random", "random"), ("best heuristic", best)]
    if planner and task.part != "joint":
        references.append(("planner", planner.format(best=best)))
    scores = {label: evaluate(task, spec, simplest=simplest["runs"]) for label, spec in
              references + ([("clairvoyant", task.clairvoyant)] if task.clairvoyant else [])}
    scores["simplest"] = simplest
    learned = {spec: evaluate(task, spec, simplest=simplest["runs"]) for spec in task.learned}
    heldout = {}
    if task.heldout:
        base = evaluate(task, task.simplest, heldout=True)
        heldout = {spec: evaluate(task, spec, heldout=True, simplest=base["simplest_runs"])
                   for spec in (best, *task.learned)}
    ranked = sorted(mine, key=train.get)  # the best written policy first
    written_scores = {spec: evaluate(task, spec, simplest=simplest["runs"]) for spec in ranked}
    return task, best, scores, learned, heldout, written_scores


def _pm(value: tuple[float, float], mean: str = ".3g", half: str = ".2g") -> str:
    """A mean +- its 95% half-width."""
    if math.isnan(value[0]):
        return "- (no seed with a gap)"
    return f"{value[0]:{mean}} +- {value[1]:{half}}"


def _markdown(rows: list, commit: str) -> str:
    lines = ["# The task suite: leaderboard", "",
             f"Regenerated by `hermes-env leaderboard --out docs/tasks.md` (commit {commit}). Objectives are "
             "lower-is-better; each cell is the mean over the held-out seeds +- its 95% confidence half-width, "
             "and the normalised score `(policy - simplest) / (bound - simplest)` (0 = the simplest heuristic, "
             "1 = the bound). The bound is the relaxation of `hermes_env.tasks` (every application alone, warm, "
             "its reusable prefixes cached): a bound, not a target. The best heuristic is chosen on the "
             "training seeds. The planner is the achievable reference (`hermes-env leaderboard --planner "
             "'rollout:{best}'`): one-step rollout of the best heuristic over futures it samples, never the "
             "true one (baselines/planners.py); '-' where it was not run. Suite v2 (issue 22): a task is kept "
             "with headroom (`section: headroom` in its file) only when a non-clairvoyant planner beat its best "
             "heuristic by 10% or more on its training seeds (scripts/planner_headroom.py, docs/planning.md); the "
             "others are controls, a heuristic already solves them. The written column holds the best on the "
             "training seeds of the written policies of the task's decision kind (`hermes-env leaderboard --written "
             "FILE.py:Name,...`; \"Written policies\" below)."]
    for section, title in zip(SECTIONS, ("Task suite v2: tasks with achievable headroom",
                                         "Controls: a heuristic already solves them"), strict=True):
        lines += ["", f"## {title}", ""]
        lines += _table([row for row in rows if row[0].section == section])
    lines += _learned_and_tasks(rows)
    return "\n".join(lines)


def cell(r: dict[str, Any]) -> str:
    """A result's objective, mean +- half-width."""
    return _pm(r["objective"], ".4g")


def norm(r: dict[str, Any]) -> str:
    """A result's normalised score, mean +- half-width."""
    return _pm(r["normalised"], ".3f", ".3f")


def _table(rows: list) -> list[str]:
    """The references of ``rows`` (one task each), one line per task."""
    if not rows:
        return ["(none)"]
    lines = ["| task | objective | random | simplest | best heuristic | learned | planner (achievable) | written | "
             "clairvoyant heuristic | bound | best heuristic normalised | learned normalised | "
             "seeds (train / held-out) |", "| --- " * 13 + "|"]
    for task, best, scores, learned, _, mine in rows:
        spec, lr = next(iter(learned.items())) if learned else ("", None)
        pl = scores.get("planner")
        planned = f"{cell(pl)} (`{pl['policy']}`)" if pl else "-"
        top = next(iter(mine.values()), None)  # the best written policy on the training seeds
        mine_cell = f"{cell(top)} (`{top['policy']}`)" if top else "-"
        lines.append(f"| `{task.name}` | {task.objective} | {cell(scores['random'])} | {cell(scores['simplest'])} "
                     f"(`{task.simplest}`) | {cell(scores['best heuristic'])} (`{best}`) | "
                     f"{cell(lr) + f' (`{spec}`)' if lr else '-'} | "
                     f"{planned} | {mine_cell} | "
                     f"{cell(scores['clairvoyant']) if 'clairvoyant' in scores else '-'} | "
                     f"{scores['simplest']['bound'][0]:.4g} | "
                     f"{norm(scores['best heuristic'])} | {norm(lr) if lr else '-'} | "
                     f"{task.train_seeds[0]}-{task.train_seeds[-1]} / {task.eval_seeds[0]}-{task.eval_seeds[-1]} |")
    return lines


def _learned_and_tasks(rows: list) -> list[str]:
    """The learned policies against the best heuristic, then each task's description."""
    lines = ["", "## Learned policies against the best heuristic", "",
              "Paired over the same seeds: the difference of objectives (negative: the learned policy is better) "
              "and the share of the best heuristic's gap to the bound it closes, each +- its 95% confidence "
              "half-width. The issue's target: better by a margin outside the interval, and at least half the gap "
              "closed, on the held-out seeds and on the held-out workload.", "",
              "| task | learned | held-out seeds: learned - best | gap closed | held-out workload: learned - best | "
              "gap closed | target met |", "| --- " * 7 + "|"]
    for task, best, scores, learned, heldout, _ in rows:
        for spec, result in learned.items():
            seeds = paired(result, scores["best heuristic"])
            work = paired(heldout[spec], heldout[best]) if spec in heldout else None
            met = all(p["difference"][0] + p["difference"][1] < 0 and p["gap_closed"][0] >= 0.5
                      for p in (seeds, work) if p is not None)
            lines.append(f"| `{task.name}` | `{spec}` | {_pm(seeds['difference'])} | {_pm(seeds['gap_closed'])} | "
                         f"{_pm(work['difference']) if work else '-'} | {_pm(work['gap_closed']) if work else '-'} | "
                         f"{'yes' if met else 'no'} |")
    if any(mine for *_, mine in rows):
        lines += ["", "## Written policies against the best heuristic", "",
                  "Every written policy of the task's decision kind, on the same held-out seeds and workloads: its "
                  "objective and normalised score, and paired with the best heuristic, the difference (negative: "
                  "the written policy is better) and the share of the gap to the bound it closes, each +- its 95% "
                  "confidence half-width.", "",
                  "| task | written policy | objective | normalised | written - best | gap closed |",
                  "| --- " * 6 + "|"]
        for task, _best, scores, _, _, mine in rows:
            for spec, result in mine.items():
                vs = paired(result, scores["best heuristic"])
                lines.append(f"| `{task.name}` | `{spec}` | {cell(result)} | {norm(result)} | "
                             f"{_pm(vs['difference'])} | {_pm(vs['gap_closed'])} |")
    lines += ["", "## The tasks", ""]
    for task, _best, _, _learned, heldout, _ in rows:
        lines += [f"**`{task.name}`** ({task.env_id}, {task.objective}): {task.description} How it was found: "
                  f"{task.found}"]
        for r in heldout.values():
            lines.append(f"- held-out workload: {format_score(r)}")
        lines.append("")
    return lines
