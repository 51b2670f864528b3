"""Trained checkpoints as policies: ``ppo:PATH`` a scheduler of the simulator (``hermes-env simulate`` and
``hermes-env bench``, like any reference policy), ``agent:PATH`` a policy acting in an environment
(``hermes-env evaluate``). Both are announced to the core by entry points (pyproject.toml), so the core never
imports this module unless a name with one of these prefixes is used."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO

from agents.policy import SetExtractor
from hermes_env.envs.features import FeatureBuilder
from hermes_env.errors import ConfigError, require
from hermes_env.sim.policies import SchedulingPolicy, register_scheduler_family


class LearnedScheduler(SchedulingPolicy):
    """At every decision the checkpoint sees the observation ``Scheduling-v0`` would give it (request,
    backend and global features) and picks a request, deterministically. A set policy
    (:class:`agents.policy.SetExtractor`) scores any number of requests, so it scores every waiting one,
    as Gittins ranks every one (its scores do not depend on padding: with at most K waiting this is the
    environment's choice); an ``mlp`` policy sees the oldest K, as in the environment. The cluster must
    have the backends the checkpoint was trained with."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Inference inside the simulator is small and frequent: torch's default thread pool only fights
        # the simulator for the cores (a bench ran 6x slower). HERMES_ENV_TORCH_THREADS overrides.
        torch.set_num_threads(int(os.environ.get("HERMES_ENV_TORCH_THREADS", "1")))
        self.model = load_checkpoint(path, "scheduler")
        space = self.model.observation_space
        self.slots = space["requests"].shape[0]
        extractor = self.model.policy.features_extractor
        self.scorer = extractor if isinstance(extractor, SetExtractor) else None
        self.name = f"ppo:{path}"

    def bind(self, sim: Any) -> None:
        names = list(sim.backends)
        space = self.model.observation_space
        expected = space["backends"].shape[0]
        require(len(names) == expected, "scheduler", f"{self.name} was trained on a cluster of {expected} backends, "
                f"this one has {len(names)}", "evaluate it on a cluster with the same backends")
        rows = space["replicas"].shape[0] if "replicas" in space.spaces else 1
        self.features = FeatureBuilder(names, self.slots, rows)
        self.features.bind(sim)
        probe = self.features.observation([], "", 0.0)
        mismatch = sorted(k for k in space.spaces if k not in probe or probe[k].shape[1:] != space[k].shape[1:])
        require(not mismatch and set(probe) == set(space.spaces), "scheduler",
                f"{self.name} was trained on another observation layout (differs in {mismatch or sorted(probe)})",
                "retrain it with this version of hermes_env (hermes-env train)")

    def select(self, backend: str, waiting: list[Any], now: float) -> int:
        if len(waiting) == 1:
            return 0
        if self.scorer is not None:  # the deterministic action is the highest slot score
            obs = self.features.observation(waiting, backend, now, "schedule", slots=len(waiting))
            with torch.no_grad():
                scores = self.scorer({k: torch.as_tensor(v)[None] for k, v in obs.items()})
            return int(scores[0, : len(waiting)].argmax())
        obs = self.features.observation(waiting, backend, now, "schedule")
        action, _ = self.model.predict(obs, action_masks=obs["request_mask"].astype(bool), deterministic=True)
        return int(np.asarray(action).item())


SHIPPED = Path(__file__).resolve().parent / "checkpoints"


def load_checkpoint(path: str, field: str) -> MaskablePPO:
    try:
        return MaskablePPO.load(path, device="cpu")
    except Exception as err:  # a corrupt or foreign file fails in many ways inside sb3 and zipfile
        raise ConfigError(field, f"{path} is not a readable MaskablePPO checkpoint ({type(err).__name__}: "
                          f"{err})", "give a model.zip written by hermes-env train") from None


def checkpoint_path(path: str, field: str = "scheduler", suffixes: tuple[str, ...] = (".zip",)) -> str:
    """A checkpoint file's path, or the shipped checkpoint of that name (agents/checkpoints/NAME.zip, or
    NAME.pt for a distilled one where ``suffixes`` allows it)."""
    for suffix in suffixes:
        if not Path(path).exists() and (SHIPPED / f"{path}{suffix}").is_file():
            path = str(SHIPPED / f"{path}{suffix}")
    shipped = sorted(p.stem for s in suffixes for p in SHIPPED.glob(f"*{s}"))
    require(Path(path).is_file() or Path(f"{path}.zip").is_file(), field, f"no checkpoint {path!r}",
            f"give a model.zip path or one of {shipped}")
    return path


@register_scheduler_family("ppo")
def learned_scheduler(path: str) -> LearnedScheduler:
    """``ppo:PATH`` loads a checkpoint file; ``ppo:NAME`` a checkpoint shipped in agents/checkpoints."""
    return LearnedScheduler(checkpoint_path(path))


def agent_policy(path: str, env: Any) -> Callable[[Any, np.ndarray], Any]:
    """``agent:PATH`` loads a checkpoint file, ``agent:NAME`` a checkpoint shipped in agents/checkpoints: the
    deterministic action of the checkpoint in ``env``, whose spaces must be those it was trained in (a
    ``.pt`` file: a student distilled from a planner, :func:`agents.distill.distilled_policy`)."""
    file = checkpoint_path(path, "policy", (".zip", ".pt"))
    if file.endswith(".pt"):  # a student distilled from a planner (agents/distill.py)
        from agents.distill import distilled_policy

        return distilled_policy(file, env)
    model = load_checkpoint(file, "policy")
    for kind in ("observation_space", "action_space"):
        require(getattr(model, kind) == getattr(env, kind), "policy", f"agent:{path} was trained with another "
                f"{kind.replace('_', ' ')} than this task's environment has",
                "evaluate it on the task it was trained for, or retrain it with hermes-env train")
    return lambda obs, mask: model.predict(obs, action_masks=mask, deterministic=True)[0]
