"""Training throughput on the lent GPU machine, CPU against GPU, then a time-boxed run from scratch.

    python scripts/train_on_device.py --out DIR [--minutes 6]

1. MaskablePPO with the set policy on Scheduling-v0 (contended config), 16 environments in subprocesses:
   steps per second with the networks on the CPU and on the GPU (32,768 steps each).
2. Training from scratch on the faster device for ``--minutes``, evaluating the deterministic policy on the
   held-out seeds of configs/train/*.yaml after every 100,000 steps; writes curve.csv and model.zip.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import hermes_env  # noqa: F401
from agents.policy import SetPolicy
from agents.train import TrainConfig, evaluate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "scheduling-contended-scratch.yaml"


def build(cfg: TrainConfig, n_envs: int, device: str) -> MaskablePPO:
    vec = make_vec_env(cfg.env_id, n_envs=n_envs, seed=cfg.seed, env_kwargs=cfg.env_kwargs, vec_env_cls=SubprocVecEnv)
    ppo = dict(cfg.ppo, n_steps=max(cfg.ppo.get("n_steps", 512) * 4 // n_envs, 64))
    return MaskablePPO(SetPolicy, vec, seed=cfg.seed, device=device, verbose=0, **ppo)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--envs", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cfg = TrainConfig.from_yaml(CONFIG)
    speeds = {}
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        model = build(cfg, args.envs, device)
        model.learn(2048)  # warm-up: subprocesses, caches, CUDA context
        t0 = time.time()
        model.learn(32_768, reset_num_timesteps=False)
        speeds[device] = 32_768 / (time.time() - t0)
        model.get_env().close()
        print(f"{device}: {speeds[device]:.0f} steps/s with {args.envs} environments", flush=True)
    best = max(speeds, key=speeds.get)
    model = build(cfg, args.envs, best)
    deadline = time.time() + 60 * args.minutes
    with open(args.out / "curve.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timesteps", "wall_seconds", "mean_completion_time"])
        t0 = time.time()
        writer.writerow([0, 0, evaluate(model, cfg.env_id, cfg.env_kwargs, cfg.eval_seeds)])
        while time.time() < deadline:
            model.learn(100_000, reset_num_timesteps=False)
            jct = evaluate(model, cfg.env_id, cfg.env_kwargs, cfg.eval_seeds)
            writer.writerow([model.num_timesteps, round(time.time() - t0), jct])
            fh.flush()
            print(f"{model.num_timesteps} steps, {time.time() - t0:.0f}s: mean completion time {jct:.3f}", flush=True)
    model.save(args.out / "model.zip")
    (args.out / "speeds.json").write_text(json.dumps({"steps_per_second": speeds, "envs": args.envs,
                                                      "gpu": torch.cuda.get_device_name(0)
                                                      if torch.cuda.is_available() else None}) + "\n")


if __name__ == "__main__":
    main()
