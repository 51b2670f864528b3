"""The compiled build (setup.py compiles the simulator's hot modules with mypyc from their one source) runs
exactly what the Python source runs: the same fixed-seed figures, observations, snapshots and pickles, bit for
bit. ``make test`` builds it and sets ``HERMES_ENV_COMPILE=1``, which makes a missing compiled module a failure
here rather than a pure build passing unnoticed; in a pure build the comparisons have nothing to compare."""

from __future__ import annotations

import ast
import copy
import importlib
import importlib.machinery
import json
import os
import pickle
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import hermes_env
from hermes_env import _mypyc

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "setup.py"
COMPILED = os.environ.get("HERMES_ENV_COMPILE") == "1" and os.environ.get("HERMES_ENV_PURE") != "1"


def setup_modules() -> list[str]:
    """The modules setup.py compiles, as module names."""
    tree = ast.parse(SETUP.read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", "") == "COMPILED" for t in node.targets))
    return sorted(e.value[:-3].replace("/", ".") for e in value.elts)


def needs_compiled() -> None:
    if not hermes_env.compiled_modules() or os.environ.get("HERMES_ENV_PURE") == "1":
        if COMPILED:
            pytest.fail("HERMES_ENV_COMPILE=1 but the package runs from source: build it with `make compiled`")
        pytest.skip("a pure build: no compiled modules to compare with the source")


def test_the_compiled_build_is_the_one_setup_names_and_runs() -> None:
    needs_compiled()
    assert hermes_env.compiled_modules() == setup_modules()
    for name in setup_modules():
        importlib.import_module(name)
    assert _mypyc.running_compiled() == setup_modules()


FIGURES = """
import hashlib, json, pickle, sys
import numpy as np
import gymnasium as gym
import hermes_env
from hermes_env._mypyc import running_compiled
from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import Simulation

out = {"compiled": running_compiled()}
for experiment, policies in (("contended", {"scheduler": "gittins", "prewarm": "pdgraph"}),
                             ("routing", {"router": "prefix_affinity", "scheduler": "gittins"}),
                             ("autoscaling", {"autoscaler": "pdgraph"})):
    cfg = load_experiment(experiment, {"workload": {"num_applications": 80}})
    sim = Simulation(cfg, seed=5, **policies)
    sim.run(until=20.0)
    snap = sim.snapshot()
    summary = sim.run().summary
    again = Simulation.from_snapshot(snap).run().summary
    out[experiment] = [repr(summary), repr(again) == repr(summary)]
env = gym.make("hermes_env/Scheduling-v0").unwrapped
obs, _ = env.reset(seed=3)
digest, rewards = hashlib.sha256(), []
for step in range(150):
    valid = np.flatnonzero(env.action_masks())
    action = int(valid[step % len(valid)])
    obs, reward, done, truncated, _ = env.step(action)
    rewards.append(float(reward))
    for key in sorted(obs):
        digest.update(np.ascontiguousarray(obs[key]).tobytes())
    if step == 75:
        digest.update(pickle.dumps(pickle.loads(pickle.dumps(env)).sim.engine.now))
    if done or truncated:
        obs, _ = env.reset()
out["env"] = [digest.hexdigest(), repr(rewards)]
print(json.dumps(out))
"""


def run_figures(pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HERMES_ENV_PURE"}
    if pure:
        env["HERMES_ENV_PURE"] = "1"
    done = subprocess.run([sys.executable, "-c", FIGURES], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False, timeout=600)  # a restored copy driving the original's replicas never ends
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_compiled_and_pure_builds_give_identical_runs_snapshots_and_observations() -> None:
    needs_compiled()
    compiled, pure = run_figures(pure=False), run_figures(pure=True)
    assert compiled.pop("compiled") == setup_modules()
    assert pure.pop("compiled") == []
    assert compiled == pure  # summaries as repr (every float bit for bit), observation bytes, rewards
    assert all(restored for _, restored in (compiled[k] for k in ("contended", "routing", "autoscaling")))


def test_the_compiled_build_runs_outside_the_checkout(tmp_path: Path) -> None:
    """As a console script (``.venv/bin/hermes-env``) runs it: sys.path without the checkout's root, so the
    modules' shared library must sit inside the package (it once sat at the root: ModuleNotFoundError)."""
    needs_compiled()
    code = ("import sys, hermes_env.envs.hermes; from hermes_env._mypyc import running_compiled; "
            "print(sorted(running_compiled()) == sorted(hermes_env.compiled_modules()), "
            "[m for m in sys.modules if m.endswith('__mypyc')])")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HERMES_ENV_PURE")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True ['hermes_env._compiled__mypyc']"


def test_hermes_env_pure_runs_the_source_in_a_fresh_process() -> None:
    code = ("import hermes_env.sim.engine as e, hermes_env.cluster.prefix as p; "
            "from hermes_env._mypyc import running_compiled; print(e.__file__, p.__file__, running_compiled())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "HERMES_ENV_PURE": "1"},
                          capture_output=True, text=True, check=True)
    engine, prefix, running = done.stdout.split(" ", 2)
    assert engine.endswith("engine.py") and prefix.endswith("prefix.py") and running.strip() == "[]"


def test_compiled_classes_copy_and_pickle_with_their_state() -> None:
    """Instances of compiled classes (no ``__dict__``, no ``__slots__`` attribute) and of an interpreted
    subclass of one (the host KV tier) keep every attribute through deepcopy and pickle, and a copied bound
    method of a compiled class is bound to the copy (a snapshot's events call the copied replicas)."""
    from hermes_env.cluster.kvtier import HostTier
    from hermes_env.cluster.prefix import PrefixCache, Segment
    from hermes_env.cluster.queue import WaitQueue
    from hermes_env.cluster.request import Request
    from hermes_env.sim.metrics import LogHistogram

    seg = Segment(None, 0, 64)
    cache, host = PrefixCache(16), HostTier(16, 100)
    cache._extend([seg], 64)
    host._extend([seg], 32)
    host.used = 2
    req = Request("app", 2, 1, "llm:a", prompt_tokens=64, output_tokens=5, chain=(seg,))
    req.generated, req.key = 3, (1.5, 2)
    hist = LogHistogram(per_decade=10)
    for v in (0.0, 1e-3, 2.5, 2.5):
        hist.add(v)
    for obj in (cache, host, req, hist):
        for twin in (copy.deepcopy(obj), pickle.loads(pickle.dumps(obj))):
            assert type(twin) is type(obj) and twin is not obj
            assert _mypyc.attributes(twin).keys() == _mypyc.attributes(obj).keys()
    copied = copy.deepcopy({"cache": cache, "host": host, "req": req})
    assert copied["req"].chain[0] is seg and copied["cache"].cached_end == {seg: 64}  # segments are shared
    assert copied["host"].cached_end == {seg: 32} and copied["host"].capacity == 100 and copied["host"].used == 2
    assert copied["cache"].cached_end is not cache.cached_end
    assert (copied["req"].generated, copied["req"].key, copied["req"].prompt_tokens) == (3, (1.5, 2), 64)
    queue = WaitQueue("llm:a", types.SimpleNamespace(external=True))  # its _select: its own bound method
    twin_queue, twin_select = copy.deepcopy((queue, queue._select))
    assert twin_select.__self__ is twin_queue and twin_queue._select.__self__ is twin_queue  # not the original's
    twin = pickle.loads(pickle.dumps(hist))
    assert (twin.count, twin.total, twin.peak) == (hist.count, hist.total, hist.peak)
    assert np.array_equal(twin.counts, hist.counts)


def test_stale_compiled_modules_are_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a source checkout, a compiled module older than its source (an edit not rebuilt) sends the whole
    package to the source, with a warning naming the module."""
    monkeypatch.delenv("HERMES_ENV_PURE", raising=False)
    pkg = tmp_path / "hermes_env"
    (pkg / "sim").mkdir(parents=True)
    (tmp_path / "setup.py").write_text("")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    ext, source = pkg / "sim" / f"engine{suffix}", pkg / "sim" / "engine.py"
    ext.write_text("")
    source.write_text("")
    os.utime(ext, (1000, 1000))
    os.utime(source, (2000, 2000))
    old_package, old_path = _mypyc.PACKAGE, list(sys.meta_path)
    try:
        _mypyc.PACKAGE = pkg
        assert _mypyc._stale() == ["sim/engine.py"]
        os.utime(ext, (3000, 3000))
        assert _mypyc._stale() == []
        os.utime(ext, (1000, 1000))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _mypyc.choose_build()
        assert "sim/engine.py" in str(caught[0].message)
        assert isinstance(sys.meta_path[0], _mypyc._SourceOnly)
        (tmp_path / "setup.py").unlink()
        assert _mypyc._stale() == []  # an installed build: no setup.py beside the package
    finally:
        _mypyc.PACKAGE = old_package
        sys.meta_path[:] = old_path


def test_a_simulation_keeps_every_attribute_through_its_copies_in_either_build() -> None:
    """``Simulation`` and ``Application`` are compiled classes (no ``__dict__``) in the compiled build:
    snapshots copy the simulation by attribute name (``copy_state``), pickles through its
    ``__getstate__``/``__setstate__``, and every copy, in either build, has the original's attributes and runs
    on to the original's end."""
    from hermes_env.envs.hermes import load_experiment
    from hermes_env.sim import Simulation

    sim = Simulation(load_experiment("contended", {"workload": {"num_applications": 40}}), seed=2,
                     scheduler="gittins", prewarm="pdgraph")
    sim.run(until=10.0)
    compiled = "hermes_env.sim.simulator" in _mypyc.running_compiled()
    assert sim.active and hasattr(sim, "__dict__") != compiled
    assert not hasattr(next(iter(sim.active.values())), "__dict__")  # __slots__ when pure
    names = _mypyc.attributes(sim).keys()
    assert {"engine", "active", "recorder", "pending", "_shared_ids"} <= names
    twins = [sim.branch(), Simulation.from_snapshot(sim.snapshot()), pickle.loads(pickle.dumps(sim)),
             copy.deepcopy(sim)]
    assert all(_mypyc.attributes(twin).keys() == names for twin in twins)
    assert twins[0].engine is not sim.engine and twins[0].config is sim.config  # the experiment is shared
    end = repr(sim.run().summary)
    assert [repr(twin.run().summary) for twin in twins] == [end] * 4
