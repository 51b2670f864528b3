"""Learned schedulers: MaskablePPO on ``hermes_env/Scheduling-v0`` with a set-structured policy.

Needs the ``[rl]`` extra (torch first, see README). The package announces, through entry points, the
``ppo:PATH`` scheduler family (``agents.scheduler``: a checkpoint evaluated as a scheduler) and the
``hermes-env train`` command (``agents.cli``); importing this package itself imports nothing heavy, so
the environment core and every command that names no learned policy start without torch.
"""

from typing import Any

_LAZY = {"LearnedScheduler": "agents.scheduler", "SetExtractor": "agents.policy", "SetPolicy": "agents.policy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = sorted(_LAZY)
