# The two commands README.md opens with: `make bench` (the main job) and `make test` (the whole suite).
# Both create or reuse .venv and install what they need; torch==2.13.0 goes in first so that nothing
# pulls a CUDA build of torch from the registry. The [ray] extra pins gymnasium to 1.2.2 (ray[rllib] 2.60's
# pin), the lower end of the supported range; the wheel check installs the core alone, with the newest.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,rl,ray]"
	touch $(STAMP)

.PHONY: install bench test lint benchmarks
install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/hermes-env bench --config configs/bench/default.yaml --out runs/bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The suite on two workers (pytest-xdist), then the wheel a `pip install` user gets, installed without torch
# and used from elsewhere. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup
	bash scripts/check_wheel.sh

benchmarks: $(STAMP)
	$(PY) benchmarks/gittins_lookup.py
	$(PY) benchmarks/simulator_speed.py
	$(PY) benchmarks/env_speed.py
	$(PY) benchmarks/construction.py
	$(PY) benchmarks/engine_mechanisms.py
	$(PY) benchmarks/ray_scaling.py
