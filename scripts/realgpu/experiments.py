"""The experiments of the real-GPU runs, one definition for the GPU run and for the simulated twin.

One LLM backend (``llm:llama3-8b``, the name the application library uses) of one replica set up as the
transformers engine runs (its token budget, request limit, 256-token blocks and KV blocks), the default
cluster's tool backends (cold starts, keep-alive, capacities), and two workloads:

* ``azure``: a window of the Azure LLM inference trace 2023 (conversation service, from trace second
  :data:`AZURE_START`) rescaled to a mean rate, as long as ``span`` seconds of arrivals at that rate;
* ``hermes``: the Hermes-like mix (configs/workloads/hermes.yaml) without ``lora_chat`` (the engine serves no
  LoRA adapters), Poisson arrivals, ``rate * span`` applications.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.validation import load_yaml

ROOT = Path(__file__).resolve().parents[2]
AZURE_START = 1200.0  # trace seconds: a segment twenty minutes into the hour
AZURE_RATE = 19366 / 3600.0  # the trace's own mean rate (requests/s)
GPU_MEMORY_GB = 141.0  # an H200's memory, as hermes_env counts it (the KV capacity is set from the engine)


def cluster(profile: str, engine: dict[str, Any]) -> dict[str, Any]:
    """One replica as the engine ``engine`` (HFEngine.describe()) runs, with the default tool backends."""
    tools = load_yaml(ROOT / "configs/clusters/default.yaml", "cluster")["tool_backends"]
    llm = {"name": "llm:llama3-8b", "profile": profile, "model": "llama3.1-8b", "replicas": 1,
           "gpu_memory_gb": GPU_MEMORY_GB, "engine": "vllm-0.11", "block_size": engine["block_size"],
           "max_num_batched_tokens": engine["max_batch_tokens"], "max_num_seqs": engine["max_requests_per_batch"],
           "enable_prefix_caching": bool(engine["prefix_sharing"])}
    spec = {"description": "the transformers engine on one H200", "llm_backends": [llm], "tool_backends": tools}
    probe = ExperimentConfig.from_dict({"cluster": spec, "workload": _hermes_mix(1.0, 1)})
    backend = probe.cluster.llm_backends[0]
    kind = backend.kinds[0]
    tokens = engine["num_blocks"] * engine["block_size"]  # the engine's KV cache, in hermes_env's accounting
    need = backend.model.weight_bytes + (tokens + 0.5 * engine["block_size"]) * backend.model.kv_bytes_per_token
    llm["gpu_memory_utilization"] = min(1.0, need / kind.gpu_memory_bytes)
    return spec


def _hermes_mix(rate: float, n: int) -> dict[str, Any]:
    spec = copy.deepcopy(load_yaml(ROOT / "configs/workloads/hermes.yaml", "workload"))
    spec["applications"] = [a for a in spec["applications"] if a["template"] != "lora_chat"]
    spec.update(num_applications=n, arrivals={"process": "poisson", "rate": rate})
    spec["description"] = "the Hermes-like mix without lora_chat"
    return spec


def workload(kind: str, rate: float, span: float) -> dict[str, Any]:
    if kind == "hermes":
        return _hermes_mix(rate, max(1, round(rate * span)))
    window = [AZURE_START, AZURE_START + span * rate / AZURE_RATE]  # span seconds once rescaled to rate
    return {"description": "a segment of the Azure conversation trace",
            "arrivals": {"process": "trace", "trace": "azure_llm_2023_conv", "rate": rate, "window": window}}


def experiment(kind: str, rate: float, span: float, profile: str, engine: dict[str, Any]) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"cluster": cluster(profile, engine), "workload": workload(kind, rate, span)})


def mean_completion(kind: str, rate: float, span: float, profile: str, engine: dict[str, Any]) -> float:
    cfg = experiment(kind, rate, span, profile, engine)
    return Simulation(cfg, seed=0, keep_applications=False).run().summary["jct"]["mean"]


def capacity(kind: str, profile: str, engine: dict[str, Any], span: float, light: float, steps: int = 7) -> float:
    """The doubling rule of scripts/trace_capacity.py (the rate at which the mean completion time doubles over
    its value at the ``light`` rate), simulated, FCFS, seed 0, on ``span`` seconds of arrivals."""
    base = mean_completion(kind, light, span, profile, engine)
    low, high = light, light * 2
    while mean_completion(kind, high, span, profile, engine) < 2 * base:
        low, high = high, high * 2
    for _ in range(steps):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if mean_completion(kind, mid, span, profile, engine) < 2 * base else (low, mid)
    return math.sqrt(low * high)
