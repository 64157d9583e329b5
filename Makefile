# Treasure Hunt: every command sets itself up first (scripts/setup.sh is idempotent).
#   make demo   - the whole pipeline on the embedded default (local Ray, bundled corpus, tiny model)
#   make test   - the default test suite (CPU, a few minutes)
PY := .venv/bin/python
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# A busy 2-core machine can miss Ray's default 30 s raylet registration window.
export RAY_raylet_start_wait_time_s ?= 120

.PHONY: setup demo test test-slow test-all reliability clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) pipelines/full.py --config pipelines/configs/demo.yaml

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m "slow" -q

test-all: setup
	$(PY) -m pytest -q

reliability: setup
	$(PY) tests/reliability/run.py

clean:
	rm -rf runs/ .pytest_cache
