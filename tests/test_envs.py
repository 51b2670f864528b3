import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import hermes_env  # noqa: F401  (registers the environments)
from hermes_env.envs import ENV_IDS
from hermes_env.sim import ExperimentConfig, Simulation
from hermes_env.sim.policies import ExternalScheduler
from tests.conftest import ROOT

SHORT = {"workload": {"num_applications": 40}}
# KVCache-v0's sessions make ~31 decisions each: 8 of them are as many steps as 40 applications elsewhere
SHORT_FOR = {"hermes_env/KVCache-v0": {"workload": {"num_applications": 8}}}


def random_episode(env, seed, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    obs, info = env.reset(seed=seed)
    rewards, steps = [], 0
    while True:
        mask = env.unwrapped.action_masks()
        assert np.array_equal(mask, info["action_mask"])
        if isinstance(env.action_space, gym.spaces.Discrete):
            action = int(rng.choice(np.flatnonzero(mask)))
        else:
            nvec = env.action_space.nvec
            parts = np.split(mask, np.cumsum(nvec)[:-1])
            action = np.array([rng.choice(np.flatnonzero(p)) for p in parts])
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        rewards.append(reward)
        steps += 1
        if terminated or truncated:
            return rewards, steps, info


# The checkers step with unmasked random actions: with the defaults, every element of the action space
# must be a legal input (issue 10).
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_gymnasium_env_checker_with_defaults(env_id):
    check_env(gym.make(env_id).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_stable_baselines3_env_checker_with_defaults(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check

    sb3_check(gym.make(env_id).unwrapped, warn=True)


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_reset_is_deterministic_and_return_is_minus_total_completion_time_and_priced_terms(env_id):
    short = SHORT_FOR.get(env_id, SHORT)
    n = short["workload"]["num_applications"]
    env = gym.make(env_id, overrides=short, idle_cost_weight=0.01, slo_miss_weight=0.5)
    a, steps_a, info = random_episode(env, seed=7)
    base = env.unwrapped
    sim = base.sim
    total_jct = sum(app.completion - app.arrival for app in sim.completed)
    assert len(sim.completed) == n and info["completed"] + info["failed"] == n
    idle = sum(b.idle_cost for b in sim.tool_backends.values())
    priced = base.gpu_cost_weight * info["gpu_seconds"] + 0.01 * idle + 0.5 * sim.slo_missed
    assert sum(a) == pytest.approx(-total_jct - priced, rel=1e-9)
    b, steps_b, _ = random_episode(env, seed=7)
    assert a == b and steps_a == steps_b
    c, _, _ = random_episode(env, seed=8)
    assert c != a
    scaled = gym.make(env_id, overrides=short, idle_cost_weight=0.01, slo_miss_weight=0.5, reward_scale=0.1)
    d, _, _ = random_episode(scaled, seed=7)  # the whole reward scales, priced terms included
    assert sum(d) == pytest.approx(0.1 * sum(a), rel=1e-9)


def test_module_prefix_make():
    env = gym.make("hermes_env:hermes_env/Scheduling-v0", overrides=SHORT)
    assert isinstance(env.unwrapped, hermes_env.envs.SchedulingEnv)


def masked_first_actions(vec, mask):
    """Each copy's lowest valid value of every action part."""
    space = vec.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return np.array([int(np.flatnonzero(m)[0]) for m in mask])
    cuts = np.cumsum(space.nvec)[:-1]
    return np.array([[int(np.flatnonzero(p)[0]) for p in np.split(m, cuts)] for m in mask])


# issue 19: Joint-v0 crashed in every vector env (info["replica"] was an int at one kind of decision and None
# at the others, which gymnasium cannot stack). Copies must reach different kinds of decision (or the end).
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_every_id_vectorises_with_wrappers_across_decision_kinds(env_id, mode):
    vec = gym.make_vec(env_id, num_envs=3, vectorization_mode=mode, overrides={"workload": {"num_applications": 12}},
                       wrappers=[gym.wrappers.RecordEpisodeStatistics])
    vec = gym.wrappers.vector.RecordEpisodeStatistics(vec, stats_key="vector_episode")
    obs, info = vec.reset(seed=[0, 1, 2])
    mixed, ended = False, 0
    for _ in range(400):
        obs, reward, term, trunc, info = vec.step(masked_first_actions(vec, info["action_mask"]))
        assert reward.shape == (3,) and obs["global"].shape[0] == 3
        assert all(isinstance(k, str) for k in info["decision"]) and all(isinstance(b, str) for b in info["backend"])
        assert np.issubdtype(info["replica"].dtype, np.integer) and (info["replica"] >= -1).all()
        mixed |= len(set(info["decision"])) > 1
        ended += int((term | trunc).sum())
        if mixed and ended >= 3:
            break
    vec.close()
    assert mixed, "the copies never stood at different kinds of decision"
    assert ended >= 3


def test_masked_actions_are_penalised_by_default_or_raise_on_request():
    env = gym.make("hermes_env/Scheduling-v0", overrides=SHORT, invalid_action="raise")
    env.reset(seed=0)
    bad = int(np.flatnonzero(~env.unwrapped.action_masks())[0])
    with pytest.raises(ValueError, match="masked out"):
        env.step(bad)
    lenient = gym.make("hermes_env/Scheduling-v0", overrides=SHORT, invalid_action_penalty=5.0)  # the default mode
    lenient.reset(seed=0)
    valid = gym.make("hermes_env/Scheduling-v0", overrides=SHORT)
    valid.reset(seed=0)
    _, r_bad, _, _, info_bad = lenient.step(bad)
    _, r_ok, _, _, info_ok = valid.step(0)  # the fallback admits the oldest request: same transition as slot 0
    assert r_bad == pytest.approx(r_ok - 5.0)
    assert info_bad["invalid_action"] and not info_ok["invalid_action"]


def test_slots_are_in_arrival_order_and_hide_realised_sizes():
    env = gym.make("hermes_env/Scheduling-v0", overrides=SHORT)
    obs, info = env.reset(seed=1)
    cands = env.unwrapped.candidates
    assert len(cands) >= 2
    assert [r.seq for r in cands] == sorted(r.seq for r in cands)
    from hermes_env.envs.features import REQUEST_BASE_FEATURES

    assert not any("output" in f or "service_time" in f for f in REQUEST_BASE_FEATURES)


def test_graph_observation_describes_each_candidates_pdgraph():
    env = gym.make("hermes_env/Scheduling-v0", overrides=SHORT, graph_observation=True)
    obs, _ = env.reset(seed=1)
    n = int(obs["request_mask"].sum())
    for slot in range(n):
        app = env.unwrapped.candidates[slot].app
        stages = len(app.mix.graph.stages)
        assert obs["graph_node_mask"][slot].sum() == stages
        assert np.allclose(obs["graph_edges"][slot, :stages].sum(axis=1), 1.0)  # each stage's transitions
        current = [s.name for s in app.mix.graph.stages].index(app.current.stage)
        assert obs["graph_nodes"][slot, current, 4] == 1.0
    assert obs["graph_node_mask"][n:].sum() == 0


def test_render_modes():
    env = gym.make("hermes_env/Joint-v0", overrides=SHORT, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert "llm:llama3-8b" in text and "queue" in text
    env = gym.make("hermes_env/Scheduling-v0", overrides=SHORT, render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(10):
        env.step(0)
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and (img < 255).any()


def test_external_choices_in_fcfs_order_reproduce_the_fcfs_simulation():
    cfg = ExperimentConfig.from_yaml(ROOT / "configs" / "experiments" / "small.yaml")
    reference = Simulation(cfg, scheduler="fcfs", seed=5).run()
    sim = Simulation(cfg, scheduler=ExternalScheduler(), seed=5)
    decisions = 0
    while (d := sim.run_until_decision()) is not None:
        waiting = d.queue.waiting
        sim.resolve(min(range(len(waiting)), key=lambda i: (waiting[i].first_enqueued, waiting[i].seq)))
        decisions += 1
    assert decisions > 0
    from hermes_env.sim.metrics import summarise

    assert summarise(sim).rows == reference.rows


def test_prewarm_env_orders_reach_the_backends():
    env = gym.make("hermes_env/Prewarm-v0", overrides=SHORT)
    obs, info = env.reset(seed=0)
    mask = env.unwrapped.action_masks().reshape(-1, 3)
    tools = env.unwrapped.tool_names
    i = next(k for k, m in enumerate(mask) if m[1])  # a backend with a cold instance
    action = np.zeros(len(tools), dtype=np.int64)
    action[i] = 1
    env.step(action)
    assert env.unwrapped.sim.tool_backends[tools[i]].prewarms == 1


def test_example_heuristic_beats_random():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    env = gym.make("hermes_env/Scheduling-v0")
    gittins = np.mean([example.mean_completion_time(env, example.highest_gittins, s) for s in range(3)])
    random = np.mean([example.mean_completion_time(env, example.uniform_random, s) for s in range(3)])
    assert gittins < random


def test_a_scripted_router_reproduces_the_headless_simulation():
    """Placing every request on the least-outstanding candidate, as the agent, gives the run of the
    least_outstanding router, request for request; the mask holds exactly the replicas warm or loading."""
    env = gym.make("hermes_env/Routing-v0", overrides={"workload": {"num_applications": 120}})
    obs, info = env.reset(seed=4)
    base = env.unwrapped
    done, decisions = False, 0
    while not done:
        d = base.decision
        best = min(d.candidates, key=lambda r: (r.outstanding, r.index))
        assert np.flatnonzero(info["action_mask"]).tolist() == sorted(r.index for r in d.candidates)
        assert obs["replicas"][:, 0].tolist() == info["action_mask"].astype(float).tolist()  # the candidate column
        obs, _, terminated, truncated, info = env.step(best.index)
        decisions += 1
        done = terminated or truncated
    from hermes_env.sim.metrics import summarise

    reference = Simulation(base.experiment, scheduler="gittins", router="least_outstanding", seed=base.sim.seed).run()
    assert decisions > 100 and summarise(base.sim).rows == reference.rows


def test_an_autoscaling_agent_that_never_acts_is_the_fixed_autoscaler():
    env = gym.make("hermes_env/Autoscaling-v0", overrides={"workload": {"num_applications": 300}})
    obs, info = env.reset(seed=2)
    base = env.unwrapped
    done, total = False, 0.0
    while not done:
        assert info["decision"] == "scale" and obs["global"][-1] == 1.0
        obs, reward, terminated, truncated, info = env.step(np.zeros(1, dtype=np.int64))
        total += reward
        done = terminated or truncated
    from hermes_env.sim.metrics import summarise

    reference = Simulation(base.experiment, scheduler="gittins", seed=base.sim.seed).run()
    assert summarise(base.sim).rows == reference.rows
    assert info["gpu_seconds"] == pytest.approx(base.sim.engine.now)  # one replica held from start to end
    assert total == pytest.approx(-sum(a.completion - a.arrival for a in base.sim.completed) - info["gpu_seconds"])


def test_every_observation_column_is_documented():
    from hermes_env.envs.features import (
        BACKEND_FEATURES,
        GLOBAL_FEATURES,
        KIND_FEATURES,
        REPLICA_FEATURES,
        REPLICA_KIND_FEATURES,
        REQUEST_BASE_FEATURES,
    )
    from hermes_env.envs.hermes import KV_FEATURES, NODE_FEATURES

    text = (ROOT / "docs" / "environments.md").read_text()
    for names in (REQUEST_BASE_FEATURES, BACKEND_FEATURES, REPLICA_FEATURES, GLOBAL_FEATURES, NODE_FEATURES,
                  KIND_FEATURES, REPLICA_KIND_FEATURES, KV_FEATURES):
        assert [n for n in names if f"`{n}`" not in text] == []
    assert f"`({len(GLOBAL_FEATURES)},)`" in text and f"`(R, {len(REPLICA_FEATURES)})`" in text
    assert f"`kv` `({len(KV_FEATURES)},)`" in text
    for env_id in ENV_IDS:
        assert env_id.split("/")[1] in text
