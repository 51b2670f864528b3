"""The effect of each engine mechanism on completion times, time to first token and prefix reuse.

Engines, each on the default cluster (four Llama-3.1-8B replicas behind a shared queue, FCFS):

* ``legacy``: hermes_env 0.1's engine (whole prompts, no prefix cache);
* ``+chunked``: chunked prefill with vLLM's 8,192-token budget;
* ``+prefix cache``: automatic prefix caching, no chunking;
* ``vllm-0.11``: both (the default);
* ``vllm-0.11 + remote``: both, and a remote prefix store at 100 Gb/s (CALVO's tier, loading asynchronously).

Workloads: the Hermes-like mix at 2 applications/s (3,000 applications), an agent-heavy mix (ReAct agents,
code generation with its repair loop, debates and fact checking: contexts that grow call by call) at 2
applications/s, and the first 20 minutes of Mooncake's conversation trace replayed at the rate of
configs/experiments/mooncake-conv.yaml (prompts of 12,000 tokens on average, with shared prefix blocks).

    python benchmarks/engine_mechanisms.py          # prints the table docs/simulator.md shows
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from hermes_env.sim import ExperimentConfig, Simulation

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {
    "legacy": {"engine": "legacy"},
    "+chunked": {"engine": "legacy", "chunked_prefill": True, "max_num_seqs": 1024},
    "+prefix cache": {"engine": "legacy", "enable_prefix_caching": True, "max_num_seqs": 1024},
    "vllm-0.11": {"engine": "vllm-0.11"},
    "vllm-0.11 + remote": {"engine": "vllm-0.11", "remote_prefix_store": {"load_bandwidth_gbps": 100, "mode": "async"}},
}
AGENTIC = [{"template": "react_agent", "weight": 3}, {"template": "code_generation", "weight": 3},
           {"template": "multi_agent_debate", "weight": 1}, {"template": "fact_checking", "weight": 1}]


def run(engine: dict, workload: dict, seed: int = 0) -> dict:
    cluster = yaml.safe_load((ROOT / "configs" / "clusters" / "default.yaml").read_text())
    for backend in cluster["llm_backends"]:
        backend.update(engine)
        if engine.get("engine") == "legacy" and "max_num_seqs" not in engine:
            backend.pop("max_num_seqs", None)
    cfg = ExperimentConfig.from_dict({"cluster": cluster, "workload": workload})
    return Simulation(cfg, seed=seed, keep_applications=False).run().summary


def main() -> None:
    hermes = yaml.safe_load((ROOT / "configs" / "workloads" / "hermes.yaml").read_text())["applications"]
    print(f"{'workload':14s} {'engine':20s} {'mean s':>7s} {'P95 s':>7s} {'TTFT p50':>9s} {'TTFT p95':>9s} "
          f"{'hit rate':>8s} {'remote':>7s} {'stall ms':>9s} {'wall s':>7s}")
    poisson = {"num_applications": 3000, "arrivals": {"process": "poisson", "rate": 2.0}}
    mooncake = yaml.safe_load((ROOT / "configs" / "experiments" / "mooncake-conv.yaml").read_text())["workload"]
    workloads = {"Hermes-like": {**poisson, "applications": hermes},
                 "agent-heavy": {**poisson, "applications": AGENTIC},
                 "Mooncake conv": {"arrivals": {**mooncake["arrivals"], "window": [0, 1200]}}}  # its first 20 min
    for label, workload in workloads.items():
        for name, engine in ENGINES.items():
            t0 = time.perf_counter()
            s = run(engine, workload)
            llm = s["backends"]["llm:llama3-8b"]
            # time to first token of the class with the most LLM requests
            ttft = max((c["ttft"] for c in llm["token_latency"].values()), key=lambda t: t.get("count", 0))
            p50, p95 = ttft["p50"], ttft["p95"]
            print(f"{label:14s} {name:20s} {s['jct']['mean']:7.2f} {s['jct']['p95']:7.2f} {p50:9.3f} {p95:9.3f} "
                  f"{llm['prefix_cache']['hit_rate']:8.3f} {llm['prefix_cache']['remote_hit_rate']:7.3f} "
                  f"{1e3 * llm['longest_decode_stall_s']:9.0f} {time.perf_counter() - t0:7.1f}", flush=True)


if __name__ == "__main__":
    main()
