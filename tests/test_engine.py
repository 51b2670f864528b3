"""The LLM replica as vLLM V1 runs it (issue 11): chunked prefill, automatic prefix caching, the remote
store tier, refusal of oversize requests."""

import numpy as np
import pytest

from hermes_env.cluster.latency import load_profile
from hermes_env.cluster.prefix import PrefixCache, RemoteStore, Segment, extend, truncate
from hermes_env.errors import ConfigError
from hermes_env.sim import ExperimentConfig, Simulation

LLM = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b"}


def experiment(stages, rate, n, *, model="llama3-8b", **backend):
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [{**LLM, "model": model, **backend}]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "app", "stages": stages}}]}})


def one_call(prompt, output, **extra):
    return [{"name": "gen", "backend": "llm:llama3-8b", "prompt_tokens": prompt, "output_tokens": output, **extra}]


def rows(cfg, seed=0, **kwargs):
    sim = Simulation(cfg, seed=seed, check_invariants=True, **kwargs)
    return sim, sim.run().rows


# -- chunked prefill -------------------------------------------------------------------------------

def chunked_reference(arrivals, prompts, outputs, lat, max_seqs, budget):
    """vLLM V1's step loop, one iteration at a time, the naive way (FCFS, ample KV): decodes first, then
    each unfinished prefill's next chunk in admission order, then new admissions while the budget lasts."""
    order = sorted(range(len(arrivals)), key=lambda i: (arrivals[i], i))
    waiting, running, prefilling, done = list(order), {}, [], {}  # running: i -> context
    computed = {}
    now = 0.0
    while len(done) < len(arrivals):
        if not running and not prefilling and waiting and arrivals[waiting[0]] > now:
            now = arrivals[waiting[0]]
        left = budget - len(running)
        chunks = {}
        for i in prefilling:
            if left <= 0:
                break
            chunks[i] = min(prompts[i] - computed[i], left)
            left -= chunks[i]
        while waiting and arrivals[waiting[0]] <= now and len(running) + len(prefilling) < max_seqs and left > 0:
            i = waiting.pop(0)
            prefilling.append(i)
            computed[i] = 0
            chunks[i] = min(prompts[i], left)
            left -= chunks[i]
        pairs = sum((computed[i] + c) ** 2 - computed[i] ** 2 for i, c in chunks.items())
        ctx = list(running.values())
        now += lat.iteration_time(sum(chunks.values()) + len(running), kv_tokens=sum(ctx), prefill_pairs=pairs,
                                  max_context=max(ctx, default=0))
        generated = {i: g + 1 for i, g in running.items()}
        running = {i: c + 1 for i, c in running.items()}
        for i, c in chunks.items():
            computed[i] += c
            if computed[i] == prompts[i]:
                prefilling.remove(i)
                running[i] = prompts[i] + 1
                generated[i] = 1
        for i in [i for i in running if running[i] - prompts[i] == outputs[i]]:
            done[i] = now
            del running[i]
    return [done[i] for i in range(len(arrivals))]


@pytest.mark.parametrize("rate, max_seqs, budget", [(1.0, 64, 512), (6.0, 8, 256), (4.0, 256, 2048)])
def test_chunked_prefill_matches_an_iteration_by_iteration_reference(rate, max_seqs, budget):
    prompt = {"dist": "lognormal", "mean": 900, "cv": 0.8}
    cfg = experiment(one_call(prompt, {"dist": "lognormal", "mean": 80, "cv": 0.5}), rate, 120,
                     enable_prefix_caching=False, max_num_seqs=max_seqs, max_num_batched_tokens=budget)
    sim, got = rows(cfg)
    apps = sorted(sim.completed, key=lambda a: a.id)
    prompts = [int(a.runs[0].prompt_tokens[0]) for a in apps]
    outputs = [int(a.runs[0].output_tokens[0]) for a in apps]
    assert max(prompts) > budget  # some prompts take several chunks
    expected = chunked_reference(sim.arrival_times, prompts, outputs, cfg.cluster.llm_backends[0].latency, max_seqs,
                                 budget)
    assert np.allclose([r["completion"] for r in got], expected, rtol=1e-9, atol=1e-9)


def test_a_long_prompt_no_longer_stalls_running_decodes():
    """8,000-token prompts arriving while short requests decode: without chunking every running decode
    waits for a whole prefill (one iteration of ~280 ms, 30 decode steps); with a 512-token budget no
    iteration with decodes in it takes more than a few decode steps."""
    lat = load_profile("llama3-8b-h100")
    stages = one_call({"dist": "discrete", "values": [200, 8000], "probs": [0.9, 0.1]}, 200)
    stall = {}
    for chunked in (False, True):
        cfg = experiment(stages, 2.0, 200, model="llama3.1-8b", enable_prefix_caching=False, chunked_prefill=chunked,
                         max_num_seqs=256, max_num_batched_tokens=512 if chunked else 8192)
        result = Simulation(cfg, seed=0, check_invariants=True).run()
        stall[chunked] = result.summary["backends"]["llm:llama3-8b"]["longest_decode_stall_s"]
    assert stall[False] > float(lat.prefill_time(8000)) > 25 * float(lat.linear_layers(1.0))
    assert stall[True] < 0.2 * stall[False]


def test_chunking_with_a_budget_above_every_prompt_equals_no_chunking():
    stages = one_call({"dist": "lognormal", "mean": 1500, "cv": 0.6}, {"dist": "lognormal", "mean": 200, "cv": 0.8})
    runs = [rows(experiment(stages, 8.0, 200, enable_prefix_caching=False, max_num_seqs=256, chunked_prefill=chunked,
                            max_num_batched_tokens=10_000_000))[1] for chunked in (False, True)]
    assert runs[0] == runs[1]


# -- prefix caching -------------------------------------------------------------------------------------

def test_a_cache_without_reuse_changes_nothing_even_when_it_evicts():
    """Fresh prompts share no block: the cache only holds blocks nobody reads, and evicting them when the
    memory fills must not change any timing, because unreferenced blocks count as free."""
    stages = one_call({"dist": "lognormal", "mean": 2000, "cv": 0.5}, {"dist": "lognormal", "mean": 400, "cv": 0.5})
    sims = [rows(experiment(stages, 6.0, 300, gpu_memory_gb=40.0, enable_prefix_caching=caching))
            for caching in (False, True)]
    assert sims[0][1] == sims[1][1]
    replica = sims[1][0].llm_backends["llm:llama3-8b"].replicas[0]
    assert replica.cache.evicted_blocks > 0 and replica.cached_tokens == 0 and replica.preemptions == 0


def test_a_preempted_request_reuses_its_own_prompt_blocks():
    """Under preemption the cache does save work, as in vLLM: a preempted request's prompt blocks stay
    cached (unreferenced) and its recompute starts from them."""
    stages = one_call({"dist": "lognormal", "mean": 2000, "cv": 0.5}, {"dist": "lognormal", "mean": 400, "cv": 0.5})
    sim, _ = rows(experiment(stages, 6.0, 300, gpu_memory_gb=20.0))
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    assert replica.preemptions > 0 and replica.cached_tokens > 0


def test_a_shared_system_prompt_is_hit_by_the_next_request_as_computed_by_hand():
    lat = load_profile("llama3-8b-h100")
    stages = one_call(1500, 50, system_prompt_tokens=1000)
    cfg = experiment(stages, 0.001, 2)  # the two requests arrive far apart: each runs alone
    sim, got = rows(cfg)
    first = float(lat.isolated_service_time(np.array(1500), np.array(50)))
    hit = 1000 // 16 * 16  # the whole blocks of the system prompt: 62 blocks, 992 tokens
    second = first - float(lat.prefill_time(1500)) + lat.iteration_time(1500 - hit, prefill_pairs=1500**2 - hit**2)
    assert got[0]["completion_time"] == pytest.approx(first, rel=1e-12)
    assert got[1]["completion_time"] == pytest.approx(second, rel=1e-12)
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    assert replica.cached_tokens == hit and replica.computed_tokens == 3000 - hit


def test_an_agent_loop_hits_its_own_growing_context():
    stages = [{"name": "think", "backend": "llm:llama3-8b", "prompt_tokens": 800, "output_tokens": 100,
               "prompt_growth_per_iteration": 300, "context": "continue",
               "next": [{"to": "think", "p": 1.0, "max_iterations": 4, "on_limit": "end"}]}]
    sim, _ = rows(experiment(stages, 0.01, 5))
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    # call k (k = 1..4) extends call k-1's prompt and answer (800 + 300 (k - 1) + 100 tokens): its prompt,
    # 800 + 300 k, shares all whole blocks of the previous context, at most prompt - 1 tokens
    per_app = sum((min(800 + 300 * (k - 1) + 100, 800 + 300 * k - 1)) // 16 * 16 for k in range(1, 5))
    assert replica.cached_tokens == 5 * per_app
    assert replica.computed_tokens + replica.cached_tokens == replica.context_tokens == 5 * sum(
        800 + 300 * k for k in range(5))


def test_prefill_tokens_computed_plus_served_from_cache_equal_the_prompt_tokens_under_preemption():
    stages = [{"name": "a", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "lognormal", "mean": 1800, "cv": 0.4},
               "output_tokens": {"dist": "lognormal", "mean": 600, "cv": 0.6}, "system_prompt_tokens": 1200,
               "next": [{"to": "b", "p": 1.0}]},
              {"name": "b", "backend": "llm:llama3-8b", "prompt_tokens": {"dist": "lognormal", "mean": 1500, "cv": 0.4},
               "output_tokens": {"dist": "lognormal", "mean": 300, "cv": 0.6}, "context": "continue"}]
    sim, got = rows(experiment(stages, 5.0, 300, gpu_memory_gb=20.0, max_num_seqs=256, max_num_batched_tokens=1024))
    replica = sim.llm_backends["llm:llama3-8b"].replicas[0]
    assert replica.preemptions > 0 and replica.cache.evicted_blocks > 0 and replica.cached_tokens > 0
    assert replica.prefilled_tokens == replica.computed_tokens
    assert replica.computed_tokens + replica.cached_tokens + replica.loaded_tokens == replica.context_tokens
    prompts = sum(int(r.prompt_tokens.sum()) for a in sim.completed for r in a.runs)
    assert replica.context_tokens >= prompts  # more by the recomputed tokens of preempted requests
    assert len(got) == 300


def test_local_hit_else_remote_load_else_compute():
    """Two replicas behind a remote store: an application's second call is routed elsewhere, so it misses
    the local cache and loads the blocks its first call computed from the store."""
    stages = [{"name": "a", "backend": "llm:llama3-8b", "prompt_tokens": 3000, "output_tokens": 20,
               "next": [{"to": "b", "p": 1.0}]},
              {"name": "b", "backend": "llm:llama3-8b", "prompt_tokens": 3100, "output_tokens": 20,
               "context": "continue"}]
    cfg = experiment(stages, 0.01, 4, replicas=2, remote_prefix_store={"load_bandwidth_gbps": 100})
    sim, _ = rows(cfg, router="round_robin")  # calls alternate between the two replicas
    reps = sim.llm_backends["llm:llama3-8b"].replicas
    assert sum(r.cached_tokens for r in reps) == 0
    assert sum(r.loaded_tokens for r in reps) == 4 * (3020 // 16 * 16)
    sim, _ = rows(cfg, router="session_sticky")  # the second call returns to the first's replica: a local hit
    reps = sim.llm_backends["llm:llama3-8b"].replicas
    assert sum(r.cached_tokens for r in reps) == 4 * (3020 // 16 * 16) and sum(r.loaded_tokens for r in reps) == 0


def test_prefix_cache_lookup_and_eviction_by_hand():
    cache = PrefixCache(block_size=4)
    system = Segment(None, 0, 10)  # blocks end at 4 and 8 inside it; the block ending at 12 ends later
    a = extend((system,), 10)  # 20 tokens: blocks ending at 4, 8, 12, 16, 20
    b = extend((system,), 6)  # 16 tokens: blocks ending at 4, 8, 12 (other content), 16
    assert cache.match(a, 20) == 0
    assert cache.insert(a, 20) == 5 and cache.blocks == 5
    assert cache.match(a, 20) == 16  # at most prompt - 1 tokens: the last block is recomputed
    assert cache.match(b, 16) == 8  # the shared system prompt's two whole blocks
    assert cache.match(truncate(a, 13), 13) == 12
    cache.acquire(b)
    assert cache.evictable_blocks() == 3  # a's own segment; the system prompt's blocks are read by b
    assert cache.evict(10) == 3 and cache.match(a, 20) == 8
    cache.release(b)
    assert cache.evict(10) == 2 and cache.blocks == 0
    cache.check_invariants()
    store = RemoteStore(4)
    store.publish(a, 20)
    assert store.lookup(b, 15) == 8 and store.lookup(a, 19) == 16


# -- refusal ---------------------------------------------------------------------------------------------

def test_oversize_requests_fail_their_application_and_are_counted_apart():
    stages = one_call({"dist": "lognormal", "mean": 6000, "cv": 0.5}, {"dist": "lognormal", "mean": 300, "cv": 0.5})
    result = Simulation(experiment(stages, 1.0, 200), seed=0, check_invariants=True).run()
    s = result.summary
    assert 0 < s["failed"] < 200 and s["completed"] + s["failed"] == s["applications"] == 200
    assert s["jct"]["count"] == s["completed"]
    assert list(s["failure_reasons"]) == ["llm:llama3-8b: prompt and output exceed max_model_len 8192"] or all(
        "max_model_len 8192" in k for k in s["failure_reasons"])
    failed = [r for r in result.rows if r["failed"]]
    assert len(failed) == s["failed"] and all(not r["slo_met"] for r in failed)


def test_a_stage_that_can_never_fit_is_a_config_error():
    with pytest.raises(ConfigError, match="stage 'gen' of 'app' needs at least 9100 tokens"):
        experiment(one_call(9000, 100), 1.0, 10)
    with pytest.raises(ConfigError, match="max_model_len"):
        experiment(one_call(100, 100), 1.0, 10, max_model_len=200_000)


def test_engine_presets_and_their_fields():
    legacy = experiment(one_call(100, 100), 1.0, 1, engine="legacy").cluster.llm_backends[0]
    current = experiment(one_call(100, 100), 1.0, 1).cluster.llm_backends[0]
    assert (legacy.chunked_prefill, legacy.enable_prefix_caching, legacy.max_num_seqs) == (False, False, 256)
    assert (current.chunked_prefill, current.enable_prefix_caching, current.max_num_seqs) == (True, True, 1024)
    assert current.max_num_batched_tokens == 8192 and current.block_size == 16 and current.max_model_len == 8192
    with pytest.raises(ConfigError, match="max_num_batched_tokens"):
        experiment(one_call(100, 100), 1.0, 1, max_num_batched_tokens=512)  # not above max_num_seqs 1024
    with pytest.raises(ConfigError, match="chunked_prefill: must be true or false"):
        experiment(one_call(100, 100), 1.0, 1, chunked_prefill="yes")
