"""Reference policies: schedulers, prewarm policies, routers and autoscalers.

Importing the package registers, by name, in the simulator's registry: the schedulers ``sjf``,
``llmsched``, ``edf``, ``bros``, ``calvo`` and ``oracle`` (``fcfs``, ``app_fcfs`` and ``gittins`` are in
the core), the prewarm policies ``keepalive``, ``hybrid``, ``pdgraph`` and ``oracle`` (``none`` and
``always`` are in the core), the routers ``round_robin``, ``random``, ``least_outstanding``, ``least_kv``,
``prefix_affinity``, ``session_sticky`` and ``oracle`` (``shared`` is in the core) and the autoscalers
``keepalive``, ``queue_threshold``, ``pdgraph`` and ``oracle`` (``fixed`` is in the core), the
admission policies ``token_bucket``, ``queue_threshold`` and ``oracle`` (``none`` is in the core), the
migration policies ``llumnix`` and ``oracle`` (``none`` is in the core), the disaggregation policies ``always``,
``distserve`` and ``splitwise`` (``colocated`` is in the core); and, for
every decision kind, the planner families ``rollout:BASE``, ``search:BASE``, ``oracle-rollout:BASE`` and
``oracle-search:BASE`` (:mod:`baselines.planners`). The package
is an entry point of the ``hermes_env.policies`` group, so the simulator and ``hermes-env`` find these
names without an import. ``EnvPolicy`` runs any of them on the Gymnasium environments. This package
depends only on the environment core, never on torch.
"""

from baselines import admission, autoscaling, disagg, migration, planners, prewarm, routing, scheduling
from baselines.adapters import EnvPolicy

__all__ = ["EnvPolicy", "admission", "autoscaling", "disagg", "migration", "planners", "prewarm", "routing",
           "scheduling"]
