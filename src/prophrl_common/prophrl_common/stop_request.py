"""A stop request that a signal handler may make.

A Python signal handler runs in the main thread between two of its bytecodes, possibly while that
thread holds a lock: inside threading.Event.set() or .wait(), for instance. A handler that takes the
same lock again (an Event.set() in the handler) never returns; the process then hangs and handles
no later signal, SIGTERM included. StopRequest takes no lock: request() stores one attribute, and
wait() polls it.
"""

from __future__ import annotations

import time


class StopRequest:
    """Set once, by a signal handler or any thread; read by the loop that has to stop."""

    def __init__(self, poll_s: float = 0.01):
        self._reason: str | None = None
        self.poll_s = poll_s

    def request(self, reason: str) -> None:
        """Ask for the stop; the first reason given is the one kept."""
        if self._reason is None:
            self._reason = reason

    def is_set(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str:
        return self._reason or ""

    def wait(self, timeout_s: float) -> bool:
        """True once a stop is requested, False after timeout_s seconds without one."""
        deadline = time.monotonic() + timeout_s
        while self._reason is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self.poll_s, remaining))
        return True
