"""The Gymnasium environments and their registration.

``import hermes_env`` registers ``hermes_env/Scheduling-v0``, ``hermes_env/Prewarm-v0``,
``hermes_env/Routing-v0``, ``hermes_env/Autoscaling-v0``, ``hermes_env/KVCache-v0`` and
``hermes_env/Joint-v0``; without an import,
``gym.make("hermes_env:hermes_env/Scheduling-v0")`` imports the package first (gymnasium's module-prefix
convention).
"""

from gymnasium.envs.registration import register, registry

from hermes_env.envs.hermes import (
    AutoscalingEnv,
    HermesEnv,
    JointEnv,
    KVCacheEnv,
    PrewarmEnv,
    RoutingEnv,
    SchedulingEnv,
)

ENV_IDS = {
    "hermes_env/Scheduling-v0": "hermes_env.envs.hermes:SchedulingEnv",
    "hermes_env/Prewarm-v0": "hermes_env.envs.hermes:PrewarmEnv",
    "hermes_env/Routing-v0": "hermes_env.envs.hermes:RoutingEnv",
    "hermes_env/Autoscaling-v0": "hermes_env.envs.hermes:AutoscalingEnv",
    "hermes_env/Joint-v0": "hermes_env.envs.hermes:JointEnv",
    "hermes_env/KVCache-v0": "hermes_env.envs.hermes:KVCacheEnv",
}


def register_envs() -> None:
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=entry_point, disable_env_checker=False)


register_envs()

__all__ = ["ENV_IDS", "AutoscalingEnv", "HermesEnv", "JointEnv", "KVCacheEnv", "PrewarmEnv", "RoutingEnv",
           "SchedulingEnv", "register_envs"]
