"""Generators fitted to a trace: an arrival process and length distributions, written as a workload config.

Arrivals, three fits, each with its Kolmogorov-Smirnov distance to the trace's inter-arrival times:

* ``poisson`` at the trace's rate;
* ``gamma`` renewal (``process: bursty``) with the trace's rate and inter-arrival coefficient of variation;
* ``time_varying``: Poisson whose rate follows the trace's own rate curve (counts per ``bin`` seconds),
  cycling; its distance is that of the inter-arrival times it generates.

Lengths (prompt and output tokens), two fits, each with its KS distance to the trace's values: a
log-normal (maximum likelihood on the logarithms) and the empirical distribution (a histogram of 256
log-spaced bins). The better (smaller distance) is written; both distances go into the file's comments.

A fitted workload is unbounded (any ``num_applications``) and seedable; replaying the trace itself is
exact (``arrivals: {process: trace}``).

An agentic trace (NVIDIA Dynamo's agentic Mooncake rows) fits differently: the arrival processes to its
sessions' arrivals, and a PDGraph to its sessions (:func:`write_agentic_workload`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from hermes_env.errors import require
from hermes_env.pdgraph.distributions import LogNormal
from hermes_env.sim.agentic import FORMAT as AGENTIC
from hermes_env.sim.agentic import WAIT_BACKEND, AgenticReplay, fit_report, load_agentic
from hermes_env.sim.traces import BLOCK_TOKENS, Trace
from hermes_env.sim.workload import ArrivalConfig, empirical

ARRIVAL_FITS = ("poisson", "gamma", "time_varying")


@dataclass
class TraceFit:
    name: str
    requests: int
    duration: float
    arrivals: dict[str, dict[str, Any]]  # fit name -> {"spec": arrival spec, "ks": distance}
    lengths: dict[str, dict[str, Any]]  # "prompt_tokens"/"output_tokens" -> {"lognormal": .., "empirical": .., "best"}


def _ks(sample: np.ndarray, cdf: Any) -> float:
    return float(stats.kstest(sample, cdf).statistic)


def _ks_two(a: np.ndarray, b: np.ndarray) -> float:
    return float(stats.ks_2samp(a, b).statistic)


def fit_trace(trace: Trace, name: str, bin_seconds: float = 60.0, seed: int = 0) -> TraceFit:
    """Fit every arrival process and both length models to ``trace`` (which must have token counts)."""
    arrivals = fit_arrivals(trace.arrival, bin_seconds, seed)
    lengths = {}
    for key, values in (("prompt_tokens", trace.prompt), ("output_tokens", trace.output)):
        x = np.maximum(values.astype(float), 1.0)
        logs = np.log(x)
        lognormal = LogNormal(float(logs.mean()), float(max(logs.std(), 1e-6)))
        hist = empirical(x)
        fits = {"lognormal": {"dist": lognormal, "ks": _ks(x, lognormal.cdf)},
                "empirical": {"dist": hist, "ks": _ks(x, hist.cdf)}}
        fits["best"] = min(("lognormal", "empirical"), key=lambda k: fits[k]["ks"])
        lengths[key] = fits
    return TraceFit(name, len(trace), float(trace.arrival[-1]), arrivals, lengths)


def fit_arrivals(times: np.ndarray, bin_seconds: float = 60.0, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The three arrival fits to arrival ``times`` (sorted, from 0): fit name -> {"spec", "ks"}."""
    gaps = np.diff(times)
    require(len(gaps) > 0 and gaps.mean() > 0, "trace", f"has {len(times)} arrivals at {len(set(times))} distinct "
            "times: no arrival process fits", "fit a trace with arrivals at two times at least")
    rate = 1.0 / float(gaps.mean())
    cv = float(gaps.std() / gaps.mean())
    arrivals: dict[str, dict[str, Any]] = {
        "poisson": {"spec": {"process": "poisson", "rate": rate}, "ks": _ks(gaps, stats.expon(scale=1 / rate).cdf)},
        "gamma": {"spec": {"process": "bursty", "rate": rate, "cv": cv},
                  "ks": _ks(gaps, stats.gamma(1 / cv**2, scale=cv**2 / rate).cdf)},
    }
    edges = np.arange(0.0, times[-1] + bin_seconds, bin_seconds)
    counts, _ = np.histogram(times, edges)
    schedule = [{"duration": bin_seconds, "rate": float(c) / bin_seconds} for c in counts]
    generated = ArrivalConfig.from_dict({"process": "time_varying", "schedule": schedule}, "fit").times(
        len(times), np.random.default_rng(seed))
    arrivals["time_varying"] = {"spec": {"process": "time_varying", "schedule": schedule},
                                "ks": _ks_two(np.diff(generated), gaps)}
    return arrivals


def workload_yaml(fit: TraceFit, arrivals: str, backend: str, num_applications: int) -> str:
    """The fitted workload config, with every fit and its distance in the comments."""
    chosen = {k: fit.lengths[k][fit.lengths[k]["best"]]["dist"] for k in ("prompt_tokens", "output_tokens")}
    arrival = fit.arrivals[arrivals]["spec"]
    lines = [f"# Fitted by `hermes-env fit-trace` to {fit.name} ({fit.requests} requests over {fit.duration:.0f} s).",
             "# Kolmogorov-Smirnov distances to the trace (smaller fits better):",
             *(f"#   arrivals {k}: {v['ks']:.4f}" + ("  <- written" if k == arrivals else "")
               for k, v in fit.arrivals.items()),
             *(f"#   {key} {m}: {fit.lengths[key][m]['ks']:.4f}" + ("  <- written" if m == fit.lengths[key]["best"]
                                                                    else "")
               for key in ("prompt_tokens", "output_tokens") for m in ("lognormal", "empirical"))]
    spec = {"description": f"generator fitted to {fit.name} ({arrivals} arrivals)",
            "num_applications": num_applications, "arrivals": _plain(arrival),
            "applications": [{"template": {"name": f"fit:{fit.name}", "stages": [{
                "name": "request", "backend": backend,
                "prompt_tokens": _plain(chosen["prompt_tokens"].to_dict()),
                "output_tokens": _plain(chosen["output_tokens"].to_dict())}]}}]}
    return "\n".join(lines) + "\n" + yaml.safe_dump(spec, sort_keys=False, width=120)


def _plain(value: Any) -> Any:
    """Floats rounded to 6 significant digits, so the file stays readable (and exact enough); a discrete
    distribution's ``probs`` are kept whole (they must still sum to 1)."""
    if isinstance(value, dict):
        return {k: v if k == "probs" else _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    return value


def write_fitted_workload(trace: Trace, name: str, out: Path, arrivals: str = "gamma", backend: str = "llm:llama3-8b",
                          num_applications: int = 100_000, bin_seconds: float = 60.0) -> TraceFit:
    fit = fit_trace(trace, name, bin_seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(workload_yaml(fit, arrivals, backend, num_applications))
    return fit


def write_agentic_workload(path: str, out: Path, block_size: int = BLOCK_TOKENS, arrivals: str = "gamma",
                           backend: str = "llm:llama3-8b", wait_backend: str = WAIT_BACKEND,
                           num_applications: int = 100_000, bin_seconds: float = 60.0,
                           ) -> tuple[AgenticReplay, dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """A generator fitted to an agentic trace (:mod:`hermes_env.sim.agentic`): an arrival process fitted to
    its sessions' arrivals and the PDGraph fitted to the sessions, written as a workload config with every
    arrival fit's distance and :func:`~hermes_env.sim.agentic.fit_report` in its comments."""
    trace = load_agentic(path, block_size)
    replay = AgenticReplay.build(str(Path(path)), block_size, range(len(trace.sessions)), backend, wait_backend)
    fits = fit_arrivals(trace.arrivals(), bin_seconds)
    report = fit_report(replay)
    name = Path(path).name
    lines = [f"# Fitted by `hermes-env fit-trace --format {AGENTIC}` to {name}: {len(trace.rows)} requests in "
             f"{len(trace.sessions)} sessions ({trace.inexact} replayed with added waits).",
             "# Session arrivals, Kolmogorov-Smirnov distances (smaller fits better):",
             *(f"#   {k}: {v['ks']:.4f}" + ("  <- written" if k == arrivals else "") for k, v in fits.items()),
             "# The PDGraph against the trace (4,000 sampled sessions): mean trace / fit, KS, median and P90 errors:",
             *(f"#   {m}: {r['trace mean']:.4g} / {r['fit mean']:.4g}, KS {r['ks']:.3f}, "
               f"p50 {100 * r['p50 error']:.1f}%, p90 {100 * r['p90 error']:.1f}%" for m, r in report.items())]
    spec = {"description": f"generator fitted to the agentic trace {name} ({arrivals} session arrivals)",
            "num_applications": num_applications, "arrivals": _plain(fits[arrivals]["spec"]),
            "applications": [{"template": _plain(replay.graph.to_dict())}]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n" + yaml.safe_dump(spec, sort_keys=False, width=120))
    return replay, fits, report
