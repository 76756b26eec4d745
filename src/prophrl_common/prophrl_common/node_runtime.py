"""The spin-and-clean-up loop every node's main() shares."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor


def spin_until_shutdown(node, executor: Executor | None = None, keep_running: Callable[[], bool] | None = None,
                        spin_timeout_s: float = 0.1) -> int:
    """Spin `node` until Ctrl-C, SIGTERM or context shutdown (or until keep_running() turns false;
    it is called between spins of at most spin_timeout_s), then destroy the node and shut rclpy
    down. Returns 0, for `sys.exit(main())`."""
    executor = executor or SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if keep_running is None:
            executor.spin()
        else:
            while rclpy.ok() and keep_running():
                executor.spin_once(timeout_sec=spin_timeout_s)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
