"""The ``hermes-env`` command line.

``hermes-env simulate CONFIG --scheduler NAME --prewarm NAME --seed N --out DIR`` runs one headless
simulation and writes ``applications.csv`` (one row per application: template, class, arrival,
completion, per-stage queueing and service times) and ``summary.json``. ``CONFIG`` is a packaged
experiment's name (``contended``) or a YAML path.

``--timeline PATH.json`` also writes the run's timeline as Chrome/Perfetto trace-event JSON, and
``--timeline-png PATH.png`` draws it (``--timeline-window START:END``, ``--timeline-max-events N`` bound
it; docs/timeline.md).

``hermes-env bench --config NAME_OR_PATH --schedulers a,b --prewarm x,y --seeds N --out DIR [--resume]
[--executor serial|process|ray]`` compares policies on the same workloads (see :mod:`hermes_env.sim.bench`); run
again into the same ``--out``, it moves the earlier results to ``previous-<time>/`` there and says so.

``hermes-env fit-trace TRACE --out workload.yaml`` fits arrival processes and length distributions to a
trace and writes a workload config (see :mod:`hermes_env.sim.trace_fit`); with ``--format dynamo-agentic``,
to an agentic trace's sessions, fitting a PDGraph to them and reporting how well it reproduces them.
``hermes-env export-trace CONFIG --out rows.jsonl`` writes an experiment's workload (its sampled
applications under ``--seed``; or ``--template T --rate R --num-applications N``: a PDGraph's on the
default cluster) as agentic trace rows (see :mod:`hermes_env.sim.agentic`); with ``--simulate``, a
simulated run of it, with the run's own times.

``hermes-env tasks`` lists the task suite; ``hermes-env evaluate --task NAME --policy SPEC`` scores a policy
on a task's held-out seeds; ``hermes-env leaderboard`` regenerates docs/tasks.md (:mod:`hermes_env.tasks`).
Wherever a policy name goes, ``path/to/file.py:Name`` names a written policy (:mod:`hermes_env.sim.written`).

``hermes-env templates`` analyses every application of the library under a cost model and prints,
per application, its demand at arrival (mean and quantiles of total service), its Gittins index, its
structural entropy and, per backend, the probability and expected time of first use.

Bad input (a malformed config, an unknown policy, a bad argument, an output path that cannot be written)
prints one line, ``hermes-env: FIELD: PROBLEM (FIX)``, and exits with status 2: every command checks
everything it will use (configs, tasks, seeds, policy names, paths) before it starts any work, and every
command ends through :func:`main`'s one error path. An interrupted bench exits with 130 after writing what
it finished.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hermes_env.errors import ConfigError, require
from hermes_env.validation import check_output

DEFAULT_COST = "h100-measured"
POLICY_DEFAULTS = (("scheduler", "fcfs"), ("prewarm", "none"), ("router", "shared"), ("autoscaler", "fixed"))


def _templates(args: argparse.Namespace) -> int:
    from hermes_env.cluster.latency import load_cost_model
    from hermes_env.pdgraph import DemandModel
    from hermes_env.pdgraph.library import TEMPLATE_NAMES, load_template

    if args.show:
        print(load_template(args.show).to_yaml(), end="")
        return 0
    cost = load_cost_model(args.cost)
    print(f"cost model: {args.cost}\n")
    header = (f"{'application':26s} {'states':>6s} {'mean s':>8s} {'P50 s':>8s} {'P95 s':>8s} {'P99 s':>8s} "
              f"{'Gittins 1/s':>11s} {'H bits':>6s} {'build ms':>8s}  first use: backend P(use) E[t] s")
    print(header)
    print("-" * len(header))
    for name in TEMPLATE_NAMES:
        graph = load_template(name)
        t0 = time.perf_counter()
        model = DemandModel(graph, cost)
        start = model.progress(graph.entry)
        gittins = model.gittins_index(start)
        build_ms = 1e3 * (time.perf_counter() - t0)
        dist = model.remaining_demand(start)
        q50, q95, q99 = dist.quantile([0.5, 0.95, 0.99])
        uses = []
        for backend in graph.backends:
            nu = model.next_use(start, backend)
            uses.append(f"{backend} {nu.probability:.2f} {nu.time.mean:.2f}" if nu.time else f"{backend} 0")
        print(f"{name:26s} {len(model.space):6d} {dist.mean:8.2f} {q50:8.2f} {q95:8.2f} {q99:8.2f} "
              f"{gittins:11.4f} {model.structure_entropy(start):6.2f} {build_ms:8.0f}  {'; '.join(uses)}")
    return 0


def _timeline(args: argparse.Namespace) -> Any:
    """The recorder the --timeline flags ask for (None without them), checked before the run starts."""
    from hermes_env.sim.timeline import TimelineRecorder, matplotlib_pyplot, parse_window

    if args.timeline is None and args.timeline_png is None:
        for flag, value in (("--timeline-window", args.timeline_window), ("--timeline-max-events",
                                                                         args.timeline_max_events)):
            if value is not None:
                raise ConfigError(flag, "applies to a timeline", "add --timeline PATH.json or --timeline-png PATH.png")
        return None
    for flag, path, suffix in (("--timeline", args.timeline, ".json"), ("--timeline-png", args.timeline_png, ".png")):
        if path is not None:
            if path.suffix != suffix:
                raise ConfigError(flag, f"{str(path)!r} does not end in {suffix}", f"name a {suffix} file")
            if not path.parent.is_dir():
                raise ConfigError(flag, f"folder {str(path.parent)!r} does not exist", "create it first")
            check_output(path, flag, folder=False)
    if args.timeline_png is not None:
        matplotlib_pyplot("--timeline-png")
    window = parse_window(args.timeline_window) if args.timeline_window is not None else None
    cap = {} if args.timeline_max_events is None else {"max_events": args.timeline_max_events}
    return TimelineRecorder(window, **cap)


def _simulate(args: argparse.Namespace) -> int:
    from hermes_env.sim import ExperimentConfig, Simulation

    check_output(args.out, "--out", folder=True)
    timeline = _timeline(args)
    config = ExperimentConfig.from_yaml(args.config)
    t0 = time.perf_counter()
    result = Simulation(config, scheduler=args.scheduler, prewarm=args.prewarm, router=args.router,
                        autoscaler=args.autoscaler, admission=args.admission, retention=args.retention,
                        migration=args.migration, disagg=args.disagg,
                        seed=args.seed, keep_applications=False, rows_to=args.out / "applications.csv",
                        timeline=timeline).run()
    wall = time.perf_counter() - t0
    result.write(args.out)
    if timeline is not None:
        from hermes_env.sim.timeline import draw_timeline

        trace = timeline.write(args.timeline) if args.timeline is not None else timeline.trace()
        if args.timeline_png is not None:
            draw_timeline(trace, args.timeline_png, timeline.window,
                          f"{args.config}, {args.scheduler}, router {args.router}, seed {args.seed}")
    s = result.summary
    jct = s["jct"]
    print(f"{s['applications']} applications ({s['stage_requests']} requests, {s['events']} events) in "
          f"{s['simulated_seconds']:.1f} simulated s, {wall:.2f} s wall")
    print(f"completion time: mean {jct['mean']:.3f} s, P50 {jct['p50']:.3f}, P95 {jct['p95']:.3f}, "
          f"P99 {jct['p99']:.3f}; SLO attainment {s['slo_attainment']}; cold starts {s['cold_starts']}; "
          f"idle warm cost {s['idle_warm_cost']:.1f}; GPU-seconds {s['gpu_seconds']:.0f}; failed {s['failed']}")
    print("goodput (applications meeting their SLO per second): " + ", ".join(
        f"{t} {g:.3f}" for t, g in s["goodput"].items()) + f"; admission {s['admission']} rejected "
        + ", ".join(f"{t} {c['rejected']}" for t, c in s["tiers"].items()))
    for name, b in s["backends"].items():
        if "migration" in b:
            m = b["migration"]
            print(f"migration {s['migration']} on {name}: {m['migrations']} requests moved ({m['aborted']} aborted), "
                  f"{m['bytes'] / 1e9:.2f} GB copied, downtime mean {1e3 * m['mean_downtime_s']:.1f} ms, longest "
                  f"{1e3 * m['longest_downtime_s']:.1f} ms")
        d = b.get("disaggregation")
        if d is not None:
            print(f"{name} ({d['policy']}, {d['split_requests']} split): TTFT P50 {d['ttft'].get('p50', 0):.3f} s, "
                  f"P99 {d['ttft'].get('p99', 0):.3f}; TPOT P50 {d['tpot'].get('p50', 0):.4f} s, "
                  f"P99 {d['tpot'].get('p99', 0):.4f}; goodput {d['goodput']:.3f} requests/s meeting both SLOs")
    print(f"wrote {args.out / 'applications.csv'} and {args.out / 'summary.json'}")
    if timeline is not None:
        written = " and ".join(str(p) for p in (args.timeline, args.timeline_png) if p is not None)
        print(f"timeline: {timeline.note()}; wrote {written}")
        if timeline.dropped:
            print(f"hermes-env simulate: the timeline is incomplete: {timeline.dropped} events dropped over "
                  f"--timeline-max-events", file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from hermes_env.sim.bench import BenchConfig, format_table, run_bench

    check_output(args.out, "--out", folder=True)
    split = lambda text: [x for x in text.split(",") if x] if text else None  # noqa: E731
    cfg = BenchConfig.from_yaml(args.config, split(args.schedulers), split(args.prewarm), args.seeds,
                                split(args.routers), split(args.autoscalers), split(args.admissions),
                                split(args.retentions), split(args.migrations), split(args.disaggs))
    summary = run_bench(cfg, args.out, progress=not args.quiet, resume=args.resume, executor=args.executor,
                        workers=args.workers, address=args.address)
    print(format_table(summary), end="")
    print(f"wrote {args.out}/runs.csv, summary.json, table.txt and plots")
    if summary["interrupted"]:
        print(f"hermes-env bench: interrupted with {summary['missing_cells']} runs left; the tables hold the runs "
              f"finished; finish with --resume", file=sys.stderr)
        return 130
    if summary["failed"]:
        print(f"hermes-env bench: {len(summary['failed'])} runs failed (tracebacks above and in summary.json)",
              file=sys.stderr)
        return 1
    return 0


def _fit_trace(args: argparse.Namespace) -> int:
    from hermes_env.sim.trace_fit import write_fitted_workload
    from hermes_env.sim.traces import load_trace, trace_path

    check_output(args.out, "--out", folder=False)
    if args.format == "dynamo-agentic":
        return _fit_agentic(args)
    for flag in ("block_size", "wait_backend"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')}", "goes with --format dynamo-agentic")
    trace = load_trace(args.trace, "trace")
    fit = write_fitted_workload(trace, trace_path(args.trace).name, args.out, args.arrivals, args.backend,
                                args.num_applications, args.bin)
    print(f"{fit.name}: {fit.requests} requests over {fit.duration:.0f} s")
    for key, f in fit.arrivals.items():
        print(f"  arrivals {key:13s} KS {f['ks']:.4f}{'  (written)' if key == args.arrivals else ''}")
    for key, f in fit.lengths.items():
        print(f"  {key:13s} lognormal KS {f['lognormal']['ks']:.4f}, empirical KS {f['empirical']['ks']:.4f}: "
              f"{f['best']} written")
    print(f"wrote {args.out}")
    return 0


def _fit_agentic(args: argparse.Namespace) -> int:
    from hermes_env.sim.agentic import BLOCK_TOKENS, WAIT_BACKEND
    from hermes_env.sim.trace_fit import write_agentic_workload

    replay, fits, report = write_agentic_workload(
        args.trace, args.out, args.block_size or BLOCK_TOKENS, args.arrivals, args.backend,
        args.wait_backend or WAIT_BACKEND, args.num_applications, args.bin)
    trace = replay.trace
    print(f"{Path(args.trace).name}: {len(trace.rows)} requests in {len(trace.sessions)} sessions "
          f"({trace.inexact} replayed with added waits); PDGraph {replay.graph.name}: "
          f"{len(replay.graph.state_space())} states")
    for key, f in fits.items():
        print(f"  session arrivals {key:13s} KS {f['ks']:.4f}{'  (written)' if key == args.arrivals else ''}")
    print(f"  {'measure':16s} {'trace mean':>10s} {'fit mean':>10s} {'KS':>6s} {'p50 err':>8s} {'p90 err':>8s}")
    for m, r in report.items():
        print(f"  {m:16s} {r['trace mean']:10.4g} {r['fit mean']:10.4g} {r['ks']:6.3f} {100 * r['p50 error']:7.1f}% "
              f"{100 * r['p90 error']:7.1f}%")
    print(f"wrote {args.out}")
    return 0


def _export_trace(args: argparse.Namespace) -> int:
    from hermes_env.sim import ExperimentConfig, Simulation
    from hermes_env.sim.agentic import rows_from_run, rows_from_workload, write_agentic

    check_output(args.out, "--out", folder=False)
    if (args.config is None) == (args.template is None):
        raise ConfigError("export-trace", "needs an experiment or --template, not both",
                          "name an experiment, or a PDGraph with --template (and --num-applications)")
    if args.template is None:
        if args.rate is not None:
            raise ConfigError("--rate", "goes with --template", "an experiment has its own arrivals")
        config = ExperimentConfig.from_yaml(args.config)
    else:
        if args.num_applications is None:
            raise ConfigError("--num-applications", "is missing", "say how many applications of the template")
        config = ExperimentConfig.from_dict({"cluster": "default", "workload": {
            "num_applications": args.num_applications, "arrivals": {"process": "poisson", "rate": args.rate or 1.0},
            "applications": [{"template": args.template}]}}, base=Path.cwd())
    n = args.num_applications or config.workload.num_applications
    if n > config.workload.num_applications:
        raise ConfigError("--num-applications", f"is {n}, but the workload has {config.workload.num_applications}",
                          "ask for fewer")
    if args.simulate and n != config.workload.num_applications:
        config = replace(config, workload=replace(config.workload, num_applications=n))
    if not args.simulate:
        for flag, default in POLICY_DEFAULTS:
            if getattr(args, flag) != default:
                raise ConfigError(f"--{flag}", "goes with --simulate", "the sampled workload has no policies")
        rows = rows_from_workload(Simulation(config, seed=args.seed), n, args.block_size)
        write_agentic(rows, args.out)
        print(f"wrote {len(rows)} requests of {n} applications to {args.out}")
        return 0
    sim = Simulation(config, scheduler=args.scheduler, prewarm=args.prewarm, router=args.router,
                     autoscaler=args.autoscaler, seed=args.seed)
    sim.request_log = []
    summary = sim.run().summary
    rows = rows_from_run(sim, args.block_size)
    write_agentic(rows, args.out)
    print(f"simulated {summary['applications']} applications ({summary['failed']} failed, left out); wrote the "
          f"{len(rows)} requests of the others, with the run's times, to {args.out}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from hermes_env.tasks import Task, task_names

    print(f"{'task':26s} {'environment':28s} {'objective':9s} {'simplest':24s} held-out seeds")
    for name in task_names():
        t = Task.from_yaml(name)
        print(f"{name:26s} {t.env_id:28s} {t.objective:9s} {t.simplest:24s} {t.eval_seeds[0]}-{t.eval_seeds[-1]}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from hermes_env.tasks import Task, evaluate, format_score

    task = Task.from_yaml(args.task)
    held = len(task.eval_seeds)
    require(not args.seeds or args.seeds <= held, "--seeds", f"is {args.seeds}, but task {task.name} has {held} "
            f"held-out seeds ({task.eval_seeds[0]}-{task.eval_seeds[-1]})", f"give at most {held}")
    seeds = task.eval_seeds[: args.seeds] if args.seeds else None
    print(format_score(evaluate(task, args.policy, seeds, heldout=args.heldout)))
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from hermes_env.tasks import leaderboard

    check_output(args.out, "--out", folder=False)
    leaderboard(args.out, args.tasks.split(",") if args.tasks else None, workers=args.workers, planner=args.planner,
                written=tuple(x for x in (args.written or "").split(",") if x))
    print(f"wrote {args.out}")
    return 0


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in 0 .. 2**32 - 1, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermes-env", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("templates", help="analyse the application library under a cost model")
    t.add_argument("--cost", default=DEFAULT_COST, help="cost model: a name (configs/costs) or a YAML path "
                   "(default: %(default)s)")
    t.add_argument("--show", metavar="TEMPLATE", help="print one template's YAML instead")
    t.set_defaults(run=_templates)

    m = sub.add_parser("simulate", help="run one headless simulation and write per-application CSV and summary JSON")
    m.add_argument("config", help="experiment: a name (configs/experiments) or a YAML path (cluster + workload)")
    m.add_argument("--scheduler", default="fcfs", help="a scheduler name (see docs/simulator.md), ppo:PATH or a "
                   "written one, FILE.py:Name (as for every policy flag)")
    m.add_argument("--prewarm", default="none", help="a prewarm policy name")
    m.add_argument("--router", default="shared", help="a router name (shared: one queue per backend)")
    m.add_argument("--autoscaler", default="fixed", help="an autoscaler name")
    m.add_argument("--admission", default="none", help="an admission policy name (none: admit every application)")
    m.add_argument("--retention", default="lru", help="a KV retention policy (lru: vLLM's LRU release; ttl, kvflow, "
                   "infercept, pdgraph, oracle)")
    m.add_argument("--migration", default="none", help="a request migration policy (none: requests stay where "
                   "admitted; llumnix, oracle; docs/simulator.md)")
    m.add_argument("--disagg", default="colocated", help="a disaggregation policy, for backends split into prefill "
                   "and decode pools (colocated: never split; always, distserve, splitwise)")
    m.add_argument("--seed", type=_seed, default=0)
    m.add_argument("--out", type=Path, required=True, help="output directory")
    m.add_argument("--timeline", type=Path, metavar="PATH.json",
                   help="write the run's timeline as Chrome/Perfetto trace-event JSON (docs/timeline.md)")
    m.add_argument("--timeline-png", type=Path, metavar="PATH.png",
                   help="draw the timeline as a PNG (needs matplotlib); with or without --timeline")
    m.add_argument("--timeline-window", metavar="START:END",
                   help="simulated seconds the timeline keeps, e.g. 0:120 or 600: (default: the whole run)")
    m.add_argument("--timeline-max-events", type=_positive, metavar="N",
                   help="at most N spans, instants and counter values kept; the rest counted, reported "
                        "(default: a million)")
    m.set_defaults(run=_simulate)

    b = sub.add_parser("bench", help="compare schedulers and prewarm policies on the same workloads over seeds")
    b.add_argument("--config", required=True, help="bench config: a name (configs/bench) or a YAML path")
    b.add_argument("--schedulers", help="comma-separated scheduler names (default: the config's)")
    b.add_argument("--prewarm", help="comma-separated prewarm policy names (default: the config's)")
    b.add_argument("--routers", help="comma-separated router names (default: the config's, or shared)")
    b.add_argument("--autoscalers", help="comma-separated autoscaler names (default: the config's, or fixed)")
    b.add_argument("--admissions", help="comma-separated admission policy names (default: the config's, or none)")
    b.add_argument("--retentions", help="comma-separated KV retention policies (default: the config's, or lru)")
    b.add_argument("--migrations", help="comma-separated migration policies (default: the config's, or none)")
    b.add_argument("--disaggs", help="comma-separated disaggregation policies (default: the config's, or colocated)")
    b.add_argument("--seeds", type=_positive, help="number of seeds (default: the config's)")
    b.add_argument("--out", type=Path, required=True, help="output directory")
    b.add_argument("--resume", action="store_true", help="run only the cells missing from --out (without it, earlier "
                   "results there move to --out/previous-<time>/)")
    b.add_argument("--executor", default="serial", choices=("serial", "process", "ray"),
                   help="where cells run: this process, a local process pool, or Ray tasks (default: serial)")
    b.add_argument("--workers", type=_positive, help="processes (process) or CPUs of a local Ray (ray)")
    b.add_argument("--address", help="Ray cluster address (auto, or HOST:PORT); default: start a local one")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(run=_bench)
    f = sub.add_parser("fit-trace", help="fit an arrival process and length distributions to a trace; write a workload")
    f.add_argument("trace", help="a shipped trace (azure_llm_2023_conv, ...) or a trace file")
    f.add_argument("--out", type=Path, required=True, help="the workload YAML to write")
    f.add_argument("--arrivals", default="gamma", choices=("poisson", "gamma", "time_varying"),
                   help="which fitted arrival process to write (all are reported; default: %(default)s)")
    f.add_argument("--backend", default="llm:llama3-8b", help="the LLM backend of the generated requests")
    f.add_argument("--num-applications", type=_positive, default=100_000, help="length of the generated workload")
    f.add_argument("--bin", type=_positive_number, default=60.0, help="seconds per bin of the time-varying rate curve")
    f.add_argument("--format", default="auto", choices=("auto", "dynamo-agentic"),
                   help="auto: a request trace (Azure, Mooncake, plain CSV); dynamo-agentic: NVIDIA Dynamo's agentic "
                   "Mooncake rows, fitted as sessions of a PDGraph (default: %(default)s)")
    f.add_argument("--block-size", type=_positive, help="tokens per hash id of an agentic trace (default: 512)")
    f.add_argument("--wait-backend", help="the tool backend of an agentic trace's waits (default: api:user)")
    f.set_defaults(run=_fit_trace)
    x = sub.add_parser("export-trace", help="write a workload's applications as agentic trace rows (NVIDIA Dynamo)")
    x.add_argument("config", nargs="?", help="experiment: a name (configs/experiments) or a YAML path")
    x.add_argument("--template", help="instead of an experiment: a PDGraph (a library name or a YAML path) on the "
                   "default cluster, arriving as a Poisson process")
    x.add_argument("--rate", type=float, help="with --template: applications per second (default: 1)")
    x.add_argument("--out", type=Path, required=True, help="the JSONL file to write")
    x.add_argument("--format", default="dynamo-agentic", choices=("dynamo-agentic",), help="the row format")
    x.add_argument("--seed", type=_seed, default=0, help="the workload's seed (the same as a simulation's)")
    x.add_argument("--num-applications", type=_positive, help="the first N applications (default: all)")
    x.add_argument("--block-size", type=_positive, default=512, help="tokens per hash id (default: %(default)s)")
    x.add_argument("--simulate", action="store_true", help="run the simulation and write its requests with the "
                   "run's times (waits as measured: tool queueing and cold starts included)")
    for flag, default in POLICY_DEFAULTS:
        x.add_argument(f"--{flag}", default=default, help=f"with --simulate: the {flag} (default: %(default)s)")
    x.set_defaults(run=_export_trace)
    ts = sub.add_parser("tasks", help="list the task suite (configs/tasks)")
    ts.set_defaults(run=_tasks)
    e = sub.add_parser("evaluate", help="score a policy on a task's held-out seeds (normalised score with a CI)")
    e.add_argument("--task", required=True, help="a task name (hermes-env tasks) or a task YAML")
    e.add_argument("--policy", required=True, help="a heuristic name, random, ppo:PATH, rllib:PATH, agent:PATH, or a "
                   "written policy FILE.py:Name (docs/tasks.md, Written policies)")
    e.add_argument("--seeds", type=_positive, help="use the first N held-out seeds (default: all)")
    e.add_argument("--heldout", action="store_true", help="on the task's held-out workload")
    e.set_defaults(run=_evaluate)
    lb = sub.add_parser("leaderboard", help="evaluate every task's references and learned policies; write the table")
    lb.add_argument("--out", type=Path, default=Path("docs/tasks.md"))
    lb.add_argument("--tasks", help="comma-separated task names (default: all)")
    lb.add_argument("--workers", type=_positive, default=1, help="tasks evaluated in parallel processes")
    lb.add_argument("--planner", default="", help="fill the planner column with this spec, {best} standing for "
                    "the task's best heuristic (e.g. 'rollout:{best}'; slow)")
    lb.add_argument("--written", help="comma-separated written policies (FILE.py:Name), each scored on the tasks "
                    "of its decision kind: the written column and its section")
    lb.set_defaults(run=_leaderboard)
    for entry_point in entry_points(group="hermes_env.commands"):  # e.g. `train`, from agents (no torch import)
        entry_point.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows at the flush when stdout is buffered
        return status
    except ConfigError as err:
        print(f"hermes-env: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader closed the pipe early (`hermes-env tasks | head`): end quietly, as a shell tool
        # killed by SIGPIPE would, instead of a traceback; stdout is pointed at devnull so that the
        # interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as err:  # a file that passed the checks failed anyway (unreadable, a full disk): one line too
        print(f"hermes-env: {err.filename or 'file'}: {err.strerror or err}", file=sys.stderr)
        return 2
    except MemoryError as err:  # input within every bound that still does not fit this machine
        print(f"hermes-env: out of memory ({err}); make the run smaller (fewer applications, seeds or cells)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
