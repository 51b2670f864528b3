"""The discrete-event simulator: engine, workloads, the policy interface and metrics."""

from hermes_env.sim.engine import Engine
from hermes_env.sim.policies import (
    PrewarmPolicy,
    SchedulingPolicy,
    make_prewarm,
    make_scheduler,
    prewarm_names,
    register_prewarm,
    register_scheduler,
    scheduler_names,
)
from hermes_env.sim.simulator import Application, ExperimentConfig, Simulation

__all__ = ["Application", "Engine", "ExperimentConfig", "PrewarmPolicy", "SchedulingPolicy", "Simulation",
           "make_prewarm", "make_scheduler", "prewarm_names", "register_prewarm", "register_scheduler",
           "scheduler_names"]
