"""The golden request streams of the conformance harness (issue 23, item 1): standard library only, so that
the recorder runs in a vLLM environment and the replay in hermes_env's.

A stream is an engine configuration (vLLM's names) and requests. A request arrives before scheduler step
``arrive`` and has a prompt made of *segments* ``[name, tokens]``, and ``max_tokens`` output tokens. A
segment's identity is its name and everything before it, so two prompts share exactly the blocks that end
within their common run of segments; ``["@r3", n]`` is request ``r3``'s answer (its ``n`` output tokens), so
a prompt can continue a conversation. Token ids are a deterministic function of the segment's path
(:func:`segment_tokens`), and the fake model emits :func:`output_token` for each generated token."""

from __future__ import annotations

import random
import zlib

ENGINE = {"block_size": 16, "num_gpu_blocks": 1024, "max_num_seqs": 16, "max_num_batched_tokens": 256,
          "enable_prefix_caching": True, "enable_chunked_prefill": True, "max_model_len": 4096}


def segment_tokens(path: tuple[str, ...], size: int) -> list[int]:
    """The token ids of a segment: a pure function of the names leading to it (stable across processes)."""
    rng = random.Random(zlib.crc32("/".join(path).encode()))
    return [rng.randrange(1000, 30000) for _ in range(size)]


def output_token(request_id: str, index: int) -> int:
    """The fake model's ``index``-th output token of ``request_id`` (never an end-of-sequence token)."""
    return 30000 + zlib.crc32(f"{request_id}:{index}".encode()) % 2000


def prompt_tokens(prompt: list[list]) -> list[int]:
    """A prompt's token ids: each segment's own ids, an answer segment ``@rid`` the tokens ``rid`` generated."""
    tokens: list[int] = []
    path: tuple[str, ...] = ()
    for name, size in prompt:
        path = (*path, name)
        tokens += [output_token(name[1:], i) for i in range(size)] if name.startswith("@") else \
            segment_tokens(path, size)
    return tokens


def _request(rid: str, arrive: int, prompt: list[list], max_tokens: int) -> dict:
    return {"id": rid, "arrive": arrive, "prompt": prompt, "max_tokens": max_tokens}


def _short_prompts() -> dict:
    """Short prompts and answers, a few arriving between steps: decodes and single-chunk prefills."""
    spec = [(0, 24, 6), (0, 50, 12), (1, 17, 9), (3, 40, 20), (5, 33, 4), (8, 64, 15), (8, 15, 30)]
    return {"engine": dict(ENGINE), "requests": [_request(f"r{i}", a, [[f"u{i}", p]], o)
                                                 for i, (a, p, o) in enumerate(spec)]}


def _long_prompts_chunked() -> dict:
    """Prompts of 1 to 5 budgets of 128 tokens: chunked prefill beside decodes, a long prompt arriving while
    another is mid-prefill, short requests behind long ones."""
    spec = [(0, 40, 30), (0, 600, 10), (2, 300, 12), (3, 20, 25), (6, 517, 8), (12, 129, 16), (15, 128, 3),
            (20, 90, 40)]
    engine = {**ENGINE, "max_num_batched_tokens": 128, "max_num_seqs": 8}
    return {"engine": engine, "requests": [_request(f"r{i}", a, [[f"u{i}", p]], o) for i, (a, p, o) in enumerate(spec)]}


def _max_num_seqs() -> dict:
    """Twelve requests at once behind ``max_num_seqs`` 4: admission as batch slots free up."""
    return {"engine": {**ENGINE, "max_num_seqs": 4},
            "requests": [_request(f"r{i}", 0, [[f"u{i}", 20 + 7 * i]], 5 + 3 * (i % 4)) for i in range(12)]}


def _prefix_hits() -> dict:
    """A 160-token system prompt shared by later requests (cache hits of whole blocks), a prompt repeated
    whole, a prompt of exactly the ten cached blocks (the hit capped below the prompt: its last block is
    recomputed), and conversations whose second turn reuses the first turn's prompt and answer."""
    sys = ["sys", 160]
    reqs = [_request("r0", 0, [sys, ["u0", 30]], 10),
            _request("r1", 4, [sys, ["u1", 45]], 8),
            _request("r2", 4, [sys, ["u2", 12]], 6),
            _request("r3", 6, [sys, ["u0", 30]], 5),          # r0's prompt again
            _request("r4", 7, [["sys", 160]], 4),             # exactly the cached system prompt: 10 blocks
            _request("r5", 20, [sys, ["u0", 30], ["@r0", 10], ["u5", 40]], 7),  # r0's conversation, turn 2
            _request("r6", 21, [["other", 70], ["u6", 20]], 9),
            _request("r7", 30, [sys, ["u1", 45], ["@r1", 8], ["u7", 33]], 5)]
    return {"engine": dict(ENGINE), "requests": reqs}


def _prefix_evictions() -> dict:
    """A cache of 40 blocks: finished requests' blocks stay cached until new prompts evict them, least
    recently used first; later requests find their prefix kept or evicted."""
    engine = {**ENGINE, "num_gpu_blocks": 41, "max_num_seqs": 4}
    reqs = [_request("r0", 0, [["a", 160], ["u0", 20]], 4),
            _request("r1", 8, [["b", 160], ["u1", 20]], 4),
            _request("r2", 16, [["a", 160], ["u2", 20]], 4),   # a still cached
            _request("r3", 24, [["c", 250], ["u3", 20]], 4),   # evicts b (least recently used)
            _request("r4", 34, [["b", 160], ["u4", 20]], 4),   # b partly gone
            _request("r5", 44, [["a", 160], ["u5", 20]], 4),
            _request("r6", 52, [["d", 300], ["u6", 20]], 3),
            _request("r7", 60, [["c", 250], ["u7", 20]], 3)]
    return {"engine": engine, "requests": reqs}


def _preemption() -> dict:
    """Memory pressure: 30 blocks, four requests whose answers outgrow the cache, so running requests are
    preempted (recomputed later) as decodes need new blocks; one more arrives meanwhile."""
    engine = {**ENGINE, "num_gpu_blocks": 31, "max_num_seqs": 8}
    reqs = [_request(f"r{i}", a, [[f"u{i}", p]], o)
            for i, (a, p, o) in enumerate([(0, 70, 140), (0, 90, 120), (1, 60, 150), (2, 100, 100), (30, 40, 60)])]
    return {"engine": engine, "requests": reqs}


def _preemption_prefix() -> dict:
    """Memory pressure with a shared prefix: preempted requests come back to blocks still cached."""
    engine = {**ENGINE, "num_gpu_blocks": 41, "max_num_seqs": 8}
    sys = ["sys", 128]
    reqs = [_request(f"r{i}", a, [sys, [f"u{i}", p]], o)
            for i, (a, p, o) in enumerate([(0, 40, 120), (0, 30, 140), (2, 50, 100), (4, 20, 130), (40, 60, 30)])]
    return {"engine": engine, "requests": reqs}


def _random_arrivals(seed: int, caching: bool) -> dict:
    """Requests arriving between steps at random (a seeded Bernoulli per step), mixed prompt and answer
    lengths, some sharing one of three system prompts; a cache of 200 blocks."""
    rng = random.Random(seed)
    engine = {**ENGINE, "num_gpu_blocks": 201, "max_num_seqs": 12, "enable_prefix_caching": caching}
    reqs, step = [], 0
    while len(reqs) < 30:
        step += rng.choice([0, 1, 1, 2, 3, 5])
        head = [[f"sys{rng.randrange(3)}", 96]] if rng.random() < 0.5 else []
        i = len(reqs)
        prompt = [*head, [f"u{i}", rng.choice([8, 30, 60, 150, 400])]]
        reqs.append(_request(f"r{i}", step, prompt, rng.choice([2, 10, 25, 60])))
    return {"engine": engine, "requests": reqs}


def streams() -> dict[str, dict]:
    """Every golden stream by name."""
    return {"short_prompts": _short_prompts(), "long_prompts_chunked": _long_prompts_chunked(),
            "max_num_seqs": _max_num_seqs(), "prefix_hits": _prefix_hits(), "prefix_evictions": _prefix_evictions(),
            "preemption": _preemption(), "preemption_prefix": _preemption_prefix(),
            "random_arrivals": _random_arrivals(23, True), "random_arrivals_no_cache": _random_arrivals(23, False)}
