"""Every KV retention policy on agent-kv at three loads and two context lengths, several seeds, paired.

    python benchmarks/kv_retention.py --sessions 80 --seeds 2 --workers 2 --out runs/kv_retention

For each context length (``swe_agent``: ~35k tokens at the mean submission; ``swe_agent_long``: ~53k) and
each arrival rate, every policy runs on the same sessions under each seed (common random numbers), so each
ratio to ``lru`` is paired per seed before averaging. Prints a markdown table (and writes it, with every
run's figures as JSON, under ``--out``): mean and P95 completion time with their ratio to lru, the time to
first token of resumed calls, re-prefilled tokens (KV thrash), where resumed contexts came from, bytes
copied each way and pinned-idle block-seconds. Figures are indicative (one machine, one run).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hermes_env.envs.hermes import load_experiment
from hermes_env.sim import Simulation
from hermes_env.sim.metrics import mean_ci

POLICIES = ("lru", "ttl", "kvflow", "infercept", "pdgraph", "oracle")
CONTEXTS = {"short": "swe_agent", "long": "swe_agent_long"}
# sessions/s on the two replicas: light (every policy alike), contended, overloaded for lru
RATES = {"short": (0.02, 0.03, 0.04), "long": (0.012, 0.018, 0.024)}


def run(cell: tuple[str, float, str, int, int]) -> dict:
    context, rate, policy, seed, sessions = cell
    template = f"../workloads/templates/{CONTEXTS[context]}.yaml"
    cfg = load_experiment("agent-kv", {"workload": {
        "num_applications": sessions, "arrivals": {"process": "poisson", "rate": rate},
        "applications": [{"template": template, "class": "best_effort"}]}})
    t0 = time.perf_counter()
    s = Simulation(cfg, router="session_sticky", retention=policy, seed=seed, keep_applications=False).run().summary
    b = s["backends"]["llm:qwen2.5-32b"]
    kv = b["kv_memory"]
    return {"context": context, "rate": rate, "policy": policy, "seed": seed, "jct_mean": s["jct"]["mean"],
            "jct_p95": s["jct"]["p95"], "failed": s["failed"], "resumed_ttft": kv["resumed_ttft"].get("mean", 0.0),
            "reprefilled_mtokens": kv["reprefilled_tokens"] / 1e6, "gpu_hit": kv["resumed_gpu_hit_rate"],
            "host_hit": kv["resumed_host_hit_rate"], "d2h_gb": kv["bytes_d2h"] / 1e9, "h2d_gb": kv["bytes_h2d"] / 1e9,
            "pinned_block_s": kv["pinned_block_seconds"], "preemptions": b["preemptions"],
            "wall_s": time.perf_counter() - t0}


def table(rows: list[dict], seeds: int) -> str:
    out = ["| context | rate /s | policy | mean s | x lru | P95 s | x lru | resumed TTFT s | re-prefilled M tok | "
           "GPU / host hit | D2H / H2D GB | pinned block-s | failed |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for context in CONTEXTS:
        for rate in RATES[context]:
            here = [r for r in rows if r["context"] == context and r["rate"] == rate]
            base = {r["seed"]: r for r in here if r["policy"] == "lru"}
            for policy in POLICIES:
                mine = [r for r in here if r["policy"] == policy]
                if not mine:
                    continue
                cell = {k: float(np.mean([r[k] for r in mine])) for k in mine[0] if isinstance(mine[0][k], float | int)}
                ratio = {k: float(np.mean([r[k] / base[r["seed"]][k] for r in mine if r["seed"] in base]))
                         for k in ("jct_mean", "jct_p95")}
                mean, ci = mean_ci([r["jct_mean"] for r in mine])
                out.append(f"| {context} | {rate:g} | `{policy}` | {mean:.0f} +- {ci:.0f} | {ratio['jct_mean']:.2f} | "
                           f"{cell['jct_p95']:.0f} | {ratio['jct_p95']:.2f} | {cell['resumed_ttft']:.2f} | "
                           f"{cell['reprefilled_mtokens']:.2f} | {cell['gpu_hit']:.2f} / {cell['host_hit']:.2f} | "
                           f"{cell['d2h_gb']:.0f} / {cell['h2d_gb']:.0f} | {cell['pinned_block_s']:.3g} | "
                           f"{cell['failed']:.1f} |")
    out.append(f"\n{seeds} seeds per cell (mean +- 95% CI over seeds); x lru: the paired ratio to lru on the same "
               "seeds, averaged.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=80)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/kv_retention"))
    args = parser.parse_args()
    cells = [(c, rate, p, seed, args.sessions) for c in CONTEXTS for rate in RATES[c] for seed in range(args.seeds)
             for p in POLICIES]
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(run, cells):
            rows.append(row)
            print(f"{row['context']:5s} {row['rate']:<6g} {row['policy']:9s} seed {row['seed']}: mean "
                  f"{row['jct_mean']:7.1f} s, P95 {row['jct_p95']:7.1f}, "
                  f"re-prefilled {row['reprefilled_mtokens']:6.2f}M "
                  f"({row['wall_s']:.0f} s wall)", flush=True)
    text = table(rows, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    print(f"{len(cells)} runs in {time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
