"""Running a registered scheduling policy on the Gymnasium environments: observation and mask in,
action out, with the same ranking as in a headless simulation."""

from __future__ import annotations

from typing import Any

import numpy as np

from hermes_env.sim.policies import make_scheduler


class EnvPolicy:
    """``EnvPolicy("gittins")(env, obs, info) -> action`` for ``hermes_env/Scheduling-v0``: the slot of the
    request the named policy would admit among the candidates. Key-ranked policies compute each
    candidate's key as the headless simulation does (at the decision rather than at enqueue, which is the
    same for every policy here, whose keys depend only on the application's stage); select-policies choose
    among the candidates directly. The chosen slot is always one the mask allows."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        self.name = name
        self.policy = make_scheduler(name, **kwargs)
        self._bound_to: Any = None

    def __call__(self, env: Any, obs: dict, info: dict) -> int:
        base = env.unwrapped
        if self._bound_to is not base.sim:
            self.policy.bind(base.sim)
            self._bound_to = base.sim
        candidates = base.candidates
        if not candidates:
            return int(np.flatnonzero(info["action_mask"])[0])
        now = base.sim.engine.now
        if hasattr(self.policy, "select"):
            return int(self.policy.select(base.decision.backend, list(candidates), now))
        keys = [self.policy.key(r, now) for r in candidates]
        return int(min(range(len(candidates)), key=lambda i: (keys[i], candidates[i].seq)))
