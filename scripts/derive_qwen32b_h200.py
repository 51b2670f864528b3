"""Derive a latency profile for Qwen2.5-32B (bf16) on one H200 from the measured Llama-3-8B H100 fit, for use
until the profile measured on the lent H200 lands (it then replaces this one in configs/clusters/agent-kv.yaml).

    python scripts/derive_qwen32b_h200.py      # writes hermes_env/cluster/profiles/qwen2.5-32b-h200-derived.yaml

Every factor, per term of the latency model (docs/latency.md):

* ``floor`` (reading the weights at small batch): weight bytes 65.53 / 16.06 GB = x4.08, over the H200's
  4.8 TB/s of HBM3e against the H100 SXM's 3.35 TB/s (NVIDIA datasheets): x0.698, so x2.85;
* ``per_token`` (linear-layer FLOPs): parameters 32.76B / 8.03B = x4.08 at the same 989 dense bf16 TFLOPS;
* ``per_kv_token`` (reading cached K and V): bytes per token 64 layers x 8 KV heads x 128 x 2 x 2 = 256 KiB
  against 128 KiB (x2) at x0.698 bandwidth: x1.40;
* ``per_prefill_pair`` (causal attention FLOPs): 64 layers x 40 heads against 32 x 32: x2.5;
* ``per_max_context`` (one long sequence's decode, serial per layer): 64 layers against 32 (x2) at x0.698
  bandwidth: x1.40.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hermes_env.cluster.latency import PARAMETERS, IterationLatency, load_profile

PROFILES = Path(__file__).resolve().parent.parent / "hermes_env" / "cluster" / "profiles"


def derive_qwen32b_h200(base: IterationLatency) -> IterationLatency:
    weights, params, bandwidth = 65.53 / 16.06, 32.76 / 8.03, 3.35 / 4.8
    return IterationLatency(
        floor=base.floor * weights * bandwidth,
        per_token=base.per_token * params,
        sharpness=base.sharpness,
        per_kv_token=base.per_kv_token * 2 * bandwidth,
        per_prefill_pair=base.per_prefill_pair * 2.5,
        per_max_context=base.per_max_context * 2 * bandwidth,
        name="qwen2.5-32b-h200-derived",
        source="DERIVED by scaling the llama3-8b-h100 fit (scripts/derive_qwen32b_h200.py), not measured",
        derived=True,
    )


def main() -> None:
    model = derive_qwen32b_h200(load_profile("llama3-8b-h100"))
    spec = {k: float(getattr(model, k)) for k in PARAMETERS}
    spec.update(name=model.name, source=model.source, derived=True, errors={})
    (PROFILES / f"{model.name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    print(yaml.safe_dump(spec, sort_keys=False))


if __name__ == "__main__":
    main()
