"""hermes_env: scheduling LLM applications on a GPU cluster, as a Gymnasium environment.

Importing the package registers the environments ``hermes_env/Scheduling-v0``, ``hermes_env/Prewarm-v0``,
``hermes_env/Routing-v0``, ``hermes_env/Autoscaling-v0`` and ``hermes_env/Joint-v0``.
"""

__version__ = "0.3.0.dev0"

from hermes_env import envs as envs  # noqa: E402  (registers the environments)
