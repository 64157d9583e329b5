# Treasure Hunt: every command sets itself up first (scripts/setup.sh is idempotent).
#   make demo   - the whole pipeline on the embedded default (local Ray, bundled corpus, tiny model)
#   make test   - the default test suite (CPU, a few minutes)
PY := .venv/bin/python
export RAY_AUTH_MODE ?= disabled
# Hub access follows the environment: set HF_HUB_OFFLINE yourself, or it is 1 only when the Hub does
# not answer within 3 s (so a Hub model id works wherever the Hub is reachable, and an offline
# machine fails fast instead of retrying). The embedded default never needs the Hub; tests set 1.
ifndef HF_HUB_OFFLINE
HF_HUB_OFFLINE := $(shell python3 -c "import urllib.request as u; u.urlopen('https://huggingface.co/api/models?limit=1', timeout=3)" >/dev/null 2>&1 && echo 0 || echo 1)
endif
export HF_HUB_OFFLINE
export TOKENIZERS_PARALLELISM ?= false
# A busy 2-core machine can miss Ray's default 30 s raylet registration window.
export RAY_raylet_start_wait_time_s ?= 120

.PHONY: setup demo test test-slow test-all reliability clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) pipelines/full.py --config pipelines/configs/demo.yaml

test: setup
	$(PY) -m pytest -m "not slow" -q --durations=25

test-slow: setup
	$(PY) -m pytest -m "slow" -q

test-all: setup
	$(PY) -m pytest -q

reliability: setup
	$(PY) tests/reliability/run.py

clean:
	rm -rf runs/ .pytest_cache
