"""Cost of the Gittins index during simulation: the precomputed table lookup against the exact
computation from the remaining-demand pmf, and against a plain dict lookup as the reference measured
in the same run (machines are noisy; ratios travel, absolute times do not). Also prints each
library application's one-off precomputation time.

    python benchmarks/gittins_lookup.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hermes_env.cluster.latency import load_cost_model
from hermes_env.pdgraph import DemandModel
from hermes_env.pdgraph.library import TEMPLATE_NAMES, load_template

COST = Path(__file__).resolve().parent.parent / "configs" / "costs" / "h100-measured.yaml"
LOOKUPS = 200_000


def per_call(fn, args, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for a in args:
            fn(*a)
        best = min(best, (time.perf_counter() - t0) / len(args))
    return best


def main() -> None:
    cost = load_cost_model(COST)
    rng = np.random.default_rng(0)
    print(f"{'application':26s} {'states':>6s} {'precompute ms':>13s} {'lookup us':>9s} {'dict us':>8s} "
          f"{'lookup/dict':>11s} {'exact us':>9s} {'exact/lookup':>12s}")
    for name in TEMPLATE_NAMES:
        t0 = time.perf_counter()
        model = DemandModel(load_template(name), cost)
        table = model.gittins_table
        build = time.perf_counter() - t0
        n = len(model.space)
        states = rng.integers(0, n, LOOKUPS)
        attained = rng.uniform(0, 2.0, LOOKUPS)
        args = [(int(s), float(a), 1) for s, a in zip(states, attained, strict=True)]
        reference = {(s, 1): 0.0 for s in range(n)}
        lookup = per_call(table.lookup, args)
        plain = per_call(lambda s, a, k, ref=reference: ref[(s, k)], args)
        exact_args = [(model.progress(model.space.stage(s).name, model.space.loop_counters(s), 0.0, 1), True)
                      for s, _, _ in args[:200]]
        exact = per_call(model.gittins_index, exact_args, repeat=1)
        print(f"{name:26s} {n:6d} {1e3 * build:13.0f} {1e6 * lookup:9.2f} {1e6 * plain:8.2f} "
              f"{lookup / plain:11.1f} {1e6 * exact:9.0f} {exact / lookup:12.0f}")


if __name__ == "__main__":
    main()
