"""Pictures of the cluster state: text (``ansi``) and an RGB array (``rgb_array``), drawn with numpy
alone so that rendering needs nothing beyond the environment core."""

from __future__ import annotations

from typing import Any

import numpy as np

from hermes_env.cluster.tool import COLD, WARM, WARMING, ToolBackend

STATE_NAMES = {COLD: "cold", WARMING: "warming", WARM: "warm"}
COLOURS = {COLD: (70, 110, 200), WARMING: (240, 170, 40), WARM: (220, 60, 50)}


def render_ansi(sim: Any, decision: Any) -> str:
    now = sim.engine.now
    lines = [f"t={now:9.3f}s  in system {sim.in_system}  completed {len(sim.completed)}/"
             f"{sim.config.workload.num_applications}"
             + (f"  deciding: {decision.kind} {decision.backend}" if decision is not None else "")]
    for name, b in sim.backends.items():
        if isinstance(b, ToolBackend):
            states = " ".join(f"{STATE_NAMES[i.state]}({i.busy}/{b.cfg.capacity})" for i in b.instances)
            lines.append(f"  {name:24s} queue {len(b.queue):4d}  {states}")
        else:
            reps = " ".join(f"[batch {r._batch():3d} kv {r.kv_used / r.capacity:5.1%}]" for r in b.replicas)
            lines.append(f"  {name:24s} queue {len(b.queue):4d}  {reps}")
    done = sim.completed[-5:]
    if done:
        lines.append("  recent completions: " + ", ".join(f"#{a.id} {a.template} {a.completion - a.arrival:.2f}s"
                                                       for a in done))
    return "\n".join(lines) + "\n"


def render_rgb(sim: Any, width: int = 480, row: int = 28) -> np.ndarray:
    """One row per backend: a grey bar for its queue (one pixel column per waiting request, up to 160),
    then a square per instance or replica coloured by state (cold blue, warming orange, warm red; replica
    squares filled by batch occupancy); below, a timeline of the last 100 completion times as bars."""
    backends = list(sim.backends.values())
    height = row * len(backends) + 80
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    for k, b in enumerate(backends):
        y = k * row + 4
        queue = min(len(b.queue), 160)
        img[y:y + row - 8, 4:4 + queue] = (120, 120, 120)
        x = 170
        if isinstance(b, ToolBackend):
            for inst in b.instances[:24]:
                img[y:y + row - 8, x:x + row - 8] = COLOURS[inst.state]
                x += row - 4
        else:
            for rep in b.replicas[:24]:
                fill = int((row - 8) * min(rep._batch() / rep.max_batch, 1.0))
                img[y:y + row - 8, x:x + row - 8] = (200, 230, 200)
                img[y + row - 8 - fill:y + row - 8, x:x + row - 8] = (40, 150, 60)
                x += row - 4
    times = [a.completion - a.arrival for a in sim.completed[-100:]]
    if times:
        top, base = row * len(backends) + 8, height - 4
        scale = (base - top) / max(times)
        for i, t in enumerate(times):
            x = 4 + i * ((width - 8) // 100)
            img[int(base - t * scale):base, x:x + max(1, (width - 8) // 100 - 1)] = (90, 60, 160)
    return img
