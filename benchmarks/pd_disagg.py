"""Prefill/decode disaggregation: the policies on pd-disagg, and where splitting pays (prompt length x load).

    python benchmarks/pd_disagg.py --windows 12 --seeds 3 --workers 2 --out runs/pd_disagg

**pd-disagg** (configs/experiments/pd-disagg.yaml: Mooncake's conversation trace on two prefill and two decode
Llama-3.1-8B replicas over NVLink): every disaggregation policy under ``least_outstanding`` and ``prefix_affinity``
routing, on ``--windows`` consecutive windows of the trace (a replay is deterministic: the windows are the
replicates), paired per window with ``colocated`` (the four replicas mixed) under the same router; and with three
prefill replicas and one decode replica under ``least_outstanding``.

**The sweep**: the same backend (TTFT SLO 5 x a prompt's prefill alone + 0.25 s) under Poisson
arrivals of single requests of ``P`` prompt and 256 output tokens, no shared prefixes, at loads ``rho`` = arrival
rate x the GPU-seconds a request needs at least (``LLMBackend.min_gpu_seconds``) / 4 replicas; ``colocated``,
``always`` and ``distserve`` paired per seed.

Prints markdown tables (and writes them, with every run's figures as JSON, under ``--out``): request goodput
(requests meeting both SLOs per second, DistServe's) under a tight and a loose TPOT SLO, each with its paired ratio
to colocated, TTFT and TPOT P50/P99.
Figures are indicative (one machine, one run).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.metrics import mean_ci, per_second

BACKEND = "llm:llama3-8b"
POLICIES = ("colocated", "always", "distserve", "splitwise")
SWEEP_POLICIES = ("colocated", "always", "distserve")
PROMPTS = (512, 2048, 8192, 16384)
ROUTERS = ("least_outstanding", "prefix_affinity")
LOADS = (0.2, 0.45, 0.7)
OUTPUT = 256
WINDOW_S = 300.0  # seconds of the trace per window (about 1,000 requests at its own rate)
PD_TTFT, PD_TIGHT, PD_LOOSE = 5.0, 0.05, 0.1  # pd-disagg's SLOs (the config's TPOT is the loose one)
SWEEP_TIGHT, SWEEP_LOOSE = 0.025, 0.1  # the sweep's TPOT SLOs: about 1.5x and 6x a decode-only iteration


def _figures(sim: Simulation, summary: dict, ttft_slo: float, tpot_slos: tuple[float, ...]) -> dict:
    """A run's figures: its requests' goodput (meeting ``ttft_slo`` and each TPOT SLO, per second of arrivals, as
    the summary's own goodput for the configured SLOs), TTFT and TPOT percentiles, how many were split."""
    d = summary["backends"][BACKEND]["disaggregation"]
    log = [r for r in sim.request_log if r.backend == BACKEND]
    good = {f"goodput_{slo * 1e3:g}ms": per_second(sum(r.ttft <= ttft_slo and (r.tpot is None or r.tpot <= slo)
                                                        for r in log), sim.engine.now, float(sim.arrival_times[-1]))
            for slo in tpot_slos}
    return {"goodput": d["goodput"], **good, "ttft_p50": d["ttft"]["p50"], "ttft_p99": d["ttft"]["p99"],
            "tpot_p50": d["tpot"]["p50"], "tpot_p99": d["tpot"]["p99"], "split": d["split_requests"],
            "requests": d["requests"], "met": d["token_slo_met"], "jct_mean": summary["jct"]["mean"],
            "decode_wait_s": d["decode_wait_seconds"], "preemptions": summary["backends"][BACKEND]["preemptions"]}


def run_window(cell: tuple[int, str, str, int]) -> dict:
    window, router, policy, prefill = cell
    cfg = load_experiment("pd-disagg", {"workload": {"arrivals": {
        "window": [window * WINDOW_S, (window + 1) * WINDOW_S]}}})
    llm = cfg.cluster.llm_backends
    split = replace(llm[0], disaggregation=replace(llm[0].disaggregation, prefill_replicas=prefill))
    cfg = replace(cfg, cluster=replace(cfg.cluster, llm_backends=(split, *llm[1:])))
    t0 = time.perf_counter()
    sim = Simulation(cfg, router=router, disagg=policy, keep_applications=False)
    sim.request_log = []
    s = sim.run().summary
    return {"part": "pd-disagg", "window": window, "router": router, "policy": policy, "prefill": prefill,
            **_figures(sim, s, PD_TTFT, (PD_TIGHT, PD_LOOSE)),
            "wall_s": time.perf_counter() - t0}


@cache
def _min_gpu_seconds(prompt: int) -> float:
    """The GPU-seconds no engine serves a request of ``prompt`` and OUTPUT tokens in (the backend's own bound)."""
    sim = Simulation(load_experiment("pd-disagg", {"workload": {"num_applications": 1}}), keep_applications=False)
    return sim.llm_backends[BACKEND].min_gpu_seconds(prompt, OUTPUT)


def _sweep_experiment(prompt: int, load: float, seed: int, folder: Path, policy: str) -> ExperimentConfig:
    rate = load * 4 / _min_gpu_seconds(prompt)
    n = max(400, int(rate * 120))  # two minutes of arrivals at least
    times = np.cumsum(np.random.default_rng([seed, prompt, int(load * 100)]).exponential(1 / rate, n))
    trace = folder / f"sweep-{prompt}-{load}-{seed}-{policy}.csv"  # the same requests for every policy
    trace.write_text("arrival,prompt_tokens,output_tokens\n" + "".join(f"{t:.6f},{prompt},{OUTPUT}\n" for t in times))
    lat = load_experiment("pd-disagg", None).cluster.llm_backends[0].latency
    ttft = 5 * float(lat.prefill_time(float(prompt))) + 0.25
    llm = {"name": BACKEND, "profile": "llama3-8b-h100", "model": "llama3.1-8b", "replicas": 4, "gpu_memory_gb": 80,
           "disaggregation": {"prefill_replicas": 2, "link": "nvlink", "slo": {"ttft_s": ttft, "tpot_s": SWEEP_LOOSE}}}
    return ExperimentConfig.from_dict({"cluster": {"llm_backends": [llm]},
                                       "workload": {"arrivals": {"process": "trace", "trace": str(trace)}}})


def run_sweep(cell: tuple[int, float, int, str, str]) -> dict:
    prompt, load, seed, policy, folder = cell
    cfg = _sweep_experiment(prompt, load, seed, Path(folder), policy)
    t0 = time.perf_counter()
    sim = Simulation(cfg, router="least_outstanding", disagg=policy, keep_applications=False)
    sim.request_log = []
    s = sim.run().summary
    ttft = cfg.cluster.llm_backends[0].disaggregation.ttft_slo
    return {"part": "sweep", "prompt": prompt, "load": load, "seed": seed, "policy": policy,
            **_figures(sim, s, ttft, (SWEEP_TIGHT, SWEEP_LOOSE)),
            "wall_s": time.perf_counter() - t0}


def _paired(mine: list[dict], base: dict, key: str) -> str:
    pairs = [r[key] / base[r["rep"]][key] for r in mine if base[r["rep"]][key] > 0]
    return f"{np.mean(pairs):.2f}x" if len(pairs) == len(mine) else "-"  # no ratio where colocated meets none


def _rows(rows: list[dict], policies: tuple[str, ...], label: str, keys: tuple[str, str]) -> list[str]:
    out = []
    base = {r["rep"]: r for r in rows if r["policy"] == "colocated"}
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        if not mine:
            continue
        cells = []
        for key in keys:
            good, ci = mean_ci([r[key] for r in mine])
            cells.append(f"{good:.3f} +- {0 if np.isnan(ci) else ci:.3f} | {_paired(mine, base, key)}")
        cells += [f"{np.mean([r[k] for r in mine]):.2f}" for k in ("ttft_p50", "ttft_p99")]
        cells += [f"{np.mean([r[k] for r in mine]) * 1e3:.1f}" for k in ("tpot_p50", "tpot_p99")]
        out.append(f"| {label} | {policy} | " + " | ".join(cells) +
                   f" | {np.mean([r['split'] / r['requests'] for r in mine]):.2f} |")
    return out


HEAD = ["| {what} | policy | goodput, TPOT {tight} | x colocated | goodput, TPOT {loose} | x colocated | TTFT P50 s "
        "| TTFT P99 s | TPOT P50 ms | TPOT P99 ms | split |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/pd_disagg"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # two prefill and two decode replicas under both routers; three and one (a prefill-heavy trace's ratio) under the
    # first, its colocated reference the same runs (colocated does not depend on the pools)
    windows = [(w, r, p, 2) for w in range(args.windows) for r in ROUTERS for p in POLICIES]
    windows += [(w, ROUTERS[0], p, 3) for w in range(args.windows) for p in POLICIES[1:]]
    sweep = [] if args.skip_sweep else [(n, rho, s, p, str(args.out)) for n in PROMPTS for rho in LOADS
                                        for s in range(args.seeds) for p in SWEEP_POLICIES]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_window, windows))
        (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
        rows += list(pool.map(run_sweep, sweep))
    keys = {"pd": (f"goodput_{PD_TIGHT * 1e3:g}ms", f"goodput_{PD_LOOSE * 1e3:g}ms"),
            "sweep": (f"goodput_{SWEEP_TIGHT * 1e3:g}ms", f"goodput_{SWEEP_LOOSE * 1e3:g}ms")}
    lines = [f"pd-disagg: the Mooncake replay, {args.windows} windows of {WINDOW_S:.0f} s; goodput = requests per "
             f"second meeting TTFT {PD_TTFT:g} s and the TPOT SLO, mean +- 95% CI over windows, x = paired ratio to "
             "colocated; split = fraction of requests split", "",
             HEAD[0].format(what="router, pools", tight=f"{PD_TIGHT * 1e3:g} ms", loose=f"{PD_LOOSE * 1e3:g} ms"),
             HEAD[1]]
    for router, prefill in ((ROUTERS[0], 2), (ROUTERS[1], 2), (ROUTERS[0], 3)):
        here = [{**r, "rep": r["window"]} for r in rows if r["part"] == "pd-disagg" and r["router"] == router
                and (r["prefill"] == prefill or r["policy"] == "colocated")]
        lines += _rows(here, POLICIES, f"{router}, {prefill}P{4 - prefill}D", keys["pd"])
    if sweep:
        lines += ["", f"sweep: Poisson single requests of P prompt and {OUTPUT} output tokens at load rho, "
                  f"{args.seeds} seeds paired; TTFT SLO 5 x prefill(P) alone + 0.25 s", "",
                  HEAD[0].format(what="P, rho", tight=f"{SWEEP_TIGHT * 1e3:g} ms", loose=f"{SWEEP_LOOSE * 1e3:g} ms"),
                  HEAD[1]]
        for n in PROMPTS:
            for rho in LOADS:
                here = [{**r, "rep": r["seed"]} for r in rows if r["part"] == "sweep" and r["prompt"] == n
                        and r["load"] == rho]
                lines += _rows(here, SWEEP_POLICIES, f"{n}, {rho}", keys["sweep"])
    text = "\n".join(lines) + "\n"
    print(text, end="")
    (args.out / "table.md").write_text(text)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
