"""Helpers for tests that start real nodes in separate processes over DDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence


def isolate_ros_domain(seed: int | None = None) -> int:
    """Put this process (and children it starts) on a private ROS domain on loopback only."""
    domain = 1 + ((os.getpid() if seed is None else seed) % 100)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return domain


class NodeProcess:
    """A child process whose output goes to a temp file, stopped with SIGINT then SIGKILL."""

    def __init__(self, argv: Sequence[str], env: dict | None = None):
        self.argv = list(argv)
        self.log = tempfile.NamedTemporaryFile(prefix="node-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        self.log.close()
        return self.proc.returncode


@contextmanager
def node_process(argv: Sequence[str], env: dict | None = None) -> Iterator[NodeProcess]:
    proc = NodeProcess(argv, env)
    try:
        yield proc
    finally:
        proc.stop()
        os.unlink(proc.log.name)


def python_module_argv(module: str, *ros_args: str) -> list[str]:
    argv = [sys.executable, "-m", module]
    if ros_args:
        argv += ["--ros-args", *ros_args]
    return argv


def spin_until(node, predicate: Callable[[], bool], timeout: float, executor=None) -> bool:
    """Spin `node` until predicate() is true or timeout seconds pass; returns predicate().

    Pass a long-lived executor that already holds the node when timing matters: without one, a
    temporary executor is made for this call (cheap, but not free).
    """
    from rclpy.executors import SingleThreadedExecutor

    own = executor is None
    if own:
        executor = SingleThreadedExecutor()
        executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            executor.spin_once(timeout_sec=0.01)
        return predicate()
    finally:
        if own:
            executor.remove_node(node)
            executor.shutdown()
