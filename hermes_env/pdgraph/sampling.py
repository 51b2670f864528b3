"""Sampling realisations: the concrete stages and demands of one run of an application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hermes_env._mypyc import mypyc_attr
from hermes_env.pdgraph.cost import CostModel
from hermes_env.pdgraph.graph import Stage, StateSpace


@mypyc_attr(native_class=False)  # frozen: copied and pickled as Python does
@dataclass(frozen=True)
class StageRun:
    """One visit to a stage: ``width`` parallel copies, each with its own demand."""

    state: int
    stage: str
    backend: str
    iteration: int
    prompt_tokens: np.ndarray | None  # int tokens per copy (LLM stages)
    output_tokens: np.ndarray | None
    tool_time: np.ndarray | None  # seconds per copy (non-LLM stages)

    @property
    def width(self) -> int:
        arr = self.tool_time if self.tool_time is not None else self.output_tokens
        return len(arr)  # type: ignore[arg-type]

    def service_times(self, cost: CostModel | None) -> np.ndarray:
        """Seconds of service of each copy (the cost model prices LLM tokens)."""
        if self.tool_time is not None:
            return self.tool_time
        if cost is None:
            raise ValueError(f"stage {self.stage!r} runs on {self.backend}: pricing its tokens needs a cost model")
        prompt, output = self.prompt_tokens, self.output_tokens  # both arrays on an LLM stage (no tool_time)
        return np.asarray(cost.llm_service_time(self.backend, prompt, output), dtype=float)  # type: ignore[arg-type]


@mypyc_attr(native_class=False)  # frozen: copied and pickled as Python does
@dataclass(frozen=True)
class Realisation:
    application: str
    runs: tuple[StageRun, ...]

    def total_demand(self, cost: CostModel | None) -> float:
        """Total service (work) in seconds, summed over stages and parallel copies."""
        return float(sum(r.service_times(cost).sum() for r in self.runs))

    def to_trace(self) -> list[dict[str, Any]]:
        """The trace format that :func:`hermes_env.pdgraph.fit.fit_pdgraph` reads."""
        out = []
        for r in self.runs:
            step: dict[str, Any] = {"stage": r.stage, "backend": r.backend}
            if r.tool_time is not None:
                step["service_time"] = r.tool_time.tolist()
            else:
                step["prompt_tokens"] = r.prompt_tokens.tolist()  # type: ignore[union-attr]
                step["output_tokens"] = r.output_tokens.tolist()  # type: ignore[union-attr]
            out.append(step)
        return out


def sample_tokens(stage: Stage, iteration: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Integer prompt and output tokens (at least 1 each) for ``width`` copies of an LLM stage."""
    growth = int(round(stage.prompt_growth_per_iteration * iteration))
    if width == 1:  # most stages: plain numbers (a scalar draw is the same draw as an array of one; round is rint)
        p = max(int(round(float(stage.prompt_tokens.sample(rng)))), 1) + growth  # type: ignore[union-attr, arg-type]
        o = max(int(round(float(stage.output_tokens.sample(rng)))), 1)  # type: ignore[union-attr, arg-type]
        return np.array([p], dtype=np.int64), np.array([o], dtype=np.int64)
    prompt = np.rint(stage.prompt_tokens.sample(rng, width)).astype(np.int64)  # type: ignore[union-attr]
    output = np.rint(stage.output_tokens.sample(rng, width)).astype(np.int64)  # type: ignore[union-attr]
    np.maximum(prompt, 1, out=prompt)
    np.maximum(output, 1, out=output)
    if growth:
        prompt += growth
    return prompt, output


def sample_width(stage: Stage, rng: np.random.Generator) -> int:
    return 1 if stage.fanout is None else int(stage.fanout.sample(rng))


def sample_stage_run(space: StateSpace, state: int, rng: np.random.Generator, width: int | None = None) -> StageRun:
    stage = space.stage(state)
    iteration = int(space.iteration_of[state])
    width = sample_width(stage, rng) if width is None else width
    if stage.is_llm:
        prompt, output = sample_tokens(stage, iteration, width, rng)
        return StageRun(state, stage.name, stage.backend, iteration, prompt, output, None)
    tool = np.asarray(stage.service_time.sample(rng, width), dtype=float)  # type: ignore[union-attr]
    return StageRun(state, stage.name, stage.backend, iteration, None, None, tool)


def sample_realisation(space: StateSpace, rng: np.random.Generator, start: int = 0) -> Realisation:
    """Walk the state machine from ``start`` (the entry by default) to the end."""
    runs = []
    state = start
    while state != StateSpace.END:
        runs.append(sample_stage_run(space, state, rng))
        state = space.next_state(state, rng)
    return Realisation(space.graph.name, tuple(runs))


def sample_remaining_demand(
    space: StateSpace,
    state: int,
    rng: np.random.Generator,
    cost: CostModel | None,
    attained: float = 0.0,
    copies_pending: int = 1,
    fresh_width: bool = False,
) -> float:
    """One draw of the remaining demand from a progress state, by simulation.

    ``copies_pending`` copies of the current stage are unfinished; one of them has ``attained``
    seconds of service, so its demand is drawn conditioned on exceeding it (by rejection). With
    ``fresh_width`` the stage has not been issued yet and its fan-out width is drawn too. This is
    the Monte Carlo reference that the exact analysis is tested against.
    """
    if fresh_width:
        return sample_realisation(space, rng, start=state).total_demand(cost)
    first = sample_stage_run(space, state, rng, width=1)
    tries = 0
    while (s := float(first.service_times(cost)[0])) <= attained:
        tries += 1
        if tries > 100_000:
            raise ValueError(f"attained={attained} is beyond almost all of stage {first.stage!r}'s demand")
        first = sample_stage_run(space, state, rng, width=1)
    total = s - attained
    if copies_pending > 1:
        total += float(sample_stage_run(space, state, rng, width=copies_pending - 1).service_times(cost).sum())
    nxt = space.next_state(state, rng)
    if nxt != StateSpace.END:
        total += sample_realisation(space, rng, start=nxt).total_demand(cost)
    return total
