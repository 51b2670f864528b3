"""The train config (``configs/train/*.yaml``), shared by the trainers: sb3-contrib's MaskablePPO
(``algorithm: maskable-ppo``, :mod:`agents.train`) and RLlib's PPO (``algorithm: rllib-ppo``,
:mod:`agents.rllib`). Reading it imports neither torch nor ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hermes_env.catalog import config_path
from hermes_env.errors import ConfigError, require
from hermes_env.validation import load_yaml

PPO_KEYS = ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "clip_range")
RLLIB_KEYS = ("lr", "train_batch_size", "minibatch_size", "num_epochs", "gamma", "lambda_", "entropy_coeff",
              "fcnet_hiddens")
ALGORITHMS = ("maskable-ppo", "rllib-ppo")


@dataclass
class TrainConfig:
    env_id: str = "hermes_env/Scheduling-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    policy: str = "set"
    n_envs: int = 4
    total_timesteps: int = 200_000
    seed: int = 0
    device: str = "cpu"
    ppo: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 20_000
    eval_seeds: tuple[int, ...] = (1000, 1001, 1002)
    vec_env: str = "dummy"  # dummy: environments in this process (fastest on few cores); subproc: one process each
    torch_threads: int = 1
    imitate: str = ""  # a reference scheduler to clone before PPO (e.g. gittins); "" starts from scratch
    imitate_episodes: int = 20
    imitate_epochs: int = 20
    algorithm: str = "maskable-ppo"
    num_env_runners: int = 2  # rllib-ppo: environment-sampling workers
    rllib: dict[str, Any] = field(default_factory=dict)  # rllib-ppo: PPO settings (RLLIB_KEYS)
    task: str = ""  # a task (hermes-env tasks): its environment, env_kwargs under ours, its objective for the curve

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """A train config by path, or a packaged one by name (``scheduling-contended``)."""
        spec = load_yaml(config_path("train", path, "train"), "train")
        require(isinstance(spec, dict), "train", "must be a mapping")
        unknown = set(spec) - set(cls.__dataclass_fields__) - {"description"}
        if unknown:
            raise ConfigError(f"train.{sorted(unknown)[0]}", "is not a train field",
                              f"use {', '.join(cls.__dataclass_fields__)}")
        spec.pop("description", None)
        cfg = cls(**spec)
        cfg.eval_seeds = tuple(cfg.eval_seeds)
        require(cfg.policy in ("set", "replica-set", "mlp"), "train.policy",
                f"must be 'set', 'replica-set' or 'mlp', got {cfg.policy!r}")
        require(cfg.n_envs >= 1 and cfg.total_timesteps >= 1, "train", "n_envs and total_timesteps must be >= 1")
        bad = set(cfg.ppo) - set(PPO_KEYS)
        if bad:
            raise ConfigError(f"train.ppo.{sorted(bad)[0]}", "is not a PPO setting here", f"use {', '.join(PPO_KEYS)}")
        require(cfg.device in ("cpu", "cuda", "auto"), "train.device", "must be cpu, cuda or auto")
        require(cfg.vec_env in ("dummy", "subproc"), "train.vec_env", "must be dummy or subproc")
        require(cfg.algorithm in ALGORITHMS, "train.algorithm", f"must be one of {ALGORITHMS}, got {cfg.algorithm!r}")
        require(isinstance(cfg.num_env_runners, int) and cfg.num_env_runners >= 0, "train.num_env_runners",
                "must be an integer >= 0")
        bad = set(cfg.rllib) - set(RLLIB_KEYS)
        if bad:
            raise ConfigError(f"train.rllib.{sorted(bad)[0]}", "is not an RLlib PPO setting here",
                              f"use {', '.join(RLLIB_KEYS)}")
        if cfg.task:
            from hermes_env.tasks import Task, task_names

            require(cfg.task in task_names(), "train.task", f"unknown task {cfg.task!r}", f"use one of {task_names()}")
            require("env_id" not in spec, "train.env_id", "is the task's", "leave it out when a task is named")
            task = Task.from_yaml(cfg.task)
            cfg.env_id, cfg.env_kwargs = task.env_id, {**task.env_kwargs, **cfg.env_kwargs}
            require(not set(cfg.eval_seeds) & set(task.eval_seeds), "train.eval_seeds",
                    "include the task's held-out seeds", f"use seeds outside {task.eval_seeds}")
        if cfg.imitate:
            from hermes_env.sim.policies import router_names, scheduler_names

            known = router_names() if cfg.env_id == "hermes_env/Routing-v0" else scheduler_names()
            require(cfg.imitate in known, "train.imitate", f"unknown policy {cfg.imitate!r}", f"use one of {known}")
        return cfg


