"""The latency model's scheduler-overhead terms (issue 23, item 2): off by default, added per iteration."""

import dataclasses

import numpy as np
import pytest
import yaml

from hermes_env.cluster.latency import OVERHEADS, load_profile
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation

C0, C1 = 2e-3, 5e-5  # seconds per iteration, per request in it


def with_overhead(tmp_path):
    base = load_profile("llama3-8b-h100")
    spec = {k: v for k, v in base.to_dict().items() if k not in ("errors", "derived")}
    path = tmp_path / "overhead.yaml"
    path.write_text(yaml.safe_dump({**spec, "scheduler_overhead": C0, "scheduler_overhead_per_request": C1}))
    return base, load_profile(path), path


def test_every_packaged_profile_has_no_overhead():
    for name in ("llama3-8b-h100", "llama3-8b-h200", "qwen2.5-32b-h200"):
        assert all(getattr(load_profile(name), k) == 0 for k in OVERHEADS)


def test_overhead_adds_per_iteration_and_per_request(tmp_path):
    base, lat, _ = with_overhead(tmp_path)
    for tokens, kv, pairs, longest, requests in [(1, 700, 0, 700, 1), (300, 5000, 2**16, 900, 45)]:
        plain = base.iteration_time(tokens, kv, pairs, longest, requests)
        assert plain == base.iteration_time(tokens, kv, pairs, longest)  # the requests matter only to the overhead
        assert lat.iteration_time(tokens, kv, pairs, longest, requests) == pytest.approx(plain + C0 + C1 * requests,
                                                                                          rel=1e-12)
    prompt, output = 700, 150  # a request alone: its prefill and output - 1 decodes, each one iteration of one request
    alone = float(base.isolated_service_time(np.array(prompt), np.array(output)))
    assert float(lat.isolated_service_time(np.array(prompt), np.array(output))) == pytest.approx(
        alone + output * (C0 + C1), rel=1e-12)


def test_a_request_alone_pays_the_overhead_in_every_iteration(tmp_path):
    _, lat, path = with_overhead(tmp_path)
    llm = {"name": "llm:llama3-8b", "profile": str(path), "model": "llama3-8b"}
    cfg = ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm]},
        "workload": {"num_applications": 3, "arrivals": {"process": "poisson", "rate": 0.001},
                     "applications": [{"template": {"name": "req", "stages": [
                         {"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": 700, "output_tokens": 150}]}}]},
    })
    rows = Simulation(cfg, seed=0).run().rows  # a thousand seconds apart: each alone
    expected = float(lat.isolated_service_time(np.array(700), np.array(150)))
    assert [r["completion_time"] for r in rows] == pytest.approx([expected] * 3, rel=1e-9)


def test_a_negative_overhead_is_named(tmp_path):
    base, _, _ = with_overhead(tmp_path)
    with pytest.raises(ConfigError, match="latency.scheduler_overhead"):
        dataclasses.replace(base, scheduler_overhead=-1e-3)


def test_the_transformers_engine_profile_carries_its_measured_overhead():
    lat = load_profile("llama3-8b-h200-hf")  # fitted to the engine's own iterations (docs/fidelity.md)
    assert 0 < lat.scheduler_overhead < 5e-3 and lat.errors["iterations"] > 1000
    # an eager engine: a decode iteration costs tens of milliseconds whatever the batch (launch-bound)
    one, many = lat.iteration_time(1, 1000, 0, 1000, 1), lat.iteration_time(32, 32_000, 0, 1000, 32)
    assert 0.02 < one < many < 2 * one
