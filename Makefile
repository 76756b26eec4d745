# The two commands of the README. Both run scripts/setup.sh first (seconds when nothing changed).
SHELL := /bin/bash
ENV := . ./prophrl.env

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	@$(ENV) && python -m pytest

demo: setup
	@$(ENV) && prophrl demo

bench: setup
	@$(ENV) && python bench/actionchunk_latency.py

clean:
	rm -rf .venv build install log prophrl.env
