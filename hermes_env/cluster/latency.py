"""Iteration latency of an LLM engine, fitted to a profile measured on a real GPU.

One iteration of a continuous-batching engine runs the linear layers over every token in the batch
(the prompt tokens of the requests it prefills and one token per decoding request) and attention per
request. The model, in seconds:

    t = (floor^p + (per_token * N)^p)^(1/p)       linear layers: weight-read floor blending into compute
        + per_prefill_pair * sum(prompt^2)         causal prefill attention
        + max(per_kv_token * sum(decode contexts), decode attention: bound by reading every cached token,
              per_max_context * max(decode context))  or, on an under-filled GPU, by the longest sequence
        + scheduler_overhead                           the engine's CPU time between two forward passes
        + scheduler_overhead_per_request * requests    (scheduling, input tensors, output handling)

The decode-attention kernel gives each sequence's KV heads a few thread blocks and does not split one
long context across the GPU, so a small batch over long contexts takes the longest sequence's serial time
(a batch of 1 to 8 over 32k tokens costs the same) and a large batch takes its bytes' time: the larger of
the two, not their sum (the sum, fitted to 8k-token shapes, was 30% off at 131k; docs/latency.md).

The two overhead terms are optional (0 by default, as in every profile timed as CUDA-graph forward passes):
a profile measured on a whole engine gives them (docs/fidelity.md, the transformers engine on the H200).

``scripts/fit_latency.py`` fits it to ``profiles/<name>.csv`` (measured by ``scripts/profile_gpu.py``)
and writes ``profiles/<name>.yaml`` with the held-out errors; this module only reads the YAML.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hermes_env._mypyc import mypyc_attr
from hermes_env.errors import ConfigError, require
from hermes_env.pdgraph.cost import LinearTokenCost
from hermes_env.validation import load_yaml, parse_yaml

PARAMETERS = ("floor", "per_token", "sharpness", "per_kv_token", "per_prefill_pair", "per_max_context")
OVERHEADS = ("scheduler_overhead", "scheduler_overhead_per_request")  # optional, 0 by default


@mypyc_attr(native_class=False)  # frozen: copied and pickled as Python does
@dataclass(frozen=True)
class IterationLatency:
    floor: float
    per_token: float
    sharpness: float
    per_kv_token: float
    per_prefill_pair: float
    per_max_context: float
    scheduler_overhead: float = 0.0
    scheduler_overhead_per_request: float = 0.0
    name: str = ""
    source: str = ""
    derived: bool = False
    errors: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for key in PARAMETERS + OVERHEADS:
            v = getattr(self, key)
            require(isinstance(v, int | float) and math.isfinite(v) and v >= 0, f"latency.{key}",
                    f"must be a finite number >= 0, got {v!r}")
        require(self.sharpness >= 1, "latency.sharpness", f"must be >= 1, got {self.sharpness}")

    def linear_layers(self, tokens: np.ndarray | float) -> np.ndarray | float:
        p = self.sharpness
        if isinstance(tokens, int | float):  # the simulator's hot path: plain floats, no array overhead
            return (self.floor**p + (self.per_token * tokens) ** p) ** (1.0 / p)
        return (self.floor**p + (self.per_token * np.asarray(tokens, dtype=float)) ** p) ** (1.0 / p)

    def decode_attention(self, kv_tokens: float, max_context: float) -> float:
        """Seconds of decode attention over ``kv_tokens`` cached tokens in all, the longest ``max_context``."""
        return max(self.per_kv_token * kv_tokens, self.per_max_context * max_context)

    def overhead(self, requests: float) -> float:
        """Seconds the engine spends between two forward passes over a batch of ``requests`` requests."""
        return self.scheduler_overhead + self.scheduler_overhead_per_request * requests

    def iteration_time(self, tokens: float, kv_tokens: float = 0.0, prefill_pairs: float = 0.0,
                       max_context: float = 0.0, requests: float = 0.0) -> float:
        """Seconds for one iteration over ``tokens`` tokens of ``requests`` requests whose decoding requests
        hold ``kv_tokens`` cached tokens in all (the longest ``max_context``) and whose prompts sum to
        ``prefill_pairs`` squared tokens."""
        t = float(self.linear_layers(tokens) + self.decode_attention(kv_tokens, max_context)
                  + self.per_prefill_pair * prefill_pairs)
        return t + self.overhead(requests) if self.scheduler_overhead or self.scheduler_overhead_per_request else t

    def prefill_time(self, prompt: np.ndarray | float) -> np.ndarray | float:
        prompt = np.asarray(prompt, dtype=float)
        return self.linear_layers(prompt) + self.per_prefill_pair * prompt**2

    def isolated_service_time(self, prompt: np.ndarray | float, output: np.ndarray | float,
                              cached: np.ndarray | float = 0.0) -> np.ndarray | float:
        """Seconds to serve a request alone: its prefill (which yields the first token; the first ``cached``
        prompt tokens already in KV, so only the rest is computed, attending to the whole prompt) and
        ``output - 1`` decode steps at batch 1 whose context grows from ``prompt + 1``, each iteration with
        the engine's overhead for one request. Plain numbers give a float (the simulator's hot path: no array
        overhead), arrays an array; both by the same arithmetic, bit for bit."""
        steps: np.ndarray | float
        if isinstance(prompt, int | float) and isinstance(output, int | float) and isinstance(cached, int | float):
            prompt, cached, steps = float(prompt), float(cached), float(output) - 1.0
        else:
            prompt, cached = np.asarray(prompt, dtype=float), np.asarray(cached, dtype=float)
            steps = np.asarray(output, dtype=float) - 1.0
        context_sum = steps * prompt + steps * (steps + 1.0) / 2.0  # sum of prompt + k, k = 1..steps
        per_step = float(self.linear_layers(1.0))
        prefill = self.linear_layers(prompt - cached) + self.per_prefill_pair * (prompt * prompt - cached * cached)
        # alone, the sequence is both the whole cache and the longest context
        out = prefill + steps * per_step + max(self.per_kv_token, self.per_max_context) * context_sum
        return out + (steps + 1.0) * self.overhead(1.0) if self.scheduler_overhead or \
            self.scheduler_overhead_per_request else out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["errors"] = dict(self.errors)
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "latency") -> IterationLatency:
        require(isinstance(spec, Mapping), where, "must be a mapping of latency parameters")
        missing = [k for k in PARAMETERS if k not in spec]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}", "is missing", f"a latency profile gives {', '.join(PARAMETERS)}")
        unknown = set(spec) - set(PARAMETERS) - set(OVERHEADS) - {"name", "source", "derived", "errors"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", "is not a latency parameter")
        return cls(**{k: spec[k] for k in spec})


def load_profile(name_or_path: str | Path) -> IterationLatency:
    """A packaged profile by name (``llama3-8b-h100``) or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        packaged = resources.files("hermes_env.cluster") / "profiles" / f"{name_or_path}.yaml"
        available = sorted(p.name.removesuffix(".yaml") for p in (resources.files("hermes_env.cluster") / "profiles")
                           .iterdir() if p.name.endswith(".yaml"))
        require(packaged.is_file(), "latency_profile", f"unknown profile {name_or_path!r}",
                f"use one of {available} or a path to a YAML file")
        text = packaged.read_text()
    else:
        require(path.is_file(), "latency_profile", f"no file {str(path)!r}")
        text = path.read_text()
    return IterationLatency.from_dict(parse_yaml(text, str(name_or_path)), f"latency_profile({name_or_path})")


def _features(row: Mapping[str, str]) -> tuple[float, float, float, float]:
    p, b, c = int(row["prefill_tokens"]), int(row["decode_batch"]), int(row["decode_context"])
    return p + b, b * c, p * p, c if b else 0


def _predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    model = IterationLatency(*theta.tolist())  # floats, not numpy scalars (compiled, its checks are bools)
    n, kv, pairs, longest = x.T
    return (model.linear_layers(n) + np.maximum(model.per_kv_token * kv, model.per_max_context * longest)
            + model.per_prefill_pair * pairs)


def fit_iteration_latency(csv_path: str | Path, extrapolate_beyond: int = 32_768) -> tuple[np.ndarray, dict]:
    """Least-squares fit (relative error) of the CUDA-graph times of a profile CSV. Training points: the
    prefill and decode shapes except every third; held out: every third and all mixed (prefill + decode)
    iterations. A second fit, on the shapes of at most ``extrapolate_beyond`` tokens by the same rule, is
    scored on the longer ones: how far the model carries past the range it was fitted on. Returns the
    parameters and the relative errors per kind."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    x = np.array([_features(r) for r in rows], dtype=float)
    y = np.array([float(r["graph_ms"]) for r in rows]) / 1e3
    kind = np.array([r["kind"] for r in rows])
    longest = np.array([max(int(r["prefill_tokens"]), int(r["decode_context"])) for r in rows])
    train = (kind != "mixed") & (np.arange(len(rows)) % 3 != 1)
    theta = _least_squares(x[train], y[train])
    err = np.abs(_predict(theta, x) - y) / y
    report = {"held_out": {k: _errors(err[(kind == k) & ~train]) for k in ("prefill", "decode", "mixed")},
              "train_max_rel_error": round(float(err[train].max()), 4)}
    beyond = longest > extrapolate_beyond
    if beyond.any() and (train & ~beyond).any():
        short = _least_squares(x[train & ~beyond], y[train & ~beyond])
        err = np.abs(_predict(short, x) - y) / y
        report[f"extrapolated_past_{extrapolate_beyond}"] = {
            k: _errors(err[(kind == k) & beyond]) for k in ("prefill", "decode", "mixed")
            if (beyond & (kind == k)).any()}
    return theta, report


def fit_iterations(x: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The six parameters fitted (relative error) to iterations given as rows of (tokens, decode KV tokens,
    prefill pairs, longest decode context) and their measured ``seconds`` (a whole engine's own iterations,
    scripts/realgpu), and the fit's predictions for those rows."""
    x, seconds = np.asarray(x, dtype=float), np.asarray(seconds, dtype=float)
    theta = _least_squares(x, seconds)
    return theta, _predict(theta, x)


def _least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import least_squares  # fitting only: keeps `import hermes_env` light

    start = np.array([9e-3, 3e-5, 4.0, 4e-8, 1e-10, 3e-7])
    return least_squares(lambda th: (_predict(th, x) - y) / y, start, bounds=([0, 0, 1, 0, 0, 0], [1, 1, 20, 1, 1, 1]),
                         x_scale=start).x


def _errors(err: np.ndarray) -> dict[str, Any]:
    return {"points": int(err.size), "mean_rel_error": round(float(err.mean()), 4),
            "max_rel_error": round(float(err.max()), 4)}


@mypyc_attr(allow_interpreted_subclasses=True)
class ProfileCost:
    """A PDGraph cost model from latency profiles: an LLM request's service is its isolated time."""

    def __init__(self, per_backend: Mapping[str, IterationLatency]) -> None:
        self.per_backend = dict(per_backend)

    def llm_service_time(self, backend: str, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        require(backend in self.per_backend, f"cost.backends.{backend}", "has no latency profile",
                f"profiles are given for {sorted(self.per_backend)}")
        return np.asarray(self.per_backend[backend].isolated_service_time(prompt_tokens, output_tokens))

    def fingerprint(self) -> dict[str, list[float]]:
        """What the service times depend on (the table cache's key: :mod:`hermes_env.pdgraph.tablecache`)."""
        return {name: [getattr(p, k) for k in PARAMETERS] + [getattr(p, k) for k in OVERHEADS if getattr(p, k)]
                for name, p in self.per_backend.items()}


def load_cost_model(path: str | Path) -> LinearTokenCost | ProfileCost:
    """A cost model YAML by path, or a packaged one by name (``h100-measured``): ``profiles:`` maps LLM
    backends to latency profiles (measured), or ``backends:`` gives linear token costs (see
    :class:`~hermes_env.pdgraph.cost.LinearTokenCost`)."""
    from hermes_env.catalog import config_path

    spec = load_yaml(config_path("costs", path, "cost"), "cost")
    require(isinstance(spec, Mapping) and ("profiles" in spec) != ("backends" in spec), "cost",
            "must have exactly one of 'profiles' (backend -> latency profile) or 'backends' (linear costs)")
    if "backends" in spec:
        return LinearTokenCost.from_dict(spec)
    require(isinstance(spec["profiles"], Mapping) and bool(spec["profiles"]), "cost.profiles",
            "must map LLM backends to profile names or YAML paths")
    return ProfileCost({backend: load_profile(profile) for backend, profile in spec["profiles"].items()})
