# The two commands of the README. Both run scripts/setup.sh first (seconds when nothing changed).
SHELL := /bin/bash
ENV := . ./prophrl.env

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

# The suite on TEST_WORKERS pytest-xdist workers; tests that share a built fixture (a trained policy, a collected
# dataset) stay on one worker (prophrl_common/parallel_suite.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: setup
	@$(ENV) && python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

demo: setup
	@$(ENV) && prophrl demo

bench: setup
	@$(ENV) && python bench/actionchunk_latency.py

clean:
	rm -rf .venv build install log prophrl.env
