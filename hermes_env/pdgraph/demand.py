"""Remaining demand, Gittins index and next-use forecasts of an application, from its PDGraph.

:class:`DemandModel` precomputes, for every state of the application's state space, the lattice pmf
of the demand still to come, so that a query at run time is a lookup or a single convolution:

* ``remaining_demand(progress)``: the distribution of the remaining *work* in seconds of service,
  summed over stages and parallel copies (the quantity size-based schedulers rank by);
* ``gittins_index(progress)``: the Gittins index of that distribution, from a table precomputed over
  states, pending fan-out copies and a grid of attained service (microseconds per lookup);
* ``next_use(progress, backend)``: when the application will next issue a request to ``backend``,
  in seconds of its own service time (no queueing), and the probability it ever will;
* ``structure_entropy`` / ``uncertainty_reduction``: LLMSched's uncertainty signals (see ``entropy``).

A :class:`Progress` says where an application is: its state (stage and loop counters), how many
copies of the current stage are still unfinished (``None`` before the stage has been issued: its
fan-out width is then still random), and the service attained by one of those copies.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from hermes_env.errors import require
from hermes_env.pdgraph import entropy, tablecache
from hermes_env.pdgraph.cost import CostModel
from hermes_env.pdgraph.distributions import Distribution
from hermes_env.pdgraph.gittins import gittins_index_batch
from hermes_env.pdgraph.graph import PDGraph, Stage, StateSpace
from hermes_env.pdgraph.lattice import DiscreteDistribution, Lattice

TAIL = 1e-6  # per-copy tail probability left beyond the lattice horizon
MAX_TOKEN_POINTS = 512


@dataclass(frozen=True)
class Progress:
    """Where an application is. Build one by stage name with :meth:`DemandModel.progress`."""

    state: int
    attained: float = 0.0
    copies_pending: int | None = None


@dataclass(frozen=True)
class NextUse:
    """When an application next needs ``backend``: ``probability`` that it ever does, and the
    distribution of the time until then (seconds of the application's own service), given it does."""

    backend: str
    probability: float
    time: DiscreteDistribution | None
    _within: dict[float, float] = field(default_factory=dict, init=False, compare=False, repr=False)

    def within(self, horizon: float) -> float:
        """P(the next use comes within ``horizon`` seconds of service); kept per horizon, since forecasts
        ask the same few horizons of the same (cached) next uses at every decision."""
        if horizon not in self._within:
            self._within[horizon] = 0.0 if self.time is None else self.probability * float(self.time.cdf(horizon))
        return self._within[horizon]


def token_points(dist: Distribution, growth: float = 0.0, max_points: int = MAX_TOKEN_POINTS) -> tuple[
        np.ndarray, np.ndarray]:
    """The integer token counts a stage samples (``max(1, round(X)) + growth``) as at most
    ``max_points`` points: runs of consecutive counts of about equal probability are merged at
    their conditional mean, which keeps the mean exact and the CDF within 1/max_points."""
    if dist.is_discrete:
        v, p = dist.points()
        k = np.maximum(1, np.rint(v))
        values, inverse = np.unique(k, return_inverse=True)
        probs = np.bincount(inverse, p)
    else:
        kmax = max(2, int(np.ceil(dist.ppf(1 - TAIL / 10))) + 1)
        values = np.arange(1, kmax + 1, dtype=float)
        cdf = dist.cdf(values + 0.5)
        probs = np.diff(np.concatenate([[0.0], cdf]))
        probs[-1] += 1.0 - cdf[-1]
    if len(values) > max_points:
        group = np.minimum((np.cumsum(probs) - probs / 2) * max_points, max_points - 1).astype(np.int64)
        mass = np.bincount(group, probs)
        keep = mass > 0
        values = np.bincount(group, probs * values)[keep] / mass[keep]
        probs = mass[keep]
    return values + round(growth), probs / probs.sum()


class DemandModel:
    """The precomputed demand analysis of one PDGraph under one cost model.

    ``bins`` sets the lattice resolution; the horizon is chosen so that every stage copy keeps at
    most ``1e-6`` of its mass beyond it (reported per state as ``overflow``).
    """

    def __init__(self, graph: PDGraph, cost: CostModel | None = None, bins: int = 8192,
                 attained_grid: int = 32) -> None:
        require(bins >= 64, "bins", f"must be >= 64, got {bins}")
        require(attained_grid >= 1, "attained_grid", f"must be >= 1, got {attained_grid}")
        if cost is None:
            llm = [s.name for s in graph.stages if s.is_llm]
            require(not llm, "cost", f"is needed: stages {llm} run on LLMs and their tokens must be priced")
        self.graph, self.cost = graph, cost
        self.space: StateSpace = graph.state_space()
        self.attained_grid_size = attained_grid
        self._first_use: dict[str, list[np.ndarray]] = {}
        self._remaining: dict[tuple[int, int | None], DiscreteDistribution] = {}
        self._next_use: dict[tuple[int, int | None, str], NextUse] = {}
        self._copy_points = {}  # _points_key -> (values, probs) in seconds
        self._uppers: dict[tuple[int, int], float] = {}
        for s in range(len(self.space)):
            self._copy_points_of(s)
        # the horizon and the Gittins table depend on the graph and the cost model alone: kept on disk
        self._table_key = tablecache.table_key(graph, cost, bins=bins, attained_grid=attained_grid)
        stored = tablecache.load(self._table_key, "horizon") or {}
        dt = stored.get("dt")
        dt = float(dt) if dt is not None and dt.shape == () and dt.dtype.kind == "f" and 0 < dt < np.inf else None
        if dt is None:
            dt = self._tight_horizon() / (bins - 1)
            tablecache.store(self._table_key, "horizon", {"dt": np.float64(dt)})
        self.lattice = Lattice(dt, bins)
        self._build()

    # -- construction -----------------------------------------------------------------------
    def _points_key(self, state: int) -> tuple[int, int]:
        """What a copy's service distribution depends on: its stage, and its loop iteration only when the
        prompt grows with it (so a 60-iteration loop of one stage is discretised once, not 60 times)."""
        stage = self.space.stage(state)
        growth = stage.is_llm and stage.prompt_growth_per_iteration
        return int(self.space.stage_of[state]), int(self.space.iteration_of[state]) if growth else 0

    def _copy_points_of(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        key = self._points_key(state)
        if key not in self._copy_points:
            stage = self.space.stage(state)
            if stage.is_llm:
                pv, pp = token_points(stage.prompt_tokens, stage.prompt_growth_per_iteration * key[1])
                ov, op = token_points(stage.output_tokens)
                secs = np.asarray(self.cost.llm_service_time(stage.backend, pv[:, None], ov[None, :]), dtype=float)
                require(bool(np.all(np.isfinite(secs)) and np.all(secs >= 0)), f"cost.backends.{stage.backend}",
                        "gives negative or non-finite service times")
                self._copy_points[key] = (secs.ravel(), (pp[:, None] * op[None, :]).ravel())
            else:
                self._copy_points[key] = None  # continuous: discretised straight from the CDF
        return self._copy_points[key]

    def _copy_upper(self, state: int) -> float:
        key = self._points_key(state)
        if key not in self._uppers:
            self._uppers[key] = self._copy_upper_of(state)
        return self._uppers[key]

    def _copy_upper_of(self, state: int) -> float:
        points = self._copy_points_of(state)
        if points is None:
            return self.space.stage(state).service_time.ppf(1 - TAIL)
        values, probs = points
        order = np.argsort(values)
        cum = np.cumsum(probs[order])
        return float(values[order][min(np.searchsorted(cum, 1 - TAIL), len(cum) - 1)])

    def _horizon(self) -> float:
        """Longest path of per-copy upper quantiles (times the widest fan-out)."""
        upper = np.zeros(len(self.space))
        for s in range(len(self.space) - 1, -1, -1):
            stage = self.space.stage(s)
            width = 1 if stage.fanout is None else float(stage.fanout.points()[0].max())
            rest = max((upper[t] for t in self.space.successors[s] if t != StateSpace.END), default=0.0)
            upper[s] = width * self._copy_upper(s) + rest
        return max(float(upper[0]) * 1.02, 1e-9)

    def _tight_horizon(self, passes: int = 4, bins: int = 1024) -> float:
        """A horizon that every state's remaining demand exceeds with probability at most ``TAIL``.

        The longest path of per-copy upper quantiles (:meth:`_horizon`) is a sure bound but a loose one when
        a path holds many stages (an agent session's ~150: 75,000 s where the demand's 1e-6 quantile is a few
        thousand), and a loose horizon coarsens the lattice that every stage is discretised on. So it is
        tightened on coarse *upper* lattices, on which every distribution stochastically dominates the true
        one: their (1 - TAIL) quantiles are valid horizons, and each pass makes the next lattice finer."""
        horizon = self._horizon()
        for _ in range(passes):
            self.lattice = Lattice(horizon / (bins - 1), bins, upper=True)
            self._build()
            if self.overflow.max() > TAIL:
                break
            upper = max(float(self.lattice.values[np.searchsorted(np.cumsum(f), 1.0 - TAIL)]) for f in self.full_pmf)
            tighter = max(upper * 1.02, 1e-9)
            if tighter >= 0.8 * horizon:
                return min(tighter, horizon)
            horizon = tighter
        return horizon

    def _build(self) -> None:
        lat, space = self.lattice, self.space
        n = len(space)
        self.copy_pmf: list[np.ndarray] = []
        self.stage_pmf: list[np.ndarray] = []
        self.duration_pmf: list[np.ndarray] = []
        copies: dict[tuple[int, int], np.ndarray] = {}  # per _points_key: states that share it share the pmf
        for s in range(n):
            key = self._points_key(s)
            stage = space.stage(s)
            if key not in copies:
                points = self._copy_points_of(s)
                copies[key] = lat.continuous(stage.service_time) if points is None else lat.points(*points)
            copy = copies[key]
            self.copy_pmf.append(copy)
            if stage.fanout is None:
                self.stage_pmf.append(copy)
                self.duration_pmf.append(copy)
            else:
                wv, wp = stage.fanout.points()
                self.stage_pmf.append(sum(p * lat.power(copy, int(w)) for w, p in zip(wv, wp, strict=True)))
                self.duration_pmf.append(lat.max_iid(copy, wv, wp))
        self.after_pmf, self.full_pmf = self._backward(lambda s: self.stage_pmf[s], terminal=lat.delta(0.0))
        self.overflow = np.array([f[-1] for f in self.full_pmf])

    def _backward(self, stage_pmf, terminal: np.ndarray, hit=None) -> tuple[list, list]:  # noqa: ANN001
        """Backward pass over the state space. ``after[s]`` is the pmf of what follows state ``s``
        (a mixture over successors), ``start[s]`` that from the start of ``s``: ``stage_pmf(s)``
        convolved with ``after[s]``, unless ``hit(s)`` gives it directly."""
        lat, space = self.lattice, self.space
        after: list[np.ndarray | None] = [None] * len(space)
        start: list[np.ndarray | None] = [None] * len(space)  # pmf from the start of each state
        for s in range(len(space) - 1, -1, -1):
            mix = np.zeros(lat.n)
            for t, p in zip(space.successors[s], space.probabilities[s], strict=True):
                mix += p * (terminal if t == StateSpace.END else start[t])
            after[s] = mix
            start[s] = hit(s) if hit is not None and hit(s) is not None else lat.convolve(stage_pmf(s), mix)
        return after, start

    # -- progress ---------------------------------------------------------------------------
    def progress(self, stage: str, loops: Mapping[str, int] | None = None, attained: float = 0.0,
                 copies_pending: int | None = None) -> Progress:
        """A validated :class:`Progress` from a stage name and loop counters (``"src->head": n``)."""
        state = self.space.state_id(stage, loops)
        self._check(Progress(state, attained, copies_pending))
        return Progress(state, float(attained), copies_pending)

    def _check(self, p: Progress) -> None:
        require(0 <= p.state < len(self.space), "progress.state", f"must be in [0, {len(self.space)})")
        require(p.attained >= 0, "progress.attained", f"must be >= 0, got {p.attained}")
        if p.copies_pending is None:
            require(p.attained == 0, "progress.attained", "must be 0 before the stage is issued",
                    "give copies_pending once the stage's copies are issued")
        else:
            require(p.copies_pending >= 1, "progress.copies_pending", f"must be >= 1, got {p.copies_pending}")

    def _head(self, p: Progress) -> np.ndarray:
        """Work still to do in the current stage."""
        if p.copies_pending is None:
            return self.stage_pmf[p.state]
        lat, copy = self.lattice, self.copy_pmf[p.state]
        head = lat.residual(copy, p.attained)
        return head if p.copies_pending == 1 else lat.convolve(head, lat.power(copy, p.copies_pending - 1))

    # -- remaining demand -------------------------------------------------------------------
    def remaining_demand_pmf(self, p: Progress) -> np.ndarray:
        if p.copies_pending is None and p.attained == 0:
            return self.full_pmf[p.state]
        self._check(p)
        return self.lattice.convolve(self._head(p), self.after_pmf[p.state])

    def remaining_demand(self, p: Progress) -> DiscreteDistribution:
        """Distribution of the remaining work (seconds), with mean, var, std, quantile, cdf. Queries at
        zero attained service (every waiting request's) are computed once per state and kept."""
        if p.attained == 0:
            key = (p.state, p.copies_pending)
            if key not in self._remaining:
                self._remaining[key] = self.lattice.distribution(self.remaining_demand_pmf(p))
            return self._remaining[key]
        return self.lattice.distribution(self.remaining_demand_pmf(p))

    # -- Gittins ----------------------------------------------------------------------------
    def gittins_index(self, p: Progress, exact: bool = False) -> float:
        """The Gittins index of the remaining demand. The default reads the precomputed table
        (exact at the grid of attained service, the nearest grid point below elsewhere);
        ``exact=True`` computes it from the remaining-demand pmf."""
        if exact:
            pmf = self.remaining_demand_pmf(p)
            return float(gittins_index_batch(self.lattice.values[None], pmf[None], np.zeros(1))[0])
        return self.gittins_table.lookup(p.state, p.attained, p.copies_pending)

    @cached_property
    def gittins_table(self) -> GittinsTable:
        """Built on first use, or read from the table cache (:mod:`~hermes_env.pdgraph.tablecache`)."""
        stored = tablecache.load(self._table_key, "gittins")
        table = None if stored is None else GittinsTable.from_arrays(stored, len(self.space))
        if table is None:
            table = GittinsTable(self)
            tablecache.store(self._table_key, "gittins", table.to_arrays())
        return table

    # -- next use (prewarm signal) ----------------------------------------------------------
    def next_use(self, p: Progress, backend: str) -> NextUse:
        """Time until the application next issues a request to ``backend`` (not counting
        requests of the current stage already issued), measured in its own service time. Queries at
        zero attained service are computed once per state and kept."""
        if p.attained == 0:
            key = (p.state, p.copies_pending, backend)
            if key not in self._next_use:
                self._next_use[key] = self._next_use_of(p, backend)
            return self._next_use[key]
        return self._next_use_of(p, backend)

    def _next_use_of(self, p: Progress, backend: str) -> NextUse:
        self._check(p)
        stage = self.space.stage(p.state)
        if p.copies_pending is None and stage.backend == backend:
            return NextUse(backend, 1.0, self.lattice.distribution(self.lattice.delta(0.0)))
        if backend not in self.graph.backends:  # never used: what the convolutions below give, without them
            return NextUse(backend, 0.0, None)
        lat = self.lattice
        if p.copies_pending is None:
            head = self.duration_pmf[p.state]
        else:
            cdf = np.cumsum(lat.residual(self.copy_pmf[p.state], p.attained))
            cdf *= np.cumsum(self.copy_pmf[p.state]) ** (p.copies_pending - 1)
            head = np.diff(np.concatenate([[0.0], np.minimum(cdf, 1.0)]))
        pmf = lat.convolve(head, self._first_use_after(backend)[p.state])
        mass = min(float(pmf.sum()), 1.0)  # a sum of probabilities may round past 1
        return NextUse(backend, mass, lat.distribution(pmf) if mass > 1e-12 else None)

    def _first_use_after(self, backend: str) -> list[np.ndarray]:
        """Per state, the defective pmf of the time from the end of the state's own stage until
        the first request to ``backend`` (mass short of 1: it may never come)."""
        if backend not in self._first_use:
            zero = self.lattice.delta(0.0)
            self._first_use[backend], _ = self._backward(
                lambda s: self.duration_pmf[s], terminal=np.zeros(self.lattice.n),
                hit=lambda s: zero if self.space.stage(s).backend == backend else None)
        return self._first_use[backend]

    # -- structural uncertainty (LLMSched) --------------------------------------------------
    def structure_entropy(self, p: Progress) -> float:
        """Entropy (bits) of the application's remaining path: branches, loop exits, fan-out widths."""
        return entropy.structure_entropy(self.space, p.state, width_known=p.copies_pending is not None)

    def uncertainty_reduction(self, p: Progress) -> dict[str, float]:
        """Bits of remaining-structure entropy that each stage resolves in expectation (they sum
        to :meth:`structure_entropy`); the largest is the most uncertainty-reducing stage."""
        return entropy.uncertainty_reduction(self.space, p.state, width_known=p.copies_pending is not None)

    def stage_of(self, p: Progress) -> Stage:
        return self.space.stage(p.state)


class GittinsTable:
    """Gittins indices precomputed over (state, pending copies, attained service).

    Row ``0`` of a state is the stage before it is issued (random fan-out width); row ``k`` has
    ``k`` copies pending, one of which has attained service on the state's attained grid (the
    quantiles 0, 1/G, ..., of one copy's demand). Lookups are pure Python: a list index and a
    bisection.
    """

    def __init__(self, model: DemandModel) -> None:
        lat, space = model.lattice, model.space
        levels = np.linspace(0.0, 0.97, model.attained_grid_size)
        self.grids: list[list[float]] = []
        self.rows: list[list[list[float]]] = []
        for s in range(len(space)):
            copy = model.copy_pmf[s]
            grid = np.unique(np.concatenate([[0.0], lat.distribution(copy).quantile(levels[1:])]))
            grid = grid[grid < lat.values[np.nonzero(copy)[0][-1]]]
            stage = space.stage(s)
            kmax = 1 if stage.fanout is None else int(stage.fanout.points()[0].max())
            fresh = model.full_pmf[s]
            fresh_index = float(gittins_index_batch(lat.values[None], fresh[None], np.zeros(1))[0])
            rows = [[fresh_index] * len(grid)]
            residuals = np.stack([lat.residual(copy, a) for a in grid])
            tail = model.after_pmf[s]
            for _ in range(kmax):  # k pending copies: one partly served, k - 1 fresh, then the rest
                pmfs = lat.convolve_many(residuals, tail)
                values = np.broadcast_to(lat.values, pmfs.shape)
                rows.append(gittins_index_batch(values, pmfs, np.zeros(len(grid))).tolist())
                tail = lat.convolve(tail, copy)
            self.grids.append(grid.tolist())
            self.rows.append(rows)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The table as flat arrays (for the table cache): per state its grid size and row count, then every
        grid and every row, concatenated."""
        return {"grid_sizes": np.array([len(g) for g in self.grids], dtype=np.int64),
                "row_counts": np.array([len(r) for r in self.rows], dtype=np.int64),
                "grids": np.array([x for g in self.grids for x in g], dtype=float),
                "rows": np.array([x for rows in self.rows for row in rows for x in row], dtype=float)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], states: int) -> GittinsTable | None:
        """The table :meth:`to_arrays` gave, or None when the arrays do not describe ``states`` states."""
        names = ("grid_sizes", "row_counts", "grids", "rows")
        if [arrays[n].dtype.kind if n in arrays else "" for n in names] != ["i", "i", "f", "f"]:
            return None
        sizes, counts, grids, rows = (arrays[n].ravel().tolist() for n in names)
        if not (len(sizes) == len(counts) == states and min(sizes + counts, default=1) >= 1 and
                sum(sizes) == len(grids) and sum(g * c for g, c in zip(sizes, counts, strict=True)) == len(rows)):
            return None
        table = cls.__new__(cls)
        table.grids, table.rows = [], []
        i = j = 0
        for g, c in zip(sizes, counts, strict=True):
            table.grids.append(grids[i:i + g])
            table.rows.append([rows[j + k * g:j + (k + 1) * g] for k in range(c)])
            i, j = i + g, j + g * c
        return table

    def lookup(self, state: int, attained: float = 0.0, copies_pending: int | None = None) -> float:
        rows = self.rows[state]
        k = 0 if copies_pending is None else copies_pending
        if k >= len(rows):
            raise ValueError(f"state {state} has at most {len(rows) - 1} copies pending, got {copies_pending}")
        j = bisect_right(self.grids[state], attained) - 1
        return rows[k][j]
