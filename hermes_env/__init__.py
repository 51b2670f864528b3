"""hermes_env: scheduling LLM applications on a GPU cluster, as a Gymnasium environment.

Importing the package registers the environments ``hermes_env/Scheduling-v0``, ``hermes_env/Prewarm-v0``,
``hermes_env/Routing-v0``, ``hermes_env/Autoscaling-v0`` and ``hermes_env/Joint-v0``. ``compiled_modules()``
lists the modules compiled by mypyc in this build (docs/performance.md).
"""

__version__ = "0.3.0.dev0"

from hermes_env._mypyc import choose_build as _choose_build  # noqa: E402
from hermes_env._mypyc import compiled_modules as compiled_modules  # noqa: E402

_choose_build()  # the compiled modules, or the Python source (HERMES_ENV_PURE=1, or stale compiled modules)

from hermes_env import envs as envs  # noqa: E402  (registers the environments)
