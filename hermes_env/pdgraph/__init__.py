"""The application model: PDGraphs and the maths on them.

Build a :class:`PDGraph` from Python or YAML (or take one from :mod:`hermes_env.pdgraph.library`),
sample realisations from it, and analyse it with :class:`DemandModel` under a cost model.
"""

from hermes_env.pdgraph.cost import CostModel, LinearTokenCost, TokenCost
from hermes_env.pdgraph.demand import DemandModel, GittinsTable, NextUse, Progress
from hermes_env.pdgraph.distributions import (
    Deterministic,
    Discrete,
    Distribution,
    Exponential,
    Gamma,
    Histogram,
    HyperExponential,
    LogNormal,
    distribution_from_spec,
)
from hermes_env.pdgraph.fit import fit_pdgraph
from hermes_env.pdgraph.gittins import gittins_index, gittins_index_batch, gittins_quantum
from hermes_env.pdgraph.graph import END, PDGraph, Stage, StateSpace, Transition
from hermes_env.pdgraph.lattice import DiscreteDistribution
from hermes_env.pdgraph.sampling import Realisation, StageRun, sample_realisation, sample_remaining_demand

__all__ = [
    "END", "CostModel", "Deterministic", "DemandModel", "Discrete", "DiscreteDistribution", "Distribution",
    "Exponential", "Gamma", "GittinsTable", "Histogram", "HyperExponential", "LinearTokenCost", "LogNormal",
    "NextUse", "PDGraph", "Progress", "Realisation", "Stage", "StageRun", "StateSpace", "TokenCost",
    "Transition", "distribution_from_spec", "fit_pdgraph", "gittins_index", "gittins_index_batch",
    "gittins_quantum", "sample_realisation", "sample_remaining_demand",
]
