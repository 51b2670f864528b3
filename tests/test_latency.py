import csv
import dataclasses
import json

import numpy as np
import pytest

from hermes_env.cluster.latency import (
    PARAMETERS,
    IterationLatency,
    fit_iteration_latency,
    load_cost_model,
    load_profile,
)
from hermes_env.errors import ConfigError
from tests.conftest import ROOT

PROFILES = ROOT / "hermes_env" / "cluster" / "profiles"


def measured_rows():
    with open(PROFILES / "llama3-8b-h100.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_measured_decode_respects_the_memory_floor_and_graphs_remove_launch_overhead():
    env = json.loads((PROFILES / "llama3-8b-h100.environment.json").read_text())
    floor_ms = env["weight_bytes"] / (env["copy_GBps_read_plus_write"] * 1e9) * 1e3
    assert floor_ms == pytest.approx(env["decode_floor_ms"])
    decode = [r for r in measured_rows() if r["kind"] == "decode"]
    assert len(decode) > 40
    for r in decode:
        assert float(r["graph_ms"]) >= floor_ms  # no step beats reading the weights once
    batch1 = [r for r in decode if r["decode_batch"] == "1"]
    # eager batch-1 steps over up to 8k tokens are dominated by launch overhead; CUDA graphs remove most of it
    assert all(float(r["eager_ms"]) > 1.4 * float(r["graph_ms"]) for r in batch1 if int(r["decode_context"]) <= 8192)
    assert min(float(r["graph_ms"]) for r in batch1) < 2 * floor_ms


def test_packaged_profile_is_the_fit_of_the_packaged_measurements():
    theta, report = fit_iteration_latency(PROFILES / "llama3-8b-h100.csv")
    profile = load_profile("llama3-8b-h100")
    assert [getattr(profile, k) for k in PARAMETERS] == pytest.approx(list(theta), rel=1e-6)
    assert profile.errors == report
    # held-out accuracy (every third shape and all mixed iterations are never fitted)
    held_out = report["held_out"]
    assert held_out["decode"]["mean_rel_error"] < 0.03 and held_out["decode"]["max_rel_error"] < 0.08
    assert held_out["prefill"]["mean_rel_error"] < 0.03 and held_out["prefill"]["max_rel_error"] < 0.05
    assert held_out["mixed"]["mean_rel_error"] < 0.06
    # fitted to at most 32k tokens, the model carries to the 49k to 131k-token shapes
    beyond = report["extrapolated_past_32768"]
    assert beyond["prefill"]["points"] == 3 and beyond["prefill"]["max_rel_error"] < 0.08
    assert beyond["decode"]["points"] == 5 and beyond["decode"]["max_rel_error"] < 0.05
    assert not profile.derived and "measured" in profile.source


def test_profile_covers_131k_token_prompts_and_contexts():
    rows = measured_rows()
    assert max(int(r["prefill_tokens"]) for r in rows if r["kind"] == "prefill") == 131072
    assert max(int(r["decode_context"]) for r in rows if r["kind"] == "decode") == 131072


def test_small_batches_over_long_contexts_cost_the_longest_sequence_not_their_sum():
    """Measured: batches of 1 to 8 over 32k cached tokens each take the same time (the attention kernel
    runs one long sequence serially on a few SMs); the model's max(), unlike a sum, says so."""
    times = {int(r["decode_batch"]): float(r["graph_ms"]) / 1e3 for r in measured_rows()
             if r["kind"] == "decode" and r["decode_context"] == "32768"}
    assert set(times) == {1, 2, 4, 8} and max(times.values()) < 1.06 * min(times.values())
    lat = load_profile("llama3-8b-h100")
    predicted = {b: lat.iteration_time(b, kv_tokens=b * 32768, max_context=32768) for b in times}
    for b, t in times.items():
        assert predicted[b] == pytest.approx(t, rel=0.05)


def test_derived_70b_entry_is_labelled_and_slower():
    big, small = load_profile("llama3-70b-h100-tp4"), load_profile("llama3-8b-h100")
    assert big.derived and "DERIVED" in big.source
    assert big.iteration_time(1) > small.iteration_time(1)
    assert big.prefill_time(2048) > small.prefill_time(2048)


def test_isolated_service_time_is_the_sum_of_its_iterations():
    lat = load_profile("llama3-8b-h100")
    for prompt, output in [(1, 1), (161, 338), (2000, 40)]:
        steps = lat.iteration_time(prompt, prefill_pairs=prompt**2)
        for k in range(1, output):
            steps += lat.iteration_time(1, kv_tokens=prompt + k, max_context=prompt + k)
        assert lat.isolated_service_time(np.array(prompt), np.array(output)) == pytest.approx(steps, rel=1e-9)


def test_bad_profiles_and_cost_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("llama9-h100")
    spec = load_profile("llama3-8b-h100").to_dict()
    del spec["per_kv_token"]
    with pytest.raises(ConfigError) as err:
        IterationLatency.from_dict(spec)
    assert err.value.field == "latency.per_kv_token"
    with pytest.raises(ConfigError) as err:
        IterationLatency.from_dict({**load_profile("llama3-8b-h100").to_dict(), "floor": -1.0})
    assert err.value.field == "latency.floor"
    both = tmp_path / "c.yaml"
    both.write_text("profiles: {a: b}\nbackends: {}\n")
    with pytest.raises(ConfigError, match="exactly one"):
        load_cost_model(both)


def test_measured_cost_model_prices_the_library(cost):
    measured = load_cost_model(ROOT / "configs" / "costs" / "h100-measured.yaml")
    t = measured.llm_service_time("llm:llama3-8b", np.array([161.0]), np.array([338.0]))[0]
    assert 2.5 < t < 4.0  # 337 batch-1 steps of ~9 ms plus a short prefill
    with pytest.raises(ConfigError, match="no latency profile"):
        measured.llm_service_time("llm:mistral", np.array([1.0]), np.array([1.0]))


def test_isolated_service_time_of_numbers_is_that_of_arrays_bit_for_bit():
    """The simulator's scalar path and the vectorised one are the same arithmetic."""
    base = load_profile("llama3-8b-h100")
    rng = np.random.default_rng(3)
    prompt, output = rng.integers(1, 20_000, 200), rng.integers(1, 4_000, 200)
    cached = np.minimum(rng.integers(0, 20_000, 200), prompt - 1)
    for lat in (base, dataclasses.replace(base, scheduler_overhead=2e-3, scheduler_overhead_per_request=1e-5)):
        array = lat.isolated_service_time(prompt, output, cached)
        for i in range(200):
            one = lat.isolated_service_time(int(prompt[i]), int(output[i]), int(cached[i]))
            assert isinstance(one, float) and one == array[i]
