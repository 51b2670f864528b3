"""Written policies (``FILE.py:Name``): loading, its errors, the shipped examples end to end, the leaderboard's
written column."""

from __future__ import annotations

from pathlib import Path

import pytest

from hermes_env.cli import main
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.policies import make_autoscaler, make_router, make_scheduler
from hermes_env.sim.written import kind_of
from hermes_env.tasks import Task, evaluate, leaderboard

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "policies"
SCHEDULERS, ROUTERS, AUTOSCALERS = (str(EXAMPLES / f) for f in ("schedulers.py", "routers.py", "autoscalers.py"))


def _task(tmp_path: Path, name: str, env: str, kwargs: str, simplest: str, heuristics: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"description: tiny\nenv_id: hermes_env/{env}\nenv_kwargs: {kwargs}\nobjective: mean\n"
                    f"simplest: {simplest}\nheuristics: {heuristics}\ntrain_seeds: [0, 2]\neval_seeds: [100, 2]\n"
                    "found: by hand\n")
    return path


@pytest.fixture
def tasks(tmp_path: Path) -> dict[str, Path]:
    return {"schedule": _task(tmp_path, "sched", "Scheduling-v0", "{config: small, overrides: {workload: "
                              "{num_applications: 60}}}", "fcfs", "[fcfs, sjf]"),
            "route": _task(tmp_path, "route", "Routing-v0",
                           "{overrides: {workload: {num_applications: 40}}}", "round_robin",
                           "[round_robin, least_outstanding]"),
            "scale": _task(tmp_path, "scale", "Autoscaling-v0",  # into the first busy phase
                           "{overrides: {workload: {num_applications: 100}}}", "fixed", "[fixed, queue_threshold]")}


@pytest.mark.parametrize(("part", "written", "builtin"), [
    ("schedule", f"{SCHEDULERS}:FirstComeFirstServed", "fcfs"),
    ("schedule", f"{SCHEDULERS}:ShortestExpectedRemaining", "sjf"),
    ("route", f"{ROUTERS}:LeastOutstanding", "least_outstanding")])
def test_a_written_reimplementation_scores_exactly_as_the_builtin(tasks, part, written, builtin) -> None:
    task = Task.from_yaml(tasks[part])
    mine, theirs = evaluate(task, written), evaluate(task, builtin)
    assert mine["per_seed"] == theirs["per_seed"] and mine["policy"] == written


def test_a_written_policy_runs_headless_under_its_spec_name() -> None:
    summary = Simulation(ExperimentConfig.from_yaml("small"), scheduler=f"{SCHEDULERS}:FirstComeFirstServed",
                         seed=3).run().summary
    assert summary["scheduler"] == f"{SCHEDULERS}:FirstComeFirstServed"
    assert summary["jct"] == Simulation(ExperimentConfig.from_yaml("small"), seed=3).run().summary["jct"]


@pytest.mark.parametrize(("part", "spec"), [("schedule", f"{SCHEDULERS}:ShortestExpectedRemaining"),
                                            ("route", f"{ROUTERS}:CacheThenLoad"),
                                            ("scale", f"{AUTOSCALERS}:BacklogStep")])
def test_every_example_is_scored_through_evaluate(tasks, part, spec, capsys) -> None:
    assert main(["evaluate", "--task", str(tasks[part]), "--policy", spec]) == 0
    line = capsys.readouterr().out.strip()
    assert f": {spec} " in line and "normalised score" in line and "over 2 held-out seeds" in line


def test_an_autoscaler_example_acts(tasks) -> None:
    """BacklogStep is not `fixed` in disguise: it loads and releases replicas."""
    task = Task.from_yaml(tasks["scale"])
    assert evaluate(task, f"{AUTOSCALERS}:BacklogStep")["per_seed"] != evaluate(task, "fixed")["per_seed"]


def _bad(tmp_path: Path, body: str) -> str:
    path = tmp_path / "mine.py"
    path.write_text("from hermes_env.sim.policies import Router, SchedulingPolicy\n" + body)
    return str(path)


@pytest.mark.parametrize(("body", "spec_name", "expected"), [
    (None, "Foo", "no file"),
    ("class Other(SchedulingPolicy):\n    def key(self, request, now):\n        return 0\n", "Foo",
     "defines no 'Foo' (define it there, or name one of its classes: Other)"),
    ("class Foo(Router):\n    def route(self, backend, request, candidates, now):\n        return candidates[0]\n",
     "Foo", "Foo is not a scheduler (it does not subclass SchedulingPolicy)"),
    ("class Foo(SchedulingPolicy):\n    pass\n", "Foo", "Foo defines none of key, select"),
    ("class Foo:\n    def key(self, request, now):\n        return 0\n", "Foo", "Foo is not a scheduler"),
    ("import no_such_module_here\n", "Foo", "failed to import (ModuleNotFoundError"),
    ("class Foo(SchedulingPolicy):\n    def __init__(self, depth):\n        self.depth = depth\n"
     "    def key(self, request, now):\n        return 0\n", "Foo", "Foo() failed (TypeError"),
])
def test_loading_errors_are_one_line_naming_the_file_the_name_and_the_interface(tmp_path, capsys, body, spec_name,
                                                                                 expected) -> None:
    path = _bad(tmp_path, body) if body is not None else str(tmp_path / "missing.py")
    spec = f"{path}:{spec_name}"
    assert main(["simulate", "small", "--scheduler", spec, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hermes-env: scheduler: '{spec}'") and expected in err, err
    if "subclass" in expected or "none of" in expected:  # the interface a scheduler needs is spelled out
        assert "subclasses hermes_env.sim.policies.SchedulingPolicy and defines key(request, now)" in err


def test_the_interface_is_checked_per_kind_and_a_file_loads_once(tmp_path) -> None:
    spec = f"{ROUTERS}:LeastOutstanding"
    with pytest.raises(ConfigError, match="is not a autoscaler|is not an autoscaler|is not a"):
        make_autoscaler(spec)
    a, b = make_router(spec), make_router(spec)
    assert type(a) is type(b) and a is not b  # one module per version of the file, a policy per call
    assert kind_of(spec) == "router" and kind_of(f"{AUTOSCALERS}:BacklogStep") == "autoscaler"
    assert make_scheduler(f"rollout:{SCHEDULERS}:FirstComeFirstServed").base.name.endswith(":FirstComeFirstServed")
    plain = tmp_path / "plain.py"
    plain.write_text("class Foo:\n    def route(self, backend, request, candidates, now):\n"
                     "        return candidates[0]\n")
    with pytest.raises(ConfigError, match="'.*plain.py:Foo' is a policy of no decision kind .subclass one of "
                                          "hermes_env.sim.policies.SchedulingPolicy .scheduler."):
        kind_of(f"{plain}:Foo")


def test_the_leaderboard_has_a_written_column_for_the_tasks_of_its_kind(tasks, tmp_path) -> None:
    out = tmp_path / "tasks.md"
    out.write_text("old table\n<!-- written by hand below: kept when the leaderboard is regenerated -->\nmine\n")
    text = leaderboard(out, [str(tasks["schedule"])], progress=False,
                       written=(f"{SCHEDULERS}:FirstComeFirstServed", f"{SCHEDULERS}:ShortestExpectedRemaining"))
    row = next(line for line in text.splitlines() if line.startswith("| `sched` | mean"))
    assert f"(`{SCHEDULERS}:ShortestExpectedRemaining`)" in row  # sjf beats fcfs on the training seeds here
    section = text.split("## Written policies against the best heuristic")[1]
    assert section.count("| `sched` |") == 2 and text.endswith("kept when the leaderboard is regenerated -->\nmine\n")
    assert "old table" not in text
    with pytest.raises(ConfigError, match="is a router, and none of the tasks takes one"):
        leaderboard(out, [str(tasks["schedule"])], progress=False, written=(f"{ROUTERS}:LeastOutstanding",))


def test_the_leaderboard_command_checks_written_policies_before_any_episode(tasks, tmp_path, capsys) -> None:
    args = ["leaderboard", "--out", str(tmp_path / "t.md"), "--tasks", str(tasks["schedule"]), "--written"]
    assert main([*args, f"{SCHEDULERS}:Nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hermes-env: --written: '{SCHEDULERS}:Nope': ") and "defines no 'Nope'" in err
    assert err.count("\n") == 1 and not (tmp_path / "t.md").exists()


def test_a_bench_takes_written_policies_and_checks_them_before_any_run(tmp_path, capsys) -> None:
    def bench(schedulers: str) -> Path:
        path = tmp_path / "bench.yaml"
        path.write_text("description: tiny\nexperiment: {cluster: contended, workload: {num_applications: 20, "
                        "arrivals: {process: poisson, rate: 1.0}, applications: [{template: rag}]}}\n"
                        f"schedulers: [{schedulers}]\nprewarm: [none]\nseeds: 1\n"
                        "reference: {scheduler: fcfs, prewarm: none}\n")
        return path

    spec = f"{SCHEDULERS}:FirstComeFirstServed"
    assert main(["bench", "--config", str(bench(f"fcfs, {spec}")), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    rows = [line.split() for line in (tmp_path / "b" / "table.txt").read_text().splitlines() if " 1.00x" in line]
    assert [r[1] for r in rows] == ["fcfs", spec] and rows[0][2:] == rows[1][2:]  # the same run, bit for bit
    capsys.readouterr()
    assert main(["bench", "--config", str(bench(f"{ROUTERS}:LeastOutstanding")), "--out", str(tmp_path / "c")]) == 2
    assert "bench.schedulers: " in capsys.readouterr().err and not (tmp_path / "c").exists()
