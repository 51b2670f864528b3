"""The benchmark: every (scheduler, prewarm) combination on the same workloads, over several seeds.

A bench config (``configs/bench/*.yaml``) names an experiment (cluster and workload), the schedulers and
prewarm policies to compare, the number of seeds, the reference combination the ratios are taken
against, and optionally ``loads``: multipliers of the workload's arrival rate for a sweep. Every
combination runs on the same arrivals and realised demands under a seed (common random numbers), so
differences are the policies'. Figures are means over seeds with 95% confidence half-widths (Student t).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from hermes_env.errors import ConfigError, require
from hermes_env.sim.policies import prewarm_names, scheduler_names
from hermes_env.sim.simulator import ExperimentConfig, Simulation, inline_parts
from hermes_env.sim.workload import resolve_path

METRICS = ("mean", "p50", "p95", "p99")


@dataclass(frozen=True)
class BenchConfig:
    experiment: dict[str, Any]
    base: Path
    schedulers: tuple[str, ...]
    prewarm: tuple[str, ...]
    seeds: int
    reference: tuple[str, str]
    loads: tuple[float, ...] = (1.0,)

    @classmethod
    def from_yaml(cls, path: str | Path, schedulers: Sequence[str] | None = None,
                  prewarm: Sequence[str] | None = None, seeds: int | None = None) -> BenchConfig:
        path = Path(path)
        require(path.is_file(), "bench", f"no file {str(path)!r}")
        spec = yaml.safe_load(path.read_text())
        require(isinstance(spec, Mapping), "bench", "must be a mapping")
        unknown = set(spec) - {"experiment", "schedulers", "prewarm", "seeds", "reference", "loads", "description"}
        if unknown:
            raise ConfigError(f"bench.{sorted(unknown)[0]}", "is not a bench field",
                              "use experiment, schedulers, prewarm, seeds, reference, loads, description")
        experiment = spec.get("experiment")
        require(isinstance(experiment, str | Mapping), "bench.experiment", "must be a YAML path or a mapping")
        base = path.parent
        if isinstance(experiment, str):
            exp_path = resolve_path(experiment, base)
            require(exp_path.is_file(), "bench.experiment", f"no file {str(exp_path)!r}")
            experiment = yaml.safe_load(exp_path.read_text())
            base = exp_path.parent
        experiment = inline_parts(experiment, base)  # so that loads can scale the arrival rate
        scheds = tuple(schedulers or spec.get("schedulers", ["fcfs"]))
        warms = tuple(prewarm or spec.get("prewarm", ["none"]))
        for name in scheds:
            require(name in scheduler_names() or ":" in name, "bench.schedulers", f"unknown policy {name!r}",
                    f"use some of {scheduler_names()}, or ppo:PATH")
        for name in warms:
            require(name in prewarm_names(), "bench.prewarm", f"unknown policy {name!r}",
                    f"use some of {prewarm_names()}")
        n = seeds if seeds is not None else spec.get("seeds", 3)
        require(isinstance(n, int) and n >= 1, "bench.seeds", f"must be an integer >= 1, got {n!r}")
        ref = spec.get("reference", {"scheduler": "fcfs", "prewarm": "none"})
        require(isinstance(ref, Mapping) and {"scheduler", "prewarm"} <= set(ref), "bench.reference",
                "must give scheduler and prewarm")
        loads = tuple(float(x) for x in spec.get("loads", [1.0]))
        require(all(x > 0 for x in loads), "bench.loads", "must be positive multipliers of the arrival rate")
        return cls(experiment, base, scheds, warms, n, (ref["scheduler"], ref["prewarm"]), loads)

    def experiment_at(self, load: float) -> ExperimentConfig:
        spec = json.loads(json.dumps(self.experiment))
        arrivals = spec["workload"]["arrivals"]
        require(arrivals.get("process") in ("poisson", "bursty") or load == 1.0, "bench.loads",
                "scale only poisson or bursty arrival rates")
        if load != 1.0:
            arrivals["rate"] = arrivals["rate"] * load
        return ExperimentConfig.from_dict(spec, base=self.base)


def _ci(values: Sequence[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


def run_bench(cfg: BenchConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    combos = [(s, p) for s in cfg.schedulers for p in cfg.prewarm]
    if cfg.reference not in combos:
        combos.insert(0, cfg.reference)
    runs: list[dict[str, Any]] = []
    jcts: dict[tuple[float, str, str], list[float]] = {}
    total = len(cfg.loads) * len(combos) * cfg.seeds
    t0 = time.perf_counter()
    done = 0
    for load in cfg.loads:
        experiment = cfg.experiment_at(load)
        for scheduler, prewarm in combos:
            for seed in range(cfg.seeds):
                result = Simulation(experiment, scheduler=scheduler, prewarm=prewarm, seed=seed).run()
                s = result.summary
                runs.append({"load": load, "scheduler": scheduler, "prewarm": prewarm, "seed": seed,
                             **{f"jct_{m}": s["jct"][m] for m in METRICS},
                             **{f"slo_{c}": v for c, v in s["slo_attainment"].items()},
                             "cold_starts": s["cold_starts"], "idle_warm_cost": s["idle_warm_cost"]})
                if seed == 0:
                    jcts[(load, scheduler, prewarm)] = [r["completion_time"] for r in result.rows]
                done += 1
                if progress:
                    elapsed = time.perf_counter() - t0
                    bar = "#" * (30 * done // total)
                    print(f"\r[{bar:30s}] {done}/{total} load {load:g} {scheduler}+{prewarm} seed {seed} "
                          f"({elapsed:.0f}s, ~{elapsed / done * (total - done):.0f}s left)   ", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    summary = _summarise(cfg, combos, runs)
    with open(out / "runs.csv", "w", newline="") as fh:
        fields = sorted({k for r in runs for k in r}, key=lambda k: list(runs[0]).index(k) if k in runs[0] else 99)
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(runs)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = format_table(summary)
    (out / "table.txt").write_text(table)
    _plots(cfg, combos, summary, jcts, out)
    return summary


def _summarise(cfg: BenchConfig, combos: list[tuple[str, str]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for load in cfg.loads:
        ref = [r for r in runs if r["load"] == load and (r["scheduler"], r["prewarm"]) == cfg.reference]
        for scheduler, prewarm in combos:
            mine = [r for r in runs if r["load"] == load and r["scheduler"] == scheduler and r["prewarm"] == prewarm]
            row: dict[str, Any] = {"load": load, "scheduler": scheduler, "prewarm": prewarm, "seeds": len(mine)}
            for m in METRICS:
                mean, half = _ci([r[f"jct_{m}"] for r in mine])
                row[f"jct_{m}"], row[f"jct_{m}_ci95"] = mean, half
                # ratio to the reference on the same seeds (paired: common random numbers)
                row[f"jct_{m}_ratio"] = float(np.mean([a[f"jct_{m}"] / b[f"jct_{m}"] for a, b in zip(mine, ref,
                                                                                                      strict=True)]))
            for key in sorted({k for r in mine for k in r if k.startswith("slo_")}):
                row[key] = float(np.mean([r[key] for r in mine if key in r]))
            for key in ("cold_starts", "idle_warm_cost"):
                row[key] = float(np.mean([r[key] for r in mine]))
                base = float(np.mean([r[key] for r in ref]))
                row[f"{key}_ratio"] = row[key] / base if base else math.nan
            rows.append(row)
    return {"reference": list(cfg.reference), "seeds": cfg.seeds, "loads": list(cfg.loads), "rows": rows}


def format_table(summary: Mapping[str, Any]) -> str:
    ref = "+".join(summary["reference"])
    lines = [f"completion time (s): mean over {summary['seeds']} seeds +- 95% CI; x = ratio to {ref} on the same "
             "seeds"]
    w = max(9, *(len(r["scheduler"]) for r in summary["rows"]))
    header = (f"{'load':>4s} {'scheduler':{w}s} {'prewarm':9s} {'mean':>16s} {'P50':>15s} {'P95':>16s} {'P99':>16s} "
              f"{'SLO rt':>6s} {'cold':>11s} {'idle cost':>15s}")
    lines += [header, "-" * len(header)]
    for r in summary["rows"]:
        cells = [f"{r[f'jct_{m}']:6.2f}+-{r[f'jct_{m}_ci95']:4.2f} {r[f'jct_{m}_ratio']:4.2f}x" for m in METRICS]
        slo = r.get("slo_real_time", math.nan)
        lines.append(f"{r['load']:4.2g} {r['scheduler']:{w}s} {r['prewarm']:9s} {cells[0]:>16s} {cells[1]:>15s} "
                     f"{cells[2]:>16s} {cells[3]:>16s} {slo:6.3f} {r['cold_starts']:5.0f} "
                     f"{r['cold_starts_ratio']:4.2f}x {r['idle_warm_cost']:8.0f} {r['idle_warm_cost_ratio']:4.2f}x")
    return "\n".join(lines) + "\n"


def _plots(cfg: BenchConfig, combos: list[tuple[str, str]], summary: Mapping[str, Any],
           jcts: Mapping[tuple[float, str, str], list[float]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install hermes_env[dev]): no plots drawn", file=sys.stderr)
        return
    load = cfg.loads[len(cfg.loads) // 2] if 1.0 not in cfg.loads else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for scheduler, prewarm in combos:
        x = np.sort(jcts[(load, scheduler, prewarm)])
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=f"{scheduler}+{prewarm}")
    ax.set_xscale("log")
    ax.set_xlabel("application completion time (s)")
    ax.set_ylabel("CDF")
    ax.set_title(f"completion times, load x{load:g}, seed 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cdf.png", dpi=120)
    plt.close(fig)
    if len(cfg.loads) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        width = 0.8 / len(combos)
        for k, (scheduler, prewarm) in enumerate(combos):
            rows = [r for r in summary["rows"] if (r["scheduler"], r["prewarm"]) == (scheduler, prewarm)]
            xs = np.arange(len(rows)) + k * width
            for ax, m in zip(axes, ("mean", "p95"), strict=True):
                ax.bar(xs, [r[f"jct_{m}"] for r in rows], width, yerr=[r[f"jct_{m}_ci95"] for r in rows],
                       label=f"{scheduler}+{prewarm}")
        for ax, m in zip(axes, ("mean", "P95"), strict=True):
            ax.set_xticks(np.arange(len(cfg.loads)) + 0.4 - width / 2, [f"x{x:g}" for x in cfg.loads])
            ax.set_xlabel("load (multiple of the workload's arrival rate)")
            ax.set_ylabel(f"{m} completion time (s)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "load_sweep.png", dpi=120)
        plt.close(fig)
