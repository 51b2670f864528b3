"""Prefill/decode disaggregation: the policies on pd-disagg, and where splitting pays (prompt length x load).

    python benchmarks/pd_disagg.py --windows 12 --seeds 3 --workers 2 --out runs/pd_disagg

**pd-disagg** (configs/experiments/pd-disagg.yaml: Mooncake's conversation trace on two prefill and two decode
Llama-3.1-8B replicas over NVLink): every disaggregation policy under ``least_outstanding`` and ``prefix_affinity``
routing, on ``--windows`` consecutive windows of the trace (a replay is deterministic: the windows are the
replicates), paired per window with ``colocated`` (the four replicas mixed) under the same router.

**The sweep**: the same backend (its SLOs TTFT 5 x a prompt's prefill alone + 0.25 s, TPOT 0.05 s) under Poisson
arrivals of single requests of ``P`` prompt and 256 output tokens, no shared prefixes, at loads ``rho`` = arrival
rate x the GPU-seconds a request needs at least (``LLMBackend.min_gpu_seconds``) / 4 replicas; ``colocated``,
``always`` and ``distserve`` paired per seed.

Prints markdown tables (and writes them, with every run's figures as JSON, under ``--out``): request goodput
(requests meeting both SLOs per second, DistServe's) with its paired ratio to colocated, TTFT and TPOT P50/P99.
Figures are indicative (one machine, one run).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.metrics import mean_ci

BACKEND = "llm:llama3-8b"
POLICIES = ("colocated", "always", "distserve", "splitwise")
SWEEP_POLICIES = ("colocated", "always", "distserve")
PROMPTS = (512, 2048, 8192, 16384)
ROUTERS = ("least_outstanding", "prefix_affinity")
LOADS = (0.2, 0.45, 0.7)
OUTPUT = 256
WINDOW_S = 300.0  # seconds of the trace per window (about 1,000 requests at its own rate)


def _figures(summary: dict) -> dict:
    d = summary["backends"][BACKEND]["disaggregation"]
    return {"goodput": d["goodput"], "ttft_p50": d["ttft"]["p50"], "ttft_p99": d["ttft"]["p99"],
            "tpot_p50": d["tpot"]["p50"], "tpot_p99": d["tpot"]["p99"], "split": d["split_requests"],
            "requests": d["requests"], "met": d["token_slo_met"], "jct_mean": summary["jct"]["mean"],
            "decode_wait_s": d["decode_wait_seconds"], "preemptions": summary["backends"][BACKEND]["preemptions"]}


def run_window(cell: tuple[int, str, str]) -> dict:
    window, router, policy = cell
    cfg = load_experiment("pd-disagg", {"workload": {"arrivals": {
        "window": [window * WINDOW_S, (window + 1) * WINDOW_S]}}})
    t0 = time.perf_counter()
    s = Simulation(cfg, router=router, disagg=policy, keep_applications=False).run().summary
    return {"part": "pd-disagg", "window": window, "router": router, "policy": policy, **_figures(s),
            "wall_s": time.perf_counter() - t0}


@cache
def _min_gpu_seconds(prompt: int) -> float:
    """The GPU-seconds no engine serves a request of ``prompt`` and OUTPUT tokens in (the backend's own bound)."""
    sim = Simulation(load_experiment("pd-disagg", {"workload": {"num_applications": 1}}), keep_applications=False)
    return sim.llm_backends[BACKEND].min_gpu_seconds(prompt, OUTPUT)


def _sweep_experiment(prompt: int, load: float, seed: int, folder: Path) -> ExperimentConfig:
    rate = load * 4 / _min_gpu_seconds(prompt)
    n = max(400, int(rate * 120))  # two minutes of arrivals at least
    times = np.cumsum(np.random.default_rng([seed, prompt, int(load * 100)]).exponential(1 / rate, n))
    trace = folder / f"sweep-{prompt}-{load}-{seed}.csv"
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(f"{t:.6f},{prompt},{OUTPUT}\n" for t in times))
    lat = load_experiment("pd-disagg", None).cluster.llm_backends[0].latency
    ttft = 5 * float(lat.prefill_time(float(prompt))) + 0.25
    llm = {"name": BACKEND, "profile": "llama3-8b-h100", "model": "llama3.1-8b", "replicas": 4, "gpu_memory_gb": 80,
           "disaggregation": {"prefill_replicas": 2, "link": "nvlink", "slo": {"ttft_s": ttft, "tpot_s": 0.05}}}
    return ExperimentConfig.from_dict({"cluster": {"llm_backends": [llm]},
                                       "workload": {"arrivals": {"process": "trace", "trace": str(trace)}}})


def run_sweep(cell: tuple[int, float, int, str, str]) -> dict:
    prompt, load, seed, policy, folder = cell
    cfg = _sweep_experiment(prompt, load, seed, Path(folder))
    t0 = time.perf_counter()
    s = Simulation(cfg, router="least_outstanding", disagg=policy, keep_applications=False).run().summary
    return {"part": "sweep", "prompt": prompt, "load": load, "seed": seed, "policy": policy, **_figures(s),
            "wall_s": time.perf_counter() - t0}


def _paired(mine: list[dict], base: dict, key: str) -> float:
    pairs = [r[key] / base[r["rep"]][key] for r in mine if base[r["rep"]][key] > 0]
    return float(np.mean(pairs)) if pairs else float("nan")


def _rows(rows: list[dict], policies: tuple[str, ...], label: str) -> list[str]:
    out = []
    base = {r["rep"]: r for r in rows if r["policy"] == "colocated"}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        if not mine:
            continue
        good, ci = mean_ci([r["goodput"] for r in mine])
        cells = [f"{np.mean([r[k] for r in mine]):.3f}" for k in ("ttft_p50", "ttft_p99")]
        cells += [f"{np.mean([r[k] for r in mine]) * 1e3:.1f}" for k in ("tpot_p50", "tpot_p99")]
        out.append(f"| {label} | {policy} | {good:.3f} +- {0 if np.isnan(ci) else ci:.3f} | "
                   f"{_paired(mine, base, 'goodput'):.2f}x | " + " | ".join(cells) +
                   f" | {np.mean([r['split'] / r['requests'] for r in mine]):.2f} |")
    return out


HEAD = ["| {what} | policy | goodput req/s | x colocated | TTFT P50 s | TTFT P99 s | TPOT P50 ms | TPOT P99 ms "
        "| split |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/pd_disagg"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    windows = [(w, r, p) for w in range(args.windows) for r in ROUTERS for p in POLICIES]
    sweep = [] if args.skip_sweep else [(n, rho, s, p, str(args.out)) for n in PROMPTS for rho in LOADS
                                        for s in range(args.seeds) for p in SWEEP_POLICIES]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_window, windows)) + list(pool.map(run_sweep, sweep))
    lines = [f"pd-disagg: the Mooncake replay, {args.windows} windows of {WINDOW_S:.0f} s; "
             "goodput = requests meeting TTFT 5 s and TPOT 0.1 s per second, mean +- 95% CI over windows, x = paired "
             "ratio to colocated; split = fraction of requests split", "",
             HEAD[0].format(what="router"), HEAD[1]]
    for router in ROUTERS:
        here = [{**r, "rep": r["window"]} for r in rows if r["part"] == "pd-disagg" and r["router"] == router]
        lines += _rows(here, POLICIES, router)
    if sweep:
        lines += ["", f"sweep: Poisson single requests of P prompt and {OUTPUT} output tokens at load rho, "
                  f"{args.seeds} seeds paired; SLOs TTFT 5 x prefill(P) + 0.25 s, TPOT 50 ms", "",
                  HEAD[0].format(what="P, rho"), HEAD[1]]
        for n in PROMPTS:
            for rho in LOADS:
                here = [{**r, "rep": r["seed"]} for r in rows if r["part"] == "sweep" and r["prompt"] == n
                        and r["load"] == rho]
                lines += _rows(here, SWEEP_POLICIES, f"{n}, {rho}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.out / "table.md").write_text(text)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
