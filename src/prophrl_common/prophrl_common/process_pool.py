"""Jobs run in spawned worker processes that a terminal's Ctrl-C does not reach.

A Ctrl-C in a terminal sends SIGINT to the whole foreground process group. A worker that is still starting
its interpreter when it arrives dies with a KeyboardInterrupt traceback from inside `site`, before any code of
ours could handle it. Here the workers are spawned with SIGINT blocked: a thread's signal mask survives fork
and exec (dispositions do not), so a Ctrl-C reaching a starting worker waits, and the worker's first act
(`_start_worker`) ignores SIGINT, which discards it, and unblocks it. A worker never sees a Ctrl-C.

The parent keeps its own handler throughout. While its spawning thread blocks SIGINT, the kernel hands a
Ctrl-C to another thread of the process (tqdm's monitor, a torch or ROS thread). A handler that records it
stands in during the spawn, and the Ctrl-C is raised again once the pool exists, so it is never lost: with
SIGINT ignored instead, a Ctrl-C taken by another thread was discarded and the job ran to its end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def _children_start_with_sigint_blocked() -> Iterator[None]:
    """Processes started in the block inherit SIGINT blocked; a Ctrl-C for this process during the block is
    held and raised as the block ends. Outside the main thread, which alone may change handlers, nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one pending for this thread is recorded
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # as the handler in force would have taken it


def _start_worker(initializer: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a Ctrl-C held since the worker started
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
    # The standard library starts the resource tracker with SIGINT blocked and then unblocks it: inside the
    # block below, that would unblock SIGINT before the workers are spawned.
    resource_tracker.ensure_running()
    pool = None
    try:
        with _children_start_with_sigint_blocked():  # a Ctrl-C meanwhile is raised as the block ends
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
