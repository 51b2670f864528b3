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
	HERMES_ENV_COMPILE=0 $(PY) -m pip install --quiet -e ".[dev,rl,ray]"
	$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires']))" \
	  | xargs $(PY) -m pip install --quiet  # the build's own requirements (mypyc), for make compiled
	touch $(STAMP)

# The simulator's hot modules (setup.py's COMPILED) compiled by mypyc from their one Python source, in place
# beside it, and built again whenever one of them changes (docs/performance.md). HERMES_ENV_COMPILE=0 make test
# tests the pure build instead; exported, so that the tests and the wheel check know which build they test.
HERMES_ENV_COMPILE ?= 1
export HERMES_ENV_COMPILE
COMPILED_SOURCES := $(shell sed -n 's/^    "\(hermes_env\/.*\.py\)",$$/\1/p' setup.py)
COMPILED_STAMP := $(VENV)/.compiled-$(HERMES_ENV_COMPILE)

$(COMPILED_STAMP): $(STAMP) setup.py hermes_env/_mypyc.py $(COMPILED_SOURCES)
	rm -f $(VENV)/.compiled-* *__mypyc.*.so hermes_env/*__mypyc.*.so $(patsubst %.py,%.*.so,$(COMPILED_SOURCES))
	if [ "$(HERMES_ENV_COMPILE)" != 0 ]; then $(PY) setup.py --quiet build_ext --inplace > /dev/null; fi
	touch $@

.PHONY: install compiled bench test lint benchmarks conformance
install: $(STAMP)
compiled: $(COMPILED_STAMP)

bench: $(COMPILED_STAMP)
	$(VENV)/bin/hermes-env bench --config configs/bench/default.yaml --out runs/bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The suite on two workers (pytest-xdist), then the wheel a `pip install` user gets, installed without torch
# and used from elsewhere. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: lint $(COMPILED_STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup
	bash scripts/check_wheel.sh

benchmarks: $(COMPILED_STAMP)
	$(PY) benchmarks/gittins_lookup.py
	$(PY) benchmarks/simulator_speed.py
	$(PY) benchmarks/env_speed.py
	$(PY) benchmarks/construction.py
	$(PY) benchmarks/engine_mechanisms.py
	$(PY) benchmarks/ray_scaling.py

# Decision-level conformance with vLLM's own V1 scheduler (issue 23; not part of make test, which replays the
# committed recordings). Each release gets a virtual environment of its own holding the vLLM wheel without its GPU
# dependencies (only the scheduler and KV-cache manager run, on the CPU build of torch) and records the golden
# streams into tests/conformance/vllm-VERSION.json; the releases in VLLM_ASYNC (those whose engine schedules
# asynchronously by default on a GPU) also into vllm-VERSION-async.json with the AsyncScheduler.
VLLM_RELEASES ?= 0.11.0 0.34.0
VLLM_ASYNC ?= 0.34.0

.venv-vllm-%/.stamp: scripts/conformance/requirements.txt
	python3 -m venv .venv-vllm-$*
	.venv-vllm-$*/bin/pip install --quiet torch==2.13.0
	.venv-vllm-$*/bin/pip install --quiet --no-deps vllm==$*
	.venv-vllm-$*/bin/pip install --quiet -r scripts/conformance/requirements.txt
	touch $@

conformance: $(STAMP) $(foreach v,$(VLLM_RELEASES),.venv-vllm-$(v)/.stamp)
	for v in $(VLLM_RELEASES); do \
	  PYTHONHASHSEED=0 .venv-vllm-$$v/bin/python scripts/conformance/record_vllm.py \
	    --out tests/conformance/vllm-$$v.json || exit 1; \
	done
	for v in $(VLLM_ASYNC); do \
	  PYTHONHASHSEED=0 .venv-vllm-$$v/bin/python scripts/conformance/record_vllm.py --async-scheduling \
	    --out tests/conformance/vllm-$$v-async.json || exit 1; \
	done
	$(PY) -m pytest tests/test_conformance.py
