"""The main() every node shares: start, announce ready, spin, stop cleanly on Ctrl-C / SIGTERM.

run_node() owns the process's signals. Before the node is ready, the first SIGINT/SIGTERM interrupts
the start-up (KeyboardInterrupt, caught here); after that every SIGINT/SIGTERM only asks the spin
loop to stop. So the signals a terminal and `ros2 launch` send on Ctrl-C (SIGINT to the whole
process group, then launch's own SIGINT, later SIGTERM) never land in the middle of the teardown:
the node stops spinning, runs its before_destroy hook, lets in-flight callbacks finish, is
destroyed, and the process exits 0 without a traceback.

When run_node returns, SIGINT and SIGTERM are ignored: the process is on its way out, and the
interpreter's finalisation (torch, DDS; seconds on a busy machine) must not be turned into a death
by signal when launch's SIGTERM arrives during it. SIGKILL still ends it.

SIGUSR1 prints every thread's Python stack to stderr (`kill -USR1 <pid>`: where a node that does
not answer or does not exit is waiting); the node goes on.

Exit codes: 0 after a stop (signal, context shutdown or keep_running() turning false; exit_code()
when given), 2 when the node cannot start (construction raised, or a lifecycle node with `autostart`
failed to configure or activate; one line on stderr / in the node's log).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import traceback
from typing import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from prophrl_common.config_io import ConfigError
from prophrl_common.startup import announce_ready
from prophrl_common.stop_request import StopRequest

EXIT_CANNOT_START = 2


class _Signals:
    """SIGINT/SIGTERM: KeyboardInterrupt once while starting, afterwards a stop request (StopRequest:
    the handler takes no lock, so a signal landing inside another's handling cannot deadlock it)."""

    def __init__(self):
        self.stop = StopRequest()
        self.started = False
        self._interrupted = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.stop.request(f"signal {signum}")
        if not self.started and not self._interrupted:
            self._interrupted = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @staticmethod
    def ignore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _shutdown_executor(executor: Executor) -> None:
    """executor.shutdown() once the callbacks already handed to its worker threads have run.

    rclpy's Executor.shutdown() means to wait for running callbacks but does not (it tests its
    shutdown flag after setting it), and destroys its guard condition at once; a callback still in
    a MultiThreadedExecutor's thread pool then fails ("cannot use Destroyable because destruction
    was requested", printed as "exception was never retrieved"). Draining the pool first (its
    `_executor`, a concurrent.futures.ThreadPoolExecutor) avoids that."""
    pool = getattr(executor, "_executor", None)
    if pool is not None:
        pool.shutdown(wait=True)
    executor.shutdown()


def shutdown_rclpy(context=None) -> None:
    """rclpy.try_shutdown() for a process that owns SIGINT/SIGTERM (rclpy.init with SignalHandlerOptions.NO).

    Shutting the default context down also runs rclpy's uninstall_signal_handlers(), which sets SIGINT
    and SIGTERM to the handler rclpy saved when it installed its own, and only then, seeing that the
    handler it replaced was not its own, puts that one back. With no rclpy handler installed, the
    saved one is the default action: for those few instructions a SIGTERM kills the process by signal
    (exit -15) instead of reaching this process's handler. Here the handlers stay untouched."""
    rclpy.try_shutdown(context=context, uninstall_handlers=False)


def _program_name() -> str:
    return sys.argv[0].rsplit("/", 1)[-1].removesuffix(".py") or "node"


def _autostart(node) -> bool:
    """Configure and activate a lifecycle node that has autostart set; False when a transition failed."""
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

    if not isinstance(node, LifecycleNode) or not getattr(node, "autostart", False):
        return True
    for transition in (node.trigger_configure, node.trigger_activate):
        if transition() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().error(f"failed to {transition.__name__.removeprefix('trigger_')} (see above); exiting")
            return False
    return True


def run_node(make_node: Callable[[], object], args: list[str] | None = None, *,
             executor: Callable[[object], Executor] | None = None,
             keep_running: Callable[[object], bool] | None = None,
             spin_timeout_s: float | Callable[[object], float] = 0.1,
             before_destroy: Callable[[object], None] | None = None,
             on_callback_error: Callable[[object, str], None] | None = None,
             exit_code: Callable[[object], int] | None = None) -> int:
    """Run one node in this process until it is asked to stop; returns the process exit code.

    make_node(): constructs the node (after rclpy.init). executor(node): makes its executor (default
    single-threaded). keep_running(node): checked between spins of at most spin_timeout_s (seconds,
    or a function of the node); the node stops when it turns false. before_destroy(node): last words
    of a constructed node (e.g. a hold command, a flushed bag, a worker thread told to stop), before
    in-flight callbacks are awaited and the node is destroyed. on_callback_error(node, traceback):
    called for an exception raised by a callback, after which spinning goes on (without it, the
    exception ends the process with its traceback: a bug). exit_code(node): the code of a clean
    stop (default 0)."""
    from prophrl_common.threads import configure_threads

    configure_threads()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=sys.argv if args is None else args, signal_handler_options=SignalHandlerOptions.NO)
    signals = _Signals()
    node = spinner = None
    try:
        try:
            node = make_node()
            if not _autostart(node):
                signals.started = True
                return EXIT_CANNOT_START
            spinner = executor(node) if executor is not None else SingleThreadedExecutor()
            spinner.add_node(node)
            ready_publisher = announce_ready(node)  # noqa: F841 - keeps the latched announcement alive
            signals.started = True
        except Exception as exc:  # noqa: BLE001 - bad parameters or files: one clear line, no traceback
            signals.started = True
            kind = "" if isinstance(exc, ConfigError) else f"{type(exc).__name__}: "
            print(f"{_program_name()}: error: {kind}{exc}", file=sys.stderr, flush=True)
            return EXIT_CANNOT_START
        timeout_s = spin_timeout_s(node) if callable(spin_timeout_s) else spin_timeout_s
        while not signals.stop.is_set() and rclpy.ok() and (keep_running is None or keep_running(node)):
            try:
                spinner.spin_once(timeout_sec=timeout_s)
            except ExternalShutdownException:
                break
            except Exception:  # noqa: BLE001
                if on_callback_error is None:
                    raise
                on_callback_error(node, traceback.format_exc())
        return exit_code(node) if exit_code is not None else 0
    except KeyboardInterrupt:  # a signal during start-up (at most one is raised)
        return 0
    finally:
        signals.started = True   # from here on a signal only (re)requests the stop
        try:
            if node is not None and before_destroy is not None:
                before_destroy(node)
        finally:
            if spinner is not None:
                _shutdown_executor(spinner)
        if node is not None:
            node.destroy_node()
        shutdown_rclpy()
        signals.ignore()
