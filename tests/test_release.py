"""Regression tests for what a new user meets first (issue 10): the reproducers of ../shared/repro, the
gymnasium contract with default arguments, bad input, interruptions. Each failed before its fix."""

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import yaml

import hermes_env  # noqa: F401
from hermes_env.cli import main
from hermes_env.cluster.tool import WARMING
from hermes_env.errors import ConfigError
from hermes_env.pdgraph.graph import PDGraph
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.engine import Engine
from hermes_env.validation import parse_yaml
from tests.conftest import ROOT

SHORT = {"workload": {"num_applications": 40}}


def action_from_mask(env, mask, orders=0):
    """An action built part by part from the mask: the first valid choice (slot, replica), and for each order
    (prewarm, scale) ``orders`` where the mask allows it, else 0."""
    base = env.unwrapped
    out, i = [], 0
    for part in base.controls:
        for size in base._part_sizes[part]:
            valid = np.flatnonzero(mask[i:i + size])
            out.append(orders if part in ("prewarm", "scale") and mask[i + orders] else int(valid[0]))
            i += size
    return out[0] if isinstance(env.action_space, gym.spaces.Discrete) else np.array(out)
SMALL = ROOT / "configs" / "experiments" / "small.yaml"


def _python(code, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# -- installing and importing ------------------------------------------------------------------------

def test_named_configs_resolve_from_any_directory(tmp_path):
    code = ("import gymnasium as gym, hermes_env\n"
            "from hermes_env.cluster.latency import load_cost_model\n"
            "from hermes_env.sim import ExperimentConfig\n"
            "env = gym.make('hermes_env/Scheduling-v0'); env.reset(seed=0)\n"
            "load_cost_model('h100-measured'); ExperimentConfig.from_yaml('default')\n"
            "from hermes_env.sim.bench import BenchConfig; BenchConfig.from_yaml('hermes')\n"
            "print('ok')")
    result = _python(code, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_source_tree_without_an_install_reads_its_own_configs(tmp_path):
    """PYTHONPATH=checkout, or a Ray worker started in one: no hermes_env.configs package, the same
    configs/ folder beside the package."""
    code = ("import sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import importlib.util, gymnasium as gym, hermes_env\n"
            "assert importlib.util.find_spec('hermes_env.configs') is None\n"
            "from hermes_env.catalog import config_root\n"
            "env = gym.make('hermes_env/Scheduling-v0'); env.reset(seed=0)\n"
            "print(config_root())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(ROOT / "configs"), result.stderr


def test_commands_without_a_learned_policy_never_import_torch(tmp_path):
    code = ("import sys\nfrom hermes_env.cli import main\n"
            "args = ['simulate', 'small', '--scheduler', 'gittins', '--prewarm', 'pdgraph', '--out', 'run']\n"
            "assert main(args) == 0\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'stable_baselines3', 'sb3_contrib') if m in sys.modules))")
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_learned_scheduler_runs_torch_on_one_thread(tmp_path):
    code = ("import torch; torch.set_num_threads(2)\nfrom hermes_env.sim.policies import make_scheduler\n"
            "make_scheduler('ppo:scheduling-contended'); print(torch.get_num_threads())")
    result = _python(code, tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr


# -- the environments ------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", ["hermes_env/Scheduling-v0", "hermes_env/Prewarm-v0", "hermes_env/Joint-v0"])
def test_an_unmasked_learner_trains_with_the_defaults(env_id):
    from stable_baselines3 import PPO

    env = gym.make(env_id, overrides=SHORT)
    PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0).learn(128)


@pytest.mark.parametrize("env_id", ["hermes_env/Prewarm-v0", "hermes_env/Joint-v0"])
def test_releasing_everything_allowed_strands_no_application(env_id):
    """repro_release_strands_requests.py: the mask allowed releasing an instance warming for queued
    requests; nothing restarted it and episodes 'terminated' with applications stuck."""
    n = 60
    env = gym.make(env_id, overrides={"workload": {"num_applications": n}})
    base = env.unwrapped
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            for name in base.tool_names:  # the rule the mask follows: no instance warming for waiting requests
                b = base.sim.tool_backends[name]
                if b.can_release() and len(b.queue):
                    assert any(i.state != WARMING or i.busy for i in b.instances)
            action = action_from_mask(env, info["action_mask"], orders=2)  # release whatever the mask allows
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            done = terminated or truncated
        assert terminated and info["completed"] == n
        assert total == pytest.approx(-sum(a.completion - a.arrival for a in base.sim.completed), rel=1e-9)


@pytest.mark.parametrize("env_id", ["hermes_env/Prewarm-v0", "hermes_env/Joint-v0"])
def test_a_prewarm_tick_before_the_first_arrival_advances_time(env_id):
    """repro_prewarm_tick_livelock.py: the first arrival was scheduled again at every step."""
    env = gym.make(env_id, prewarm_tick=1.0, overrides={"workload": {"num_applications": 20}})
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        for _ in range(5000):
            obs, reward, terminated, truncated, info = env.step(action_from_mask(env, info["action_mask"]))
            if terminated:
                break
        assert terminated and info["completed"] == 20
        assert len(env.unwrapped.sim.engine) < 50  # keep-alive expiries, not a growing heap


@pytest.mark.parametrize("mode", ["raise", "penalty"])
def test_an_episode_without_decisions_ends_on_its_first_step(mode):
    """repro_zero_decision_episode.py: reset simulated the whole episode and step crashed."""
    env = gym.make("hermes_env/Scheduling-v0", overrides={"workload": {"num_applications": 1}}, invalid_action=mode)
    obs, info = env.reset(seed=0)
    assert info["decision"] == "" and info["replica"] == -1 and info["completed"] == 1
    obs, reward, terminated, truncated, info = env.step(0)
    app = env.unwrapped.sim.completed[0]
    assert terminated and not truncated and reward == pytest.approx(-(app.completion - app.arrival))
    with pytest.raises(ConfigError, match="after the episode ended"):
        env.step(0)


def test_prewarm_tick_must_be_a_positive_finite_number():
    for tick in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(ConfigError, match="prewarm_tick"):
            gym.make("hermes_env/Prewarm-v0", prewarm_tick=tick)


def test_run_until_then_run_starts_the_simulation_once():
    """repro_double_start.py: every application arrived twice."""
    cfg = ExperimentConfig.from_yaml(SMALL)
    sim = Simulation(cfg, seed=0)
    assert sim.arrival_times[0] > 1.0
    sim.run(until=1.0)
    result = sim.run()
    assert Counter(a.id for a in sim.completed) == Counter(range(200))
    assert result.rows == Simulation(cfg, seed=0).run().rows


def test_actions_that_are_not_elements_of_the_action_space_raise_clearly():
    env = gym.make("hermes_env/Scheduling-v0", overrides=SHORT)
    base = env.unwrapped
    with pytest.raises(ConfigError, match="before reset"):
        base.action_masks()
    with pytest.raises(ConfigError, match="before reset"):
        base.render()
    with pytest.raises(ConfigError, match="before reset"):
        base.step(0)
    base.reset(seed=0)
    for bad in (1.7, "1", 1.0, True, None, np.array([0.0])):
        with pytest.raises(TypeError, match="integer"):
            base.step(bad)
    for good in (0, np.int64(0), np.array(0), np.array([0])):
        base.step(good)


def test_a_joint_step_is_atomic_when_an_order_is_refused():
    env = gym.make("hermes_env/Joint-v0", overrides=SHORT, invalid_action="raise")
    base = env.unwrapped
    obs, info = env.reset(seed=0)
    while info["decision"] != "schedule":
        obs, _, _, _, info = env.step(action_from_mask(env, info["action_mask"]))
    tools = info["action_mask"][base.slots:base.slots + 3 * len(base.tool_names)].reshape(-1, 3)
    warm = next(i for i, m in enumerate(tools) if m[1])
    action = action_from_mask(env, info["action_mask"])
    action[0] = base.slots - 1  # masked out: fewer requests wait
    action[1 + warm] = 1
    before = base.sim.tool_backends[base.tool_names[warm]].prewarms
    with pytest.raises(ValueError, match="masked out"):
        env.step(action)
    assert base.sim.tool_backends[base.tool_names[warm]].prewarms == before


def test_a_pickled_environment_is_small_and_continues_identically():
    env = gym.make("hermes_env/Scheduling-v0")
    obs, info = env.reset(seed=0)
    for _ in range(100):
        obs, *_, info = env.step(int(np.flatnonzero(info["action_mask"])[-1]))
    blob = pickle.dumps(env.unwrapped)
    assert len(blob) < 5e6
    twin = pickle.loads(blob)
    for _ in range(50):
        action = int(np.flatnonzero(info["action_mask"])[-1])
        a, b = env.unwrapped.step(action), twin.step(action)
        info = a[4]
        assert a[1] == b[1] and a[2] == b[2] and all(np.array_equal(a[0][k], b[0][k]) for k in a[0])


# -- bad input ------------------------------------------------------------------------------------------

def _exit_code_and_error(args, capsys):
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_bad_command_line_input_exits_2_with_one_line(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("cluster: ../clusters/small.yaml\nworkload: [1, 2\n")
    code, err = _exit_code_and_error(["simulate", str(broken), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "line 3" in err and "not valid YAML" in err
    code, err = _exit_code_and_error(["simulate", "small", "--seed", "-1", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--seed" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, err = _exit_code_and_error(["simulate", "small", "--out", str(a_file)], capsys)
    assert code == 2 and "--out" in err
    corrupt = tmp_path / "model.zip"
    corrupt.write_bytes(b"not a zip file")
    code, err = _exit_code_and_error(["simulate", "small", "--scheduler", f"ppo:{corrupt}", "--out",
                                      str(tmp_path / "o")], capsys)
    assert code == 2 and "not a readable MaskablePPO checkpoint" in err
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"experiment: {SMALL}\nloads: [0.5, high]\n")
    code, err = _exit_code_and_error(["bench", "--config", str(bench), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "bench.loads[1]" in err and "the text 'high'" in err
    bench.write_text(f"experiment: {SMALL}\nloads: [0.5\n")
    code, err = _exit_code_and_error(["bench", "--config", str(bench), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "not valid YAML" in err
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp\n0.0\n1.5\nsoon\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"cluster": str(ROOT / "configs" / "clusters" / "small.yaml"), "workload": {
        "num_applications": 3, "arrivals": {"process": "trace", "trace": str(trace)},
        "applications": [{"template": "rag"}]}}))
    code, err = _exit_code_and_error(["simulate", str(exp), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "line 4" in err


def _experiment(**workload):
    spec = yaml.safe_load(SMALL.read_text())
    spec["workload"].update(workload)
    return spec


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_reader_closing_the_pipe_early_ends_a_command_quietly(tmp_path, unbuffered):
    """`hermes-env tasks | grep -q x` under pipefail: the command ends with SIGPIPE's status, no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": unbuffered}
    proc = subprocess.run([sys.executable, "-m", "hermes_env.cli", "tasks"], cwd=tmp_path, env=env, stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize("workload, field", [
    ({"arrivals": {"process": "poisson", "rate": math.inf}}, "workload.arrivals.rate"),
    ({"arrivals": {"process": "bursty", "rate": 1.0, "cv": math.inf}}, "workload.arrivals.cv"),
    ({"arrivals": {"process": "bursty", "rate": 1.0, "cv": 1e200}}, "workload.arrivals.cv"),
    ({"arrivals": {"process": "time_varying", "schedule": [{"duration": 10, "rate": 1.0},
                                                           {"duration": math.inf, "rate": 0.5}]}},
     "workload.arrivals.schedule[1].duration"),
    ({"arrivals": {"process": "poisson", "rate": "2e-1x"}}, "workload.arrivals.rate"),
    ({"applications": [{"template": "rag", "weight": math.inf}]}, "workload.applications[0].weight"),
    ({"applications": [{"template": "rag", "weight": 1e12}, {"template": "code_generation", "weight": 1e12}]}, None),
    ({"applications": [{"template": "rag", "weight": 1e300}, {"template": "code_generation", "weight": 1e300}]},
     "workload.applications[0].weight"),
])
def test_infinite_or_overflowing_numbers_are_refused_by_field(workload, field):
    spec = _experiment(**workload)
    if field is None:
        ExperimentConfig.from_dict(spec, base=SMALL.parent)
        return
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(spec, base=SMALL.parent)
    assert err.value.field == field


def test_overflowing_cluster_and_trace_numbers_are_refused(tmp_path):
    spec = _experiment()
    spec["cluster"] = yaml.safe_load((ROOT / "configs" / "clusters" / "small.yaml").read_text())
    spec["cluster"]["llm_backends"][0]["gpu_memory_gb"] = 1e300
    with pytest.raises(ConfigError, match="gpu_memory_gb"):
        ExperimentConfig.from_dict(spec, base=SMALL.parent)
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp\n" + "".join(f"{i}\n" for i in range(30)))
    spec = _experiment(arrivals={"process": "trace", "trace": str(trace), "time_scale": math.inf})
    with pytest.raises(ConfigError, match="time_scale"):
        ExperimentConfig.from_dict(spec, base=SMALL.parent)


def test_nan_or_infinite_event_times_are_refused():
    """repro_nan_event_time.py: a NaN event time stopped the run silently."""
    engine = Engine()
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="finite"):
            engine.at(bad, lambda now: None)


def test_yaml_duplicate_keys_are_refused_and_exponents_are_numbers():
    with pytest.raises(ConfigError, match="given twice"):
        parse_yaml("rate: 1.0\nrate: 2.0\n", "x.yaml")
    assert parse_yaml("rate: 2e-1\nn: 1e5\n") == {"rate": 0.2, "n": 100000.0}


def test_interlocking_loops_and_dead_states_are_refused_at_load():
    """repro_interlocking_loops.py and repro_dead_state.py: accepted, then crashed later."""
    interlocking = {"name": "interlocking", "stages": [
        {"name": "a", "backend": "tool:x", "service_time": 1.0, "next": [{"to": "b", "p": 0.5}, {"to": "c", "p": 0.5}]},
        {"name": "b", "backend": "tool:x", "service_time": 1.0,
         "next": [{"to": "c", "p": 0.5}, {"to": "a", "p": 0.5, "max_iterations": 1}]},
        {"name": "c", "backend": "tool:x", "service_time": 1.0,
         "next": [{"to": "end", "p": 0.5}, {"to": "b", "p": 0.5, "max_iterations": 1}]}]}
    with pytest.raises(ConfigError, match="interlock") as err:
        PDGraph.from_dict(interlocking)
    assert "b->a" in err.value.field and "c->b" in err.value.field
    dead = {"name": "dead", "stages": [
        {"name": "s0", "backend": "tool:x", "service_time": 1.0,
         "next": [{"to": "s0", "p": 0.5, "max_iterations": 1}, {"to": "s1", "p": 0.5, "max_iterations": 1}]},
        {"name": "s1", "backend": "tool:x", "service_time": 1.0, "next": [{"to": "s0", "p": 1.0}]}]}
    with pytest.raises(ConfigError, match="nowhere to go") as err:
        PDGraph.from_dict(dead)
    assert err.value.field == "stage 's0'.next"


# -- faults and scale -----------------------------------------------------------------------------------

def _bench_yaml(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"experiment": str(SMALL), "schedulers": ["fcfs", "gittins"],
                                    "prewarm": ["none"], "seeds": 2, "loads": [0.5, 1.0]}))
    return path


def test_an_interrupted_bench_keeps_its_runs_and_resumes_to_the_same_files(tmp_path, monkeypatch, capsys):
    from hermes_env.sim import bench

    config = _bench_yaml(tmp_path)
    full = tmp_path / "full"
    assert main(["bench", "--config", str(config), "--out", str(full), "--quiet"]) == 0
    real, calls = bench.run_cell, []

    def interrupt_third(cfg, cell):
        calls.append(cell)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, cell)

    monkeypatch.setattr(bench, "run_cell", interrupt_third)
    part = tmp_path / "part"
    assert main(["bench", "--config", str(config), "--out", str(part), "--quiet"]) == 130
    assert (part / "runs.csv").read_text().count("\n") == 1 + 2
    assert "incomplete: 6 runs missing" in (part / "table.txt").read_text()
    monkeypatch.setattr(bench, "run_cell", real)
    assert main(["bench", "--config", str(config), "--out", str(part), "--quiet"]) == 2  # results there: say so
    assert main(["bench", "--config", str(config), "--out", str(part), "--quiet", "--resume"]) == 0
    for name in ("runs.csv", "summary.json", "table.txt"):
        assert (part / name).read_text() == (full / name).read_text()


def test_sigterm_during_a_bench_writes_the_finished_runs(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "hermes_env.cli", "bench", "--config", str(_bench_yaml(tmp_path)),
                             "--out", str(out), "--quiet", "--seeds", "20"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (out / "runs.csv").is_file() and (out / "runs.csv").read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = (out / "runs.csv").read_text().count("\n") - 1
    assert 2 <= rows < 80
    assert "incomplete" in (out / "table.txt").read_text() and "Traceback" not in err


def test_prewarm_policies_do_work_linear_in_the_run_length(monkeypatch):
    """The pdgraph prewarm forecast every application that ever arrived at every decision: quadratic."""
    from hermes_env.sim import forecast

    calls = []
    real = forecast._app_miss  # once per application in the system per forecast
    monkeypatch.setattr(forecast, "_app_miss", lambda *a: calls.append(1) or real(*a))

    def forecasts(n):
        calls.clear()
        cfg = ExperimentConfig.from_dict(_experiment(num_applications=n), base=SMALL.parent)
        Simulation(cfg, prewarm="pdgraph", seed=0).run()
        return len(calls)

    assert forecasts(400) < 2.6 * forecasts(200)  # quadratic work would be about 4x


def test_config_errors_survive_pickling():
    # process pools and Ray send exceptions back pickled; ConfigError needed its three arguments
    import pickle

    from hermes_env.errors import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("workload.rate", "must be > 0", "give a positive rate")))
    assert (err.field, err.problem, err.fix, str(err)) == (
        "workload.rate", "must be > 0", "give a positive rate", "workload.rate: must be > 0 (give a positive rate)")


def test_importing_the_package_loads_neither_torch_nor_scipys_heavy_modules():
    # issue 16: `hermes-env --help` had to import scipy.stats and scipy.optimize (0.7 s) before doing anything
    code = ("import sys, hermes_env, hermes_env.cli; "
            "print(sorted(m for m in ('torch', 'scipy.stats', 'scipy.optimize', 'scipy.signal') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
