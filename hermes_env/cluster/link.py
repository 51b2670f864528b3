"""KV links between replicas: what moving a request's KV cache from one GPU to another costs.

A KV copy of ``n`` tokens moves in ``ceil(n / chunk_tokens)`` chunks, each costing ``per_chunk`` seconds (a
copy's issue and completion), plus ``n x kv_bytes_per_token / bandwidth``: the form of the host KV tier's PCIe
copies (:mod:`hermes_env.cluster.kvtier`, measured on the lent H200), which :func:`copy_time` serves for both.
A link between replicas adds its one-way ``latency`` once per transfer. A replica sends over one link at a time
(:class:`LinkQueue`, a FIFO: a transfer starts when the previous one has left), and copies overlap with compute
(the GPU keeps iterating while KV is in flight), as NIXL and Mooncake's transfer engine do.

Named links (:data:`LINKS`, vendor figures and modelling choices, each with its source in docs/simulator.md):
``nvlink``, replicas on one H100/H200 node over NVLink 4 (450 GB/s per direction, 900 GB/s both ways, NVIDIA's
H100 and H200 datasheets; 2 us latency); ``network``, replicas on different nodes over one 400 Gb/s RDMA NIC
(50 GB/s, NVIDIA ConnectX-7's line rate; 10 us latency). Both copy in 256-token chunks (LMCache's and
vLLM's KV connectors' unit) at 5 us a chunk (modelling choice: the order of a measured pipelined copy's, 9 us).
Prefill/decode disaggregation (:mod:`hermes_env.cluster.llm`) moves prompts' KV over one; request migration
between replicas may use the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hermes_env.errors import require
from hermes_env.validation import check_keys, integer, number


def copy_time(tokens: int, bytes_per_token: int, bandwidth: float, per_chunk: float, chunk_tokens: int) -> float:
    """Seconds of one KV copy of ``tokens`` tokens: per-chunk costs plus bytes over ``bandwidth`` (bytes/s)."""
    if tokens <= 0:
        return 0.0
    chunks = -(-tokens // chunk_tokens)
    return chunks * per_chunk + tokens * bytes_per_token / bandwidth


@dataclass(frozen=True)
class KVLink:
    """A link KV moves over between two replicas: ``bandwidth`` bytes/s one way, ``latency`` seconds once per
    transfer, ``per_chunk`` seconds per ``chunk_tokens`` tokens copied."""

    name: str
    bandwidth: float
    latency: float
    per_chunk: float = 5e-6
    chunk_tokens: int = 256

    def transfer_time(self, tokens: int, bytes_per_token: int) -> float:
        """Seconds from the first byte sent to the last received, for ``tokens`` tokens of KV."""
        return self.latency + copy_time(tokens, bytes_per_token, self.bandwidth, self.per_chunk, self.chunk_tokens)

    @classmethod
    def from_spec(cls, spec: Any, where: str) -> KVLink:
        """A named link (``nvlink``, ``network``) or a mapping: ``bandwidth_gbps`` (GB/s, bytes as the host
        tier's), ``latency_us``, ``per_chunk_us``, ``chunk_tokens``; ``base`` names a link whose figures the
        others override."""
        if isinstance(spec, str):
            require(spec in LINKS, where, f"unknown link {spec!r}", f"use one of {sorted(LINKS)} or a mapping "
                    "with bandwidth_gbps and latency_us")
            return LINKS[spec]
        require(isinstance(spec, Mapping), where, "must be a link name or a mapping",
                "write nvlink, network or {bandwidth_gbps: 50, latency_us: 10}")
        check_keys(spec, {"base", "bandwidth_gbps", "latency_us", "per_chunk_us", "chunk_tokens"}, where)
        base = None
        if "base" in spec:
            require(spec["base"] in LINKS, f"{where}.base", f"unknown link {spec['base']!r}",
                    f"use one of {sorted(LINKS)}")
            base = LINKS[spec["base"]]
        given = {} if base is None else {"bandwidth_gbps": base.bandwidth / 1e9, "latency_us": base.latency * 1e6,
                                         "per_chunk_us": base.per_chunk * 1e6, "chunk_tokens": base.chunk_tokens}
        spec = {**given, **spec}
        # a link of zero bandwidth would hold a transfer forever: refused rather than left to stall the run
        return cls(str(spec.get("base", "custom")),
                   number(spec, "bandwidth_gbps", where, low=0, low_open=True, high=1e5) * 1e9,
                   number(spec, "latency_us", where, low=0, high=1e7) * 1e-6,
                   number(spec, "per_chunk_us", where, 5.0, low=0, high=1e7) * 1e-6,
                   integer(spec, "chunk_tokens", where, 256, low=1, high=1 << 24))


LINKS = {
    "nvlink": KVLink("nvlink", 450e9, 2e-6),
    "network": KVLink("network", 50e9, 10e-6),
}


class LinkQueue:
    """One sender's link: transfers leave one after another (FIFO), each for its :meth:`KVLink.transfer_time`."""

    def __init__(self, link: KVLink) -> None:
        self.link = link
        self.free_at = 0.0
        self.transfers = 0
        self.tokens = 0
        self.busy_seconds = 0.0

    def send(self, now: float, tokens: int, bytes_per_token: int) -> float:
        """Queue a transfer of ``tokens`` tokens at ``now``; returns when its last byte has arrived."""
        duration = self.link.transfer_time(tokens, bytes_per_token)
        self.free_at = max(now, self.free_at) + duration
        self.transfers += 1
        self.tokens += tokens
        self.busy_seconds += duration
        return self.free_at
