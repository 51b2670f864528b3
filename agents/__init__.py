"""Learned schedulers: MaskablePPO on ``hermes_env/Scheduling-v0`` with a set-structured policy.

Needs the ``[rl]`` extra (torch first, see README). Importing the package registers the ``ppo:PATH``
scheduler family (a checkpoint evaluated as a scheduler) and the ``hermes-env train`` command, both found
through entry points, so the environment core never imports torch.
"""

from agents.policy import SetExtractor, SetPolicy
from agents.scheduler import LearnedScheduler

__all__ = ["LearnedScheduler", "SetExtractor", "SetPolicy"]
