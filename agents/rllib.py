"""Distributed training with RLlib (``algorithm: rllib-ppo`` in a train config; the ``[ray]`` extra).

RLlib's PPO on its current API stack trains an MLP with invalid-action masking: the environment is wrapped
in :class:`hermes_env.envs.wrappers.FlatMaskedObservation`, whose ``{"observations", "action_mask"}``
layout is what RLlib's ``ActionMaskingTorchRLModule`` reads, so a masked action is never sampled.
``num_env_runners`` workers sample environments in parallel (on a local Ray, or on the cluster
``RAY_ADDRESS`` names). The checkpoint (``checkpoint/``, with ``hermes_env.json`` beside it, saying which
environment it was trained on) is a scheduler: ``rllib:PATH`` in ``hermes-env simulate`` and ``bench``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401  (registers the environments)
from agents.config import TrainConfig
from hermes_env.envs.features import FeatureBuilder
from hermes_env.envs.wrappers import FlatMaskedObservation
from hermes_env.errors import ConfigError, require
from hermes_env.sim.policies import SchedulingPolicy

ENV_NAME = "hermes_env_masked"
MODULE = ("learner_group", "learner", "rl_module", "default_policy")


def make_masked_env(env_config: dict[str, Any]) -> gym.Env:
    config = dict(env_config)
    env_id = config.pop("env_id")
    return FlatMaskedObservation(gym.make(env_id, **config))


def _ray(num_cpus: int | None = None) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), num_cpus=None if os.environ.get("RAY_ADDRESS") else num_cpus,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def algorithm_config(cfg: TrainConfig) -> Any:
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_masked_env)
    r = cfg.rllib
    return (PPOConfig()
            .environment(ENV_NAME, env_config={"env_id": cfg.env_id, **cfg.env_kwargs})
            .env_runners(num_env_runners=cfg.num_env_runners, num_envs_per_env_runner=1)
            .training(lr=r.get("lr", 3e-4), train_batch_size_per_learner=r.get("train_batch_size", 4000),
                      minibatch_size=r.get("minibatch_size", 256), num_epochs=r.get("num_epochs", 4),
                      gamma=r.get("gamma", 0.995), lambda_=r.get("lambda_", 0.95),
                      entropy_coeff=r.get("entropy_coeff", 0.01))
            .rl_module(rl_module_spec=RLModuleSpec(module_class=ActionMaskingTorchRLModule,
                                                   model_config={"fcnet_hiddens": r.get("fcnet_hiddens", [64, 64])}))
            .debugging(seed=cfg.seed))


def train_rllib(cfg: TrainConfig, out: Path, progress_bar: bool = True) -> Path:
    """Train until ``total_timesteps`` environment steps are sampled; ``curve.csv`` logs each iteration's
    environment steps, wall time, sampling throughput and mean episode return."""
    out.mkdir(parents=True, exist_ok=True)
    _ray(num_cpus=max(cfg.num_env_runners, 1) + 1)
    algo = algorithm_config(cfg).build_algo()
    steps, t0 = 0, time.time()
    with open(out / "curve.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["iteration", "env_steps", "wall_seconds", "env_steps_per_s", "episode_return_mean"])
        iteration = 0
        while steps < cfg.total_timesteps:
            result = algo.train()
            iteration += 1
            runners = result.get("env_runners", {})
            steps = int(runners.get("num_env_steps_sampled_lifetime", steps))
            wall = time.time() - t0
            writer.writerow([iteration, steps, round(wall, 2), round(steps / wall, 1),
                             runners.get("episode_return_mean", "")])
            fh.flush()
            if progress_bar:
                print(f"iteration {iteration}: {steps} env steps, {steps / wall:.0f}/s, return "
                      f"{runners.get('episode_return_mean', float('nan'))}", flush=True)
    path = out / "checkpoint"
    algo.save_to_path(str(path.resolve()))
    (out / "hermes_env.json").write_text(json.dumps({"env_id": cfg.env_id, "env_kwargs": cfg.env_kwargs}, indent=1))
    algo.stop()
    return path


class RLlibScheduler(SchedulingPolicy):
    """A checkpoint of ``rllib-ppo`` as a scheduler: at every decision it sees the observation
    ``Scheduling-v0`` gives (the oldest K waiting requests) and admits the highest-scoring unmasked one."""

    def __init__(self, path: str) -> None:
        from ray.rllib.core.rl_module.rl_module import RLModule

        checkpoint = Path(path)
        meta_path = checkpoint.parent / "hermes_env.json"
        require(meta_path.is_file() and (checkpoint.joinpath(*MODULE)).is_dir(), "scheduler",
                f"{path} is not an rllib-ppo checkpoint (no {meta_path.name} beside it, or no RL module)",
                "give the checkpoint folder written by hermes-env train with algorithm: rllib-ppo")
        meta = json.loads(meta_path.read_text())
        require(meta["env_id"] == "hermes_env/Scheduling-v0", "scheduler", f"{path} was trained on {meta['env_id']}",
                "only Scheduling-v0 checkpoints schedule")
        try:
            self.module = RLModule.from_checkpoint(checkpoint.joinpath(*MODULE))
        except Exception as err:  # a corrupt or foreign checkpoint fails in many ways inside ray
            raise ConfigError("scheduler", f"{path} could not be restored ({type(err).__name__}: {err})",
                              "give a checkpoint written by hermes-env train") from None
        env = gym.make(meta["env_id"], **meta["env_kwargs"]).unwrapped
        self.space, self.slots, self.replica_rows = env.observation_space, env.slots, env.replica_rows
        self.name = f"rllib:{path}"

    def bind(self, sim: Any) -> None:
        self.features = FeatureBuilder(list(sim.backends), self.slots, self.replica_rows)
        self.features.bind(sim)
        require(self.features.n_request_features == self.space["requests"].shape[1], "scheduler",
                f"{self.name} was trained on a cluster with other backends", "evaluate it on the cluster it knows")

    def select(self, backend: str, waiting: list[Any], now: float) -> int:
        if len(waiting) == 1:
            return 0
        obs = self.features.observation(waiting, backend, now, "schedule")
        return masked_greedy_action(self.module, self.space, obs, obs["request_mask"])


def masked_greedy_action(module: Any, space: gym.spaces.Dict, obs: dict, mask: np.ndarray) -> int:
    """The RL module's highest-scoring action among those ``mask`` allows, for the observation ``obs`` of
    ``space`` (flattened, as :class:`FlatMaskedObservation` gives it in training)."""
    import torch
    from gymnasium import spaces

    flat = torch.as_tensor(spaces.flatten(space, obs).astype(np.float32))[None]
    with torch.no_grad():
        out = module.forward_inference({"obs": {"observations": flat,
                                                "action_mask": torch.as_tensor(mask.astype(np.float32))[None]}})
    logits = out["action_dist_inputs"][0].numpy()
    return int(np.argmax(np.where(mask > 0, logits, -np.inf)))


def rllib_scheduler(path: str) -> RLlibScheduler:
    """``rllib:PATH``: a checkpoint folder written by ``hermes-env train`` with ``algorithm: rllib-ppo``."""
    return RLlibScheduler(path)
