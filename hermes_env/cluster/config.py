"""Typed, validated configuration of a cluster: LLM backends and tool backends.

Every ``from_dict`` raises :class:`~hermes_env.errors.ConfigError` naming the field at fault
(``cluster.llm_backends[0].replicas``) and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hermes_env.cluster.latency import IterationLatency, load_profile
from hermes_env.errors import require
from hermes_env.pdgraph.distributions import Distribution, distribution_from_spec
from hermes_env.pdgraph.graph import backend_kind
from hermes_env.validation import check_keys, integer, number


@dataclass(frozen=True)
class ModelShape:
    """What sizes an LLM's KV cache: bytes per cached token = 2 (K and V) x layers x KV heads x head dim x
    bytes per value, divided over the tensor-parallel GPUs that serve one replica."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes: float
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


# Model shapes from the models' published config.json files (Meta, 2024).
MODEL_SHAPES = {
    "llama3-8b": ModelShape("llama3-8b", layers=32, kv_heads=8, head_dim=128, weight_bytes=16.06e9),
    "llama3-70b": ModelShape("llama3-70b", layers=80, kv_heads=8, head_dim=128, weight_bytes=141.1e9),
}


@dataclass(frozen=True)
class PrefixCacheConfig:
    """A remote prefix cache (distributed KV store) a replica fetches reusable prompt prefixes from.

    ``load_bandwidth`` is bytes/s from the store to one replica's GPU. ``mode: async`` loads on the
    network link while the GPU computes other requests, and a request is prefilled once its prefix is
    loaded (CALVO); ``mode: sync`` loads inside the iteration that prefills the request, stalling the GPU
    (a compute-centric engine that treats loading as part of the prefill)."""

    load_bandwidth: float
    mode: str = "async"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> PrefixCacheConfig:
        check_keys(spec, {"load_bandwidth_gbps", "mode"}, where)
        mode = spec.get("mode", "async")
        require(mode in ("async", "sync"), f"{where}.mode", f"must be 'async' or 'sync', got {mode!r}")
        return cls(number(spec, "load_bandwidth_gbps", where, low=0, low_open=True, high=1e6) * 1e9 / 8, mode)


@dataclass(frozen=True)
class LLMBackendConfig:
    name: str
    latency: IterationLatency
    model: ModelShape
    replicas: int = 1
    gpus_per_replica: int = 1
    gpu_memory_bytes: float = 80e9
    gpu_memory_utilization: float = 0.9
    max_batch: int = 256
    max_prefill_tokens: int = 8192
    block_size: int = 16
    prefix_cache: PrefixCacheConfig | None = None

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens per replica: the memory left after weights, in whole blocks (as vLLM sizes it,
        less the activation workspace, which the utilisation fraction leaves aside)."""
        usable = self.gpu_memory_bytes * self.gpus_per_replica * self.gpu_memory_utilization - self.model.weight_bytes
        blocks = int(usable // (self.model.kv_bytes_per_token * self.block_size))
        return blocks * self.block_size

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> LLMBackendConfig:
        check_keys(spec, {"name", "profile", "model", "replicas", "gpus_per_replica", "gpu_memory_gb",
                           "gpu_memory_utilization", "max_batch", "max_prefill_tokens", "block_size", "prefix_cache",
                           "source"}, where)
        name = spec.get("name")
        require(isinstance(name, str) and backend_kind(name) == "llm", f"{where}.name",
                f"must be an 'llm:<model>' backend name, got {name!r}")
        require("profile" in spec, f"{where}.profile", "is missing", "name a latency profile, e.g. llama3-8b-h100")
        model = spec.get("model")
        require(model in MODEL_SHAPES, f"{where}.model", f"unknown model {model!r}",
                f"use one of {sorted(MODEL_SHAPES)}")
        util = number(spec, "gpu_memory_utilization", where, 0.9, low=0, low_open=True, high=1)
        cfg = cls(
            name=name,
            latency=load_profile(spec["profile"]),
            model=MODEL_SHAPES[model],
            replicas=integer(spec, "replicas", where, 1, low=1, high=10_000),
            gpus_per_replica=integer(spec, "gpus_per_replica", where, 1, low=1, high=64),
            # the largest GPU memory sold is under 300 GB; 10 TB bounds typos without limiting anyone
            gpu_memory_bytes=number(spec, "gpu_memory_gb", where, 80.0, low=1.0, high=1e4) * 1e9,
            gpu_memory_utilization=util,
            max_batch=integer(spec, "max_batch", where, 256, low=1, high=1_000_000),
            max_prefill_tokens=integer(spec, "max_prefill_tokens", where, 8192, low=1, high=10_000_000),
            block_size=integer(spec, "block_size", where, 16, low=1, high=4096),
            prefix_cache=None if spec.get("prefix_cache") is None else PrefixCacheConfig.from_dict(
                spec["prefix_cache"], f"{where}.prefix_cache"),
        )
        require(cfg.kv_capacity_tokens >= cfg.max_prefill_tokens, f"{where}.gpu_memory_gb",
                f"leaves {cfg.kv_capacity_tokens} KV tokens per replica after {model}'s weights, fewer than "
                f"max_prefill_tokens={cfg.max_prefill_tokens}", "give more GPU memory or GPUs per replica")
        return cfg


@dataclass(frozen=True)
class ToolBackendConfig:
    """A tool backend: ``instances`` instances, each serving up to ``capacity`` requests at once.

    An instance is cold, warming (for a ``cold_start`` draw) or warm; a warm instance with nothing to do
    goes cold after ``keep_alive`` seconds. ``idle_cost`` is the cost per second of an instance held
    warm (or warming) while it serves nothing."""

    name: str
    instances: int = 1
    capacity: int = 1
    cold_start: Distribution | None = None
    keep_alive: float = math.inf
    idle_cost: float = 1.0
    source: str = ""

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> ToolBackendConfig:
        check_keys(spec, {"name", "instances", "capacity", "cold_start", "keep_alive", "idle_cost", "source"}, where)
        name = spec.get("name")
        require(isinstance(name, str) and ":" in name and backend_kind(name) in ("tool", "dnn", "api"),
                f"{where}.name", f"must be a 'tool:', 'dnn:' or 'api:' backend name, got {name!r}")
        cold = spec.get("cold_start")
        return cls(
            name=name,
            instances=integer(spec, "instances", where, 1, low=1, high=100_000),
            capacity=integer(spec, "capacity", where, 1, low=1, high=1_000_000),
            cold_start=None if cold is None else distribution_from_spec(cold, f"{where}.cold_start"),
            keep_alive=number(spec, "keep_alive", where, math.inf, low=0, allow_inf=True),
            idle_cost=number(spec, "idle_cost", where, 1.0, low=0, high=1e9),
            source=str(spec.get("source", "")),
        )


@dataclass(frozen=True)
class ClusterConfig:
    llm_backends: tuple[LLMBackendConfig, ...]
    tool_backends: tuple[ToolBackendConfig, ...]

    @property
    def backend_names(self) -> frozenset[str]:
        return frozenset(b.name for b in (*self.llm_backends, *self.tool_backends))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "cluster") -> ClusterConfig:
        check_keys(spec, {"llm_backends", "tool_backends", "description"}, where)
        llm = spec.get("llm_backends", [])
        tools = spec.get("tool_backends", [])
        require(isinstance(llm, Sequence) and isinstance(tools, Sequence), where,
                "llm_backends and tool_backends must be lists")
        require(len(llm) + len(tools) > 0, where, "has no backends")
        cfg = cls(tuple(LLMBackendConfig.from_dict(b, f"{where}.llm_backends[{i}]") for i, b in enumerate(llm)),
                  tuple(ToolBackendConfig.from_dict(b, f"{where}.tool_backends[{i}]") for i, b in enumerate(tools)))
        names = [b.name for b in (*cfg.llm_backends, *cfg.tool_backends)]
        dup = next((n for n in names if names.count(n) > 1), None)
        require(dup is None, where, f"backend {dup!r} is defined twice")
        return cfg
