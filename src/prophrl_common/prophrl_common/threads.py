"""The threading setup of every ProphRL process (CLI verbs, node mains, benches, tests).

PyTorch's OpenMP workers spin-wait for each other between parallel regions. On a 2-core machine
with busy neighbours (other nodes, other jobs) a spinning worker holds a core the others need:
measured 10-27x slower (bench/threads_under_load.py). With OMP_WAIT_POLICY=PASSIVE the workers
sleep instead, which is as fast as spinning when the machine is idle.

OpenMP reads OMP_WAIT_POLICY once, when its runtime is loaded (at `import torch`), so
configure_threads() must run before that: every ProphRL package calls it from its __init__, which
Python runs before any module of the package (console scripts, `python -m`, `prophrl up`'s node
commands, torchrun); benches and the test suite call it before their imports. A value already in
the environment is kept. If torch was imported before it without the variable (an embedding
program), the workers' policy is fixed already and torch gets one thread instead.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
WAIT_POLICY = "PASSIVE"


def configure_threads() -> None:
    """Make OpenMP workers of this process (and its children) sleep rather than spin while they wait."""
    if WAIT_POLICY_ENV in os.environ:
        return
    os.environ[WAIT_POLICY_ENV] = WAIT_POLICY
    if "torch" in sys.modules:   # OpenMP is loaded: too late for the variable in this process
        sys.modules["torch"].set_num_threads(1)
