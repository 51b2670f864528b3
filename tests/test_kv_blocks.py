"""vLLM's block accounting in the replica (kv_accounting vllm-0.11 / vllm-0.34, hermes_env/cluster/llm.py): hand-
computed examples of a decode taking a block at a boundary, of the closed-form decode segment ending where the free
blocks run out (against the same run one iteration at a time), and the block invariants under memory pressure.
Streams are written as the conformance recordings are (tests/conformance/replay.py drives them)."""

from __future__ import annotations

import random

import pytest

from hermes_env.cluster.request import Request
from hermes_env.sim.engine import Engine
from tests.conformance.replay import _backend, _Chains, hermes_steps

ENGINE = {"block_size": 16, "max_num_seqs": 8, "max_num_batched_tokens": 256, "enable_prefix_caching": False,
          "enable_chunked_prefill": True, "max_model_len": 4096}


def stream(blocks: int, requests: list[tuple[int, int, int]], **engine) -> dict:
    """A stream of (arrival step, prompt tokens, output tokens) on a replica of ``blocks`` usable blocks."""
    return {"engine": {**ENGINE, "num_gpu_blocks": blocks + 1, **engine},  # vLLM keeps one block aside
            "requests": [{"id": f"r{i}", "arrive": a, "prompt": [[f"u{i}", p]], "max_tokens": o}
                         for i, (a, p, o) in enumerate(requests)]}


def test_a_decode_takes_a_block_when_it_crosses_a_boundary():
    # a 16-token prompt fills one block; its first decode computes token 17, which needs a second block, and the
    # next two decodes (tokens 18, 19) fit in it. Tokens: 16 + 1 reserved for the token the prefill yields, then
    # one more per decode.
    s = stream(10, [(0, 16, 4)])
    blocks = [160 - st["free_tokens"] for st in hermes_steps(s, "vllm-0.11")]
    tokens = [160 - st["free_tokens"] for st in hermes_steps(s, "tokens")]
    assert blocks == [16, 32, 32, 32]
    assert tokens == [17, 18, 19, 20]


def test_a_preempted_request_reuses_the_blocks_it_generated():
    # r0 (32-token prompt, 2 blocks) and r1 (16, 1 block) on 6 blocks: their first decodes take a block each (contexts
    # 33 and 17), and at step 17 both want another (contexts 49 and 33) with one free: r0 takes it, r1 is preempted
    # with 17 tokens generated. Its two full blocks (its prompt and 16 generated tokens) stay cached, free to evict;
    # when r0 finishes (step 19) r1 is admitted again with 32 of its 33 tokens cached and recomputes one.
    s = stream(6, [(0, 32, 20), (0, 16, 60)], enable_prefix_caching=True)
    steps = {st["step"]: st for st in hermes_steps(s, "vllm-0.11")}
    assert [k for k, st in steps.items() if st["preempted"]] == [17] and steps[17]["preempted"] == ["r1"]
    assert steps[17]["free_tokens"] == 2 * 16  # r1's cached blocks count as free
    assert [steps[k]["scheduled"] for k in (18, 19, 20)] == [{"r0": 1}, {"r0": 1}, {"r1": 1}]


def run(s: dict, kv_accounting: str, stepwise: bool, check: bool = False) -> tuple[list, dict]:
    """Run a stream to the end with decode segments (``stepwise``: one iteration each, the conformance hook);
    returns the (step, request) of every preemption and each request's iteration of finishing."""
    engine, done = Engine(), []
    backend = _backend(s["engine"], engine, done, kv_accounting)
    replica = backend.replicas[0]
    replica.capacity = (s["engine"]["num_gpu_blocks"] - 1) * s["engine"]["block_size"]
    chains, names = _Chains(), {}
    preempted: list = []
    if stepwise:
        replica.on_iteration = lambda rep, now: None
    for spec in s["requests"]:  # every request waits from the start: steps are the replica's own iterations
        r = Request(None, len(names), 0, backend.name, prompt_tokens=sum(n for _, n in spec["prompt"]),
                    output_tokens=spec["max_tokens"], chain=chains.chain(spec["prompt"]))
        names[r] = spec["id"]
        replica.queue.push(r, 0.0)
    replica.poke(0.0)
    seen = {r: 0 for r in names}
    while len(engine):
        engine.step()
        if check:
            backend.check_invariants()
        for r in names:
            if r.preemptions > seen[r]:
                preempted.append((replica.iterations, names[r]))
                seen[r] = r.preemptions
    assert len(done) == len(names)
    return preempted, {names[r]: r.finished for r in done}


def test_a_decode_segment_runs_until_the_free_blocks_run_out():
    # prompts of 31, 20 and 39 tokens hold 2, 2 and 3 blocks once prefilled (step 0), at contexts 32, 21 and 40:
    # their next blocks are wanted 1, 12 and 9 decodes later, then every 16. With 4 of 11 blocks free, decodes
    # 0..24 (steps 1..25) take blocks at 1, 9, 12 and 17, and decode 25 wants a fifth (r2's, at context 40 + 25):
    # the last admitted request is preempted there, at step 26, whether the decodes run one at a time or as one
    # segment.
    s = stream(11, [(0, 31, 100), (0, 20, 100), (0, 39, 100)])
    for kv in ("vllm-0.11", "vllm-0.34"):
        steps = hermes_steps(s, kv)
        first = next(st for st in steps if st["preempted"])
        assert (first["step"], first["preempted"]) == (26, ["r2"])
        assert [st["free_tokens"] // 16 for st in steps[:19]] == [4, 4, 3, *[3] * 7, 2, 2, 2, 1, *[1] * 4, 0]
        preempted, _ = run(s, kv, stepwise=False)
        assert preempted[0] == (26, "r2")


@pytest.mark.parametrize("kv_accounting", ["vllm-0.11", "vllm-0.34"])
def test_segments_with_mixed_offsets_match_the_iteration_by_iteration_run(kv_accounting):
    # ten requests on 25 blocks: the segments, planned in closed form over the requests' offsets to their next
    # boundaries (and one iteration long after an iteration that preempted and so admitted nothing), preempt the
    # same requests at the same iterations as the run planned one iteration at a time, and finish them in turn
    rng = random.Random(7)
    s = stream(25, [(0, rng.randint(5, 120), rng.randint(20, 90)) for _ in range(10)])
    segments, stepwise = run(s, kv_accounting, False), run(s, kv_accounting, True)
    assert segments[0] == stepwise[0] and len(segments[0]) >= 3  # the same preemptions, at the same iterations
    assert sorted(segments[1], key=segments[1].get) == sorted(stepwise[1], key=stepwise[1].get)
    assert segments[1] == pytest.approx(stepwise[1], rel=1e-9)


@pytest.mark.parametrize("kv_accounting", ["vllm-0.11", "vllm-0.34"])
def test_block_invariants_hold_under_memory_pressure_with_shared_prefixes(kv_accounting):
    """No replica holds more blocks than it has, each request's table covers its KV, and the requests' and the
    cache's blocks add up to the replica's, after every event of a run that preempts, with shared prompts."""
    rng = random.Random(3)
    shared = [["sys", 40], ["tool", 24]]
    s = stream(24, [], enable_prefix_caching=True, max_num_batched_tokens=96)
    s["requests"] = [{"id": f"r{i}", "arrive": 0, "max_tokens": rng.randint(10, 60),
                      "prompt": [*shared[:rng.randint(0, 2)], [f"u{i}", rng.randint(3, 90)]]} for i in range(16)]
    segments, stepwise = (run(s, kv_accounting, stepwise, check=True) for stepwise in (False, True))
    assert len(segments[0]) >= 10 and len(segments[1]) == 16
    assert segments[0] == stepwise[0]
