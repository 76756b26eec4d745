"""The time a node measures its timeouts and pacing with: sim time on /clock, else the steady clock."""

from __future__ import annotations

import time


def uses_sim_time(node) -> bool:
    return bool(node.get_parameter("use_sim_time").value)


def node_seconds(node) -> float:
    """Seconds on `node`'s ROS clock when it runs with use_sim_time (the sim's /clock: a sim slowed down by
    a loaded machine slows every timeout with it), else time.monotonic() (immune to wall-clock jumps)."""
    if uses_sim_time(node):
        return node.get_clock().now().nanoseconds * 1e-9
    return time.monotonic()
