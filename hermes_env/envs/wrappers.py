"""Wrappers for learners that expect other observation layouts than the environments' own."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FlatMaskedObservation(gym.ObservationWrapper):
    """``{"observations": the observation flattened into one float32 vector, "action_mask": the valid
    actions as 0/1 floats}``: the layout RLlib's action-masking RL module reads
    (``ray.rllib.examples.rl_modules.classes.action_masking_rlm``). The environment's own spaces are
    unchanged for everyone else; the mask is ``action_masks()`` of the state the observation describes."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.inner_space = env.observation_space
        flat = spaces.flatten_space(self.inner_space)
        mask = int(np.sum(self._mask_sizes(env.action_space)))
        self.observation_space = spaces.Dict({
            "observations": spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (mask,), np.float32)})

    @staticmethod
    def _mask_sizes(space: spaces.Space) -> list[int]:
        return [int(space.n)] if isinstance(space, spaces.Discrete) else [int(n) for n in space.nvec]

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        return {"observations": spaces.flatten(self.inner_space, observation).astype(np.float32),
                "action_mask": self.env.unwrapped.action_masks().astype(np.float32)}
