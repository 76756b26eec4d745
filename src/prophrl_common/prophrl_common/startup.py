"""Start-up handshake: every node says when it is ready; clients wait for that, within one timeout.

A node is ready once it is constructed (lifecycle nodes: configured and activated when they
autostart) and about to spin, so its services and actions answer from then on. node_runtime
announces it: the node's fully qualified name on READY_TOPIC (std_msgs/String, reliable,
transient local: a client that subscribes later still gets it), and an info line "ready".

Clients (the collector before it calls the sim, `prophrl collect`, `prophrl up`, the trainer node)
wait with ReadyWatcher for at most startup_timeout_s(): PROPHRL_STARTUP_TIMEOUT_S in the
environment, default DEFAULT_STARTUP_TIMEOUT_S. A first start on a cold machine (MuJoCo, numba,
torch imports; a first sim reset) takes tens of seconds, more beside busy neighbours.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, Iterable

from prophrl_common.config_io import ConfigError

READY_TOPIC = "/prophrl/ready"
STARTUP_TIMEOUT_ENV = "PROPHRL_STARTUP_TIMEOUT_S"
DEFAULT_STARTUP_TIMEOUT_S = 180.0


class StartupTimeout(RuntimeError):
    """A node did not come up within the start-up timeout (or exited before it did)."""


def startup_timeout_s() -> float:
    """How long a client waits for a peer node to come up: $PROPHRL_STARTUP_TIMEOUT_S (seconds) or the default."""
    text = os.environ.get(STARTUP_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_STARTUP_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{STARTUP_TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return value


def not_ready_message(missing: Iterable[str], timeout_s: float, waiting_for: str = "") -> str:
    """One line naming the nodes that did not come up, and how to wait longer."""
    missing = list(missing)
    who = f"{waiting_for}: " if waiting_for else ""
    return (f"{who}node{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not come up within {timeout_s:g} s "
            f"(no ready announcement on {READY_TOPIC}; set {STARTUP_TIMEOUT_ENV} to wait longer)")


def _qos(depth: int):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def announce_ready(node):
    """Publish that `node` is ready; keep the returned publisher alive as long as the node runs."""
    from std_msgs.msg import String

    publisher = node.create_publisher(String, READY_TOPIC, _qos(1))
    publisher.publish(String(data=node.get_fully_qualified_name()))
    node.get_logger().info("ready")
    return publisher


def _matches(wanted: str, announced: str) -> bool:
    """'/sim' matches the node /sim exactly; 'judge' (no leading slash) matches it in any namespace."""
    if wanted.startswith("/"):
        return announced == wanted
    return announced.rsplit("/", 1)[-1] == wanted


class ReadyWatcher:
    """Collects ready announcements on `node` (from its creation on, and latched earlier ones)."""

    def __init__(self, node, callback_group=None):
        from std_msgs.msg import String

        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._subscription = node.create_subscription(String, READY_TOPIC, self._on_ready, _qos(100),
                                                      callback_group=callback_group)

    def _on_ready(self, msg) -> None:
        with self._lock:
            self._announced.add(msg.data)

    def is_ready(self, name: str) -> bool:
        with self._lock:
            return any(_matches(name, announced) for announced in self._announced)

    def missing(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if not self.is_ready(name)]

    def wait(self, names: Iterable[str], timeout_s: float | None = None, *,
             spin_once: Callable[[float], None] | None = None, check: Callable[[], None] | None = None,
             waiting_for: str = "") -> None:
        """Block until every node in `names` is ready, or raise StartupTimeout naming those that are not.

        spin_once(timeout_s): spins the watcher's node when nothing else does (e.g. executor.spin_once);
        without it the node must be spun by another thread. check(): called every poll; it may raise
        (e.g. StartupTimeout for a node process that exited). waiting_for: who waits, for the message."""
        names = list(names)
        timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            missing = self.missing(names)
            if not missing:
                return
            if check is not None:
                check()
            if time.monotonic() >= deadline:
                raise StartupTimeout(not_ready_message(missing, timeout_s, waiting_for))
            if spin_once is not None:
                spin_once(min(0.1, max(0.0, deadline - time.monotonic())))
            else:
                time.sleep(0.05)
