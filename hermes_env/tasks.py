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
``agent:NAME`` a checkpoint shipped in agents/checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.catalog import config_path, names
from hermes_env.errors import require
from hermes_env.sim.metrics import mean_ci
from hermes_env.validation import as_integer, check_keys, choice, load_yaml

OBJECTIVES = ("mean", "p95", "slo_miss", "cost")
PARTS = {"hermes_env/Scheduling-v0": "schedule", "hermes_env/Prewarm-v0": "prewarm",
         "hermes_env/Routing-v0": "route", "hermes_env/Autoscaling-v0": "scale", "hermes_env/Joint-v0": "joint"}
POLICY_ARGS = {"schedule": "scheduler", "prewarm": "prewarm", "route": "router", "scale": "autoscaler"}


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

    @property
    def part(self) -> str:
        return PARTS[self.env_id]

    @classmethod
    def from_yaml(cls, name_or_path: str | Path) -> Task:
        path = config_path("tasks", name_or_path, "task")
        spec = load_yaml(path, "task")
        where = f"task {path.stem}"
        check_keys(spec, ("description", "env_id", "env_kwargs", "objective", "simplest", "heuristics", "train_seeds",
                          "eval_seeds", "found", "heldout", "learned", "clairvoyant"), where)
        env_id = choice(spec, "env_id", where, tuple(PARTS))
        seeds = {}
        for key in ("train_seeds", "eval_seeds"):
            raw = spec.get(key)
            require(isinstance(raw, list) and len(raw) == 2, f"{where}.{key}", "must be [first, count]")
            first, count = (as_integer(x, f"{where}.{key}", low=0) for x in raw)
            seeds[key] = tuple(range(first, first + count))
        require(not set(seeds["train_seeds"]) & set(seeds["eval_seeds"]), f"{where}.eval_seeds",
                "overlap the training seeds", "held-out seeds must be new")
        return cls(path.stem, str(spec.get("description", "")), env_id, dict(spec.get("env_kwargs") or {}),
                   choice(spec, "objective", where, OBJECTIVES), str(spec["simplest"]),
                   tuple(spec.get("heuristics", [])), seeds["train_seeds"], seeds["eval_seeds"],
                   str(spec.get("found", "")), str(spec.get("clairvoyant", "")), dict(spec.get("heldout") or {}),
                   tuple(spec.get("learned", [])))

    def env(self, heldout: bool = False) -> Any:
        import gymnasium as gym

        import hermes_env  # noqa: F401  (registers the ids)

        kwargs = dict(self.env_kwargs)
        if heldout:
            require(bool(self.heldout), f"task {self.name}.heldout", "is not given")
            kwargs["overrides"] = _merge(kwargs.get("overrides") or {}, self.heldout)
        return gym.make(self.env_id, **kwargs).unwrapped


def task_names() -> list[str]:
    return names("tasks")


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
    from hermes_env.sim import Simulation

    env = task.env(heldout)
    if spec == "random" or spec.startswith("agent:"):
        return episode_objective(task, env, _stepped(env, spec, seed))
    policies = {arg: env.policy_names[part] for part, arg in POLICY_ARGS.items()}
    if task.part == "joint":
        parts = spec.split("+")
        require(len(parts) == 4, "policy", f"{spec!r} names {len(parts)} policies",
                "name a Joint-v0 heuristic as scheduler+prewarm+router+autoscaler")
        policies = dict(zip(POLICY_ARGS.values(), parts, strict=True))
    else:
        policies[POLICY_ARGS[task.part]] = spec
    sim = Simulation(env.experiment, seed=seed, keep_applications=False, admission=env.policy_names["admit"],
                     **policies)
    return episode_objective(task, env, sim.run().summary)


def _stepped(env: Any, spec: str, seed: int) -> dict[str, Any]:
    """An episode stepped through the environment: uniform random valid actions, or a checkpoint's."""
    if spec.startswith("agent:"):
        from sb3_contrib import MaskablePPO

        from agents.scheduler import checkpoint_path

        model = MaskablePPO.load(checkpoint_path(spec.removeprefix("agent:"), "policy"), device="cpu")
        return episode(env, lambda obs, mask: model.predict(obs, action_masks=mask, deterministic=True)[0], seed)
    rng = np.random.default_rng(seed)
    if hasattr(env.action_space, "n"):
        return episode(env, lambda obs, mask: int(rng.choice(np.flatnonzero(mask))), seed)
    splits = np.cumsum(env.action_space.nvec)[:-1]
    return episode(env, lambda obs, mask: np.array([rng.choice(np.flatnonzero(p)) for p in np.split(mask, splits)]),
                   seed)


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
    return (f"{result['task']}{' (held-out workload)' if result['heldout'] else ''}: {result['policy']} "
            f"{o[0]:.4g} +- {o[1]:.2g} (simplest {s[0]:.4g}, bound {b[0]:.4g}); normalised score "
            f"{n[0]:.3f} +- {n[1]:.3f} over {len(result['seeds'])} held-out seeds")


def leaderboard(out: Path, tasks: list[str] | None = None, progress: bool = True, workers: int = 1) -> str:
    """Evaluate every task's references and learned policies and write the table (docs/tasks.md); tasks
    run in ``workers`` processes (each task's runs stay in one, so results do not depend on it)."""
    import subprocess
    from concurrent.futures import ProcessPoolExecutor

    names = tasks or task_names()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_task_row, names))
    else:
        rows = [_task_row(name) for name in names]
    if progress:
        for task, best, scores, learned, _ in rows:
            print(f"{task.name}: best heuristic {best}; " + "; ".join(
                format_score(r) for r in (*scores.values(), *learned.values())))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    text = _markdown(rows, commit)
    out.write_text(text)
    return text


def _task_row(name: str) -> tuple:
    """One task's references (the best heuristic chosen on the training seeds, scored on the held-out
    ones), learned policies and held-out workload."""
    task = Task.from_yaml(name)
    train = {h: np.mean([run_policy(task, h, s)[0] for s in task.train_seeds]) for h in task.heuristics}
    best = min(train, key=train.get)
    simplest = evaluate(task, task.simplest)
    references = [("random", "random"), ("best heuristic", best)]
    scores = {label: evaluate(task, spec, simplest=simplest["runs"]) for label, spec in
              references + ([("clairvoyant", task.clairvoyant)] if task.clairvoyant else [])}
    scores["simplest"] = simplest
    learned = {spec: evaluate(task, spec, simplest=simplest["runs"]) for spec in task.learned}
    heldout = {}
    if task.heldout:
        base = evaluate(task, task.simplest, heldout=True)
        heldout = {spec: evaluate(task, spec, heldout=True, simplest=base["simplest_runs"])
                   for spec in (best, *task.learned)}
    return task, best, scores, learned, heldout


def _pm(value: tuple[float, float], mean: str = ".3g", half: str = ".2g") -> str:
    """A mean +- its 95% half-width."""
    if math.isnan(value[0]):
        return "- (no seed with a gap)"
    return f"{value[0]:{mean}} +- {value[1]:{half}}"


def _markdown(rows: list, commit: str) -> str:
    def cell(r: dict[str, Any]) -> str:
        return _pm(r["objective"], ".4g")

    def norm(r: dict[str, Any]) -> str:
        return _pm(r["normalised"], ".3f", ".3f")

    lines = ["# The task suite: leaderboard", "",
             f"Regenerated by `hermes-env leaderboard --out docs/tasks.md` (commit {commit}). Objectives are "
             "lower-is-better; each cell is the mean over the held-out seeds +- its 95% confidence half-width, "
             "and the normalised score `(policy - simplest) / (bound - simplest)` (0 = the simplest heuristic, "
             "1 = the bound). The bound is the relaxation of `hermes_env.tasks` (every application alone, warm, "
             "its reusable prefixes cached): a bound, not a target. The best heuristic is chosen on the "
             "training seeds.", "",
             "| task | objective | random | simplest | best heuristic | learned | clairvoyant heuristic | bound | "
             "best heuristic normalised | learned normalised | seeds (train / held-out) |", "| --- " * 11 + "|"]
    for task, best, scores, learned, _ in rows:
        spec, lr = next(iter(learned.items())) if learned else ("", None)
        lines.append(f"| `{task.name}` | {task.objective} | {cell(scores['random'])} | {cell(scores['simplest'])} "
                     f"(`{task.simplest}`) | {cell(scores['best heuristic'])} (`{best}`) | "
                     f"{cell(lr) + f' (`{spec}`)' if lr else '-'} | "
                     f"{cell(scores['clairvoyant']) if 'clairvoyant' in scores else '-'} | "
                     f"{scores['simplest']['bound'][0]:.4g} | "
                     f"{norm(scores['best heuristic'])} | {norm(lr) if lr else '-'} | "
                     f"{task.train_seeds[0]}-{task.train_seeds[-1]} / {task.eval_seeds[0]}-{task.eval_seeds[-1]} |")
    lines += ["", "## Learned policies against the best heuristic", "",
              "Paired over the same seeds: the difference of objectives (negative: the learned policy is better) "
              "and the share of the best heuristic's gap to the bound it closes, each +- its 95% confidence "
              "half-width. The issue's target: better by a margin outside the interval, and at least half the gap "
              "closed, on the held-out seeds and on the held-out workload.", "",
              "| task | learned | held-out seeds: learned - best | gap closed | held-out workload: learned - best | "
              "gap closed | target met |", "| --- " * 7 + "|"]
    for task, best, scores, learned, heldout in rows:
        for spec, result in learned.items():
            seeds = paired(result, scores["best heuristic"])
            work = paired(heldout[spec], heldout[best]) if spec in heldout else None
            met = all(p["difference"][0] + p["difference"][1] < 0 and p["gap_closed"][0] >= 0.5
                      for p in (seeds, work) if p is not None)
            lines.append(f"| `{task.name}` | `{spec}` | {_pm(seeds['difference'])} | {_pm(seeds['gap_closed'])} | "
                         f"{_pm(work['difference']) if work else '-'} | {_pm(work['gap_closed']) if work else '-'} | "
                         f"{'yes' if met else 'no'} |")
    lines += ["", "## The tasks", ""]
    for task, _best, _, _learned, heldout in rows:
        lines += [f"**`{task.name}`** ({task.env_id}, {task.objective}): {task.description} How it was found: "
                  f"{task.found}"]
        for r in heldout.values():
            lines.append(f"- held-out workload: {format_score(r)}")
        lines.append("")
    return "\n".join(lines)
