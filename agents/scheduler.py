"""A trained checkpoint as a scheduler of the simulator: ``ppo:PATH`` in ``hermes-env simulate`` and
``hermes-env bench``, like any reference policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from sb3_contrib import MaskablePPO

from agents.policy import SetExtractor
from hermes_env.envs.features import FeatureBuilder
from hermes_env.errors import require
from hermes_env.sim.policies import SchedulingPolicy, register_scheduler_family


class LearnedScheduler(SchedulingPolicy):
    """At every decision the checkpoint sees the observation ``Scheduling-v0`` would give it (the oldest
    K waiting requests in arrival order, backend and global features) and picks one, deterministically.
    A set policy (:class:`agents.policy.SetExtractor`) scores any number of requests, so when more than K
    wait it scores all of them, as Gittins does, rather than only the oldest K; an ``mlp`` policy is
    bound to its K slots. The cluster must have the backends the checkpoint was trained with."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.model = MaskablePPO.load(path, device="cpu")
        space = self.model.observation_space
        self.slots = space["requests"].shape[0]
        extractor = self.model.policy.features_extractor
        self.scorer = extractor if isinstance(extractor, SetExtractor) else None
        self.name = f"ppo:{path}"

    def bind(self, sim: Any) -> None:
        names = list(sim.backends)
        expected = self.model.observation_space["backends"].shape[0]
        require(len(names) == expected, "scheduler", f"{self.name} was trained on a cluster of {expected} backends, "
                f"this one has {len(names)}", "evaluate it on a cluster with the same backends")
        self.features = FeatureBuilder(names, self.slots)
        self.features.bind(sim)

    def select(self, backend: str, waiting: list[Any], now: float) -> int:
        if len(waiting) == 1:
            return 0
        everyone = self.scorer is not None and len(waiting) > self.slots
        requests, mask = self.features.requests(waiting, now, slots=len(waiting) if everyone else None)
        obs = {"requests": requests, "request_mask": mask, "backends": self.features.backends(backend, now),
               "global": self.features.global_features(now, False)}
        if everyone:  # the deterministic action is the highest slot score
            with torch.no_grad():
                tensors = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
                return int(self.scorer(tensors)[0, : len(waiting)].argmax())
        action, _ = self.model.predict(obs, action_masks=mask.astype(bool), deterministic=True)
        return int(np.asarray(action).item())


SHIPPED = Path(__file__).resolve().parent / "checkpoints"


@register_scheduler_family("ppo")
def learned_scheduler(path: str) -> LearnedScheduler:
    """``ppo:PATH`` loads a checkpoint file; ``ppo:NAME`` a checkpoint shipped in agents/checkpoints."""
    if not Path(path).exists() and (SHIPPED / f"{path}.zip").is_file():
        path = str(SHIPPED / f"{path}.zip")
    require(Path(path).is_file() or Path(f"{path}.zip").is_file(), "scheduler", f"no checkpoint {path!r}",
            f"give a model.zip path or one of {sorted(p.stem for p in SHIPPED.glob('*.zip'))}")
    return LearnedScheduler(path)
