"""Training MaskablePPO on the hermes_env environments: ``hermes-env train --config NAME`` with
``algorithm: maskable-ppo`` (the default; ``rllib-ppo`` trains with RLlib instead, :mod:`agents.rllib`).

A train config names the environment and its keyword arguments, the policy (``set``: the set-structured
policy of :mod:`agents.policy` over the request slots; ``replica-set``: the same over the replica rows, for
``Routing-v0``; ``mlp``: sb3-contrib's ``MultiInputPolicy`` out of the box), PPO's
hyperparameters, the number of vectorised environments, the step budget and the seed. Output, under
``--out``: ``model.zip``, ``checkpoints/``, ``tb/`` (TensorBoard), ``monitor/`` (episode returns),
``curve.csv`` (the deterministic policy's task objective, or mean completion time, during training),
``best.zip`` (the best evaluation's model) and ``config.yaml``. Runs on CPU unless ``device: auto`` finds a GPU.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import yaml
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import hermes_env  # noqa: F401  (registers the environments)
from agents.config import TrainConfig
from agents.policy import SetPolicy


def imitate(model: MaskablePPO, cfg: TrainConfig) -> float:
    """Behaviour cloning: fit the policy's slot choices to a reference scheduler's on ``imitate_episodes``
    episodes (cross-entropy over the masked slots), so that PPO starts from the reference and improves on
    it. Returns the final training accuracy."""
    from baselines import EnvPolicy

    teacher = EnvPolicy(cfg.imitate)
    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    observations: list[dict[str, np.ndarray]] = []
    actions, masks = [], []
    for episode in range(cfg.imitate_episodes):
        obs, info = env.reset(seed=10_000 + episode)
        done = False
        while not done:
            action = teacher(env, obs, info)
            if info["action_mask"].sum() > 1:  # only real choices teach anything
                observations.append(obs)
                actions.append(action)
                masks.append(info["action_mask"])
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    env.close()
    policy = model.policy
    batch = {k: torch.as_tensor(np.stack([o[k] for o in observations]), device=policy.device) for k in observations[0]}
    target = torch.as_tensor(np.array(actions), device=policy.device)
    mask = np.stack(masks)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    accuracy = 0.0
    for _ in range(cfg.imitate_epochs):
        for idx in torch.randperm(len(target)).split(256):
            dist = policy.get_distribution({k: v[idx] for k, v in batch.items()}, action_masks=mask[idx.numpy()])
            loss = -dist.log_prob(target[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            dist = policy.get_distribution(batch, action_masks=mask)
            accuracy = float((dist.distribution.probs.argmax(dim=1) == target).float().mean())
    return accuracy


def evaluate(model: MaskablePPO, cfg: TrainConfig) -> float:
    """The deterministic policy's score over episodes on ``cfg.eval_seeds``: the task's objective when the
    config names a task, else the mean application completion time."""
    from hermes_env.tasks import Task, episode, episode_objective

    env = gym.make(cfg.env_id, **cfg.env_kwargs).unwrapped
    task = Task.from_yaml(cfg.task) if cfg.task else None
    scores = []
    for seed in cfg.eval_seeds:
        summary = episode(env, lambda obs, mask: model.predict(obs, action_masks=mask, deterministic=True)[0], seed)
        scores.append(episode_objective(task, env, summary)[0] if task else summary["jct"]["mean"])
    env.close()
    return float(np.mean(scores))


class CurveCallback(BaseCallback):
    """Evaluates the deterministic policy every ``eval_every`` steps, appends to ``curve.csv`` and keeps the
    best so far as ``best.zip``."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        super().__init__()
        self.cfg, self.path, self.next = cfg, out / "curve.csv", 0
        self.best_path, self.best = out / "best.zip", float("inf")
        self.t0 = time.time()
        with open(self.path, "w", newline="") as fh:
            csv.writer(fh).writerow(["timesteps", "wall_seconds", cfg.task and "objective" or "mean_completion_time"])

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next:
            self.next += self.cfg.eval_every
            score = evaluate(self.model, self.cfg)
            self.logger.record("eval/score", score)
            if score < self.best:  # model selection on the config's eval seeds, never a task's held-out ones
                self.best = score
                self.model.save(self.best_path)
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerow([self.num_timesteps, round(time.time() - self.t0, 1), score])
        return True


def train(cfg: TrainConfig, out: Path, progress_bar: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({**asdict(cfg), "eval_seeds": list(cfg.eval_seeds)}))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    torch.set_num_threads(cfg.torch_threads)
    vec = make_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=cfg.seed, env_kwargs=cfg.env_kwargs,
                       monitor_dir=str(out / "monitor"),
                       vec_env_cls=SubprocVecEnv if cfg.vec_env == "subproc" else DummyVecEnv)
    policy = "MultiInputPolicy" if cfg.policy == "mlp" else SetPolicy
    items = {"features_extractor_kwargs": {"items": "replicas"}} if cfg.policy == "replica-set" else None
    kwargs = {"policy_kwargs": items} if items else {}
    model = MaskablePPO(policy, vec, seed=cfg.seed, device=device, tensorboard_log=str(out / "tb"), verbose=0,
                        **kwargs, **cfg.ppo)
    if cfg.imitate:
        accuracy = imitate(model, cfg)
        (out / "imitation.txt").write_text(f"cloned {cfg.imitate}: training accuracy {accuracy:.3f}\n")
    curve = CurveCallback(cfg, out)
    callbacks = CallbackList([
        CheckpointCallback(save_freq=max(cfg.eval_every // cfg.n_envs, 1), save_path=str(out / "checkpoints")),
        curve,
    ])
    model.learn(total_timesteps=cfg.total_timesteps, callback=callbacks, progress_bar=progress_bar)
    path = out / "model.zip"
    model.save(path)
    vec.close()
    final = evaluate(model, cfg)
    with open(out / "curve.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([model.num_timesteps, "", final])
    if final < curve.best:
        model.save(curve.best_path)
    return path
