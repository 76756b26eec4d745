"""Every test session runs its nodes on a private ROS domain, loopback only, with one OpenMP/torch
thread per process: on a 2-core machine shared by node subprocesses, spinning OpenMP workers of
several processes slow each other down by orders of magnitude."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported here or in a child process

from prophrl_common.testing import isolate_ros_domain  # noqa: E402

isolate_ros_domain()
