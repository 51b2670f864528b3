"""The named configs (experiments, clusters, workloads, cost models, bench, train and task configs).

This folder is the one source of them; the wheel installs it as the package ``hermes_env.configs``
(``package-dir`` in pyproject.toml), and :mod:`hermes_env.catalog` finds them there by name.
"""
