"""The real-GPU runtime (scripts/realgpu/hf_engine.py) without a GPU or transformers: hermes_env's simulation
in wall-clock time over a fake FIFO engine that admits one request at a time, so that the application-level
policy alone decides the order, and answers one token per iteration."""

import sys
import time
from collections import deque
from types import SimpleNamespace

import pytest

from hermes_env.sim import ExperimentConfig
from hermes_env.sim.policies import SchedulingPolicy
from tests.conftest import ROOT

pytest.importorskip("torch")  # hf_engine's module imports it (the rl extra)
sys.path.insert(0, str(ROOT / "scripts" / "realgpu"))
import hf_engine  # noqa: E402

ITERATION = 0.002  # seconds of a fake iteration


class FakeState:
    def __init__(self, rid, tokens, new):
        self.request_id, self.initial_tokens, self.max_new_tokens = rid, tokens, new
        self.generated_tokens = []

    def generated_len(self):
        return len(self.generated_tokens)


class FakeEngine:
    """One request at a time, FIFO over its waiting list (which the runtime orders), a token an iteration."""

    def __init__(self):
        self.sched = SimpleNamespace(waiting_requests_order=deque(), has_pending_requests=self.pending)
        self.manager = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vocab_size=1000)))
        self.states, self.running, self.admitted, self.prompts = {}, None, [], {}

    def add(self, tokens, new):
        state = FakeState(f"r{len(self.states)}", tokens, new)
        self.states[state.request_id] = state
        self.sched.waiting_requests_order.append(state.request_id)
        return state

    def pending(self):
        return bool(self.sched.waiting_requests_order) or self.running is not None

    def step(self, clock):
        step = hf_engine.Step(clock())
        if self.running is None:
            self.running = self.states[self.sched.waiting_requests_order.popleft()]
            self.admitted.append(self.running.request_id)
        state = self.running
        step.scheduled = clock()
        time.sleep(ITERATION)
        step.computed = clock()
        step.requests = [(state.request_id, 1, len(state.initial_tokens), True)]
        state.generated_tokens.append(len(state.generated_tokens) + 7)
        if state.generated_len() == state.max_new_tokens:
            self.running = None
        step.end = clock()
        return step


class LongestFirst(SchedulingPolicy):
    name = "longest_first"

    def key(self, request, now):
        return -request.prompt_tokens


def experiment(n, rate):
    llm = {"name": "llm:llama3-8b", "profile": "llama3-8b-h100", "model": "llama3-8b"}
    return ExperimentConfig.from_dict({
        "cluster": {"llm_backends": [llm]},
        "workload": {"num_applications": n, "arrivals": {"process": "poisson", "rate": rate},
                     "applications": [{"template": {"name": "chat", "stages": [
                         {"name": "ask", "backend": "llm:llama3-8b",
                          "prompt_tokens": {"dist": "lognormal", "mean": 200, "cv": 0.8}, "output_tokens": 3,
                          "next": [{"to": "again", "p": 1.0}]},
                         {"name": "again", "backend": "llm:llama3-8b", "context": "append", "prompt_tokens": 10,
                          "output_tokens": 2}]}}]},
    })


def test_every_application_ends_with_real_timestamps_and_the_policy_orders_the_engine():
    fake = FakeEngine()
    sim = hf_engine.real_simulation(experiment(12, 400.0), fake, scheduler=LongestFirst(), seed=1)
    assert type(sim.engine) is hf_engine.RealTimeEngine  # the patched simulator.Engine, in either build
    sim.request_log = []
    result = sim.run(until=20.0)
    assert result.summary["completed"] == 12
    requests = sim.request_log
    assert len(requests) == 24
    for r in requests:  # enqueued, admitted, first token, finished: in order, a token an iteration
        assert 0 <= r.first_enqueued <= r.started < r.first_token <= r.finished
        assert r.finished - r.first_token >= (r.output_tokens - 1) * ITERATION
    # the second stage's prompt is the first's prompt, its answer (the engine's tokens) and 10 new tokens
    states = {s.request_id: s for s in fake.states.values()}
    by_prompt = {tuple(s.initial_tokens): s for s in states.values()}
    for r in requests:
        if r.run_index == 1:
            first = next(q for q in requests if q.app is r.app and q.run_index == 0)
            prompt = next(p for p in by_prompt if len(p) == r.prompt_tokens and
                          list(p[first.prompt_tokens:first.prompt_tokens + 3]) == [7, 8, 9])
            assert len(prompt) == first.prompt_tokens + 3 + 10
    # the arrivals come faster than the engine serves: whenever it chose among waiting requests (those that
    # reached the queue before the previous request finished: the runtime had them all), the longest went first;
    # one that arrived after that finish but before the engine's next choice may go first too, if longer still
    # (wall-clock timing: under load that window holds arrivals)
    order = [len(states[rid].initial_tokens) for rid in fake.admitted]
    sim_request = dict(zip(fake.admitted, sorted(requests, key=lambda q: q.started), strict=True))
    chose = 0
    for i in range(1, len(fake.admitted)):
        before = sim_request[fake.admitted[i - 1]].finished
        rivals = [len(states[o].initial_tokens) for o in fake.admitted[i:] if sim_request[o].first_enqueued <= before]
        assert not rivals or order[i] >= max(rivals)
        chose += len(rivals) > 1
    assert chose >= 3
