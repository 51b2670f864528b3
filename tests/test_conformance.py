"""Decision-level conformance with vLLM's own V1 scheduler (issue 23, item 1): the schedules vLLM ran over the
golden streams (recorded by scripts/conformance/record_vllm.py, committed under tests/conformance/) replayed
through hermes_env's replica one step at a time, counting KV as the recorded release does (kv_accounting
vllm-0.11 or vllm-0.34). Every step must schedule the same tokens for the same requests and preempt the same
ones, or lie in a run of steps that tests/conformance/differences.json lists with its cause (docs/fidelity.md).
No vLLM is needed."""

import copy
import functools
import importlib.util
import json
from pathlib import Path

import pytest

from tests.conformance.replay import HERE, RECORDINGS, accounting, compare, hermes_steps, load

DIFFERENCES = json.loads((HERE / "differences.json").read_text())
SYNC = [p for p in RECORDINGS if not p.stem.endswith("-async")]


@functools.cache
def replayed(path: Path) -> dict[str, list[dict]]:
    """hermes_env's schedule of each stream of a recording (replayed once per session)."""
    data = load(path)
    return {name: hermes_steps(stream, accounting(data), data["scheduler"] == "async")
            for name, stream in data["streams"].items()}


@functools.cache
def differing_steps(path: Path) -> dict[str, set[int]]:
    """Per stream of a recording, the steps where hermes_env's replay differs."""
    return {name: {d["step"] for d in compare(stream["steps"], replayed(path)[name])}
            for name, stream in load(path)["streams"].items()}


def test_recordings_are_present_and_name_their_source():
    versions = {load(p)["vllm_version"] for p in RECORDINGS}
    assert "0.11.0" in versions and len(versions) >= 2, versions
    assert set(DIFFERENCES["recordings"]) == {p.stem for p in RECORDINGS}
    for path in RECORDINGS:
        data = load(path)
        assert data["made_by"] == "scripts/conformance/record_vllm.py"
        assert path.name == f"vllm-{data['vllm_version']}{'-async' if data['scheduler'] == 'async' else ''}.json"


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_every_differing_step_is_listed_with_its_cause(path):
    listed = DIFFERENCES["recordings"][path.stem]
    causes = DIFFERENCES["causes"]
    assert set(listed) - {"_identical"} <= set(load(path)["streams"]), "differences.json names an unknown stream"
    unexplained, stale = [], []
    for name, differing in differing_steps(path).items():
        runs = listed.get(name, [])
        assert all(cause in causes for _, _, cause in runs), f"{name}: a run names an unknown cause"
        unexplained += [(name, k) for k in sorted(differing) if not any(a <= k <= b for a, b, _ in runs)]
        stale += [(name, a) for a, _, _ in runs if a not in differing]  # a run starts where a step differs
    assert not unexplained, f"steps that differ from {path.stem} and are not listed: {unexplained}"
    assert not stale, f"listed runs whose first step no longer differs (update differences.json): {stale}"


@pytest.mark.parametrize("path", SYNC, ids=lambda p: p.stem)
def test_block_accounting_preempts_where_token_accounting_runs_on(path):
    """Why the replay counts KV in vLLM's blocks: with hermes_env's default token accounting the replica preempts
    later than vLLM under memory pressure. At each step where vLLM preempts and the token replay does not, vLLM had
    fewer free blocks after the step before than requests to grow by one token, the token replay at least a token
    each, and the block replay preempts the same requests as vLLM."""
    checked = 0
    for name in ("preemption", "preemption_prefix"):
        stream = load(path)["streams"][name]
        tokens = {s["step"]: s for s in hermes_steps(stream, "tokens")}
        blocks = {s["step"]: s for s in replayed(path)[name]}
        vllm = {s["step"]: s for s in stream["steps"]}
        for k, s in vllm.items():
            if not s["preempted"] or k not in tokens or tokens[k]["preempted"] or k - 1 not in tokens:
                continue
            growing = len(s["scheduled"]) + len(s["preempted"])
            assert vllm[k - 1]["free_blocks"] < growing <= tokens[k - 1]["free_tokens"], (name, k)
            assert blocks[k]["preempted"] == s["preempted"], (name, k)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_identical_fraction_is_the_documented_one(path):
    data = load(path)
    steps = sum(len({s["step"] for s in stream["steps"]} | differing_steps(path)[name])
                for name, stream in data["streams"].items())
    identical = steps - sum(len(d) for d in differing_steps(path).values())
    documented = DIFFERENCES["recordings"][path.stem]["_identical"]
    assert [identical, steps] == documented, "docs/fidelity.md quotes these counts: update both"


def test_streams_without_memory_pressure_or_shared_prompts_in_flight_match_every_step():
    for path in (HERE / "vllm-0.11.0.json", HERE / "vllm-0.34.0.json"):
        for name in ("short_prompts", "long_prompts_chunked", "max_num_seqs", "prefix_hits", "prefix_evictions",
                     "random_arrivals"):
            assert not differing_steps(path)[name], (path.name, name)


def test_recordings_hold_the_streams_the_script_defines():
    spec = importlib.util.spec_from_file_location("streams", HERE.parents[1] / "scripts" / "conformance" / "streams.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    defined = module.streams()
    for path in RECORDINGS:
        recorded = load(path)["streams"]
        assert set(recorded) == set(defined), path.name
        for name, stream in defined.items():
            assert {k: recorded[name][k] for k in ("engine", "requests")} == json.loads(json.dumps(stream)), name


def test_each_request_is_scheduled_its_prompt_and_all_but_its_first_output_token():
    """Without a prefix cache and without preemption a request's prefill is its prompt and each later step
    decodes one token, in vLLM's recording and in hermes_env's replay alike (the hook plans every iteration)."""
    stream = load(HERE / "vllm-0.11.0.json")["streams"]["random_arrivals_no_cache"]
    expected = {r["id"]: sum(n for _, n in r["prompt"]) + r["max_tokens"] - 1 for r in stream["requests"]}
    for steps in (stream["steps"], hermes_steps(stream)):
        total: dict[str, int] = {}
        for s in steps:
            assert not s["preempted"]
            for rid, n in s["scheduled"].items():
                total[rid] = total.get(rid, 0) + n
        assert total == expected


def test_the_comparison_catches_a_changed_step():
    stream = copy.deepcopy(load(HERE / "vllm-0.11.0.json")["streams"]["long_prompts_chunked"])
    replayed = hermes_steps(stream)
    chunked = next(s for s in stream["steps"] if any(n > 1 for n in s["scheduled"].values()) and s["step"] > 0)
    rid = next(r for r, n in chunked["scheduled"].items() if n > 1)
    chunked["scheduled"][rid] -= 1
    stream["steps"][-1]["preempted"] = ["r0"]
    assert [d["step"] for d in compare(stream["steps"], replayed)] == [chunked["step"], stream["steps"][-1]["step"]]


def test_replay_is_deterministic_and_admits_arrivals_before_their_step():
    stream = load(HERE / "vllm-0.11.0.json")["streams"]["random_arrivals"]
    first, second = hermes_steps(stream), hermes_steps(stream)
    assert first == second
    arrive = {r["id"]: r["arrive"] for r in stream["requests"]}
    seen = {}
    for s in first:
        for rid in s["scheduled"]:
            seen.setdefault(rid, s["step"])
    assert set(seen) == set(arrive) and all(seen[r] >= arrive[r] for r in arrive)


def test_the_default_token_accounting_replays_as_before():
    """hermes_env's default accounting (tokens, the whole context reserved at admission) is unchanged by the block
    accounting beside it: its replay of the 0.11.0 recording differs where it did (705 of 758 steps identical)."""
    data = load(HERE / "vllm-0.11.0.json")
    differing = sum(len(compare(s["steps"], hermes_steps(s, "tokens"))) for s in data["streams"].values())
    assert differing == 758 - 705


def test_the_releases_differ_in_their_admission_rule_alone():
    """vLLM 0.34 admits a prompt only if it fits whole (scheduler_reserve_full_isl), 0.11 its first chunk: each
    release's recording replayed with the other's accounting differs exactly where the two recordings differ."""
    old, new = (load(HERE / f"vllm-{v}.json")["streams"] for v in ("0.11.0", "0.34.0"))
    between = {name: [d["step"] for d in compare(old[name]["steps"], new[name]["steps"])] for name in old}
    assert between["random_arrivals_no_cache"] == [27, 28, 29, 53, 54, 55]
    for recorded, other in ((old, "vllm-0.34"), (new, "vllm-0.11")):
        crossed = {name: [d["step"] for d in compare(s["steps"], hermes_steps(s, other))]
                   for name, s in recorded.items()}
        assert crossed == between


def test_the_asynchronous_recording_needs_the_finish_lag():
    """vLLM 0.34's asynchronous scheduler plans step k + 1 before applying step k's output, so a request that
    finishes in step k holds its slot and blocks while k + 1 is planned. Replayed without that lag, the
    asynchronous recording differs at 74 steps, from the first admission behind a finish on (max_num_seqs,
    step 5: r4 waits for r0's slot one step longer)."""
    data = load(HERE / "vllm-0.34.0-async.json")["streams"]
    without = {name: [d["step"] for d in compare(s["steps"], hermes_steps(s, "vllm-0.34"))] for name, s in data.items()}
    assert sum(map(len, without.values())) == 74 and without["max_num_seqs"][0] == 5
    step5 = {s["step"]: s for s in hermes_steps(data["max_num_seqs"], "vllm-0.34", True)}[5]
    assert step5["scheduled"] == {"r1": 1, "r2": 1, "r3": 1}
