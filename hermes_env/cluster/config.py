"""Typed, validated configuration of a cluster: LLM backends and tool backends.

Every ``from_dict`` raises :class:`~hermes_env.errors.ConfigError` naming the field at fault
(``cluster.llm_backends[0].replicas``) and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from hermes_env.cluster.kvtier import HostTierConfig
from hermes_env.cluster.latency import IterationLatency, load_profile
from hermes_env.cluster.link import KVLink
from hermes_env.cluster.migration import MigrationLink
from hermes_env.errors import require
from hermes_env.pdgraph.distributions import Distribution, distribution_from_spec
from hermes_env.pdgraph.graph import backend_kind
from hermes_env.validation import as_integer, check_keys, choice, flag, integer, number


@dataclass(frozen=True)
class ModelShape:
    """What sizes an LLM's KV cache and its loading: bytes per cached token = 2 (K and V) x layers x KV heads
    x head dim x bytes per value; ``weight_bytes`` to load; ``max_context`` tokens (prompt and output)."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    weight_bytes: float
    max_context: int
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def lora_bytes(self, rank: int, hidden: int = 4096, intermediate: int = 14336) -> float:
        """Bytes of a LoRA adapter of ``rank`` on every linear layer (q, k, v, o, gate, up, down): each adds
        ``rank x (in + out)`` weights. Hidden and intermediate sizes default to the 8B models'."""
        kv = self.kv_heads * self.head_dim
        per_layer = rank * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + intermediate) * 3)
        return float(per_layer * self.layers * self.dtype_bytes)


# Model shapes from the models' published config.json files (Meta, 2024). Llama 3.1 has the architecture of
# Llama 3 with a 128k-token context.
MODEL_SHAPES = {
    "llama3-8b": ModelShape("llama3-8b", 32, 8, 128, weight_bytes=16.06e9, max_context=8192),
    "llama3.1-8b": ModelShape("llama3.1-8b", 32, 8, 128, weight_bytes=16.06e9, max_context=131072),
    "llama3-70b": ModelShape("llama3-70b", 80, 8, 128, weight_bytes=141.1e9, max_context=8192),
    "llama3.1-70b": ModelShape("llama3.1-70b", 80, 8, 128, weight_bytes=141.1e9, max_context=131072),
    # Qwen2.5-32B (Qwen, 2024, config.json): 64 layers, 40 query and 8 KV heads of 128, 32.76B parameters in
    # bf16 (65.5 GB); 32,768 tokens natively, 131,072 with YaRN rope scaling (the model card's long-context setup).
    "qwen2.5-32b": ModelShape("qwen2.5-32b", 64, 8, 128, weight_bytes=65.53e9, max_context=131072),
}

# Bandwidth (bytes/s) from where a replica's weights are loaded to its GPUs, by tier. Modelling choices, each
# with its basis: "network", a remote checkpoint download at 5 GB/s (ServerlessLLM's example: 130 GB in
# about 26 s, Fu et al., OSDI 2024); "nvme", one PCIe 4.0 NVMe drive at its sequential read rate, ~6 GB/s,
# which a loading-optimised format reaches (ServerlessLLM loads 3.6 to 8.2 times faster than Safetensors,
# whose LLaMA-2-70B load takes 84 s, about 1.7 GB/s); "host_memory", pinned DRAM over PCIe to the GPU,
# ~25 GB/s (PCIe 4.0 x16's effective rate).
LOAD_BANDWIDTH = {"network": 5e9, "nvme": 6e9, "host_memory": 25e9}

# Engine presets: the values of a current vLLM and of the engine hermes_env 0.1 simulated. Every field may
# also be set on its own; the preset only gives defaults.
ENGINES = {
    # vLLM 0.11 (V1 engine), `vllm serve` on a GPU of 70 GB or more that is not an A100 (an H100 here):
    # EngineArgs.get_batch_defaults gives --max-num-seqs 1024 and --max-num-batched-tokens 8192 for the
    # OpenAI API server; V1 always chunks prefills and enables prefix caching; --block-size 16,
    # --gpu-memory-utilization 0.9, --max-loras 1.
    "vllm-0.11": {"chunked_prefill": True, "enable_prefix_caching": True, "max_num_seqs": 1024,
                  "max_num_batched_tokens": 8192},
    # hermes_env 0.1: whole prompts prefilled in one iteration (vLLM V0 without chunked prefill), no local
    # prefix cache, max_num_seqs 256 (V0's default).
    "legacy": {"chunked_prefill": False, "enable_prefix_caching": False, "max_num_seqs": 256,
               "max_num_batched_tokens": 8192},
}

# How a replica counts KV memory (LLMBackendConfig.kv_accounting): hermes_env's tokens, or the whole blocks of
# vLLM's KVCacheManager, allocated per scheduled chunk; vllm-0.34 also admits a prompt only if it fits whole
# (scheduler_reserve_full_isl, on by default there), where vllm-0.11 admits its first chunk.
KV_ACCOUNTING = ("tokens", "vllm-0.11", "vllm-0.34")


def load_bandwidth(spec: Mapping[str, Any], where: str, tier: str) -> float:
    """Bytes/s of a load: ``load_bandwidth_gbps`` (GB/s) when given, else the tier's default."""
    if "load_bandwidth_gbps" not in spec:
        return LOAD_BANDWIDTH[tier]
    return number(spec, "load_bandwidth_gbps", where, low=0, low_open=True, high=1e4) * 1e9


@dataclass(frozen=True)
class RemoteStoreConfig:
    """A remote prefix store (CALVO's distributed KV cache, Mooncake's store) a replica fetches prompt
    prefixes from, behind its own prefix cache: local hit, else remote load, else compute.

    ``load_bandwidth`` is bytes/s from the store to one replica's GPU. ``mode: async`` loads on the
    network link while the GPU computes other requests, and a request is prefilled once its prefix is
    loaded (CALVO); ``mode: sync`` loads inside the iteration that prefills the request, stalling the GPU
    (a compute-centric engine that treats loading as part of the prefill)."""

    load_bandwidth: float
    mode: str = "async"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> RemoteStoreConfig:
        check_keys(spec, {"load_bandwidth_gbps", "mode"}, where)
        return cls(number(spec, "load_bandwidth_gbps", where, low=0, low_open=True, high=1e6) * 1e9 / 8,
                   choice(spec, "mode", where, ("async", "sync"), "async"))


@dataclass(frozen=True)
class LoRAConfig:
    """Multi-LoRA serving (Punica, S-LoRA, vLLM's --enable-lora): one base model, the named ``adapters``;
    each replica holds at most ``max_loras`` resident (vLLM's --max-loras, default 1) and loads others on
    demand, evicting a resident adapter no admitted request uses. An adapter load takes ``adapter_bytes``
    over the ``load_from`` tier's bandwidth plus ``load_overhead`` seconds."""

    adapters: tuple[str, ...]
    max_loras: int = 1
    rank: int = 16
    adapter_bytes: float = 0.0
    load_from: str = "host_memory"
    load_bandwidth: float = LOAD_BANDWIDTH["host_memory"]
    load_overhead: float = 0.05

    def load_time(self) -> float:
        return self.adapter_bytes / self.load_bandwidth + self.load_overhead

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str, model: ModelShape) -> LoRAConfig:
        check_keys(spec, {"adapters", "max_loras", "rank", "adapter_mb", "load_from", "load_bandwidth_gbps",
                          "load_overhead_s"}, where)
        raw = spec.get("adapters")
        if isinstance(raw, int) and not isinstance(raw, bool):
            names = tuple(f"adapter-{i}" for i in range(as_integer(raw, f"{where}.adapters", low=1, high=100_000)))
        else:
            require(isinstance(raw, list) and raw and all(isinstance(a, str) and a for a in raw), f"{where}.adapters",
                    "must be a number of adapters or a non-empty list of adapter names")
            require(len(set(raw)) == len(raw), f"{where}.adapters", "names an adapter twice")
            names = tuple(raw)
        rank = integer(spec, "rank", where, 16, low=1, high=4096)
        # Default size: rank-r adapters on every linear layer of the model (about 84 MB at rank 16 for an 8B).
        size = number(spec, "adapter_mb", where, model.lora_bytes(rank) / 1e6, low=0, low_open=True, high=1e6) * 1e6
        tier = choice(spec, "load_from", where, tuple(LOAD_BANDWIDTH), "host_memory")
        return cls(names, integer(spec, "max_loras", where, 1, low=1, high=10_000), rank, size, tier,
                   load_bandwidth(spec, where, tier), number(spec, "load_overhead_s", where, 0.05, low=0, high=3600))


@dataclass(frozen=True)
class ReplicaKind:
    """One kind of replica an LLM backend may hold: its GPU type (``latency`` profile and ``gpu_memory_bytes``
    per GPU), ``gpus_per_replica``, at most ``max_replicas`` of them, ``replicas`` warm at the start, the price
    of a GPU-hour, and where its weights load from (``load_bandwidth`` bytes/s plus ``engine_start`` s)."""

    name: str
    latency: IterationLatency
    gpu_memory_bytes: float = 80e9
    gpus_per_replica: int = 1
    max_replicas: int = 1
    replicas: int = 1
    price_per_gpu_hour: float = 0.0
    load_from: str = "nvme"
    load_bandwidth: float = LOAD_BANDWIDTH["nvme"]
    engine_start: float = 5.0

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str, default_name: str) -> ReplicaKind:
        """The fields a kind sets (a backend without ``replica_kinds`` gives them at its own level)."""
        require("profile" in spec, f"{where}.profile", "is missing", "name a latency profile, e.g. llama3-8b-h100")
        tier = choice(spec, "load_from", where, tuple(LOAD_BANDWIDTH), "nvme")
        replicas = integer(spec, "replicas", where, 1, low=0, high=10_000)
        gpus = integer(spec, "gpus_per_replica", where, 1, low=1, high=64)
        max_gpus = integer(spec, "max_gpus", where, max(replicas, 1) * gpus, low=1, high=1_000_000)
        require(max_gpus >= gpus, f"{where}.max_gpus", f"is {max_gpus}, smaller than one replica ({gpus} GPUs)",
                f"give at least {gpus}")
        require(max_gpus >= replicas * gpus, f"{where}.max_gpus", f"is {max_gpus}, fewer than the {replicas} "
                f"replicas warm at the start need ({replicas * gpus})", "raise max_gpus or lower replicas")
        name = spec.get("name", default_name)
        require(isinstance(name, str) and name != "", f"{where}.name", f"must be a non-empty string, got {name!r}")
        return cls(
            name=name,
            latency=load_profile(spec["profile"]),
            # the largest GPU memory sold is under 300 GB; 10 TB bounds typos without limiting anyone
            gpu_memory_bytes=number(spec, "gpu_memory_gb", where, 80.0, low=1.0, high=1e4) * 1e9,
            gpus_per_replica=gpus,
            max_replicas=max_gpus // gpus,
            replicas=replicas,
            price_per_gpu_hour=number(spec, "price_per_gpu_hour", where, 0.0, low=0, high=1e4),
            load_from=tier,
            load_bandwidth=load_bandwidth(spec, where, tier),
            engine_start=number(spec, "engine_start_s", where, 5.0, low=0, high=86400),
        )


@dataclass(frozen=True)
class DisaggregationConfig:
    """Prefill/decode disaggregation (DistServe, Splitwise): the first ``prefill_replicas`` replicas of the
    backend (in index order, over its kinds) form the prefill pool, the others the decode pool. A request the
    backend's disaggregation policy splits prefills in the prefill pool, its KV then moves over ``link``
    (:class:`~hermes_env.cluster.link.KVLink`) to a decode replica, where it decodes; any other request runs
    colocated (prefill and decode on one replica, of either pool). ``ttft_slo`` and ``tpot_slo`` (seconds) are
    the per-request targets of DistServe's goodput (requests meeting both, per second) and of the rules that
    read them."""

    prefill_replicas: int
    link: KVLink
    ttft_slo: float
    tpot_slo: float

    @classmethod
    def from_dict(cls, spec: Any, where: str, replicas: int) -> DisaggregationConfig:
        require(isinstance(spec, Mapping), where, "must be a mapping",
                "give prefill_replicas, link and slo: {ttft_s, tpot_s}")
        check_keys(spec, {"prefill_replicas", "link", "slo"}, where)
        require(replicas >= 2, where, f"needs two replicas or more, the backend has {replicas}",
                "raise the backend's replicas (max_gpus) or remove disaggregation")
        prefill = integer(spec, "prefill_replicas", where, low=1, high=replicas - 1)
        require("link" in spec, f"{where}.link", "is missing", "name a link (nvlink, network) or give a mapping")
        slo = spec.get("slo")
        require(isinstance(slo, Mapping), f"{where}.slo", "is missing or not a mapping",
                "give the per-request targets, e.g. {ttft_s: 2.0, tpot_s: 0.1}")
        check_keys(slo, {"ttft_s", "tpot_s"}, f"{where}.slo")
        return cls(prefill, KVLink.from_spec(spec["link"], f"{where}.link"),
                   number(slo, "ttft_s", f"{where}.slo", low=0, low_open=True, high=1e6),
                   number(slo, "tpot_s", f"{where}.slo", low=0, low_open=True, high=1e6))


KIND_FIELDS = {"name", "profile", "replicas", "max_gpus", "gpus_per_replica", "gpu_memory_gb", "price_per_gpu_hour",
               "load_from", "load_bandwidth_gbps", "engine_start_s"}


@dataclass(frozen=True)
class LLMBackendConfig:
    """An LLM backend: replicas of one model, of one or more :class:`ReplicaKind` (``kinds``: GPU types with
    their latency profiles, memory and prices; a backend without ``replica_kinds`` has one kind, given by its
    own ``profile``, ``replicas``, ``max_gpus``, ``gpus_per_replica``, ``gpu_memory_gb``, load fields).

    Engine fields mirror vLLM's flags: ``max_num_seqs`` (--max-num-seqs), ``max_num_batched_tokens``
    (--max-num-batched-tokens: with ``chunked_prefill`` the per-iteration token budget of decodes and
    prefill chunks; without it, the prompt tokens one iteration prefills, a longer prompt alone),
    ``enable_prefix_caching`` (--enable-prefix-caching), ``block_size`` (--block-size),
    ``gpu_memory_utilization`` (--gpu-memory-utilization), ``max_model_len`` (--max-model-len). A cold replica
    loads in ``weight_bytes`` over its kind's ``load_from`` tier (``network``, ``nvme`` or ``host_memory``; its
    bandwidth ``load_bandwidth_gbps`` if given, else :data:`LOAD_BANDWIDTH`) plus ``engine_start`` seconds.
    ``host_kv_tier`` gives each replica a host-memory KV tier (:mod:`hermes_env.cluster.kvtier`);
    ``migration_link`` the link and schedule of request migration (:mod:`hermes_env.cluster.migration`), used
    only when a migration policy runs; ``disaggregation`` splits the replicas into prefill and decode pools
    (:class:`DisaggregationConfig`). ``kv_accounting`` chooses how a replica counts KV memory: ``tokens`` (the
    default: the whole context reserved at admission, counted in tokens) or the block-granular accounting of
    vLLM's ``KVCacheManager`` (``vllm-0.11``, ``vllm-0.34``: whole blocks allocated per scheduled chunk and
    decode step, :mod:`hermes_env.cluster.llm`); ``async_scheduling`` (vLLM's --async-scheduling, 0.34's default on a
    GPU) plans each iteration before the previous one's output is applied."""

    name: str
    model: ModelShape
    kinds: tuple[ReplicaKind, ...]
    gpu_memory_utilization: float = 0.9
    engine: str = "vllm-0.11"
    chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    max_num_seqs: int = 1024
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    max_model_len: int = 8192
    remote_store: RemoteStoreConfig | None = None
    lora: LoRAConfig | None = None
    host_kv_tier: HostTierConfig | None = None
    migration_link: MigrationLink = MigrationLink()
    disaggregation: DisaggregationConfig | None = None
    kv_accounting: str = "tokens"
    async_scheduling: bool = False

    @property
    def latency(self) -> IterationLatency:
        """The first kind's latency profile: the reference the PDGraph analysis and bounds price work with."""
        return self.kinds[0].latency

    @property
    def replicas(self) -> int:
        return sum(k.replicas for k in self.kinds)

    @property
    def max_replicas(self) -> int:
        return sum(k.max_replicas for k in self.kinds)

    def kv_capacity(self, kind: ReplicaKind) -> int:
        """KV-cache tokens of a replica of ``kind``: the memory left after weights, in whole blocks (as vLLM
        sizes it, less the activation workspace, which the utilisation fraction leaves aside)."""
        usable = kind.gpu_memory_bytes * kind.gpus_per_replica * self.gpu_memory_utilization - self.model.weight_bytes
        return int(usable // (self.model.kv_bytes_per_token * self.block_size)) * self.block_size

    @cached_property  # read at every request's submission; the config is frozen
    def kv_capacity_tokens(self) -> int:
        """The smallest KV cache of any replica kind (every replica can hold a request that fits it)."""
        return min(self.kv_capacity(k) for k in self.kinds)

    @property
    def request_token_limit(self) -> int:
        """The most prompt plus output tokens one request may have: the context length and the KV cache."""
        return min(self.max_model_len, self.kv_capacity_tokens)

    def decode_throughput(self, kind: ReplicaKind) -> float:
        """Decode tokens per second of a full batch (``max_num_seqs``) over 1,024-token contexts on a replica of
        ``kind``: the speed routers, autoscalers and observations weigh a kind by."""
        n = self.max_num_seqs
        return n / kind.latency.iteration_time(n, kv_tokens=n * 1024, max_context=1024)

    def prefill_throughput(self, kind: ReplicaKind) -> float:
        """Prefill tokens per second of a 2,048-token prompt alone on a replica of ``kind``."""
        return 2048 / float(kind.latency.prefill_time(2048.0))

    def load_time(self, kind: ReplicaKind | None = None) -> float:
        """Seconds from the order to load a cold replica of ``kind`` (the first kind by default) until it serves."""
        kind = self.kinds[0] if kind is None else kind
        return self.model.weight_bytes / kind.load_bandwidth + kind.engine_start

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str) -> LLMBackendConfig:
        engine_fields = {"name", "model", "gpu_memory_utilization", "engine", "chunked_prefill",
                         "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens", "block_size",
                         "max_model_len", "remote_prefix_store", "lora", "source", "replica_kinds", "host_kv_tier",
                         "migration_link", "disaggregation", "kv_accounting", "async_scheduling"}
        check_keys(spec, engine_fields | KIND_FIELDS, where)
        name = spec.get("name")
        require(isinstance(name, str) and backend_kind(name) == "llm", f"{where}.name",
                f"must be an 'llm:<model>' backend name, got {name!r}")
        model_name = spec.get("model")
        require(model_name in MODEL_SHAPES, f"{where}.model", f"unknown model {model_name!r}",
                f"use one of {sorted(MODEL_SHAPES)}")
        model = MODEL_SHAPES[model_name]
        kinds_spec = spec.get("replica_kinds")
        if kinds_spec is None:
            kinds = (ReplicaKind.from_dict({k: v for k, v in spec.items() if k in KIND_FIELDS - {"name"}}, where,
                                           str(spec.get("profile", ""))),)
        else:
            given = sorted(KIND_FIELDS & set(spec) - {"name"})
            require(not given, f"{where}.{given[0] if given else ''}", "is a field of each replica kind",
                    "give it inside each entry of replica_kinds")
            require(isinstance(kinds_spec, list) and kinds_spec, f"{where}.replica_kinds",
                    "must be a non-empty list of replica kinds")
            kinds = []
            for i, k in enumerate(kinds_spec):
                at = f"{where}.replica_kinds[{i}]"
                require(isinstance(k, Mapping), at, "must be a mapping")
                check_keys(k, KIND_FIELDS, at)
                require("name" in k, f"{at}.name", "is missing", "name the kind (e.g. its GPU: h100, h200)")
                kinds.append(ReplicaKind.from_dict(k, at, ""))
            kinds = tuple(kinds)
            names = [k.name for k in kinds]
            dup = next((n for n in names if names.count(n) > 1), None)
            require(dup is None, f"{where}.replica_kinds", f"names the kind {dup!r} twice")
        engine = choice(spec, "engine", where, tuple(ENGINES), "vllm-0.11")
        preset = ENGINES[engine]
        cfg = cls(
            name=name,
            model=model,
            kinds=kinds,
            gpu_memory_utilization=number(spec, "gpu_memory_utilization", where, 0.9, low=0, low_open=True, high=1),
            engine=engine,
            chunked_prefill=flag(spec, "chunked_prefill", where, preset["chunked_prefill"]),
            enable_prefix_caching=flag(spec, "enable_prefix_caching", where, preset["enable_prefix_caching"]),
            max_num_seqs=integer(spec, "max_num_seqs", where, preset["max_num_seqs"], low=1, high=1_000_000),
            max_num_batched_tokens=integer(spec, "max_num_batched_tokens", where, preset["max_num_batched_tokens"],
                                           low=1, high=10_000_000),
            block_size=integer(spec, "block_size", where, 16, low=1, high=4096),
            max_model_len=integer(spec, "max_model_len", where, model.max_context, low=1, high=model.max_context),
            remote_store=None if spec.get("remote_prefix_store") is None else RemoteStoreConfig.from_dict(
                spec["remote_prefix_store"], f"{where}.remote_prefix_store"),
            lora=None if spec.get("lora") is None else LoRAConfig.from_dict(spec["lora"], f"{where}.lora", model),
            host_kv_tier=None if spec.get("host_kv_tier") is None else HostTierConfig.from_dict(
                spec["host_kv_tier"], f"{where}.host_kv_tier", min(k.gpus_per_replica for k in kinds)),
            migration_link=MigrationLink.from_dict(spec.get("migration_link", {}), f"{where}.migration_link"),
            disaggregation=None if spec.get("disaggregation") is None else DisaggregationConfig.from_dict(
                spec["disaggregation"], f"{where}.disaggregation", sum(k.max_replicas for k in kinds)),
            kv_accounting=choice(spec, "kv_accounting", where, KV_ACCOUNTING, "tokens"),
            async_scheduling=flag(spec, "async_scheduling", where, False),
        )
        require(cfg.kv_accounting == "tokens" or cfg.disaggregation is None, f"{where}.kv_accounting",
                f"{cfg.kv_accounting} is not modelled together with disaggregation (a hand-off moves KV in tokens)",
                "use kv_accounting: tokens, or remove disaggregation")
        if cfg.disaggregation is not None:  # a hand-off moves a request's KV alone: adapters and host contexts stay
            for field, value in (("lora", cfg.lora), ("host_kv_tier", cfg.host_kv_tier)):
                require(value is None, f"{where}.disaggregation", f"is not modelled together with {field}",
                        f"remove {field} or disaggregation")
        for i, kind in enumerate(cfg.kinds):
            at = where if kinds_spec is None else f"{where}.replica_kinds[{i}]"
            require(cfg.kv_capacity(kind) >= cfg.block_size, f"{at}.gpu_memory_gb",
                    f"leaves no KV cache per replica after {model_name}'s weights ({cfg.kv_capacity(kind)} tokens)",
                    "give more GPU memory or GPUs per replica")
        if cfg.chunked_prefill:  # vLLM itself requires max_num_batched_tokens >= max_num_seqs
            require(cfg.max_num_batched_tokens > cfg.max_num_seqs, f"{where}.max_num_batched_tokens",
                    f"is {cfg.max_num_batched_tokens}, not more than max_num_seqs ({cfg.max_num_seqs}): with chunked "
                    "prefill every running request's decode token and a prefill chunk share this budget",
                    "raise max_num_batched_tokens or lower max_num_seqs")
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
