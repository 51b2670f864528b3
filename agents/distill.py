"""Distilling the planner into a fast policy: imitation of the planner's choices, then DAgger.

The teacher is a task's non-clairvoyant planner (``rollout:BEST``, :mod:`baselines.planners`) deciding on a
copy of the environment's simulation at the decision the student faces: the copy's controlled part is
handed to the planner (whose rollouts then continue with BEST at the environment's own decision points),
:meth:`~baselines.planners.Planner.plan` prices each candidate over sampled futures, and the cheapest is
mapped back to the environment's action (BEST's own orders as the order they amount to per backend).
Iteration 0 rolls the teacher itself in (behaviour cloning on the states it visits); each later iteration
rolls in the current student, labels every state it visits with the teacher's choice there, aggregates
and retrains from scratch on everything labelled so far (Ross, Gordon and Bagnell 2011). Roll-ins of
different seeds run in parallel processes.

The student: on an order environment (``Autoscaling-v0``) an MLP over the backends, replicas, global (less
those tied to the episode's length) and kinds features plus the clock of the workload's *declared* arrival
process (the expected arrivals in the next 5 to 80 s, as the planner's resampled futures know it: no
realised arrival is read), with one masked softmax per backend; on ``Scheduling-v0`` one self-attention
layer over the candidate requests' rows (each row with the cluster summary), a score per slot, masked (it
scores any number of requests).

The checkpoint (``model.pt``) is loaded by ``agent:PATH`` (:func:`agents.scheduler.agent_policy`), with
``curve.csv`` beside it: per iteration the labels, the student's accuracy against the teacher on the states
it visited before retraining on them (on-policy) and on all labels after, and the episode objective of the
roll-ins (the teacher's at iteration 0, the student's after) beside the best heuristic's on the same seeds.

    python -m agents.distill --config autoscaling-cycles-cost-distill --out runs/distill --workers 16
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.autoscaling import _serving
from baselines.planners import BASE, CLASSES, FAMILIES, NOTHING
from hermes_env.catalog import config_path
from hermes_env.envs.features import GLOBAL_FEATURES
from hermes_env.errors import ConfigError, require
from hermes_env.sim.metrics import mean_ci
from hermes_env.tasks import Task, episode_objective, planner_weights, run_policy, task_names
from hermes_env.validation import load_yaml

FORMAT = "hermes-distill-2"
WINDOWS = (5.0, 10.0, 20.0, 40.0, 80.0)  # seconds ahead of the declared-arrivals clock
ORDER_KEYS = ("backends", "replicas", "global", "kinds")  # what the order student reads (those present)
CONTEXT_KEYS = ("backends", "global")  # the cluster summary of the slot student
# global features that tie a policy to the episode's length (the simulated time, the shares of the workload
# ended): left out, so that a student trained on shortened episodes reads a longer one's states alike
EPISODE_BOUND = [GLOBAL_FEATURES.index(n) for n in ("time", "completed_fraction", "failed_fraction")]
TEACHABLE = {"hermes_env/Autoscaling-v0": "scale", "hermes_env/Scheduling-v0": "schedule"}
SLOT = {"scale": "autoscaler", "schedule": "scheduler"}  # the Simulation attribute the teacher takes over


@dataclass
class DistillConfig:
    """``configs/train/*-distill.yaml``: what is distilled, from which teacher, for how long."""

    task: str
    teacher: str = "rollout:{best}@futures=2,horizon=20"  # {best}: the best heuristic
    best: str = ""  # the task's best heuristic ("": chosen on the training seeds as the leaderboard does)
    fraction: float = 1.0  # of the task's applications per episode (Task.shortened)
    iterations: int = 4  # DAgger iterations after the teacher's own roll-in (iteration 0)
    seeds: tuple[int, int] = (0, 16)  # roll-in seeds [first, count]: disjoint from the task's held-out ones
    label_every: int = 1  # label every k-th decision a roll-in visits
    hidden: int = 128
    epochs: int = 300
    batch_size: int = 256
    learning_rate: float = 1e-3
    seed: int = 0
    minutes: float = 0.0  # stop starting iterations after this many minutes (0: no limit)
    description: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        spec = load_yaml(config_path("train", path, "train"), "train")
        require(isinstance(spec, dict), "distill", "must be a mapping")
        unknown = sorted(set(spec) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"distill.{unknown[0]}", "is not a distill field",
                              f"use {', '.join(cls.__dataclass_fields__)}")
        cfg = cls(**spec)
        cfg.seeds = tuple(cfg.seeds)
        cfg.check()
        return cfg

    def check(self) -> None:
        require(self.task in task_names(), "distill.task", f"unknown task {self.task!r}", f"use one of {task_names()}")
        task = Task.from_yaml(self.task)
        require(task.env_id in TEACHABLE, "distill.task", f"{self.task} is a {task.env_id} task",
                f"distil on a task of {sorted(TEACHABLE)}")
        require(self.teacher.split(":")[0] in ("rollout", "search", "oracle-rollout", "oracle-search"),
                "distill.teacher", f"{self.teacher!r} is not a planner", "use rollout:{best}@OPTIONS")
        require(0 < self.fraction <= 1, "distill.fraction", f"must be in (0, 1], got {self.fraction}")
        require(len(self.seeds) == 2 and self.seeds[1] >= 1, "distill.seeds", "must be [first, count]")
        seeds = set(range(self.seeds[0], self.seeds[0] + self.seeds[1]))
        require(not seeds & set(task.eval_seeds), "distill.seeds", "include the task's held-out seeds",
                f"use seeds outside {task.eval_seeds}")
        for name in ("iterations", "label_every", "hidden", "epochs", "batch_size"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= (name != "iterations"),
                    f"distill.{name}", f"must be a positive integer, got {getattr(self, name)!r}")

    def shortened(self) -> Task:
        return Task.from_yaml(self.task).shortened(self.fraction)


# -- the student's input ----------------------------------------------------------------------------------

def arrival_clock(env: Any) -> np.ndarray:
    """log1p of the arrivals the workload's declared process expects in the next ``WINDOWS`` seconds (at most
    the applications yet to come): the clock of a cycle, known to any policy that knows the process."""
    sim = env.sim
    arrivals, now = sim.config.workload.arrivals, sim.engine.now
    left = sim.config.workload.num_applications - sim.arrived
    if arrivals.process == "trace":
        return np.zeros(len(WINDOWS), np.float32)
    base = arrivals.expected_arrivals(now)
    return np.log1p([min(arrivals.expected_arrivals(now + w) - base, left) for w in WINDOWS]).astype(np.float32)


def part(obs: dict[str, np.ndarray], key: str) -> np.ndarray:
    return np.delete(obs[key], EPISODE_BOUND) if key == "global" else obs[key].ravel()


def order_input(obs: dict[str, np.ndarray], env: Any) -> np.ndarray:
    """The order student's input: its observation keys flattened, then the arrival clock."""
    return np.concatenate([*(part(obs, k) for k in ORDER_KEYS if k in obs), arrival_clock(env)]).astype(np.float32)


def slot_input(obs: dict[str, np.ndarray], env: Any) -> np.ndarray:
    """The slot student's input: each request row followed by the cluster summary and the arrival clock
    (rows past the mask are zeros)."""
    context = np.concatenate([*(part(obs, k) for k in CONTEXT_KEYS), arrival_clock(env)])
    rows = obs["requests"]
    out = np.concatenate([rows, np.broadcast_to(context, (len(rows), len(context)))], axis=1)
    return (out * obs["request_mask"][:, None]).astype(np.float32)


# -- the student --------------------------------------------------------------------------------------------

class OrderNet(nn.Module):
    """An MLP with one block of logits per order part (``[3] * L`` on Autoscaling-v0)."""

    def __init__(self, n_in: int, sizes: list[int], hidden: int) -> None:
        super().__init__()
        self.sizes = sizes
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, sum(sizes)))
        self.register_buffer("shift", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.shift) / self.scale)


class SlotNet(nn.Module):
    """Self-attention over the candidate rows (padding masked), then a score per row: equivariant to the
    order of the rows, for any number of them."""

    def __init__(self, n_in: int, sizes: list[int], hidden: int, heads: int = 4) -> None:
        super().__init__()
        self.sizes = sizes
        self.encode = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.attend = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.score = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("shift", torch.zeros(n_in))
        self.register_buffer("scale", torch.ones(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (x.abs().sum(dim=2) == 0)
        pad[:, 0] = False  # (an empty window keeps one row, so attention never sees no keys)
        h = self.encode((x - self.shift) / self.scale)
        a, _ = self.attend(h, h, h, key_padding_mask=pad)
        return self.score(torch.cat([h, a], dim=2)).squeeze(2)


NETS = {"scale": (OrderNet, order_input), "schedule": (SlotNet, slot_input)}


def part_sizes(env: Any) -> list[int]:
    space = env.action_space
    return [int(space.n)] if hasattr(space, "n") else [int(n) for n in space.nvec]


def masked_logits(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.where(masks, logits, torch.full_like(logits, -1e9))


def greedy(net: nn.Module, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The student's action: per part the most likely valid value."""
    with torch.no_grad():
        logits = masked_logits(net(torch.as_tensor(x)[None])[0], torch.as_tensor(mask, dtype=torch.bool))
    return np.array([int(p.argmax()) for p in torch.split(logits, net.sizes)])


def build(kind: str, n_in: int, sizes: list[int], hidden: int) -> nn.Module:
    return NETS[kind][0](n_in, sizes, hidden)


# -- the teacher ----------------------------------------------------------------------------------------

class Teacher:
    """The planner ``spec`` deciding on a copy of an environment's simulation at its pending decision, its
    choice as the environment's action (None where it has no counterpart: a slot beyond the window)."""

    def __init__(self, task: Task, spec: str, env: Any) -> None:
        self.kind = TEACHABLE[task.env_id]
        family, _, arg = spec.partition(":")
        self.planner = CLASSES[SLOT[self.kind]](arg, *FAMILIES[family])
        self.planner.price(**planner_weights(task, env))
        self.seconds, self.labels = 0.0, 0

    def _branch(self, env: Any) -> Any:
        """A copy of the environment's simulation whose controlled part is the planner's."""
        sim = env.sim.branch()
        setattr(sim, SLOT[self.kind], self.planner)
        if self.kind == "schedule":
            self.planner.bind(sim)
            for backend in sim.backends.values():
                for queue in backend_queues(backend):
                    queue.policy, queue.external = self.planner, True
                    for r in queue.waiting:  # keyed as under the planner's base (the agent's queue had no keys)
                        if hasattr(self.planner, "key"):
                            r.key = self.planner.key(r, sim.engine.now)
        self.planner._next_plan = 0.0  # every decision the student faces is a planning decision
        return sim

    def label(self, env: Any) -> np.ndarray | None:
        start = time.perf_counter()
        sim = self._branch(env)
        d = sim.pending[0]
        candidates, costs = self.planner.plan(sim, d)
        choice = candidates[int(np.argmin(costs))]  # ties: BASE's own
        action = self._action(env, sim, choice)
        self.seconds += time.perf_counter() - start
        self.labels += 1
        return action

    def _action(self, env: Any, sim: Any, choice: Any) -> np.ndarray | None:
        if self.kind == "schedule":
            slots = [r.seq for r in env.candidates]
            return np.array([slots.index(choice)]) if choice in slots else None
        action = np.zeros(len(env.llm_names), np.int64)
        if choice == BASE:  # what BASE orders now, per backend: a load (1), a release (2) or nothing
            before = serving(sim)
            self.planner._apply(sim, sim.pending[0], BASE, proposed=True)
            after = serving(sim)
            for i, name in enumerate(env.llm_names):
                action[i] = 1 if after[name] > before[name] else 2 if after[name] < before[name] else 0
        elif choice != NOTHING:
            verb, name, *kind = choice  # ("load", backend[, replica kind]) or ("release", backend)
            kinds = env.replica_kinds[name]
            i = env.llm_names.index(name)
            action[i] = 2 if verb == "release" else 3 + kinds.index(kind[0]) if kind and kind[0] and len(kinds) > 1 \
                else 1
        return action


def serving(sim: Any) -> dict[str, int]:
    """Per LLM backend, the replicas warm or loading (as the reference autoscalers count them)."""
    return {name: _serving(b) for name, b in sim.llm_backends.items()}


def backend_queues(backend: Any) -> list[Any]:
    queues = [backend.queue] if hasattr(backend, "queue") else []
    return queues + [r.queue for r in getattr(backend, "replicas", []) if r.queue is not backend.queue]


# -- roll-ins -------------------------------------------------------------------------------------------

def roll_in(job: dict[str, Any]) -> dict[str, Any]:
    """One episode on simulation seed ``job["seed"]``: the teacher acts (``job["state"]`` None) or the student
    (its state dict); every ``label_every``-th decision is labelled by the teacher. Returns the inputs,
    masks and labels, how often the student agreed, and the episode's objective."""
    torch.set_num_threads(1)
    cfg = DistillConfig(**job["cfg"])
    task = cfg.shortened()
    env = task.env()
    kind = TEACHABLE[task.env_id]
    teacher = Teacher(task, cfg.teacher.format(best=job["best"]), env)
    net = None
    if job["state"] is not None:
        net = build(kind, job["n_in"], part_sizes(env), cfg.hidden)
        net.load_state_dict(job["state"])
        net.eval()
    featurise = NETS[kind][1]
    xs, masks, ys, agree, seen, acted = [], [], [], 0, 0, 0.0
    obs, info = env.reset(seed=job["seed"], options={"simulation_seed": job["seed"]})
    done, step = False, 0
    while not done:
        mask = info["action_mask"]
        t0 = time.perf_counter()
        x = featurise(obs, env) if env.decision is not None else None
        featurised = time.perf_counter() - t0
        every = cfg.label_every if net is not None else 1  # the teacher driving labels every decision
        label = teacher.label(env) if x is not None and step % every == 0 else None
        mine = None
        if net is not None and x is not None:
            t0 = time.perf_counter()
            mine = greedy(net, x, mask)
            acted += time.perf_counter() - t0 + featurised  # the student's whole decision: its input too
        if label is not None:
            xs.append(x), masks.append(mask), ys.append(label)
            seen += 1
            agree += int(mine is not None and np.array_equal(mine, label))
        act = (mine if net is not None else label) if x is not None else None
        if act is None:  # no label here (a slot beyond the window): the environment's fallback
            act = np.zeros(len(part_sizes(env)), np.int64)
        obs, _, terminated, truncated, info = env.step(act[0] if hasattr(env.action_space, "n") else act)
        done, step = terminated or truncated, step + 1
    from hermes_env.sim.metrics import summarise

    objective, _ = episode_objective(task, env, summarise(env.sim).summary)
    return {"seed": job["seed"], "x": np.array(xs, np.float32), "mask": np.array(masks, bool),
            "y": np.array(ys, np.int64), "agree": agree, "seen": seen, "objective": objective,
            "teacher_seconds": teacher.seconds, "labels": teacher.labels, "student_seconds": acted,
            "decisions": step}


def heuristic_objective(job: tuple[dict, str, int]) -> float:
    cfg, spec, seed = job
    return run_policy(DistillConfig(**cfg).shortened(), spec, seed)[0]


# -- training -------------------------------------------------------------------------------------------

def fit(kind: str, x: np.ndarray, masks: np.ndarray, y: np.ndarray, sizes: list[int], cfg: DistillConfig,
        seed: int) -> tuple[nn.Module, float]:
    """A fresh student trained on every label so far (cross-entropy per part over its valid values); its
    accuracy on them (every part right)."""
    torch.manual_seed(seed)
    net = build(kind, x.shape[-1], sizes, cfg.hidden)
    flat = x.reshape(-1, x.shape[-1])
    used = flat[np.abs(flat).sum(axis=1) > 0] if kind == "schedule" else flat
    net.shift.copy_(torch.as_tensor(used.mean(axis=0)))
    net.scale.copy_(torch.as_tensor(used.std(axis=0) + 1e-3))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    X, M, Y = torch.as_tensor(x), torch.as_tensor(masks), torch.as_tensor(y)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.epochs):
        for batch in np.array_split(rng.permutation(len(X)), max(1, len(X) // cfg.batch_size)):
            logits = masked_logits(net(X[batch]), M[batch])
            loss = sum(nn.functional.cross_entropy(part, Y[batch, i])
                       for i, part in enumerate(torch.split(logits, sizes, dim=1)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        logits = masked_logits(net(X), M)
        pred = torch.stack([p.argmax(dim=1) for p in torch.split(logits, sizes, dim=1)], dim=1)
    return net, float((pred == Y).all(dim=1).float().mean())


def choose_best(cfg: DistillConfig, pool: Any) -> str:
    """The task's best heuristic on its training seeds at the config's size (as the leaderboard chooses)."""
    task = cfg.shortened()
    jobs = [(asdict(cfg), h, s) for h in task.heuristics for s in task.train_seeds]
    scores = list(pool.map(heuristic_objective, jobs))
    means = {h: np.mean(scores[i * len(task.train_seeds):(i + 1) * len(task.train_seeds)])
             for i, h in enumerate(task.heuristics)}
    return min(means, key=means.get)


def distill(cfg: DistillConfig, out: Path, workers: int = 1, log: Any = print) -> Path:
    """Imitation then DAgger (see the module docstring); writes ``out/model.pt`` and ``out/curve.csv`` and
    returns the model's path."""
    torch.set_num_threads(1)
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    task = cfg.shortened()
    env = task.env()
    kind, sizes = TEACHABLE[task.env_id], part_sizes(env)
    seeds = list(range(cfg.seeds[0], cfg.seeds[0] + cfg.seeds[1]))
    with ProcessPoolExecutor(workers) as pool:
        best = cfg.best or choose_best(cfg, pool)
        spec = cfg.teacher.format(best=best)
        log(f"teacher {spec}; best heuristic {best}")
        base = list(pool.map(heuristic_objective, [(asdict(cfg), best, s) for s in seeds]))
        data: list[dict] = []
        net, state, n_in, rows = None, None, 0, []
        for it in range(cfg.iterations + 1):
            jobs = [{"cfg": asdict(cfg), "best": best, "seed": s, "state": state, "n_in": n_in} for s in seeds]
            runs = list(pool.map(roll_in, jobs))
            data += [r for r in runs if r["seen"]]
            x = np.concatenate([r["x"] for r in data])
            n_in = x.shape[-1]
            masks, y = np.concatenate([r["mask"] for r in data]), np.concatenate([r["y"] for r in data])
            seen = sum(r["seen"] for r in runs)
            on_policy = sum(r["agree"] for r in runs) / max(seen, 1) if state is not None else math.nan
            objective, heuristic = mean_ci([r["objective"] for r in runs]), mean_ci(base)
            margin = mean_ci([(b - r["objective"]) / b for r, b in zip(runs, base, strict=True)])
            net, accuracy = fit(kind, x, masks, y, sizes, cfg, cfg.seed + it)
            state = {k: v.clone() for k, v in net.state_dict().items()}
            row = {"iteration": it, "driver": "teacher" if it == 0 else "student", "labels": len(y), "new_labels": seen,
                   "on_policy_accuracy": on_policy, "fit_accuracy": accuracy, "objective": objective[0],
                   "objective_ci": objective[1], "best_heuristic": heuristic[0], "margin": margin[0],
                   "margin_ci": margin[1], "teacher_s_per_label": sum(r["teacher_seconds"] for r in runs) / max(
                       sum(r["labels"] for r in runs), 1), "student_s_per_decision": sum(
                       r["student_seconds"] for r in runs) / max(sum(r["decisions"] for r in runs), 1),
                   "wall_s": round(time.time() - start, 1)}
            rows.append(row)
            log(json.dumps(row))
            save(out, net, cfg, task, best, spec, n_in, sizes, rows)
            if cfg.minutes and time.time() - start > 60 * cfg.minutes and it < cfg.iterations:
                log(f"stopped after iteration {it}: the {cfg.minutes}-minute budget is spent")
                break
        final = list(pool.map(roll_in, [{"cfg": {**asdict(cfg), "label_every": 10**9}, "best": best, "seed": s,
                                          "state": state, "n_in": n_in} for s in seeds]))
        objective = mean_ci([r["objective"] for r in final])
        margin = mean_ci([(b - r["objective"]) / b for r, b in zip(final, base, strict=True)])
        rows.append({"iteration": len(rows), "driver": "student (final, no labels)", "labels": len(y), "new_labels": 0,
                     "on_policy_accuracy": math.nan, "fit_accuracy": math.nan, "objective": objective[0],
                     "objective_ci": objective[1], "best_heuristic": mean_ci(base)[0], "margin": margin[0],
                     "margin_ci": margin[1], "teacher_s_per_label": math.nan,
                     "student_s_per_decision": sum(r["student_seconds"] for r in final) / max(
                         sum(r["decisions"] for r in final), 1), "wall_s": round(time.time() - start, 1)})
        log(json.dumps(rows[-1]))
    return save(out, net, cfg, task, best, spec, n_in, sizes, rows)


def save(out: Path, net: nn.Module, cfg: DistillConfig, task: Task, best: str, spec: str, n_in: int,
         sizes: list[int], rows: list[dict]) -> Path:
    path = out / "model.pt"
    torch.save({"format": FORMAT, "kind": TEACHABLE[task.env_id], "task": task.name, "env_id": task.env_id,
                "n_in": n_in, "sizes": sizes, "hidden": cfg.hidden, "state": net.state_dict(), "teacher": spec,
                "best": best, "config": asdict(cfg)}, path)
    with open(out / "curve.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# -- the checkpoint as a policy (agent:PATH) ----------------------------------------------------------------

def distilled_policy(path: str | Path, env: Any) -> Any:
    """``act(observation, action_mask)`` of a distilled checkpoint in ``env`` (the environment of the task it
    was distilled on: the same action parts and observation layout)."""
    torch.set_num_threads(int(os.environ.get("HERMES_ENV_TORCH_THREADS", "1")))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a corrupt or foreign file fails in many ways inside torch and zipfile
        raise ConfigError("policy", f"{path} is not a readable checkpoint ({type(err).__name__}: {err})",
                          "give a model.pt written by python -m agents.distill") from None
    require(isinstance(ckpt, dict) and ckpt.get("format") == FORMAT, "policy", f"{path} is not a distilled "
            "checkpoint", "give a model.pt written by python -m agents.distill")
    sizes = part_sizes(env)
    require(sizes == ckpt["sizes"], "policy", f"agent:{path} was distilled for "
            f"{ckpt['env_id']} with action parts {ckpt['sizes']}, this environment has {sizes}",
            "evaluate it on the task it was distilled on")
    net = build(ckpt["kind"], ckpt["n_in"], sizes, ckpt["hidden"])
    net.load_state_dict(ckpt["state"])
    net.eval()
    featurise = NETS[ckpt["kind"]][1]

    def act(obs: dict[str, np.ndarray], mask: np.ndarray) -> Any:
        x = featurise(obs, env)
        require(x.shape[-1] == ckpt["n_in"], "policy", f"agent:{path} reads {ckpt['n_in']} features, this "
                f"environment gives {x.shape[-1]}", "evaluate it on the task it was distilled on")
        action = greedy(net, x, mask)
        return int(action[0]) if hasattr(env.action_space, "n") else action
    return act


# -- evaluation -----------------------------------------------------------------------------------------

def eval_job(job: tuple[dict, str, str, int, bool]) -> dict[str, Any]:
    """One held-out episode (at the config's size) of the distilled checkpoint or a headless policy."""
    from hermes_env.tasks import episode

    cfg, spec, path, seed, heldout = job
    task = DistillConfig(**cfg).shortened()  # (cfg's fraction: the distilled size, or the evaluation's)
    t0 = time.perf_counter()
    if spec == "learned":
        torch.set_num_threads(1)
        env = task.env(heldout)
        act = distilled_policy(path, env)
        objective, bound = episode_objective(task, env, episode(env, act, seed))
    else:
        objective, bound = run_policy(task, spec, seed, heldout)
    return {"policy": spec, "seed": seed, "heldout": heldout, "objective": objective, "bound": bound,
            "seconds": time.perf_counter() - t0}


def evaluate(path: Path, workers: int, seeds: tuple[int, ...] | None = None, planner: bool = True,
             fraction: float | None = None, sets: tuple[str, ...] = ("seeds", "workload"),
             write: bool = True) -> dict:
    """The checkpoint, the best heuristic and the planner (the teacher, headless) on the task's held-out
    seeds and held-out workload (``sets``), paired, at the distilled size (or ``fraction`` of the task's
    applications); with ``write``, writes ``eval.json`` (``eval-FRACTION.json``) beside the model."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ckpt["config"] if fraction is None else {**ckpt["config"], "fraction": fraction}
    task = DistillConfig(**cfg).shortened()
    seeds = seeds or task.eval_seeds
    specs = ["learned", ckpt["best"]] + ([ckpt["teacher"]] if planner else [])
    heldouts = ([False] if "seeds" in sets else []) + ([True] if "workload" in sets and task.heldout else [])
    jobs = [(cfg, s, str(path), seed, h) for h in heldouts for s in specs for seed in seeds]
    with ProcessPoolExecutor(workers) as pool:
        runs = list(pool.map(eval_job, sorted(jobs, key=lambda j: j[1] != ckpt["teacher"])))  # slowest first
    result: dict[str, Any] = {"task": task.name, "fraction": cfg["fraction"], "seeds": list(seeds),
                              "best": ckpt["best"], "teacher": ckpt["teacher"], "runs": runs}
    for h in heldouts:
        per = {s: [next(r["objective"] for r in runs if r["policy"] == s and r["seed"] == x and r["heldout"] == h)
                   for x in seeds] for s in specs}
        b = np.array(per[ckpt["best"]])
        bound = np.array([next(r["bound"] for r in runs if r["policy"] == ckpt["best"] and r["seed"] == x and
                               r["heldout"] == h) for x in seeds])
        out = {s: mean_ci(v) for s, v in per.items()}
        out["learned_minus_best"] = mean_ci(list(np.array(per["learned"]) - b))  # the leaderboard's columns
        out["gap_closed"] = mean_ci(list((b - np.array(per["learned"])) / (b - bound)))
        out["learned_vs_best"] = mean_ci(list((b - np.array(per["learned"])) / b))
        if planner:
            p = np.array(per[ckpt["teacher"]])
            out["planner_vs_best"] = mean_ci(list((b - p) / b))
            margin = b - p
            out["captured"] = float(np.sum(b - np.array(per["learned"])) / np.sum(margin)) if np.sum(
                margin) > 0 else math.nan
        result["heldout_workload" if h else "heldout_seeds"] = out
    if write:
        name = "eval.json" if fraction is None else f"eval-{fraction:g}.json"
        (path.parent / name).write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a distill config: a name under configs/train or a YAML path")
    parser.add_argument("--task", help="a task (instead of --config: the defaults below)")
    parser.add_argument("--iterations", type=int, help="DAgger iterations after the teacher's roll-in")
    parser.add_argument("--seeds", type=int, help="roll-in seeds per iteration (from the config's first)")
    parser.add_argument("--fraction", type=float, help="of the task's applications per episode")
    parser.add_argument("--minutes", type=float, help="start no iteration after this many minutes")
    parser.add_argument("--workers", type=int, default=1, help="processes for roll-ins and evaluation")
    parser.add_argument("--out", type=Path, required=True, help="output directory (model.pt, curve.csv)")
    parser.add_argument("--evaluate", action="store_true", help="then evaluate on the held-out seeds (eval.json)")
    parser.add_argument("--no-planner", action="store_true", help="evaluate without the (slow) planner")
    parser.add_argument("--evaluate-at", default="", help="then also at these fractions of the task's "
                        "applications (comma-separated; 1: the task's own size)")
    parser.add_argument("--planner-at", default="", help="of those fractions, the ones where the (slow) planner "
                        "is evaluated too")
    args = parser.parse_args(argv)
    try:
        require(bool(args.config) != bool(args.task), "--config", "give --config or --task, not both or neither")
        cfg = DistillConfig.from_yaml(args.config) if args.config else DistillConfig(task=args.task)
        for name in ("iterations", "fraction", "minutes"):
            if getattr(args, name) is not None:
                setattr(cfg, name, getattr(args, name))
        if args.seeds is not None:
            cfg.seeds = (cfg.seeds[0], args.seeds)
        cfg.check()
        require(args.workers >= 1, "--workers", "must be at least 1")
        path = distill(cfg, args.out, args.workers)
        print(f"wrote {path} and {args.out / 'curve.csv'}", flush=True)
        if args.evaluate:
            print(json.dumps({k: v for k, v in evaluate(path, args.workers, planner=not args.no_planner).items()
                              if k != "runs"}, default=float), flush=True)
        planned = {float(f) for f in filter(None, args.planner_at.split(","))}
        for fraction in (float(f) for f in filter(None, args.evaluate_at.split(","))):
            print(json.dumps({k: v for k, v in evaluate(path, args.workers, planner=fraction in planned,
                                                        fraction=fraction).items() if k != "runs"},
                             default=float), flush=True)
    except ConfigError as err:
        print(f"python -m agents.distill: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
