"""Fit the iteration-latency model to a measured GPU profile and write the packaged profile YAMLs.

    python scripts/fit_latency.py            # refits every measured profile (profiles/<name>.csv), derives the 70B

The fit itself is :func:`hermes_env.cluster.latency.fit_iteration_latency` (held-out errors included).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hermes_env.cluster.latency import PARAMETERS, IterationLatency, fit_iteration_latency

PROFILES = Path(__file__).resolve().parent.parent / "hermes_env" / "cluster" / "profiles"


def derive_70b_tp4(base: IterationLatency) -> IterationLatency:
    """Llama-3-70B over 4 H100s with tensor parallelism, scaled from the measured 8B fit.

    Per GPU: weights and linear-layer FLOPs scale by (70.55B / 8.03B) / 4 = 2.196; two all-reduces per
    layer over 80 layers add ~15 us each to the floor (NVLink small-message latency) and move
    2 x 8192 x 2 bytes x 3/4 per token each at ~450 GB/s; cached K/V per token per GPU is
    80 layers x 2 KV heads x 128 x 2 x 2 B = 80 KiB against the 8B's 128 KiB (x0.625); causal prefill
    attention per GPU is 80 layers x 16 heads against 32 x 32 (x1.25); the serial longest-sequence
    term scales with the layer count (x2.5)."""
    scale = (70.55 / 8.03) / 4
    allreduce_floor = 2 * 80 * 15e-6
    allreduce_per_token = 2 * 80 * (2 * 8192 * 2 * 0.75) / 450e9
    return IterationLatency(
        floor=base.floor * scale + allreduce_floor,
        per_token=base.per_token * scale + allreduce_per_token,
        sharpness=base.sharpness,
        per_kv_token=base.per_kv_token * 0.625,
        per_prefill_pair=base.per_prefill_pair * 1.25,
        per_max_context=base.per_max_context * 2.5,
        name="llama3-70b-h100-tp4",
        source="DERIVED by scaling the llama3-8b-h100 fit (scripts/fit_latency.py: derive_70b_tp4), not measured",
        derived=True,
    )


# Measured profiles: profiles/<name>.csv with profiles/<name>.environment.json, each from scripts/profile_gpu.py.
MEASURED = ("llama3-8b-h100", "llama3-8b-h200", "qwen2.5-32b-h200")


def fit(name: str) -> IterationLatency:
    theta, report = fit_iteration_latency(PROFILES / f"{name}.csv")
    env = yaml.safe_load((PROFILES / f"{name}.environment.json").read_text())
    return IterationLatency(*theta, name=name,
                            source=f"measured: scripts/profile_gpu.py on {env['gpu']}, driver "
                                   f"{env['nvidia_smi'].split(', ')[1]}, torch {env['torch']} (CUDA {env['cuda']}), "
                                   f"CUDA-graph times, {env['measured_at']}", errors=report)


def main() -> None:
    fitted = {name: fit(name) for name in MEASURED}
    for model in (*fitted.values(), derive_70b_tp4(fitted["llama3-8b-h100"])):
        spec = {k: float(getattr(model, k)) for k in PARAMETERS}
        spec.update(name=model.name, source=model.source, derived=model.derived, errors=dict(model.errors))
        (PROFILES / f"{model.name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for name, model in fitted.items():
        print(yaml.safe_dump({name: {"parameters (s)": {k: float(getattr(model, k)) for k in PARAMETERS},
                                     "errors": dict(model.errors)}}, sort_keys=False))


if __name__ == "__main__":
    main()
