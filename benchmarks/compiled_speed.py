"""Issue 24's speed targets, the compiled build (setup.py: mypyc) against the Python source in the same run.

Each build runs in a fresh process (the source one with ``HERMES_ENV_PURE=1``), alternately, ``--rounds``
times, after an untimed warm-up of each environment (lazy imports, demand tables); each figure is a ratio to
a reference measured in the same process (CartPole-v1, or a bare heapq
event loop written here in plain Python, so that compiling the engine does not move the reference), and the
table gives the best round of each. Run it after ``make compiled`` (it says so if the build is pure).

1. ``Scheduling-v0`` steps per CPU-second, first valid action and random valid action, as a fraction of
   CartPole's (target >= 0.065x).
2. Headless cost per event on the default cluster (four Llama-3-8B replicas and a LoRA one) at full load
   (single requests, 16/s, FCFS), as a multiple of a bare heapq event (target <= 35x), and simulated time per
   CPU time there (target >= 1,500x real time).
3. ``Autoscaling-v0`` steps per CPU-second, random valid action (target >= 500).
4. Cost per event with 10,000 applications in the system against 10 (a burst of Hermes-like applications;
   target <= 1.3x).

``--against CHECKOUT`` adds a third build to the same run: another checkout's compiled modules (build them
there first: ``make compiled``, or ``setup.py build_ext --inplace``), e.g. the last release, so that a change's
gain is a ratio measured in one run.

    python benchmarks/compiled_speed.py [--rounds 2] [--against ../old-checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from reference import checkout_process

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
import gymnasium as gym
import numpy as np
import yaml
sys.path.insert(0, sys.argv[1])
from env_speed import cartpole_steps_per_second, steps_per_second
from reference import bare_heapq_events
from simulator_speed import ROOT, experiment, timed
import hermes_env
from hermes_env._mypyc import running_compiled
from hermes_env.sim import Simulation


def bare_heapq_event(n=300_000):
    t0 = time.process_time()
    bare_heapq_events(n)
    return (time.process_time() - t0) / n


out = {"cartpole": cartpole_steps_per_second(50_000), "bare": bare_heapq_event()}
scheduling, autoscaling = gym.make("hermes_env/Scheduling-v0"), gym.make("hermes_env/Autoscaling-v0")
steps_per_second(scheduling, "first", 500)  # untimed: lazy imports, demand tables, the first resets
steps_per_second(autoscaling, "random", 20)
for kind in ("first", "random"):
    out[f"scheduling_{kind}"] = steps_per_second(scheduling, kind, 5_000)[0]
out["autoscaling"] = steps_per_second(autoscaling, "random", 300)[0]
single = [{"template": "single_request", "weight": 1}]
cpu, llm, events, result = timed(experiment(single, {"process": "poisson", "rate": 16.0}, 20_000))
out["headless_event"], out["headless_sim_per_cpu"] = cpu / events, result.summary["simulated_seconds"] / cpu
hermes = yaml.safe_load((ROOT / "configs" / "workloads" / "hermes.yaml").read_text())["applications"]
with tempfile.TemporaryDirectory() as tmp:
    for n, repeats in ((10, 400), (10_000, 1)):
        trace = Path(tmp) / f"burst{n}.csv"
        trace.write_text("timestamp\\n" + "\\n".join(f"{i * 1e-4:.6f}" for i in range(n)) + "\\n")
        cpu = events = 0
        for seed in range(repeats):
            sim = Simulation(experiment(hermes, {"process": "trace", "trace": str(trace)}, n), seed=seed)
            t0 = time.process_time()
            sim.run()
            cpu += time.process_time() - t0
            events += sim.engine.events
        out[f"burst_{n}"] = cpu / events
out["compiled"] = len(running_compiled())
print(json.dumps(out))
"""


def measure(pure: bool, checkout: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HERMES_ENV_PURE"}
    if pure:
        env["HERMES_ENV_PURE"] = "1"
    root, env = checkout_process(checkout, env)
    done = subprocess.run([sys.executable, "-c", CHILD, str(HERE)], env=env, cwd=root, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def figures(m: dict) -> dict[str, float]:
    return {
        "Scheduling-v0 first valid, x CartPole": m["scheduling_first"] / m["cartpole"],
        "Scheduling-v0 random valid, x CartPole": m["scheduling_random"] / m["cartpole"],
        "headless per event, x bare heapq event": m["headless_event"] / m["bare"],
        "headless simulated s per CPU s": m["headless_sim_per_cpu"],
        "Autoscaling-v0 steps per CPU s": m["autoscaling"],
        "per event, 10,000 in system / 10": m["burst_10000"] / m["burst_10"],
    }


TARGETS = {"Scheduling-v0 first valid, x CartPole": ">= 0.065", "Scheduling-v0 random valid, x CartPole": ">= 0.065",
           "headless per event, x bare heapq event": "<= 35", "headless simulated s per CPU s": ">= 1,500",
           "Autoscaling-v0 steps per CPU s": ">= 500", "per event, 10,000 in system / 10": "<= 1.3"}
LOWER_IS_BETTER = {"headless per event, x bare heapq event", "per event, 10,000 in system / 10"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--against", type=Path, help="another checkout whose compiled build is measured too")
    args = parser.parse_args()
    rounds, against = args.rounds, args.against.resolve() if args.against else None
    runs: dict[str, list[dict]] = {"source": [], "compiled": [], **({"against": []} if against else {})}
    for _ in range(rounds):
        for build in runs:
            runs[build].append(measure(pure=build == "source", checkout=against if build == "against" else None))
    for build in ("compiled", "against")[: len(runs) - 1]:
        if not runs[build][0]["compiled"]:
            sys.exit(f"the {build} build runs from source: build its compiled modules first (make compiled)")
    best = {}
    for build, ms in runs.items():
        per_round = [figures(m) for m in ms]
        best[build] = {k: (min if k in LOWER_IS_BETTER else max)(r[k] for r in per_round) for k in per_round[0]}
    print(f"best of {rounds} rounds per build; compiled modules: {runs['compiled'][0]['compiled']}"
          + (f"; against: {against}" if against else ""))
    extra = f" {'against':>9s} {'vs it':>7s}" if against else ""
    print(f"{'figure':42s} {'source':>9s} {'compiled':>9s} {'speed-up':>8s}{extra} {'target':>9s}")
    for key, target in TARGETS.items():
        s, c = best["source"][key], best["compiled"][key]
        gain = s / c if key in LOWER_IS_BETTER else c / s
        row = f"{key:42s} {s:9.4g} {c:9.4g} {gain:7.2f}x"
        if against:
            a = best["against"][key]
            row += f" {a:9.4g} {(a / c if key in LOWER_IS_BETTER else c / a):6.2f}x"
        print(f"{row} {target:>9s}")
    for build, ms in runs.items():
        m = ms[0]
        print(f"{build}: CartPole {m['cartpole']:,.0f} steps/s, bare heapq event {1e6 * m['bare']:.2f} us, "
              f"Scheduling-v0 {m['scheduling_first']:,.0f} / {m['scheduling_random']:,.0f} steps/s, headless "
              f"{1e6 * m['headless_event']:.1f} us/event, bursts {1e6 * m['burst_10']:.1f} / "
              f"{1e6 * m['burst_10000']:.1f} us/event")


if __name__ == "__main__":
    main()
