#!/usr/bin/env bash
# What a user of `pip install hermes_env` gets: build the wheel, install it (core dependencies only, no
# torch) into a fresh virtual environment, and use it from a directory that is not the repository. The wheel
# is compiled (setup.py) unless HERMES_ENV_COMPILE=0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip wheel --no-deps --quiet --wheel-dir "$tmp/dist" "$root"
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet "$tmp"/dist/hermes_env-*.whl
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import gymnasium as gym
import numpy as np

import hermes_env
from hermes_env.catalog import names
from hermes_env.cluster.latency import load_cost_model

for env_id in ("hermes_env/Scheduling-v0", "hermes_env/Prewarm-v0", "hermes_env/Routing-v0",
               "hermes_env/Autoscaling-v0", "hermes_env/Joint-v0"):
    env = gym.make(env_id)
    obs, info = env.reset(seed=0)
    env.step(env.action_space.sample())  # any element of the action space is a legal input
load_cost_model("h100-measured")
for kind in ("experiments", "clusters", "workloads", "costs", "bench", "train", "tasks"):
    assert names(kind), f"no {kind} configs in the wheel"
import os

from hermes_env._mypyc import running_compiled

# make test exports HERMES_ENV_COMPILE=1: the wheel must then hold and run the mypyc-compiled modules
assert os.environ.get("HERMES_ENV_COMPILE") != "1" or running_compiled(), "the wheel runs no compiled module"
print("wheel: environments and named configs work from", os.getcwd(), f"({len(running_compiled())} compiled modules)")
PY
"$tmp/venv/bin/hermes-env" --help > /dev/null
"$tmp/venv/bin/hermes-env" templates > /dev/null
"$tmp/venv/bin/hermes-env" simulate contended --scheduler gittins --prewarm pdgraph --seed 0 --out run > /dev/null
test -s run/applications.csv
"$tmp/venv/bin/hermes-env" tasks | grep sched-contended-mean > /dev/null  # not -q: an early exit of grep breaks the pipe
"$tmp/venv/bin/hermes-env" evaluate --task sched-contended-mean --policy gittins --seeds 2 | grep "normalised score" > /dev/null
if "$tmp/venv/bin/hermes-env" train --config scheduling-contended --out t > /dev/null 2>&1; then
    echo "train ran without the [rl] extra" >&2; exit 1
fi
# a learned policy without the [rl] extra: one line naming the extra and exit 2, not a traceback (issue 19)
status=0
err=$("$tmp/venv/bin/hermes-env" evaluate --task routing-mix-mean --policy agent:routing-mix-mean --seeds 1 2>&1 \
      > /dev/null) || status=$?
if [ "$status" != 2 ] || [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] || ! grep -qF "pip install 'hermes_env[rl]'" <<<"$err"
then
    echo "agent: without the [rl] extra: status $status, $err" >&2; exit 1
fi
echo "wheel: hermes-env simulate, templates, tasks, evaluate and --help work without torch"
