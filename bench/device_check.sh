#!/usr/bin/env bash
# The GPU machine check (bench/device_check.py): agreement with the CPU, imagination frames/s, policy latency,
# one RL update. Without CUDA it says so in one line and exits 0. Run from the repository root after `make setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f prophrl.env ]; then . ./prophrl.env; fi
exec python bench/device_check.py "$@"
