"""Simulate the real-GPU runs with the same seeds and compare (issue 23, items 2 and 3).

    python scripts/realgpu/compare.py docs/figures/fidelity-e2e    # reads runs.json.gz, writes comparison.*

Each run of ``runs.json.gz`` (scripts/realgpu/run_e2e.py) is simulated with its experiment (same workload,
rate, span, seed and policy) on the engine's profile, with and without its scheduler-overhead terms, and
compared: per LLM request the time to first token (from reaching the engine's queue) and the time per
output token, per application the completion time, each as mean, P50 and P95; the Gittins/FCFS ratio of the
mean completion time at each load; and per iteration of every replay the latency model's time (forward pass
plus overhead) against the measured one.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import experiments  # noqa: E402
from run_e2e import fit, write_profile  # noqa: E402

from hermes_env.cluster.latency import load_profile  # noqa: E402
from hermes_env.sim import Simulation  # noqa: E402


def stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "p50": float(np.quantile(v, 0.5)),
            "p95": float(np.quantile(v, 0.95))}


def metrics(requests: list[dict[str, Any]], apps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    done = [r for r in requests if r["finished"] >= 0]
    return {"ttft": stats([r["first_token"] - r["enqueued"] for r in done]),
            "tpot": stats([(r["finished"] - r["first_token"]) / (r["output"] - 1) for r in done if r["output"] > 1]),
            "completion": stats([a["completion"] - a["arrival"] for a in apps if not a["failed"]])}


def simulate(run: dict[str, Any], profile: str, engine: dict[str, Any]) -> dict[str, Any]:
    cfg = experiments.experiment(run["kind"], run["rate"], run["span"], profile, engine)
    sim = Simulation(cfg, scheduler=run["policy"], seed=run["seed"])
    sim.request_log = []
    sim.run()
    requests = [{"app": r.app.id, "stage": r.run_index, "copy": r.copy, "prompt": r.prompt_tokens,
                 "output": r.output_tokens, "enqueued": r.first_enqueued, "started": r.started,
                 "first_token": r.first_token, "finished": r.finished} for r in sim.request_log if r.output_tokens]
    apps = [{"app": a.id, "arrival": a.arrival, "completion": a.completion, "failed": a.failed}
            for a in sim.completed]
    return {"requests": requests, "apps": apps}


def same_demands(real: dict[str, Any], sim: dict[str, Any]) -> bool:
    """The real run and its simulation drew the same requests (common random numbers, same seed)."""
    key = lambda r: (r["app"], r["stage"], r["copy"], r["prompt"], r["output"])  # noqa: E731
    return sorted(map(key, real["requests"])) == sorted(map(key, sim["requests"]))


def step_errors(steps: list[dict[str, Any]], profile: Any) -> dict[str, float]:
    """The latency model's iteration time (forward + overhead) against the measured one, per iteration."""
    pred = np.array([profile.iteration_time(s["tokens"], s["kv_tokens"], s["prefill_pairs"], s["max_context"],
                                            s["requests"]) for s in steps])
    real = np.array([s["prepare_s"] + s["forward_s"] + s["update_s"] for s in steps])
    err = (pred - real) / real
    return {"iterations": int(len(steps)), "mean_abs_rel_error": float(np.abs(err).mean()),
            "mean_rel_error": float(err.mean()), "p95_abs_rel_error": float(np.quantile(np.abs(err), 0.95)),
            "total_time_rel_error": float(pred.sum() / real.sum() - 1)}


def compare(data: dict[str, Any], profile_path: str) -> dict[str, Any]:
    """Every run against its simulation on the profile at ``profile_path``."""
    env, profile = data["environment"], load_profile(profile_path)
    bare = Path(tempfile.mkdtemp()) / "no-overhead.yaml"  # the same profile, overhead terms off
    write_profile(dataclasses.replace(profile, scheduler_overhead=0.0, scheduler_overhead_per_request=0.0), bare)
    out: dict[str, Any] = {"profile": Path(profile_path).name, "runs": []}
    for run in data["runs"]:
        row = {k: run[k] for k in ("kind", "policy", "load", "rate", "span", "seed", "applications", "ended", "take")}
        row["real"] = metrics(run["requests"], run["apps"])
        row["steps"] = step_errors(run["steps"], profile)
        row["event_lateness_s"] = run["event_lateness_s"]
        sim = simulate(run, profile_path, env["engine"])
        if run["ended"] < run["applications"]:  # a run cut at its deadline: compare the same applications
            ended = {a["app"] for a in run["apps"]}
            sim["apps"] = [a for a in sim["apps"] if a["app"] in ended]
            sim["requests"] = [r for r in sim["requests"] if r["app"] in ended]
            run = {**run, "requests": [r for r in run["requests"] if r["app"] in ended]}
        row["same_demands"] = same_demands(run, sim)
        row["sim"] = metrics(sim["requests"], sim["apps"])
        plain = simulate(run, str(bare), env["engine"])
        ended = {a["app"] for a in sim["apps"]}
        row["sim_no_overhead"] = metrics(plain["requests"], [a for a in plain["apps"] if a["app"] in ended])
        row["jct"] = {"real": {a["app"]: a["completion"] - a["arrival"] for a in run["apps"] if not a["failed"]},
                      "sim": {a["app"]: a["completion"] - a["arrival"] for a in sim["apps"] if not a["failed"]}}
        out["runs"].append(row)
        r, s = row["real"]["completion"], row["sim"]["completion"]
        print(f"{out['profile']}: {run['kind']:6s} {run['policy']:8s} load {run['load']:.2f}: completion real "
              f"{r['mean']:.3f} sim {s['mean']:.3f} ({s['mean'] / r['mean'] - 1:+.1%}); iterations "
              f"{row['steps']['mean_abs_rel_error']:.1%}", flush=True)
    out["ratios"] = ratios(out["runs"])
    for row in out["runs"]:
        del row["jct"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--fit-on", default="azure", help="the replays whose iterations the second profile is fitted "
                        "to: a workload (azure), or runs named KIND:POLICY:LOAD:SPAN:TAKE,... (one lease's own run)")
    parser.add_argument("--name", default="profile-replay", help="the second profile's file name (without .yaml)")
    parser.add_argument("--more", type=Path, nargs="*", default=[], help="runs.json.gz files of later runs")
    args = parser.parse_args()
    with gzip.open(args.folder / "runs.json.gz", "rt") as fh:
        data = json.load(fh)
    data["runs"] = takes(data["runs"])
    for path in args.more:  # runs made later (the same engine settings): each replaces its namesakes
        with gzip.open(path, "rt") as fh:
            more = takes(json.load(fh)["runs"])
        names = {run_name(r)[:-1] for r in more}
        data["runs"] = [r for r in data["runs"] if run_name(r)[:-1] not in names] + more
    steps = [s for run in data["runs"] if fitted_on(run, args.fit_on) for s in run["steps"]]
    replay, report = fit(steps, "llama3-8b-h200-hf")
    replay = dataclasses.replace(replay, source=f"scripts/realgpu/compare.py: the {len(steps)} iterations of the "
                                                f"{args.fit_on} replays on the transformers engine (H200)")
    write_profile(replay, args.folder / f"{args.name}.yaml")
    out = {"environment": data["environment"], "skipped": data.get("skipped", []), "replay_fit": report,
           "profiles": [compare(data, str(args.folder / name)) for name in ("profile.yaml", f"{args.name}.yaml")]}
    suffix = args.name.removeprefix("profile-replay")
    (args.folder / f"comparison{suffix}.json").write_text(json.dumps(out, indent=1) + "\n")
    text = "\n\n".join(f"### {p['profile']}\n\n" + tables(p) for p in out["profiles"])
    (args.folder / f"comparison{suffix}.md").write_text(text + "\n")
    print(text)


def fitted_on(run: dict[str, Any], spec: str) -> bool:
    """Whether ``run`` is one of the replays ``spec`` names: a workload, or KIND:POLICY:LOAD:SPAN:TAKE,..."""
    if ":" not in spec:
        return run["kind"] == spec
    names = {(k, p, float(x), float(s), int(t)) for k, p, x, s, t in (n.split(":") for n in spec.split(","))}
    return run_name(run) in names


def run_name(run: dict[str, Any]) -> tuple[Any, ...]:
    """A run's identity: workload, policy, load, seconds of arrivals and its take (the same run made again)."""
    return run["kind"], run["policy"], run["load"], run["span"], run["take"]


def takes(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Number the runs made more than once in one file (FCFS, Gittins, FCFS again on one lease: the second
    FCFS measures the engine's run-to-run spread) 1, 2, ... in the order they ran."""
    seen: dict[tuple[Any, ...], int] = {}
    out = []
    for run in runs:
        key = (run["kind"], run["policy"], run["load"], run["span"])
        seen[key] = seen.get(key, 0) + 1
        out.append({**run, "take": seen[key]})
    return out


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load (and length) of the Hermes-like mix: Gittins over each FCFS run, and a second FCFS run over the
    first (the same schedule twice: the engine's own spread, which a policy ratio has to exceed to mean
    anything), mean and P95 completion time, real and simulated, over the applications that ended in both
    runs (a run cut at its deadline leaves a few out)."""
    groups: dict[tuple[float, float], dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        if r["kind"] == "hermes":
            groups.setdefault((r["load"], r["span"]), {}).setdefault(r["policy"], []).append(r)
    out = []
    for (load, span), by in sorted(groups.items()):
        fcfs = by.get("fcfs", [])
        pairs = [(g, f) for g in by.get("gittins", []) for f in fcfs] + [(f, fcfs[0]) for f in fcfs[1:]]
        for a, b in pairs:
            common = set(a["jct"]["real"]) & set(b["jct"]["real"])
            row: dict[str, Any] = {"load": load, "span": span, "pair": f"{a['policy']} #{a['take']} / "
                                   f"{b['policy']} #{b['take']}", "applications": len(common)}
            for name in ("real", "sim"):
                av = np.array([a["jct"][name][k] for k in sorted(common)])
                bv = np.array([b["jct"][name][k] for k in sorted(common)])
                row[f"{name}_mean"] = float(av.mean() / bv.mean())
                row[f"{name}_p95"] = float(np.quantile(av, 0.95) / np.quantile(bv, 0.95))
            out.append(row)
    return out


def tables(out: dict[str, Any]) -> str:
    lines = ["| workload | policy | load | rate | metric | real mean / P50 / P95 | simulated mean / P50 / P95 | "
             "error mean / P50 / P95 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in out["runs"]:
        name = f"{r['policy']}{' #' + str(r['take']) if r['take'] > 1 else ''}"
        lines.append(f"| {r['kind']} | {name} | {r['load']:.2f} | {r['rate']:.3g}/s | iteration time "
                     f"(mean abs error, {r['steps']['iterations']} iterations) | | | "
                     f"{r['steps']['mean_abs_rel_error']:.1%} (total {r['steps']['total_time_rel_error']:+.1%}) |")
        for m in ("ttft", "tpot", "completion"):
            a, b = r["real"][m], r["sim"][m]
            if not a.get("n") or not b.get("n"):
                continue
            unit = 1e3 if m == "tpot" else 1.0
            fmt = "{:.1f}" if m == "tpot" else "{:.3f}"
            real = " / ".join(fmt.format(a[q] * unit) for q in ("mean", "p50", "p95"))
            sim = " / ".join(fmt.format(b[q] * unit) for q in ("mean", "p50", "p95"))
            err = " / ".join(f"{b[q] / a[q] - 1:+.1%}" for q in ("mean", "p50", "p95"))
            lines.append(f"| {r['kind']} | {name} | {r['load']:.2f} | {r['rate']:.3g}/s | "
                         f"{m}{' (ms)' if m == 'tpot' else ' (s)'} | {real} | {sim} | {err} |")
    lines += ["", "| load | seconds of arrivals | runs | applications | mean: real | simulated | P95: real | "
              "simulated |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in out["ratios"]:
        lines.append(f"| {row['load']:.2f} | {row['span']:.0f} | {row['pair']} | {row['applications']} | "
                     f"{row['real_mean']:.3f} | {row['sim_mean']:.3f} | "
                     f"{row['real_p95']:.3f} | {row['sim_p95']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
