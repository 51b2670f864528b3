"""What the speed benchmarks share, written once: their reference workload, a bare event loop over heapq in
plain Python (each event pops the next and pushes one, as the simulator's engine does, so that compiling the
engine does not move the reference it is measured against), and how a child process runs a given checkout's
package (``--against``)."""

from __future__ import annotations

import heapq
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bare_heapq_events(n: int) -> None:
    """Run ``n`` events that do nothing but schedule the next."""
    heap: list = []
    seq = 0

    def noop(now: float, i: int) -> None:
        nonlocal seq
        if i < n:
            seq += 1
            heapq.heappush(heap, (now + 1.0, seq, noop, (i + 1,)))

    heapq.heappush(heap, (0.0, 0, noop, (0,)))
    while heap:
        t, _, fn, args = heapq.heappop(heap)
        fn(t, *args)


def checkout_process(checkout: Path | None, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """The working directory and environment (``env`` with the root first on ``PYTHONPATH``) in which a
    ``python -c`` child imports ``checkout``'s package (None: this one's): ``python -c`` puts the working
    directory first on the path, before ``PYTHONPATH`` and an editable install. Exits if the child would import
    another checkout's package."""
    root = ROOT if checkout is None else checkout.resolve()
    env = {**env, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])}
    found = subprocess.run([sys.executable, "-c", "import hermes_env; print(hermes_env.__file__)"], cwd=root,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).is_relative_to(root):
        sys.exit(f"a child run from {root} imports hermes_env from {found}")
    return root, env
