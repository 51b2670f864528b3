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
from hermes_env.sim.timeline import TimelineRecorder, draw_timeline

__all__ = ["Application", "Engine", "ExperimentConfig", "PrewarmPolicy", "SchedulingPolicy", "Simulation",
           "TimelineRecorder", "draw_timeline", "make_prewarm", "make_scheduler", "prewarm_names",
           "register_prewarm", "register_scheduler", "scheduler_names"]
