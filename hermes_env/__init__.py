"""hermes_env: scheduling LLM applications on a GPU cluster, as a Gymnasium environment."""

__version__ = "0.1.0"
