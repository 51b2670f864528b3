"""Reference disaggregation policies: whether an arriving request is split (prefilled in the prefill pool, its KV
moved, decoded in the decode pool) or runs colocated on one replica (``colocated``, never splitting, is in the
core). Each docstring says which system's rule it reads. No clairvoyant rule is given: whether splitting a request
pays depends on what its prefill does to the other requests' decodes, not on its own demand alone."""

from __future__ import annotations

from typing import Any

from hermes_env.cluster.disagg import DECODE, PREFILL
from hermes_env.cluster.llm import WARM
from hermes_env.cluster.request import Request
from hermes_env.sim.policies import DisaggPolicy, parse_numbers, register_disagg, register_family


@register_disagg("always")
class AlwaysSplit(DisaggPolicy):
    """Every request is split (DistServe's and Mooncake's deployment: the pools never mix)."""

    def split(self, backend: Any, request: Request, now: float) -> bool:
        return True


@register_disagg("distserve")
class DistServeRule(DisaggPolicy):
    """Split a request whose prefill would cost the decodes sharing its replica more than the TPOT SLO, times
    ``factor``: its prompt's prefill time alone (the backend's reference profile) above ``factor x tpot_slo``.
    DistServe (Zhong et al., OSDI 2024) disaggregates because one prefill in a decode batch stalls every decode
    in it; short prompts cost the decodes less than a token's budget and are served where they land
    (``distserve:F`` sets the factor, 1 by default)."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor

    def split(self, backend: Any, request: Request, now: float) -> bool:
        slo = backend.cfg.disaggregation.tpot_slo
        return float(backend.cfg.latency.prefill_time(float(request.prompt_tokens))) > self.factor * slo


@register_disagg("splitwise")
class SplitwiseRule(DisaggPolicy):
    """Route by phase (split every request) unless a pool is saturated, then serve the request colocated
    (Splitwise's mixed pool, Patel et al., ISCA 2024): the prefill pool when every warm prefill replica has
    ``queue`` requests or more waiting (4 by default; ``splitwise:Q``), the decode pool when no warm decode
    replica has KV free for the request's prompt and output."""

    def __init__(self, queue: float = 4.0) -> None:
        self.queue = queue

    def split(self, backend: Any, request: Request, now: float) -> bool:
        warm = [r for r in backend.replicas if r.state == WARM]
        prefill = [r for r in warm if r.role == PREFILL]
        if prefill and all(len(r.queue) >= self.queue for r in prefill):
            return False
        need = request.prompt_tokens + request.output_tokens
        return any(r.free_tokens() >= need for r in warm if r.role == DECODE)


@register_family("disagg", "distserve")
def _distserve(arg: str) -> DistServeRule:
    policy = DistServeRule(*parse_numbers(arg, "disagg", "distserve:FACTOR", (1, 1)))
    policy.name = f"distserve:{arg}"
    return policy


@register_family("disagg", "splitwise")
def _splitwise(arg: str) -> SplitwiseRule:
    policy = SplitwiseRule(*parse_numbers(arg, "disagg", "splitwise:QUEUE", (1, 1)))
    policy.name = f"splitwise:{arg}"
    return policy
