"""Bad input on every command (issue 19, item 6): one table row per class of malformed input, each ending in
exit status 2 and one line naming the field, before any work (no cell run, no file written), never a
traceback, a hang or a silent acceptance. Rows run in-process through ``hermes_env.cli.main``."""

from __future__ import annotations

import ast
import signal
import sys
import tomllib
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import yaml

from hermes_env.cli import main
from hermes_env.sim import policies
from hermes_env.sim.workload import ArrivalConfig
from tests.conftest import ROOT

SMALL = ROOT / "configs" / "experiments" / "small.yaml"
CLUSTER = ROOT / "configs" / "clusters" / "small.yaml"
TASK = (ROOT / "configs" / "tasks" / "sched-contended-mean.yaml").read_text()
PLAIN = "arrival,prompt_tokens,output_tokens\n"
LLM_STAGE = {"backend": "llm:llama3-8b", "prompt_tokens": {"dist": "deterministic", "value": 10},
             "output_tokens": {"dist": "deterministic", "value": 5}}


def _trace(tmp, name, times):
    path = tmp / name
    path.write_text(PLAIN + "".join(f"{t},{100 + i},{10 + i}\n" for i, t in enumerate(times)))
    return str(path)


def _file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return str(path)


def _task(tmp, old, new):
    assert old in TASK
    return _file(tmp, "task.yaml", TASK.replace(old, new))


def _bench(tmp, **spec):
    return _file(tmp, "bench.yaml", yaml.safe_dump({"experiment": str(SMALL), "schedulers": ["fcfs"], **spec}))


def _out(tmp):
    return str(tmp / "out.yaml")


GOOD_TRACE = [0.0, 0.5, 0.6, 2.0, 2.2, 5.0]
# (class of malformed input, argv built in a temporary folder, what the line must name)
ROWS = [
    # fit-trace: degenerate traces, bad --bin / --out / --backend / --num-applications
    ("trace arrivals with no spread", lambda t: ["fit-trace", _trace(t, "a.csv", [3.0] * 5), "--out", _out(t)],
     "trace: all 5 arrivals"),
    ("trace too short", lambda t: ["fit-trace", _trace(t, "a.csv", [0.0, 1.0]), "--out", _out(t)], "trace: "),
    ("trace at a fixed period", lambda t: ["fit-trace", _trace(t, "a.csv", [0, 1, 2, 3]), "--out", _out(t)],
     "fixed period"),
    ("trace of timestamps only", lambda t: ["fit-trace", _file(t, "a.csv", "timestamp\n0\n1\n3\n"), "--out", _out(t)],
     "arrival times only"),
    ("trace missing", lambda t: ["fit-trace", str(t / "none.csv"), "--out", _out(t)], "trace: no file"),
    ("--bin zero", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--bin", "0", "--out", _out(t)], "--bin"),
    ("--bin not a number", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--bin", "nan", "--out", _out(t)],
     "--bin"),
    ("--bin too many bins", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--bin", "1e-9", "--out", _out(t)],
     "--bin: 1e-09 s cuts"),
    ("--bin past the trace", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--bin", "1e300",
                                        "--out", _out(t)], "--bin: must be <= 1e+12"),
    ("--out a folder", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--out", str(t)], "--out: "),
    ("--out under a file", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--out", str(t / "a.csv" / "w")],
     "--out: "),
    ("--backend a tool", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE), "--backend", "tool:python-sandbox",
                                    "--out", _out(t)], "--backend: 'tool:python-sandbox'"),
    ("--num-applications past the workload bound", lambda t: ["fit-trace", _trace(t, "a.csv", GOOD_TRACE),
                                                             "--num-applications", str(10**14), "--out", _out(t)],
     "--num-applications"),
    # evaluate: seeds, task files, policies
    ("--seeds past the held-out seeds", lambda t: ["evaluate", "--task", "sched-contended-mean", "--policy", "fcfs",
                                                   "--seeds", "11"], "--seeds: is 11"),
    ("task without simplest", lambda t: ["evaluate", "--task", _task(t, "simplest: fcfs\n", ""), "--policy", "fcfs"],
     "task task.simplest: is missing"),
    ("task with an unknown env keyword", lambda t: ["evaluate", "--task", _task(t, "env_kwargs: {",
                                                                              "env_kwargs: {a: 1, "),
                                                    "--policy", "fcfs"], "task task.env_kwargs.a"),
    ("task with a bad env keyword value", lambda t: ["evaluate", "--task", _task(t, "env_kwargs: {",
                                                                               "env_kwargs: {slots: -3, "),
                                                     "--policy", "fcfs"], "task task.env_kwargs.slots"),
    ("task with an empty seed range", lambda t: ["evaluate", "--task", _task(t, "[1000, 10]", "[1000, 0]"),
                                                 "--policy", "fcfs"], "task task.eval_seeds[1]"),
    ("task with a reversed seed range", lambda t: ["evaluate", "--task", _task(t, "[1000, 10]", "[1000, -10]"),
                                                   "--policy", "fcfs"], "task task.eval_seeds[1]"),
    ("task with an unknown heuristic", lambda t: ["evaluate", "--task", _task(t, "simplest: fcfs", "simplest: lifo"),
                                                  "--policy", "fcfs"], "task task.simplest: unknown scheduler"),
    ("task with heuristics not a list", lambda t: ["evaluate", "--task", _task(
        t, "heuristics: [fcfs, app_fcfs, sjf, gittins, llmsched, edf, bros, calvo]", "heuristics: fcfs"),
        "--policy", "fcfs"], "task task.heuristics"),
    ("policy of another part", lambda t: ["evaluate", "--task", "sched-contended-mean", "--policy", "pdgraph"],
     "policy: unknown scheduler 'pdgraph'"),
    ("joint policy of three names", lambda t: ["evaluate", "--task", "joint-contended-cost", "--policy",
                                               "fcfs+none+shared"], "policy: 'fcfs+none+shared' names 3"),
    ("missing checkpoint", lambda t: ["evaluate", "--task", "sched-contended-mean", "--policy", "ppo:none.zip"],
     "policy: no checkpoint"),
    ("task with a bad held-out override", lambda t: ["evaluate", "--task", _task(
        t, "heldout: {workload: {arrivals: {process: poisson, rate: 1.7",
        "heldout: {workload: {arrivals: {process: poisson, rate: -1"), "--policy", "fcfs", "--heldout"],
     "task task.heldout.workload.arrivals.rate"),
    ("--heldout without a held-out workload", lambda t: ["evaluate", "--task", _file(t, "t.yaml", "\n".join(
        line for line in TASK.splitlines() if not line.startswith("heldout"))), "--policy", "fcfs", "--heldout"],
     "task t.heldout: is not given"),
    # bench: every name, the reference's included, and the loads, before any cell
    ("bench reference names an unknown scheduler", lambda t: ["bench", "--config", _bench(t, reference={
        "scheduler": "lifo"}), "--out", str(t / "b")], "bench.reference.scheduler: unknown scheduler 'lifo'"),
    ("bench reference not a mapping", lambda t: ["bench", "--config", _bench(t, reference="fcfs"), "--out",
                                                 str(t / "b")], "bench.reference: must be a mapping"),
    ("bench policies not a list", lambda t: ["bench", "--config", _bench(t, schedulers="fcfs"), "--out", str(t / "b")],
     "bench.schedulers: must be a non-empty list"),
    ("bench load of unscalable arrivals", lambda t: ["bench", "--config", _file(t, "b.yaml", yaml.safe_dump({
        "experiment": {"cluster": str(CLUSTER), "workload": {
            "num_applications": 5, "applications": [{"template": "rag"}],
            "arrivals": {"process": "time_varying", "schedule": [{"duration": 1, "rate": 1}]}}},
        "loads": [0.5]})), "--out", str(t / "b")], "bench.loads: scale only"),
    ("bench checkpoint that does not exist", lambda t: ["bench", "--config", _bench(t), "--schedulers", "fcfs,ppo:none",
                                                        "--out", str(t / "b")], "scheduler: no checkpoint 'none'"),
    ("bench --out under a file", lambda t: ["bench", "--config", _bench(t), "--out", str(t / "bench.yaml" / "b")],
     "--out: "),
    # simulate, leaderboard, train
    ("simulate a workload past the memory bound", lambda t: ["simulate", _file(t, "e.yaml", yaml.safe_dump({
        "cluster": str(CLUSTER), "workload": {"num_applications": 5 * 10**9, "applications": [{"template": "rag"}],
                                              "arrivals": {"process": "poisson", "rate": 1.0}}})),
                                                             "--out", str(t / "s")],
     "workload.num_applications: must be <= 100000000"),
    ("simulate --out a file", lambda t: ["simulate", "small", "--out", _file(t, "f", "")], "--out: "),
    ("simulate a PDGraph of unbounded states", lambda t: ["simulate", _file(t, "e.yaml", yaml.safe_dump({
        "cluster": str(CLUSTER), "workload": {"num_applications": 5, "arrivals": {"process": "poisson", "rate": 1.0},
                                              "applications": [{"template": {"name": "loopy", "stages": [
                                                  {**LLM_STAGE, "name": "a", "next": [{"to": "b", "p": 1.0}]},
                                                  {**LLM_STAGE, "name": "b", "next": [
                                                      {"to": "a", "p": 0.5, "max_iterations": 10**8},
                                                      {"to": "end", "p": 0.5}]}]}}]}})), "--out", str(t / "s")],
     "pdgraph 'loopy': has more than 100,000 states"),
    # prefill/decode disaggregation: a link that would hold a transfer forever, a split without per-replica queues
    ("simulate a KV link of zero bandwidth", lambda t: ["simulate", _file(t, "e.yaml", yaml.safe_dump({
        "cluster": {"llm_backends": [{"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b",
                                      "replicas": 2, "disaggregation": {
                                          "prefill_replicas": 1, "link": {"bandwidth_gbps": 0, "latency_us": 2},
                                          "slo": {"ttft_s": 1, "tpot_s": 0.1}}}]},
        "workload": {"arrivals": {"process": "trace", "trace": _trace(t, "a.csv", GOOD_TRACE)}}})),
        "--out", str(t / "s")], "disaggregation.link.bandwidth_gbps"),
    # the KV accounting: an unknown one, and vLLM's blocks with a migration policy (which moves KV in tokens)
    ("simulate unknown KV accounting", lambda t: ["simulate", _file(t, "e.yaml", yaml.safe_dump({
        "cluster": {"llm_backends": [{"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b",
                                      "kv_accounting": "pages"}]},
        "workload": {"arrivals": {"process": "trace", "trace": _trace(t, "a.csv", GOOD_TRACE)}}})),
        "--out", str(t / "s")], "kv_accounting: must be one of tokens, vllm-0.11, vllm-0.34, got 'pages'"),
    ("simulate migration with vLLM's blocks", lambda t: ["simulate", _file(t, "e.yaml", yaml.safe_dump({
        "cluster": {"llm_backends": [{"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b",
                                      "replicas": 2, "kv_accounting": "vllm-0.11"}]},
        "workload": {"arrivals": {"process": "trace", "trace": _trace(t, "a.csv", GOOD_TRACE)}}})),
        "--router", "least_outstanding", "--migration", "llumnix", "--out", str(t / "s")],
     "migration: is 'llumnix', but LLM backend 'llm:llama3-8b' counts KV as vllm-0.11"),
    ("simulate a split without a router", lambda t: ["simulate", "pd-disagg", "--disagg", "always",
                                                     "--out", str(t / "s")], "router: llm:llama3-8b splits"),
    ("simulate unknown disagg", lambda t: ["simulate", "small", "--disagg", "sometimes", "--out", str(t / "s")],
     "disagg: unknown disagg 'sometimes'"),
    ("simulate unknown router", lambda t: ["simulate", "small", "--router", "lifo", "--out", str(t / "s")],
     "router: unknown router 'lifo'"),
    ("simulate bad migration parameters", lambda t: ["simulate", "small", "--migration", "llumnix:0:x", "--out",
                                                     str(t / "s")], "migration: bad parameters '0:x'"),
    ("bench unknown migration policy", lambda t: ["bench", "--config", _bench(t, migrations=["lifo"]), "--out",
                                                  str(t / "b")], "bench.migrations: unknown migration policy"),
    ("leaderboard unknown task", lambda t: ["leaderboard", "--tasks", "sched-contended-mean,none", "--out",
                                            str(t / "lb.md")],
     "task: no task config named 'none'"),
    ("leaderboard --out a folder", lambda t: ["leaderboard", "--tasks", "sched-contended-mean", "--out", str(t)],
     "--out: "),
    ("train unknown config", lambda t: ["train", "--config", "none", "--out", str(t / "tr")], "train: no train config"),
]


def _hang(signum, frame):
    raise TimeoutError("the command hung")


def _run(argv, capsys):
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(60)  # a hang fails the row instead of the suite
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors: usage, then one error line
        code = exit_.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    return code, captured.err, captured.out


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_naming_the_field(row, tmp_path, capsys, monkeypatch):
    from hermes_env.sim import bench

    monkeypatch.setattr(bench, "run_cell", lambda *a: pytest.fail("a cell ran before the input was checked"))
    _, build, field = row
    argv = build(tmp_path)
    code, err, out = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and out == "", (code, err, out)
    assert field in lines[-1], lines
    assert lines[-1].startswith(("hermes-env: ", "hermes-env ")) and (len(lines) == 1 or lines[0].startswith("usage:"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "out.yaml").exists()  # no work began


def test_training_without_its_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "agents.train", None)  # import agents.train raises ImportError
    code, err, _ = _run(["train", "--config", "sched-bursty-mean", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("hermes-env: algorithm: ") and "pip install 'hermes_env[rl]'" in err


def _entry_points_with(group, entry):
    real = policies.entry_points

    def fake(group_=None, **kw):
        group_ = kw.pop("group", group_)
        if group_ == group:
            return [entry] if kw.get("name", entry.name) == entry.name else []
        return real(group=group_, **kw)
    return fake


@pytest.mark.parametrize("spec, group, task", [
    ("agent:routing-mix-mean", "hermes_env.env_policy_families", "routing-mix-mean"),
    ("ppo:scheduling-contended", "hermes_env.scheduler_families", "sched-contended-mean"),
])
def test_a_learned_policy_without_the_rl_extra_names_the_extra(spec, group, task, capsys, monkeypatch):
    """Issue 19.2: `evaluate --policy agent:NAME` without sb3-contrib printed ModuleNotFoundError's traceback."""
    prefix = spec.partition(":")[0]
    missing = EntryPoint(prefix, "hermes_env_no_such_module.sb3:factory [rl]", group)
    monkeypatch.setattr(policies, "entry_points", _entry_points_with(group, missing))
    monkeypatch.setattr(policies, "_FAMILIES", {})
    code, err, _ = _run(["evaluate", "--task", task, "--policy", spec, "--seeds", "1"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"'{prefix}:' policies are unavailable" in err and "pip install 'hermes_env[rl]'" in err


def test_agents_registers_its_policy_families_and_the_core_never_imports_it(monkeypatch):
    """The core finds `agent:NAME` through the entry point pyproject.toml declares (what `pip install` registers),
    not by importing agents."""
    for path in (ROOT / "hermes_env").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "agents" or n.startswith("agents.") for n in names), path
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    group = "hermes_env.env_policy_families"
    (name, value), = declared[group].items()
    monkeypatch.setattr(policies, "entry_points", _entry_points_with(group, EntryPoint(name, value, group)))
    from hermes_env.tasks import Task, _prepare

    task = Task.from_yaml("routing-mix-mean")
    env, _ = _prepare(task, "agent:routing-mix-mean", task.eval_seeds[0])
    act = policies.load_family(group, "agent", "policy")("routing-mix-mean", env)
    obs, info = env.reset(seed=0, options={"simulation_seed": task.eval_seeds[0]})
    assert info["action_mask"][int(act(obs, info["action_mask"]))]  # a valid action


def test_a_long_idle_gap_in_a_time_varying_schedule_costs_nothing():
    """Thinning at the peak rate drew a candidate every millisecond through a 1e12-second idle piece: a hang.
    Inverting the cumulative rate costs per arrival: 3,000 arrivals are three busy seconds of three cycles."""
    period = 1.0 + 1e12
    arrivals = ArrivalConfig.from_dict({"process": "time_varying", "schedule": [
        {"duration": 1.0, "rate": 1000.0}, {"duration": 1e12, "rate": 0.0}]}, "a")
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(10)
    try:
        t = arrivals.times(3000, np.random.default_rng(0))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert np.all(np.diff(t) >= 0) and np.all(np.mod(t, period) < 1.0)  # only ever in the busy second
    cycles = np.bincount((t // period).astype(int))
    assert len(cycles) in (3, 4) and abs(cycles[0] - 1000) < 4 * 1000**0.5  # Poisson(1000) a busy second
