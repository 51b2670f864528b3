"""SB3 in one process against RLlib with N environment runners (issue 15): the same PPO on the same task,
learning curves in wall-clock time.

    python benchmarks/learning_curves.py --seconds 150 --runners 16 --out DIR

Task: ``Scheduling-v0`` on the contended cluster with 100-application episodes (as ``ray_scaling.py``).
Both learners get the same PPO settings (2,000 steps a rollout, minibatches of 250, 4 epochs, lr 3e-4,
gamma 0.995, lambda 0.95, entropy 0.01), the same masking of invalid actions and an MLP of 64 x 64 on the
flattened observation (SB3: ``MultiInputPolicy``; RLlib: ``ActionMaskingTorchRLModule``), and the same
wall-clock budget. Each logs its mean episode return against wall time to ``DIR/curve_{sb3,rllib}.csv``;
then each final policy is scored, acting deterministically, by the mean completion time of episodes on
seeds 1000-1004 (beside FCFS's and Gittins's on the same seeds) and the figure goes to
``DIR/learning_curves.png``. Needs the ``[rl]`` and ``[ray]`` extras.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import hermes_env  # noqa: F401  (registers the environments)
from hermes_env.tasks import episode

ENV_ID = "hermes_env/Scheduling-v0"
ENV_KWARGS = {"config": "contended", "overrides": {"workload": {"num_applications": 100}}}
PPO = {"lr": 3e-4, "rollout": 2_000, "minibatch": 250, "epochs": 4, "gamma": 0.995, "lambda": 0.95,
       "entropy": 0.01}
EVAL_SEEDS = range(1000, 1005)


def train_sb3(seconds: float, out: Path):  # noqa: ANN201
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    vec = make_vec_env(ENV_ID, n_envs=1, seed=0, env_kwargs=ENV_KWARGS)
    model = MaskablePPO("MultiInputPolicy", vec, seed=0, verbose=0, learning_rate=PPO["lr"], n_steps=PPO["rollout"],
                        batch_size=PPO["minibatch"], n_epochs=PPO["epochs"], gamma=PPO["gamma"],
                        gae_lambda=PPO["lambda"], ent_coef=PPO["entropy"],
                        policy_kwargs={"net_arch": [64, 64]})
    rows: list[tuple[float, int, float]] = []
    t0 = time.time()

    class WallClock(BaseCallback):
        def _on_step(self) -> bool:
            return time.time() - t0 < seconds

        def _on_rollout_end(self) -> None:
            returns = [e["r"] for e in self.model.ep_info_buffer]
            rows.append((time.time() - t0, self.model.num_timesteps, float(np.mean(returns)) if returns else np.nan))

    model.learn(total_timesteps=10**9, callback=WallClock())
    _write(out / "curve_sb3.csv", rows)
    return lambda obs, mask: model.predict(obs, action_masks=mask, deterministic=True)[0]


def train_rllib(seconds: float, runners: int, out: Path):  # noqa: ANN201
    from agents.config import TrainConfig
    from agents.rllib import _ray, algorithm_config, masked_greedy_action

    cfg = TrainConfig(env_kwargs=ENV_KWARGS, algorithm="rllib-ppo", num_env_runners=runners,
                      rllib={"lr": PPO["lr"], "train_batch_size": PPO["rollout"], "minibatch_size": PPO["minibatch"],
                             "num_epochs": PPO["epochs"], "gamma": PPO["gamma"], "lambda_": PPO["lambda"],
                             "entropy_coeff": PPO["entropy"], "fcnet_hiddens": [64, 64]})
    _ray(num_cpus=runners + 1)
    t0 = time.time()  # from the algorithm's build: starting the runners is part of RLlib's cost
    algo = algorithm_config(cfg).build_algo()
    rows = []
    while time.time() - t0 < seconds:
        runner = algo.train().get("env_runners", {})
        rows.append((time.time() - t0, int(runner.get("num_env_steps_sampled_lifetime", 0)),
                     float(runner.get("episode_return_mean", np.nan))))
    _write(out / "curve_rllib.csv", rows)
    module = algo.get_module()
    space = gym.make(ENV_ID, **ENV_KWARGS).observation_space
    return lambda obs, mask: masked_greedy_action(module, space, obs, mask)


def _write(path: Path, rows: list[tuple[float, int, float]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["wall_seconds", "env_steps", "episode_return_mean"])
        writer.writerows((round(w, 2), s, round(r, 3)) for w, s, r in rows)


def mean_completion(act) -> tuple[float, float]:  # noqa: ANN001
    """Mean completion time (and its standard error) of ``act(obs, mask)``, or of the heuristic it names,
    acting on the evaluation seeds."""
    env = gym.make(ENV_ID, **ENV_KWARGS).unwrapped
    if isinstance(act, str):
        from baselines import EnvPolicy

        policy = EnvPolicy(act)
        act = lambda obs, mask: policy(env, obs, {"action_mask": mask})  # noqa: E731
    means = [episode(env, act, seed)["jct"]["mean"] for seed in EVAL_SEEDS]
    return float(np.mean(means)), float(np.std(means, ddof=1) / np.sqrt(len(means)))


def plot(out: Path, runners: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, label in (("sb3", "SB3 MaskablePPO, 1 process"), ("rllib", f"RLlib PPO, {runners} env runners")):
        rows = list(csv.DictReader(open(out / f"curve_{name}.csv")))
        ax.plot([float(r["wall_seconds"]) for r in rows], [float(r["episode_return_mean"]) for r in rows], label=label)
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("mean episode return")
    ax.set_title("Scheduling-v0, contended, 100-application episodes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="wall-clock budget of each learner")
    parser.add_argument("--runners", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/learning_curves"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scores = {"SB3, 1 process": mean_completion(train_sb3(args.seconds, args.out)),
              f"RLlib, {args.runners} runners": mean_completion(train_rllib(args.seconds, args.runners, args.out))}
    scores |= {name: mean_completion(name) for name in ("fcfs", "gittins")}
    plot(args.out, args.runners)
    for name in ("sb3", "rllib"):
        rows = list(csv.DictReader(open(args.out / f"curve_{name}.csv")))
        if not rows:
            print(f"{name:5s}: no update finished within {args.seconds:g} s")
            continue
        last = rows[-1]
        print(f"{name:5s}: {len(rows)} updates, {last['env_steps']} env steps in {last['wall_seconds']} s "
              f"({int(last['env_steps']) / float(last['wall_seconds']):.0f}/s), last mean return "
              f"{last['episode_return_mean']}")
    print(f"mean completion time over seeds {EVAL_SEEDS.start}-{EVAL_SEEDS.stop - 1} (+- standard error):")
    for name, (mean, se) in scores.items():
        print(f"  {name:22s} {mean:.3f} +- {se:.3f} s")


if __name__ == "__main__":
    main()
