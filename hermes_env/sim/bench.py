"""The benchmark: every (scheduler, prewarm) combination on the same workloads, over several seeds.

A bench config (``configs/bench/*.yaml``) names an experiment (cluster and workload), the schedulers,
prewarm policies, routers, autoscalers, admission, KV retention, migration and disaggregation policies to compare
(every combination of them), the
number of seeds, the reference combination the ratios are taken against, and optionally ``loads``: multipliers of the
workload's arrival rate for a sweep. Every combination runs on the same arrivals and realised demands
under a seed (common random numbers), so differences are the policies'. Figures are means over seeds with
95% confidence half-widths (Student t).

One *cell* is one simulation: (load, scheduler, prewarm, router, autoscaler, admission, retention, migration,
disagg, seed). On an experiment with a disaggregated backend each cell also reports its requests' TTFT and TPOT
(P50, P99) and DistServe's goodput (requests meeting both SLOs per second, ``goodput_requests``).
Cells are independent, so an executor may run them in any order and anywhere: ``serial`` (this process),
``process`` (a local process pool) or ``ray`` (Ray tasks, on a local or remote cluster; the ``[ray]`` extra).
Each finished cell is appended to ``runs.csv`` at once; on Ctrl-C or SIGTERM the tables and plots are written
from the cells finished, and ``--resume`` runs only the missing ones. Once every cell is done, ``runs.csv`` is
rewritten in the canonical cell order, so the files do not depend on the executor or on interruptions.

Before any cell runs, everything the cells will use is built once (every load's experiment, every
combination's policies, the reference's included, the executor), so bad input is one error, not a failure
per cell. Without ``--resume`` a folder that holds an earlier bench's results is re-run: those results
move to ``previous-<time they were written>/`` inside it, and a line says so.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env.catalog import config_path
from hermes_env.errors import ConfigError, require
from hermes_env.sim.metrics import mean_ci
from hermes_env.sim.policies import (
    autoscaler_names,
    disagg_names,
    make_admission,
    make_migration,
    prewarm_names,
    retention_names,
    router_names,
    scheduler_families,
    scheduler_names,
)
from hermes_env.sim.policies import families as kind_families
from hermes_env.sim.simulator import ExperimentConfig, Simulation, inline_parts
from hermes_env.sim.workload import TIERS, resolve_path
from hermes_env.sim.written import is_written, make_written
from hermes_env.validation import as_integer, as_number, check_keys, check_output, load_yaml

METRICS = ("mean", "p50", "p95", "p99")
COUNTS = ("cold_starts", "idle_warm_cost", "gpu_seconds", "gpu_cost", "failed")
EXECUTORS = ("serial", "process", "ray")
POLICY_KEYS = ("scheduler", "prewarm", "router", "autoscaler", "admission", "retention", "migration", "disagg")
LIST_FIELDS = ("schedulers", "prewarm", "routers", "autoscalers", "admissions", "retentions", "migrations",
               "disaggs")  # BenchConfig's list of names for each of POLICY_KEYS, in its order
CELL_KEYS = ("load", *POLICY_KEYS, "seed")
CDF_KEYS = ["load", *POLICY_KEYS, "completion_time"]
DEFAULT_POLICIES = {"scheduler": "fcfs", "prewarm": "none", "router": "shared", "autoscaler": "fixed",
                    "admission": "none", "retention": "lru", "migration": "none", "disagg": "colocated"}
PER_TIER = ("goodput", "rejected")  # per SLO tier columns (goodput_critical, rejected_sheddable, ...)
RESULT_FILES = ("runs.csv", "completion_times.csv", "bench.json", "summary.json", "table.txt", "cdf.png",
                "load_sweep.png")
Combo = tuple[str, ...]  # scheduler, prewarm, router, autoscaler, admission, retention, migration, disagg
TOKEN_METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")  # of a disaggregated backend's requests


@dataclass(frozen=True)
class Cell:
    load: float
    scheduler: str
    prewarm: str
    router: str
    autoscaler: str
    admission: str
    retention: str
    migration: str
    disagg: str
    seed: int

    @property
    def combo(self) -> Combo:
        return tuple(getattr(self, k) for k in POLICY_KEYS)

    @property
    def key(self) -> tuple[str, ...]:
        return (repr(self.load), *self.combo, str(self.seed))


@dataclass(frozen=True)
class BenchConfig:
    experiment: dict[str, Any]
    base: Path
    schedulers: tuple[str, ...]
    prewarm: tuple[str, ...]
    seeds: int
    reference: Combo
    loads: tuple[float, ...] = (1.0,)
    routers: tuple[str, ...] = ("shared",)
    autoscalers: tuple[str, ...] = ("fixed",)
    admissions: tuple[str, ...] = ("none",)
    retentions: tuple[str, ...] = ("lru",)
    migrations: tuple[str, ...] = ("none",)
    disaggs: tuple[str, ...] = ("colocated",)

    @classmethod
    def from_yaml(cls, path: str | Path, schedulers: Sequence[str] | None = None,
                  prewarm: Sequence[str] | None = None, seeds: int | None = None,
                  routers: Sequence[str] | None = None, autoscalers: Sequence[str] | None = None,
                  admissions: Sequence[str] | None = None, retentions: Sequence[str] | None = None,
                  migrations: Sequence[str] | None = None, disaggs: Sequence[str] | None = None) -> BenchConfig:
        """A bench YAML by path, or a packaged one by name (``default``, ``hermes``)."""
        path = config_path("bench", path, "bench")
        spec = load_yaml(path, "bench")
        check_keys(spec, ("experiment", "schedulers", "prewarm", "routers", "autoscalers", "admissions", "retentions",
                          "migrations", "disaggs", "seeds",
                          "reference", "loads", "description"), "bench")
        experiment = spec.get("experiment")
        require(isinstance(experiment, str | Mapping), "bench.experiment", "must be a YAML path or a mapping")
        base = path.parent
        if isinstance(experiment, str):
            exp_path = resolve_path(experiment, base)
            experiment = load_yaml(exp_path, "bench.experiment")
            base = exp_path.parent
        require(isinstance(experiment, Mapping), "bench.experiment", "must be a mapping with cluster and workload")
        experiment = inline_parts(experiment, base)  # so that loads can scale the arrival rate
        lists = {}
        for key, given, default in (("schedulers", schedulers, "fcfs"), ("prewarm", prewarm, "none"),
                                    ("routers", routers, "shared"), ("autoscalers", autoscalers, "fixed"),
                                    ("admissions", admissions, "none"), ("retentions", retentions, "lru"),
                                    ("migrations", migrations, "none"), ("disaggs", disaggs, "colocated")):
            names = given or spec.get(key, [default])
            require(isinstance(names, list | tuple) and len(names) > 0, f"bench.{key}", f"must be a non-empty list "
                    f"of names, got {names!r}", f"write [{default}] for one policy")
            lists[key] = tuple(names)
        scheds, warms, routes, scales, admits, keeps, moves, splits = lists.values()
        ref = spec.get("reference") or {}
        check_keys(ref, POLICY_KEYS, "bench.reference")
        ref = {**DEFAULT_POLICIES, **ref}
        for key, names in zip(POLICY_KEYS, lists.values(), strict=True):
            for name in names:
                _check_name(key, name, f"bench.{'prewarm' if key == 'prewarm' else key + 's'}")
            _check_name(key, ref[key], f"bench.reference.{key}")
        n = as_integer(seeds if seeds is not None else spec.get("seeds", 3), "bench.seeds", low=1, high=100_000)
        raw_loads = spec.get("loads", [1.0])
        require(isinstance(raw_loads, list) and raw_loads, "bench.loads", "must be a non-empty list of multipliers")
        loads = tuple(as_number(x, f"bench.loads[{i}]", low=0, low_open=True, high=1e6)
                      for i, x in enumerate(raw_loads))
        require(len(set(loads)) == len(loads), "bench.loads", "lists a load twice")
        reference = tuple(str(ref[k]) for k in POLICY_KEYS)
        return cls(experiment, base, scheds, warms, n, reference, loads, routes, scales,  # type: ignore[arg-type]
                   admits, keeps, moves, splits)

    def check(self) -> None:
        """Build every load's experiment, and every combination's policies on the first, once: bad input
        (a load the arrival process cannot scale, a checkpoint that does not load or does not fit the
        cluster) fails here, before any cell runs, instead of in every cell."""
        experiments = [self.experiment_at(load) for load in self.loads]
        for combo in self.combos:
            Simulation(experiments[0], seed=0, keep_applications=False, **dict(zip(POLICY_KEYS, combo, strict=True)))

    @property
    def lists(self) -> tuple[tuple[str, ...], ...]:
        """The names compared for each of :data:`POLICY_KEYS`, in its order."""
        return tuple(getattr(self, f) for f in LIST_FIELDS)

    @property
    def combos(self) -> list[Combo]:
        combos = list(itertools.product(*self.lists))  # every combination, the last kind varying fastest
        return combos if self.reference in combos else [self.reference, *combos]

    def cells(self) -> list[Cell]:
        """Every simulation of the bench, in the canonical order of ``runs.csv``."""
        return [Cell(load, *combo, seed) for load in self.loads for combo in self.combos for seed in range(self.seeds)]

    def experiment_at(self, load: float) -> ExperimentConfig:
        spec = json.loads(json.dumps(self.experiment))
        arrivals = spec["workload"]["arrivals"]
        require(arrivals.get("process") in ("poisson", "bursty") or load == 1.0, "bench.loads",
                "scale only poisson or bursty arrival rates", "leave loads out, or use poisson or bursty arrivals")
        if load != 1.0:
            arrivals["rate"] = arrivals["rate"] * load
        return ExperimentConfig.from_dict(spec, base=self.base)

    def slo_classes(self) -> list[str]:
        experiment = self.experiment_at(self.loads[0])
        return sorted({m.app_class for m in experiment.workload.applications if math.isfinite(m.slo)})

    def tiers(self) -> list[str]:
        experiment = self.experiment_at(self.loads[0])
        present = {m.tier for m in experiment.workload.applications}
        return [t for t in TIERS if t in present]

    def columns(self) -> list[str]:
        split = any(b.disaggregation is not None for b in self.experiment_at(self.loads[0]).cluster.llm_backends)
        return [*CELL_KEYS, *(f"jct_{m}" for m in METRICS), *(f"slo_{c}" for c in self.slo_classes()),
                *COUNTS, "goodput", *(f"{k}_{t}" for k in PER_TIER for t in self.tiers()),
                *((*TOKEN_METRICS, "goodput_requests") if split else ())]

    def identity(self) -> dict[str, Any]:
        """What a results folder belongs to (``--resume`` refuses a folder of another bench)."""
        return {"experiment": self.experiment, "schedulers": list(self.schedulers), "prewarm": list(self.prewarm),
                "routers": list(self.routers), "autoscalers": list(self.autoscalers),
                "admissions": list(self.admissions), "retentions": list(self.retentions),
                **({"migrations": list(self.migrations)} if self.migrations != ("none",) else {}),
                **({"disaggs": list(self.disaggs)} if self.disaggs != ("colocated",) else {}), "seeds": self.seeds,
                "reference": list(self.reference), "loads": list(self.loads)}


def _check_name(kind: str, name: Any, field: str) -> None:
    """``name`` is a registered policy of ``kind`` (or, for a scheduler, ``FAMILY:ARG``; an admission policy is
    built, its parameters checked)."""
    if kind in ("admission", "migration") or is_written(name):  # built: parameters, file and interface checked
        try:
            if is_written(name):
                make_written(kind, name)
            else:
                (make_admission if kind == "admission" else make_migration)(name)
        except ConfigError as err:
            raise ConfigError(field, err.problem, err.fix) from None
        return
    known = {"scheduler": scheduler_names, "prewarm": prewarm_names, "router": router_names,
             "autoscaler": autoscaler_names, "retention": retention_names, "disagg": disagg_names}[kind]()
    families = scheduler_families() if kind == "scheduler" else kind_families(kind) if kind == "disagg" else []
    ok = isinstance(name, str) and (name in known or (":" in name and name.partition(":")[0] in families))
    require(ok, field, f"unknown {kind} {name!r}", f"use some of {known}" + "".join(f", or {p}:ARG" for p in families)
            + ", or a written one, FILE.py:Name")


@dataclass
class CellResult:
    cell: Cell
    row: dict[str, Any] | None  # None when the cell failed
    completion_times: list[float]  # seed 0 only (the CDF plot)
    error: str = ""


def run_cell(cfg: BenchConfig, cell: Cell) -> CellResult:
    """One simulation of the bench. A failure is returned, with its traceback, not raised, so that the
    other cells finish and are written."""
    try:
        result = Simulation(cfg.experiment_at(cell.load), scheduler=cell.scheduler, prewarm=cell.prewarm,
                            router=cell.router, autoscaler=cell.autoscaler, admission=cell.admission,
                            retention=cell.retention, migration=cell.migration, disagg=cell.disagg,
                            seed=cell.seed).run()
    except Exception:  # reported per cell by the caller
        return CellResult(cell, None, [], traceback.format_exc())
    s = result.summary
    row: dict[str, Any] = {"load": cell.load, **dict(zip(POLICY_KEYS, cell.combo, strict=True)), "seed": cell.seed,
                           **{f"jct_{m}": s["jct"][m] for m in METRICS},
                           **{f"slo_{c}": v for c, v in s["slo_attainment"].items()},
                           **{k: float(s[k]) for k in COUNTS}, "goodput": s["goodput"]["all"],
                           **{f"goodput_{t}": c["goodput"] for t, c in s["tiers"].items()},
                           **{f"rejected_{t}": float(c["rejected"]) for t, c in s["tiers"].items()}}
    split = [b["disaggregation"] for b in s["backends"].values() if "disaggregation" in b]
    if split:  # the disaggregated backend's requests (the first, if several)
        row.update({m: split[0][m[:4]].get(m[5:], math.nan) for m in TOKEN_METRICS})
        row["goodput_requests"] = sum(d["goodput"] for d in split)
    times = [r["completion_time"] for r in result.rows] if cell.seed == 0 else []
    return CellResult(cell, row, times)


# -- executors: each yields the results of the cells it is given, in the order they finish ------------

def _serial(cfg: BenchConfig, cells: list[Cell], workers: int | None, address: str | None) -> Iterator[CellResult]:
    for cell in cells:
        yield run_cell(cfg, cell)


def _process(cfg: BenchConfig, cells: list[Cell], workers: int | None, address: str | None) -> Iterator[CellResult]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_cell, cfg, cell) for cell in cells]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError("executor", f"ray is not installed ({err})", "pip install 'hermes_env[ray]'") from None
    return ray


def _ray(cfg: BenchConfig, cells: list[Cell], workers: int | None, address: str | None) -> Iterator[CellResult]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=1)(run_cell)
    config = ray.put(cfg)
    pending = [task.remote(config, cell) for cell in cells]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


_EXECUTORS: dict[str, Callable[..., Iterator[CellResult]]] = {"serial": _serial, "process": _process, "ray": _ray}


class Interrupted(BaseException):
    """The bench stopped on SIGTERM (a BaseException like KeyboardInterrupt, so no cell catches it)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def run_bench(cfg: BenchConfig, out: Path, progress: bool = True, resume: bool = False, executor: str = "serial",
              workers: int | None = None, address: str | None = None) -> dict[str, Any]:
    """Run the bench's missing cells, write ``runs.csv`` as they finish, then the summary, table and plots.
    Returns the summary; its ``interrupted`` and ``failed`` entries say what is missing."""
    require(executor in EXECUTORS, "executor", f"unknown executor {executor!r}", f"use one of {EXECUTORS}")
    check_output(out, "--out", folder=True)
    if executor == "ray":
        _import_ray()
    cfg.check()
    runs_path, cdf_path, identity_path = out / "runs.csv", out / "completion_times.csv", out / "bench.json"
    columns = cfg.columns()
    if resume and identity_path.is_file():
        require(json.loads(identity_path.read_text()) == json.loads(json.dumps(cfg.identity())), "--resume",
                f"{out} holds the results of another bench", "resume with the same config, or choose another --out")
    done = _read_runs(runs_path, columns) if resume else {}
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        _move_aside(out)
        _write_csv(runs_path, columns, [])
        _write_csv(cdf_path, CDF_KEYS, [])
    identity_path.write_text(json.dumps(cfg.identity(), indent=1) + "\n")
    todo = [c for c in cfg.cells() if c.key not in done]
    failures: list[CellResult] = []
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    t0 = time.perf_counter()
    try:
        for k, result in enumerate(_EXECUTORS[executor](cfg, todo, workers, address), 1):
            if result.row is None:
                failures.append(result)
                print(f"\ncell {result.cell} failed:\n{result.error}", file=sys.stderr)
            else:
                done[result.cell.key] = result.row
                _append_csv(runs_path, columns, [result.row])
                _append_csv(cdf_path, CDF_KEYS, [{"load": result.cell.load, **dict(zip(POLICY_KEYS, result.cell.combo,
                                                                                          strict=True)),
                                                  "completion_time": t} for t in result.completion_times])
            if progress:
                _progress(k, len(todo), result.cell, time.perf_counter() - t0)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if progress:
        print(file=sys.stderr)
    rows = [done[c.key] for c in cfg.cells() if c.key in done]
    if len(rows) == len(cfg.cells()):
        _write_csv(runs_path, columns, rows)  # canonical order, whatever the executor and interruptions
    summary = _summarise(cfg, rows)
    summary["interrupted"] = interrupted
    summary["failed"] = [{"cell": list(f.cell.key), "error": f.error} for f in failures]
    summary["missing_cells"] = len(cfg.cells()) - len(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.txt").write_text(format_table(summary))
    _plots(cfg, summary, _read_completion_times(cdf_path), out)
    return summary


def _move_aside(out: Path) -> None:
    """An earlier bench's results in ``out`` move to ``out/previous-<UTC time they were written>/``, so that
    the main job can run again (after a config change, a new version) and the old results stay beside it."""
    found = [out / name for name in RESULT_FILES if (out / name).is_file()]
    if not found:
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(max(p.stat().st_mtime for p in found)))
    target, k = out / f"previous-{stamp}", 1
    while target.exists():
        k += 1
        target = out / f"previous-{stamp}-{k}"
    target.mkdir()
    for path in found:
        shutil.move(path, target / path.name)
    print(f"hermes-env bench: {out} held an earlier bench's results: moved them to {target} (--resume continues "
          "an interrupted bench in place instead)", file=sys.stderr)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(done: int, total: int, cell: Cell, elapsed: float) -> None:
    bar = "#" * (30 * done // max(total, 1))
    print(f"\r[{bar:30s}] {done}/{total} load {cell.load:g} {'+'.join(cell.combo)} seed {cell.seed} "
          f"({elapsed:.0f}s, ~{elapsed / done * (total - done):.0f}s left)   ", end="", file=sys.stderr)


# -- files --------------------------------------------------------------------------------------------

def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(_exact(r) for r in rows)


def _append_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=columns).writerows(_exact(r) for r in rows)
        fh.flush()


def _exact(row: Mapping[str, Any]) -> dict[str, Any]:
    """Floats as ``repr``, which reads back to the same float: a resumed bench equals an uninterrupted one."""
    return {k: repr(v) if isinstance(v, float) else v for k, v in row.items()}


def _read_runs(path: Path, columns: list[str]) -> dict[tuple[str, ...], dict[str, Any]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        require(reader.fieldnames == columns, "--resume", f"{path} has other columns than this bench writes",
                "resume with the same config, or choose another --out")
        rows = {}
        for raw in reader:
            row: dict[str, Any] = {"load": float(raw["load"]), **{k: raw[k] for k in POLICY_KEYS},
                                   "seed": int(raw["seed"])}
            row.update({k: float(v) for k, v in raw.items() if k not in CELL_KEYS and v != ""})
            rows[Cell(row["load"], *(row[k] for k in POLICY_KEYS), row["seed"]).key] = row
        return rows


def _read_completion_times(path: Path) -> dict[tuple[float, Combo], list[float]]:
    out: dict[tuple[float, Combo], list[float]] = {}
    if path.is_file():
        with open(path, newline="") as fh:
            for raw in csv.DictReader(fh):
                combo = tuple(raw[k] for k in POLICY_KEYS)
                out.setdefault((float(raw["load"]), combo), []).append(float(raw["completion_time"]))  # type: ignore
    return out


# -- summary and table ----------------------------------------------------------------------------------

def _summarise(cfg: BenchConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    combo_of = lambda r: tuple(r[k] for k in POLICY_KEYS)  # noqa: E731
    for load in cfg.loads:
        ref = {r["seed"]: r for r in runs if r["load"] == load and combo_of(r) == cfg.reference}
        for combo in cfg.combos:
            mine = [r for r in runs if r["load"] == load and combo_of(r) == combo]
            if not mine:
                continue
            paired = [(r, ref[r["seed"]]) for r in mine if r["seed"] in ref]  # the same seeds: common random numbers
            row: dict[str, Any] = {"load": load, **dict(zip(POLICY_KEYS, combo, strict=True)), "seeds": len(mine)}
            for m in METRICS:
                row[f"jct_{m}"], row[f"jct_{m}_ci95"] = mean_ci([r[f"jct_{m}"] for r in mine])
                row[f"jct_{m}_ratio"] = float(np.mean([a[f"jct_{m}"] / b[f"jct_{m}"] for a, b in paired])) \
                    if paired else math.nan
            for key in sorted({k for r in mine for k in r if k.startswith(("slo_", "rejected_", "ttft_", "tpot_"))}):
                row[key] = float(np.mean([r[key] for r in mine if key in r]))
            for key in sorted({k for r in mine for k in r if k.startswith("goodput")}):  # paired, as jct
                row[key], row[f"{key}_ci95"] = mean_ci([r[key] for r in mine if key in r])
                base = float(np.mean([b[key] for _, b in paired if key in b])) if paired else math.nan
                row[f"{key}_ratio"] = float(np.mean([a[key] for a, _ in paired if key in a])) / base \
                    if paired and base else math.nan
            for key in COUNTS:
                row[key] = float(np.mean([r[key] for r in mine]))
                base = float(np.mean([b[key] for _, b in paired])) if paired else math.nan
                row[f"{key}_ratio"] = row[key] / base if base else math.nan
            rows.append(row)
    varying = [k for k, names in zip(POLICY_KEYS, cfg.lists, strict=True)
               if len({*names, cfg.reference[POLICY_KEYS.index(k)]}) > 1]
    return {"reference": list(cfg.reference), "seeds": cfg.seeds, "loads": list(cfg.loads), "rows": rows,
            "varying": varying or ["scheduler"]}


def label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """A combination's name in tables and plots: its policies of the dimensions that vary, joined by +."""
    return "+".join(str(row[k]) for k in keys)


def format_table(summary: Mapping[str, Any]) -> str:
    """The bench table: completion-time mean and percentiles with CI and paired ratio to the reference;
    real-time SLO attainment; cold starts (tool warm-ups on a request's critical path), idle cost (tool
    instance-seconds held warm while serving nothing, times each backend's ``idle_cost``) and GPU-seconds
    held by LLM replicas, each with its ratio to the reference; failed applications."""
    keys = summary.get("varying", ["scheduler", "prewarm"])
    ref = "+".join(summary["reference"][POLICY_KEYS.index(k)] for k in keys)
    lines = [f"completion time (s): mean over {summary['seeds']} seeds +- 95% CI; x = ratio to {ref} on the same "
             "seeds; cold = tool cold starts on the critical path; idle = warm idle tool instance-seconds x "
             "idle_cost; GPU-s = GPU-seconds held by LLM replicas; failed = applications refused"]
    w = max([12, *(len(label(r, keys)) for r in summary["rows"])])
    header = (f"{'load':>4s} {'+'.join(keys):{w}s} {'mean':>16s} {'P50':>15s} {'P95':>16s} {'P99':>16s} "
              f"{'SLO rt':>6s} {'cold':>11s} {'idle':>14s} {'GPU-s':>13s} {'failed':>6s}")
    lines += [header, "-" * len(header)]
    for r in summary["rows"]:
        cells = [f"{r[f'jct_{m}']:6.2f}+-{r[f'jct_{m}_ci95']:4.2f} {r[f'jct_{m}_ratio']:4.2f}x" for m in METRICS]
        slo = r.get("slo_real_time", math.nan)
        lines.append(f"{r['load']:4.2g} {label(r, keys):{w}s} {cells[0]:>16s} {cells[1]:>15s} "
                     f"{cells[2]:>16s} {cells[3]:>16s} {slo:6.3f} {r['cold_starts']:5.0f} "
                     f"{r['cold_starts_ratio']:4.2f}x {r['idle_warm_cost']:7.0f} {r['idle_warm_cost_ratio']:4.2f}x "
                     f"{r['gpu_seconds']:6.0f} {r['gpu_seconds_ratio']:4.2f}x {r['failed']:6.1f}")
    tiers = [t for t in TIERS if any(f"goodput_{t}" in r for r in summary["rows"])]
    if len(tiers) > 1:
        lines += ["", f"goodput (applications meeting their SLO per second of arrivals) per tier, +- 95% CI, x = ratio "
                  f"to {ref}; rejected = applications refused by admission (mean per run)"]
        head = f"{'load':>4s} {'+'.join(keys):{w}s} " + " ".join(f"{t:>20s}" for t in (*tiers, "all")) + \
            " " + " ".join(f"{'rej ' + t:>14s}" for t in tiers)
        lines += [head, "-" * len(head)]
        for r in summary["rows"]:
            good = [f"{r[k]:5.3f}+-{r[f'{k}_ci95']:5.3f} {r[f'{k}_ratio']:4.2f}x"
                    for k in (*(f"goodput_{t}" for t in tiers), "goodput")]
            lines.append(f"{r['load']:4.2g} {label(r, keys):{w}s} " + " ".join(f"{g:>20s}" for g in good) + " "
                         + " ".join(f"{r.get(f'rejected_{t}', math.nan):14.1f}" for t in tiers))
    if any("ttft_p50" in r for r in summary["rows"]):
        lines += ["", f"prefill/decode: the disaggregated backend's requests, time to first token and time per output "
                  f"token after it (s, P50 and P99, mean over seeds); goodput = requests meeting both SLOs per "
                  f"second, +- 95% CI, x = ratio to {ref}"]
        head = f"{'load':>4s} {'+'.join(keys):{w}s} " + " ".join(f"{m:>9s}" for m in TOKEN_METRICS) + \
            f" {'goodput':>20s}"
        lines += [head, "-" * len(head)]
        for r in summary["rows"]:
            good = (f"{r['goodput_requests']:5.3f}+-{r['goodput_requests_ci95']:5.3f} "
                    f"{r['goodput_requests_ratio']:4.2f}x")
            lines.append(f"{r['load']:4.2g} {label(r, keys):{w}s} " + " ".join(f"{r[m]:9.4f}" for m in TOKEN_METRICS)
                         + f" {good:>20s}")
    missing = summary.get("missing_cells", 0)
    if missing:
        why = "interrupted" if summary.get("interrupted") else "failed"
        lines.append(f"incomplete: {missing} runs missing ({why}); rerun with --resume to finish")
    return "\n".join(lines) + "\n"


def _plots(cfg: BenchConfig, summary: Mapping[str, Any], jcts: Mapping[tuple[float, Combo], list[float]],
           out: Path) -> None:
    """A CDF of completion times (seed 0, middle load) and, for a sweep, mean and P95 against load. With many
    combinations the series cycle through 10 colours x 4 line styles and the legend sits beside the axes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install hermes_env[dev]): no plots drawn", file=sys.stderr)
        return
    combos = cfg.combos
    keys = summary.get("varying", ["scheduler"])
    name = {c: label(dict(zip(POLICY_KEYS, c, strict=True)), keys) for c in combos}
    colours = plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    look = {c: {"color": colours[i % 10], "linestyle": styles[(i // 10) % 4]} for i, c in enumerate(combos)}
    legend = {"fontsize": 7, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "ncol": 1 + len(combos) // 16}
    load = 1.0 if 1.0 in cfg.loads else cfg.loads[len(cfg.loads) // 2]
    fig, ax = plt.subplots(figsize=(8 + 1.5 * (len(combos) // 16), 4.5))
    for combo in combos:
        x = np.sort(jcts.get((load, combo), []))
        if len(x):
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=name[combo], **look[combo])
    ax.set_xscale("log")
    ax.set_xlabel("application completion time (s)")
    ax.set_ylabel("CDF")
    ax.set_title(f"completion times, load x{load:g}, seed 0")
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(out / "cdf.png", dpi=120)
    plt.close(fig)
    if len(cfg.loads) > 1:
        fig, axes = plt.subplots(1, 2, figsize=(11 + 1.5 * (len(combos) // 16), 4.2))
        for combo in combos:
            rows = [r for r in summary["rows"] if tuple(r[k] for k in POLICY_KEYS) == combo]
            for ax, m in zip(axes, ("mean", "p95"), strict=True):
                ax.errorbar([r["load"] for r in rows], [r[f"jct_{m}"] for r in rows],
                            yerr=[r[f"jct_{m}_ci95"] for r in rows], marker="o", markersize=3, capsize=2,
                            label=name[combo], **look[combo])
        for ax, m in zip(axes, ("mean", "P95"), strict=True):
            ax.set_xlabel("load (multiple of the workload's arrival rate)")
            ax.set_ylabel(f"{m} completion time (s)")
        axes[1].legend(**legend)
        fig.tight_layout()
        fig.savefig(out / "load_sweep.png", dpi=120)
        plt.close(fig)
