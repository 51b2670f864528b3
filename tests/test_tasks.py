"""The task suite: every task loads, its bound bounds, scores are normalised as documented."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hermes_env.errors import ConfigError
from hermes_env.tasks import Task, evaluate, leaderboard, paired, run_policy, task_names


def test_the_suite_spans_every_environment_with_disjoint_seeds() -> None:
    tasks = [Task.from_yaml(n) for n in task_names()]
    assert len(tasks) >= 8
    assert {t.part for t in tasks} >= {"schedule", "prewarm", "route", "scale", "joint"}
    for t in tasks:
        assert not set(t.train_seeds) & set(t.eval_seeds), t.name
        assert t.simplest in t.heuristics and t.clairvoyant not in t.heuristics, t.name
        assert t.heldout, f"{t.name} has no held-out workload"


@pytest.mark.parametrize("name", task_names())
def test_no_policy_beats_the_bound(name: str) -> None:
    """On the first 60 applications of each task's workload: the bound holds for any episode, and the whole
    ones (120 coding-agent sessions took 100 s here) are the leaderboard's to run."""
    task = Task.from_yaml(name)
    overrides = task.env_kwargs.get("overrides") or {}
    workload = {**overrides.get("workload", {}), "num_applications": 60}
    task = replace(task, env_kwargs={**task.env_kwargs, "overrides": {**overrides, "workload": workload}})
    for spec in (task.simplest, task.clairvoyant):
        value, bound = run_policy(task, spec, task.train_seeds[0])
        assert math.isfinite(value) and bound <= value + 1e-9, (spec, value, bound)


CANDIDATES = sorted((Path(__file__).parent.parent / "configs" / "candidates").glob("*.yaml"))


@pytest.mark.parametrize("path", CANDIDATES, ids=lambda p: p.stem)
def test_every_candidate_loads_and_runs_its_heuristics(path: Path) -> None:
    """The suite v2 candidates not kept (configs/candidates/) stay runnable, so that docs/tasks.md's figures can
    be reproduced: each loads, and its simplest and last listed heuristics run at 30 applications."""
    task = Task.from_yaml(path).shortened(0.0)  # 30 applications
    assert task.env().experiment.workload.num_applications == 30 and task.section == "controls"
    for spec in {task.simplest, task.heuristics[-1]}:
        value, bound = run_policy(task, spec, task.train_seeds[0])
        assert math.isfinite(value) and bound <= value + 1e-9, (path.stem, spec, value, bound)


def test_scores_are_normalised_between_the_simplest_heuristic_and_the_bound() -> None:
    task = Task.from_yaml("sched-bursty-mean")
    seeds = task.eval_seeds[:3]
    simplest = evaluate(task, task.simplest, seeds)
    assert simplest["normalised"][0] == 0.0
    best = evaluate(task, "gittins", seeds)
    per_seed = [run_policy(task, "gittins", s) for s in seeds]
    assert best["per_seed"] == [v for v, _ in per_seed]  # the same workload per seed, run to run
    expected = [(v - s) / (b - s) for (v, b), s in zip(per_seed, simplest["per_seed"], strict=True)]
    assert best["normalised"][0] == pytest.approx(sum(expected) / len(expected))
    assert 0.0 < best["normalised"][0] < 1.0  # Gittins beats FCFS by a wide margin under bursts
    assert best["normalised"][1] > 0.0  # a confidence half-width over three seeds


def test_random_steps_through_the_environment() -> None:
    task = Task.from_yaml("routing-mix-mean")
    value, bound = run_policy(task, "random", task.eval_seeds[0])
    assert bound < value < 10 * bound
    assert run_policy(task, "random", task.eval_seeds[0]) == (value, bound)


def test_a_bad_task_names_the_field(tmp_path) -> None:
    good = (Task.from_yaml("sched-contended-mean").env_kwargs, "mean")
    path = tmp_path / "bad.yaml"
    path.write_text(f"env_id: hermes_env/Scheduling-v0\nenv_kwargs: {good[0]}\nobjective: mean\nsimplest: fcfs\n"
                    "heuristics: [fcfs]\ntrain_seeds: [0, 10]\neval_seeds: [5, 10]\n")
    with pytest.raises(ConfigError, match="eval_seeds.*overlap"):
        Task.from_yaml(path)
    path.write_text(path.read_text().replace("eval_seeds: [5, 10]", "eval_seeds: [100, 10]\nseed: 3"))
    with pytest.raises(ConfigError, match="seed"):
        Task.from_yaml(path)
    path.write_text(path.read_text().replace("seed: 3\n", "").replace("objective: mean", "objective: median"))
    with pytest.raises(ConfigError, match="objective"):
        Task.from_yaml(path)
    path.write_text(path.read_text().replace("objective: median", "objective: mean\nsection: kept"))
    with pytest.raises(ConfigError, match="section.*headroom, controls"):
        Task.from_yaml(path)


def test_cli_lists_and_evaluates() -> None:
    out = subprocess.run([sys.executable, "-m", "hermes_env.cli", "tasks"], capture_output=True, text=True,
                         check=True).stdout
    assert all(name in out for name in task_names())
    out = subprocess.run([sys.executable, "-m", "hermes_env.cli", "evaluate", "--task", "sched-contended-mean",
                          "--policy", "gittins", "--seeds", "2"], capture_output=True, text=True, check=True).stdout
    assert "normalised score" in out and "over 2 held-out seeds" in out


def test_paired_scores_compare_on_the_same_seeds() -> None:
    task = Task.from_yaml("sched-bursty-mean")
    seeds = task.eval_seeds[:3]
    fcfs, gittins = evaluate(task, "fcfs", seeds), evaluate(task, "gittins", seeds)
    same = paired(gittins, gittins)
    assert same["difference"][0] == 0.0 and same["gap_closed"][0] == 0.0
    better = paired(gittins, fcfs)  # Gittins closes part of FCFS's gap to the bound, on every seed
    assert better["difference"][0] < 0 and 0.0 < better["gap_closed"][0] < 1.0
    assert better["gap_closed"][0] == pytest.approx(gittins["normalised"][0])  # FCFS is the simplest here


def test_the_leaderboard_writes_every_reference_and_learned_policy(tmp_path) -> None:
    task = tmp_path / "tiny.yaml"
    task.write_text("description: tiny\nenv_id: hermes_env/Scheduling-v0\nenv_kwargs: {config: small}\n"
                    "objective: mean\nsimplest: fcfs\nclairvoyant: oracle\nheuristics: [fcfs, sjf, gittins]\n"
                    "train_seeds: [0, 2]\neval_seeds: [100, 3]\nlearned: [gittins]\n"
                    "heldout: {workload: {arrivals: {process: bursty, rate: 1.0, cv: 3}}}\nfound: by hand\n"
                    "section: headroom\n")
    text = leaderboard(tmp_path / "tasks.md", [str(task)], progress=False, workers=2)
    row = next(line for line in text.splitlines() if line.startswith("| `tiny` | mean"))
    v2, controls = text.index("## Task suite v2"), text.index("## Controls")
    assert v2 < text.index(row) < controls and text[controls:].split("##")[1].strip().endswith("(none)")
    assert "(`fcfs`)" in row and row.count("+-") >= 7  # random, simplest, best, learned, clairvoyant, scores
    paired_row = next(line for line in text.splitlines() if line.startswith("| `tiny` | `gittins`"))
    assert paired_row.endswith("| no |") or paired_row.endswith("| yes |")
    assert "held-out workload:" in text and (tmp_path / "tasks.md").read_text() == text
