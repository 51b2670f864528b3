"""Replay vLLM's recorded schedules through hermes_env's engine and compare them step by step (issue 23).

A recording (``vllm-<version>.json``, made by ``scripts/conformance/record_vllm.py`` with vLLM's own V1
scheduler and KV-cache manager) holds golden request streams and, per scheduler step, the tokens scheduled
for each request and the requests preempted. :func:`hermes_steps` drives one hermes_env replica, counting KV
as the recorded release does (:func:`accounting`), over the same stream one iteration at a time (the
replica's ``on_iteration`` hook) with the same rules for time: requests arrive before the step the stream
names, and when the engine has nothing to do the step count jumps to the next arrival. :func:`compare`
lists the steps that differ. ``python -m tests.conformance.replay`` prints the figures docs/fidelity.md
quotes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hermes_env.cluster.config import LLMBackendConfig
from hermes_env.cluster.llm import LLMBackend, Replica
from hermes_env.cluster.prefix import Segment
from hermes_env.cluster.queue import WaitQueue
from hermes_env.cluster.request import Request
from hermes_env.sim.engine import Engine
from hermes_env.sim.policies import make_scheduler

HERE = Path(__file__).parent
RECORDINGS = sorted(HERE.glob("vllm-*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def accounting(data: dict[str, Any]) -> str:
    """The replica's KV accounting for a recording: vLLM's own blocks, of the recorded release's line."""
    return "vllm-0.11" if data["vllm_version"].startswith("0.11.") else "vllm-0.34"


def _backend(engine_spec: dict[str, Any], engine: Engine, done: list[Request], kv_accounting: str,
             async_scheduling: bool = False) -> LLMBackend:
    cfg = LLMBackendConfig.from_dict({
        "name": "llm:conformance", "profile": "llama3-8b-h100", "model": "llama3-8b",
        "max_num_seqs": engine_spec["max_num_seqs"], "max_num_batched_tokens": engine_spec["max_num_batched_tokens"],
        "block_size": engine_spec["block_size"], "max_model_len": engine_spec["max_model_len"],
        "enable_prefix_caching": engine_spec["enable_prefix_caching"],
        "chunked_prefill": engine_spec["enable_chunked_prefill"], "kv_accounting": kv_accounting,
        "async_scheduling": async_scheduling}, "conformance")
    fcfs = make_scheduler("fcfs")

    def failed(r: Request, now: float) -> None:
        raise AssertionError(f"hermes_env rejected {r}: {r.failed}")

    backend = LLMBackend(cfg, engine, lambda name, replica: WaitQueue(name, fcfs, replica),
                         lambda r, now: done.append(r), failed)
    # vLLM's block pool keeps one of its blocks aside (the null block): the rest hold KV
    backend.replicas[0].capacity = (engine_spec["num_gpu_blocks"] - 1) * engine_spec["block_size"]
    return backend


class _Chains:
    """Prefix chains of the stream's prompts: a segment is the same :class:`Segment` wherever its path (its
    name and the names before it) recurs; ``@rid`` is the answer segment the engine appended to ``rid``'s chain."""

    def __init__(self) -> None:
        self.segments: dict[tuple[str, ...], Segment] = {}

    def chain(self, prompt: list[list]) -> tuple[Segment, ...]:
        out: list[Segment] = []
        path: tuple[str, ...] = ()
        start = 0
        for name, size in prompt:
            path = (*path, name)
            if path not in self.segments:
                if name.startswith("@"):
                    raise ValueError(f"{name[1:]}'s answer is used before {name[1:]} finished in hermes_env")
                self.segments[path] = Segment(out[-1] if out else None, start, size)
            out.append(self.segments[path])
            start += size
        return tuple(out)

    def answered(self, rid: str, prompt: list[list], chain: tuple[Segment, ...]) -> None:
        self.segments[(*(name for name, _ in prompt), f"@{rid}")] = chain[-1]


def hermes_steps(stream: dict[str, Any], kv_accounting: str = "vllm-0.11",
                 async_scheduling: bool = False) -> list[dict[str, Any]]:
    """The schedule hermes_env's replica runs for ``stream`` with ``kv_accounting`` (and ``async_scheduling``):
    per step its index, the tokens scheduled per request (one per decode, the chunk per prefill), the requests
    preempted while planning it and the KV tokens left free (unreferenced prefix-cache blocks count as free)."""
    engine, done = Engine(), []
    backend = _backend(stream["engine"], engine, done, kv_accounting, async_scheduling)
    replica = backend.replicas[0]
    chains = _Chains()
    specs = {spec["id"]: spec for spec in stream["requests"]}
    requests: dict[Request, str] = {}
    preemptions: dict[Request, int] = {}
    steps: list[dict[str, Any]] = []
    step = 0

    def observe(rep: Replica, now: float) -> None:
        scheduled = {requests[r]: 1 for r in rep.running}
        scheduled.update({requests[r]: chunk for r, chunk in rep._chunks.items()})
        preempted = sorted(requests[r] for r in requests if r.preemptions > preemptions[r])
        preemptions.update((r, r.preemptions) for r in requests)
        steps.append({"step": step, "scheduled": dict(sorted(scheduled.items())), "preempted": preempted,
                      "free_tokens": rep.free_tokens()})

    replica.on_iteration = observe
    pending = sorted(stream["requests"], key=lambda s: s["arrive"])
    finished = 0
    while pending or finished < len(specs):
        if not replica.busy and not len(replica.queue) and not replica._batch() and pending:
            step = max(step, pending[0]["arrive"])  # nothing to do: jump to the next arrival
        arrivals = 0
        while pending and pending[0]["arrive"] <= step:
            spec = pending.pop(0)
            r = Request(None, len(requests), 0, backend.name, prompt_tokens=sum(size for _, size in spec["prompt"]),
                        output_tokens=spec["max_tokens"], chain=chains.chain(spec["prompt"]))
            requests[r], preemptions[r] = spec["id"], 0
            replica.queue.push(r, engine.now)
            arrivals += 1
        planned = len(steps)
        if arrivals:
            replica.poke(engine.now)
        while len(steps) == planned and len(engine):
            engine.step()
        while finished < len(done):
            r = done[finished]
            chains.answered(requests[r], specs[requests[r]]["prompt"], r.chain)
            finished += 1
        if len(steps) == planned and (pending or finished < len(specs)) and (replica._batch() or len(replica.queue)):
            raise RuntimeError(f"hermes_env stalled at step {step} with work left")
        step += 1
    return steps


def compare(recorded: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps whose schedule differs (tokens per request, or the set preempted), in step order."""
    ours = {s["step"]: s for s in replayed}
    theirs = {s["step"]: s for s in recorded}
    empty = {"scheduled": {}, "preempted": []}
    diffs = []
    for k in sorted(ours.keys() | theirs.keys()):
        a, b = theirs.get(k, empty), ours.get(k, empty)
        if a["scheduled"] != b["scheduled"] or sorted(a["preempted"]) != sorted(b["preempted"]):
            diffs.append({"step": k, "vllm": {"scheduled": a["scheduled"], "preempted": a["preempted"]},
                          "hermes_env": {"scheduled": b["scheduled"], "preempted": b["preempted"]}})
    return diffs


def decisions(steps: list[dict[str, Any]]) -> set[int]:
    """Steps where vLLM decided something beyond decoding the same batch again: a prefill chunk, a preemption,
    or a batch other than the previous step's (an admission, a finish)."""
    out, previous = set(), None
    for s in steps:
        if s["preempted"] or any(n > 1 for n in s["scheduled"].values()) or set(s["scheduled"]) != previous:
            out.add(s["step"])
        previous = set(s["scheduled"])
    return out


def report(path: Path, verbose: bool = False) -> dict[str, Any]:
    """Per stream of a recording: steps, identical steps (all, and those where vLLM decided something), the
    steps that differ."""
    data = load(path)
    out: dict[str, Any] = {"recording": path.stem, "vllm": data["vllm_version"],
                           "scheduler": data.get("scheduler", "sync"), "streams": {}}
    for name, stream in data["streams"].items():
        diffs = compare(stream["steps"], hermes_steps(stream, accounting(data), data["scheduler"] == "async"))
        differing = [d["step"] for d in diffs]
        steps = len({s["step"] for s in stream["steps"]} | set(differing))
        decided = decisions(stream["steps"])
        out["streams"][name] = {"steps": steps, "identical": steps - len(diffs), "differing": differing,
                                "decisions": len(decided), "identical_decisions": len(decided - set(differing))}
        if verbose:
            for d in diffs[:3]:
                print(name, json.dumps(d))
    for key in ("steps", "identical", "decisions", "identical_decisions"):
        out[key] = sum(s[key] for s in out["streams"].values())
    return out


def main() -> None:
    for path in RECORDINGS:
        rep = report(path, verbose="-v" in sys.argv)
        print(f"vLLM {rep['vllm']} ({rep['scheduler']} scheduler): {rep['identical']}/{rep['steps']} steps identical "
              f"({100 * rep['identical'] / rep['steps']:.1f}%), {rep['identical_decisions']}/{rep['decisions']} "
              f"decision steps ({100 * rep['identical_decisions'] / rep['decisions']:.1f}%)")
        for name, s in rep["streams"].items():
            first = s["differing"][0] if s["differing"] else "-"
            print(f"  {name:26s} {s['identical']:4d}/{s['steps']:4d}  decisions {s['identical_decisions']:3d}/"
                  f"{s['decisions']:3d}  first differing step: {first}")


if __name__ == "__main__":
    main()
