"""The wait queue's adapter index: an admission pass skips requests whose LoRA adapter cannot be loaded, as
popping them and pushing them back did (vLLM V1's rule), without touching them."""

import heapq
import random

from hermes_env.cluster.queue import WaitQueue
from hermes_env.cluster.request import Request


class ByPrompt:
    """A key-ordered policy: the prompt length is the priority (ties by arrival)."""

    def key(self, request, now):
        return request.prompt_tokens


def request(priority, adapter=None):
    return Request(None, 0, 0, "llm:x", prompt_tokens=priority, output_tokens=1, adapter=adapter)


def test_a_pass_skips_refused_adapters_and_ends_with_them_in_place():
    queue = WaitQueue("llm:x", ByPrompt())
    a1, b1, plain, b2, a2 = (request(1, "a"), request(2, "b"), request(3), request(4, "b"), request(5, "a"))
    for r in (b2, a1, plain, a2, b1):
        queue.push(r, 0.0)
    refuse_a = lambda adapter: adapter != "a"  # noqa: E731
    assert queue.peek(0.0, refuse_a) is b1 and queue.pop(0.0) is b1
    assert queue.peek(0.0, refuse_a) is plain and queue.pop(0.0) is plain
    assert queue.peek(0.0, lambda adapter: True) is b2  # a1 was skipped in this pass, a2 not yet
    assert queue.peek(0.0, lambda adapter: False) is None and len(queue) == 3
    queue.end_pass()
    assert queue.peek(0.0) is a1 and queue.waiting == [a1, b2, a2] and sorted(queue, key=id) == sorted(
        [a1, b2, a2], key=id)


def reference_pass(heap, skipped, admissible):
    """The rule as it was written before the index: pop the refused heads, set them aside."""
    while heap:
        r = heap[0][2]
        if r.adapter is None or admissible(r.adapter):
            return r
        skipped.append(heapq.heappop(heap))
    return None


def test_the_index_admits_what_popping_and_restoring_admitted():
    rng = random.Random(7)
    adapters = [None, "a", "b", "c", "d"]
    queue, heap, seq = WaitQueue("llm:x", ByPrompt()), [], 0

    def push(r):
        nonlocal seq
        queue.push(r, 0.0)
        seq += 1
        heapq.heappush(heap, (r.prompt_tokens, seq, r))

    for _ in range(60):
        push(request(rng.randrange(50), rng.choice(adapters)))
    for _ in range(300):  # passes; admissibility changes between steps, as admissions and preemptions change it
        skipped, allowed = [], set(rng.sample(adapters[1:], rng.randrange(5)))
        while True:
            admissible = allowed.__contains__
            got, expected = queue.peek(0.0, admissible), reference_pass(heap, skipped, admissible)
            assert got is expected
            if got is None or rng.random() < 0.2:
                break  # nothing admissible, or the head does not fit: the pass stops
            assert queue.pop(0.0) is heapq.heappop(heap)[2]
            if rng.random() < 0.3:  # a preemption sends a running request back to the queue
                push(request(rng.randrange(50), rng.choice(adapters)))
            allowed ^= {rng.choice(adapters[1:])}
        queue.end_pass()
        for entry in skipped:
            heapq.heappush(heap, entry)
        assert len(queue) == len(heap) and queue.waiting == [r for _, _, r in sorted(heap)]
        while len(heap) < 40:
            push(request(rng.randrange(50), rng.choice(adapters)))
