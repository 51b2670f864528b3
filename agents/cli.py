"""The ``hermes-env train`` command's parser. It imports nothing heavy: torch, stable-baselines3 and the
training code load only when the command runs, so ``hermes-env --help`` and every other command start
without them."""

from __future__ import annotations

import argparse
from pathlib import Path

from hermes_env.errors import ConfigError
from hermes_env.validation import as_integer, check_output


def add_train_command(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train MaskablePPO on a hermes_env environment (needs the [rl] extra)")
    t.add_argument("--config", required=True, help="train config: a name (configs/train) or a YAML path")
    t.add_argument("--out", type=Path, required=True, help="output directory")
    t.add_argument("--timesteps", type=int, help="override total_timesteps")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from agents.config import TrainConfig

    check_output(args.out, "--out", folder=True)
    cfg = TrainConfig.from_yaml(args.config)
    if args.timesteps is not None:
        cfg.total_timesteps = as_integer(args.timesteps, "--timesteps", low=1)
    extra = "ray" if cfg.algorithm == "rllib-ppo" else "rl"
    try:
        if cfg.algorithm == "rllib-ppo":
            from agents.rllib import train_rllib as trainer
        else:
            from agents.train import train as trainer
    except ImportError as err:  # through hermes-env's one error path, as every command's bad input
        raise ConfigError("algorithm", f"{cfg.algorithm} training is unavailable ({err})",
                          f"pip install 'hermes_env[{extra}]', torch first (see README)") from None
    path = trainer(cfg, args.out, progress_bar=not args.quiet)
    family = "rllib" if cfg.algorithm == "rllib-ppo" else "ppo"
    if cfg.task and family == "ppo":  # a scheduler runs headless (any number of waiting requests)
        spec = f"ppo:{path}" if cfg.env_id == "hermes_env/Scheduling-v0" else f"agent:{path}"
        print(f"wrote {path}; evaluate it with: hermes-env evaluate --task {cfg.task} --policy {spec}")
    else:
        print(f"wrote {path}; evaluate it with: hermes-env bench --config default "
              f"--schedulers fcfs,gittins,{family}:{path} --prewarm none --out runs/{family}")
    return 0
