"""Running a registered policy on the Gymnasium environments: observation and mask in, action out, with
the same choice as in a headless simulation."""

from __future__ import annotations

from typing import Any

import numpy as np

from hermes_env.sim.policies import make_router, make_scheduler


class EnvPolicy:
    """``EnvPolicy("gittins")(env, obs, info) -> action`` on ``Scheduling-v0`` (a scheduler's choice among the
    candidates) or ``Routing-v0`` (a router's replica). Key-ranked schedulers compute each candidate's key
    as the headless simulation does (at the decision rather than at enqueue, the same for every policy here,
    whose keys depend only on the application's stage); select-policies choose among the candidates
    directly. On a disaggregated backend (Routing-v0's split part) the router's replica runs the request
    colocated. The chosen action is always one the mask allows. Prewarm policies and autoscalers act on the
    simulation itself rather than return a choice, so they run headless only."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        self.name, self.kwargs = name, kwargs
        self.policy: Any = None
        self._bound_to: Any = None

    def __call__(self, env: Any, obs: dict, info: dict) -> Any:
        base = env.unwrapped
        if self._bound_to is not base.sim:
            routes = base.controls[0] == "route"
            self.policy = (make_router if routes else make_scheduler)(self.name, **self.kwargs)
            self.policy.bind(base.sim)
            self._bound_to = base.sim
        d = base.decision
        if d is None:
            first = int(np.flatnonzero(info["action_mask"])[0])
            return first if len(base.controls) == 1 else np.array([first, 0])
        now = base.sim.engine.now
        if d.kind == "route":
            backend = base.sim.llm_backends[d.backend]
            index = int(self.policy.route(backend, d.request, d.candidates, now).index)
            return index if len(base.controls) == 1 else np.array([index, 0])  # with a split part: colocated
        candidates = base.candidates
        if hasattr(self.policy, "select"):
            return int(self.policy.select(d.backend, list(candidates), now))
        keys = [self.policy.key(r, now) for r in candidates]
        return int(min(range(len(candidates)), key=lambda i: (keys[i], candidates[i].seq)))
