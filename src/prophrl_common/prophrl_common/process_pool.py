"""Jobs run in spawned worker processes that a terminal's Ctrl-C does not reach.

A Ctrl-C in a terminal sends SIGINT to the whole foreground process group. A worker that is still starting
its interpreter when it arrives dies with a KeyboardInterrupt traceback from inside `site`, before any code of
ours could handle it. Here the workers are spawned while the parent blocks SIGINT: they inherit the blocked
mask across exec, so a Ctrl-C stays pending in them until their initializer ignores it (which discards it).
The parent receives its own pending Ctrl-C as soon as it unblocks, and terminates the workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block (processes started in it inherit the mask); one that
    arrives meanwhile is delivered when the block ends."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_worker(initializer: Callable[[], None] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if initializer is not None:
        initializer()


def run_in_processes(function: Callable[..., Any], jobs: Sequence[tuple], workers: int,
                     initializer: Callable[[], None] | None = None,
                     on_result: Callable[[int], None] | None = None) -> list[Any]:
    """[function(*job) for job in jobs], computed in `workers` spawned processes; results in job order.
    on_result(i) is called in the parent as job i's result arrives. A KeyboardInterrupt or an exception in a
    job terminates the workers and propagates."""
    context = multiprocessing.get_context("spawn")
    with _sigint_blocked():
        pool = context.Pool(workers, initializer=_start_worker, initargs=(initializer,))
    try:
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
        pool.terminate()
        pool.join()
