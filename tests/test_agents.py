import gymnasium as gym
import numpy as np
import pytest
import yaml

pytest.importorskip("sb3_contrib")

from agents.config import TrainConfig  # noqa: E402
from agents.train import evaluate, train  # noqa: E402
from hermes_env.envs.hermes import load_experiment  # noqa: E402
from hermes_env.sim import Simulation  # noqa: E402

pytestmark = pytest.mark.xdist_group("agents")  # its module-scoped set-up runs once, on one worker


# A small config where the admission order matters and the signal is in the features: one server, short
# and long jobs (exponential, means 0.3 s and 3 s) at 99% load; the better policy serves short jobs first.
def _job(name, mean):
    return {"template": {"name": name, "stages": [
        {"name": "s", "backend": "tool:server", "service_time": {"dist": "exponential", "mean": mean}}]}}


EXPERIMENT = {"cluster": {"tool_backends": [{"name": "tool:server", "instances": 1, "capacity": 1}]},
              "workload": {"num_applications": 80, "arrivals": {"process": "poisson", "rate": 0.6},
                           "applications": [_job("short", 0.3), _job("long", 3.0)]}}
ENV_KWARGS = {"config": EXPERIMENT, "reward_scale": 0.1}


def random_mean_jct(seeds):
    env = gym.make("hermes_env/Scheduling-v0", **ENV_KWARGS)
    means = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        obs, info = env.reset(seed=seed, options={"simulation_seed": seed})  # the workloads evaluate() runs
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
            done = term or trunc
        means.append(np.mean([a.completion - a.arrival for a in env.unwrapped.sim.completed]))
    return float(np.mean(means))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    cfg_path = out / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "env_kwargs": ENV_KWARGS, "policy": "set", "n_envs": 2, "total_timesteps": 4000, "seed": 0,
        "ppo": {"n_steps": 256, "batch_size": 128, "n_epochs": 8, "gamma": 0.99, "learning_rate": 0.001},
        "eval_every": 2000, "eval_seeds": [500, 501, 502, 503]}))
    cfg = TrainConfig.from_yaml(cfg_path)
    return cfg, train(cfg, out / "run", progress_bar=False), out / "run"


def test_short_training_completes_and_beats_the_random_policy(trained):
    cfg, path, out = trained
    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(path)
    learned = evaluate(model, cfg)
    curve = [line.split(",") for line in (out / "curve.csv").read_text().splitlines()[1:]]
    initial = float(curve[0][2])  # the untrained policy, evaluated at step 0
    assert learned < random_mean_jct(cfg.eval_seeds)
    assert learned < initial
    assert len(curve) >= 3
    assert any((out / "checkpoints").iterdir()) and any((out / "tb").iterdir())
    assert (out / "best.zip").is_file()


def test_checkpoint_reproduces_its_evaluation_and_runs_as_a_scheduler(trained):
    cfg, path, _ = trained
    from sb3_contrib import MaskablePPO

    a = evaluate(MaskablePPO.load(path), cfg)
    b = evaluate(MaskablePPO.load(path), cfg)
    assert a == b
    experiment = load_experiment(EXPERIMENT, None)
    runs = [Simulation(experiment, scheduler=f"ppo:{path}", seed=3).run() for _ in range(2)]
    assert runs[0].rows == runs[1].rows and len(runs[0].rows) == 80


def test_bad_train_configs_are_named(tmp_path):
    from hermes_env.errors import ConfigError

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"policy": "transformer"}))
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path)
    assert err.value.field == "train.policy"
    path.write_text(yaml.safe_dump({"ppo": {"momentum": 0.9}}))
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path)
    assert err.value.field == "train.ppo.momentum"


def test_set_policy_scores_any_number_of_requests_consistently(trained):
    """The set policy's slot scores do not depend on padding or on slot order, so a checkpoint trained on
    K slots can score every waiting request (what ``ppo:PATH`` does when more than K wait)."""
    import torch
    from sb3_contrib import MaskablePPO

    _, path, _ = trained
    extractor = MaskablePPO.load(path).policy.features_extractor
    space = extractor._observation_space
    k, f = space["requests"].shape
    rng = np.random.default_rng(0)
    shared = {"backends": torch.as_tensor(rng.normal(size=(1, *space["backends"].shape)), dtype=torch.float32),
              "global": torch.as_tensor(rng.normal(size=(1, *space["global"].shape)), dtype=torch.float32)}

    def scores(requests, mask):
        obs = {"requests": torch.as_tensor(requests[None], dtype=torch.float32),
               "request_mask": torch.as_tensor(mask[None]), **shared}
        with torch.no_grad():
            return extractor(obs)[0, : len(mask)].numpy()

    n = k // 2
    requests = rng.normal(size=(3 * k, f)).astype(np.float32)
    padded = np.zeros((k, f), dtype=np.float32)
    padded[:n] = requests[:n]
    mask = np.zeros(k, dtype=np.int8)
    mask[:n] = 1
    np.testing.assert_allclose(scores(padded, mask)[:n], scores(requests[:n], np.ones(n, np.int8)), atol=1e-5)
    order = rng.permutation(3 * k)  # more requests than the K it was trained on, in any order
    everyone = scores(requests, np.ones(3 * k, np.int8))
    np.testing.assert_allclose(scores(requests[order], np.ones(3 * k, np.int8)), everyone[order], atol=1e-5)


def test_replica_set_policy_clones_a_router_on_routing(tmp_path):
    """The set policy over replica rows (``policy: replica-set``) learns prefix affinity's choices from a
    few episodes and only ever routes to a candidate replica."""
    from sb3_contrib import MaskablePPO

    from hermes_env.tasks import episode

    kwargs = {"config": "routing", "overrides": {"workload": {"num_applications": 60}}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "env_id": "hermes_env/Routing-v0", "env_kwargs": kwargs, "policy": "replica-set",
        "imitate": "prefix_affinity", "imitate_episodes": 4, "imitate_epochs": 30, "n_envs": 1,
        "total_timesteps": 64, "ppo": {"n_steps": 64, "batch_size": 64, "n_epochs": 1}, "eval_every": 10_000,
        "eval_seeds": [900]}))
    model_path = train(TrainConfig.from_yaml(path), tmp_path / "run", progress_bar=False)
    accuracy = float((tmp_path / "run" / "imitation.txt").read_text().split()[-1])
    assert accuracy > 0.6  # the untrained policy picks among two to four replicas
    model = MaskablePPO.load(model_path)
    env = gym.make("hermes_env/Routing-v0", **kwargs).unwrapped
    chosen = []

    def act(obs, mask):
        action = int(model.predict(obs, action_masks=mask, deterministic=True)[0])
        chosen.append(bool(mask[action]))
        return action

    episode(env, act, seed=901)
    assert chosen and all(chosen)
