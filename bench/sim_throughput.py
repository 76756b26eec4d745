"""Sim step rate, render fps at 128 px, and scripted-expert success per robot/task (no ROS).

    python bench/sim_throughput.py --robot panda_sim ur5e_sim --task lift stack door --seeds 20
"""

import prophrl_common.threads  # noqa: F401 - first: the project's threading setup, before torch loads OpenMP

import sys

from prophrl_sim.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
