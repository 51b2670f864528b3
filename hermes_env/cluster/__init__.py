"""Cluster backends: LLM engines with continuous batching and KV-cache memory, and tool backends
with cold start, keep-alive and capacity. Latency comes from a profile measured on a real GPU."""

from hermes_env.cluster.latency import IterationLatency, ProfileCost, load_profile

__all__ = ["IterationLatency", "ProfileCost", "load_profile"]
