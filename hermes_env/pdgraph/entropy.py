"""Structural uncertainty of an application (the signal LLMSched schedules by).

The remaining structure of an application is the random path it will take through the state space
(which branches, how many loop iterations) together with the fan-out width of each stage on it. For
a Markov chain the entropy of the path splits by the chain rule into a sum over states of
``P(visit) * H(what is decided there)``: the width drawn when the stage is issued and the branch
taken when it completes. That per-stage share is the information a stage reveals by running, so the
stage with the largest share is the one whose execution reduces the uncertainty most.
"""

from __future__ import annotations

import numpy as np

from hermes_env.pdgraph.graph import StateSpace


def _bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _decided_at(space: StateSpace, state: int, include_width: bool) -> float:
    h = _bits(space.probabilities[state])
    fanout = space.stage(state).fanout
    if include_width and fanout is not None:
        h += _bits(fanout.points()[1])
    return h


def visit_probabilities(space: StateSpace, state: int) -> np.ndarray:
    """P(the application passes through each state), starting at ``state``."""
    visit = np.zeros(len(space))
    visit[state] = 1.0
    for s in range(state, len(space)):  # states are in topological order
        if visit[s]:
            for t, p in zip(space.successors[s], space.probabilities[s], strict=True):
                if t != StateSpace.END:
                    visit[t] += visit[s] * p
    return visit


def uncertainty_reduction(space: StateSpace, state: int, width_known: bool = False) -> dict[str, float]:
    """Expected bits resolved by each stage from ``state`` on (summing to the structure entropy)."""
    visit = visit_probabilities(space, state)
    out: dict[str, float] = {}
    for s in np.nonzero(visit)[0]:
        name = space.stage(int(s)).name
        h = visit[s] * _decided_at(space, int(s), include_width=not (width_known and s == state))
        out[name] = out.get(name, 0.0) + h
    return out


def structure_entropy(space: StateSpace, state: int, width_known: bool = False) -> float:
    return float(sum(uncertainty_reduction(space, state, width_known).values()))
