"""Jobs run in spawned worker processes that a terminal's Ctrl-C does not reach.

A Ctrl-C in a terminal sends SIGINT to the whole foreground process group. A worker that is still starting
its interpreter when it arrives dies with a KeyboardInterrupt traceback from inside `site`, before any code of
ours could handle it. Here the workers are spawned while SIGINT is ignored: the ignored disposition survives
exec, and CPython installs its KeyboardInterrupt handler only where SIGINT is at its default, so a worker never
sees a Ctrl-C. The parent blocks SIGINT while it is ignored, so its own Ctrl-C stays pending (Linux keeps a blocked
signal pending even when ignored) and arrives as soon as the pool has started; it then terminates the workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Processes started in the block inherit SIGINT ignored; a SIGINT meant for this process waits (blocked)
    until the block ends. Outside the main thread, which alone may change handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_worker(initializer: Callable[[], None] | None) -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # still ignored; its own children start clean
    if initializer is not None:
        initializer()


def run_in_processes(function: Callable[..., Any], jobs: Sequence[tuple], workers: int,
                     initializer: Callable[[], None] | None = None,
                     on_result: Callable[[int], None] | None = None) -> list[Any]:
    """[function(*job) for job in jobs], computed in `workers` spawned processes; results in job order.
    on_result(i) is called in the parent as job i's result arrives. A KeyboardInterrupt or an exception in a
    job terminates the workers and propagates."""
    from multiprocessing import resource_tracker

    context = multiprocessing.get_context("spawn")
    # The resource tracker starts with SIGINT blocked by the standard library, which unblocks it afterwards:
    # started inside the block below, it would let a pending Ctrl-C through while SIGINT is ignored.
    resource_tracker.ensure_running()
    pool = None
    try:
        with _children_ignore_sigint():  # a Ctrl-C pending meanwhile is raised as the block ends
            pool = context.Pool(workers, initializer=_start_worker, initargs=(initializer,))
        pending = [pool.apply_async(function, job) for job in jobs]
        results = []
        for i, result in enumerate(pending):
            results.append(result.get())
            if on_result is not None:
                on_result(i)
        pool.close()
        pool.join()
        return results
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
