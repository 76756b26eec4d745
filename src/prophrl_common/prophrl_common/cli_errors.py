"""How every `prophrl` verb reports a user's mistake: one line on stderr and exit status 2, no traceback.

The mistakes are the project's error types for bad input (ConfigError: configs, checkpoints, datasets,
output directories; BagError: bags), OSError on the paths a user gives (missing, unreadable, under a
file, a full disk) and a training run that diverged (FloatingPointError, e.g. NonFiniteError). A
Ctrl-C is one line and exit status 130, whatever error it surfaced as: a KeyboardInterrupt raised inside
C code is often turned into another exception (an extension module's import fails with "initialization
failed", torch reports a shape error), and library code sometimes swallows it whole (torch's C start-up
imports numpy and, when that import is interrupted, carries on without numpy): a verb whose SIGINT counter
counted a Ctrl-C is interrupted even when its command returned. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def user_error_types() -> tuple[type[BaseException], ...]:
    from prophrl_common.bag_error import BagError
    from prophrl_common.config_io import ConfigError

    return ConfigError, BagError, OSError, FloatingPointError


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (an OSError's strerror and path included)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class SigintCounter:
    """A SIGINT handler that counts the signals and then does what the handler it replaced does."""

    def __init__(self, previous: Callable):
        self.previous, self.count = previous, 0

    def __call__(self, signum, frame):
        self.count += 1
        self.previous(signum, frame)


def _sigint_handler():
    """This process's SIGINT handler as Python sees it; None outside the main thread, which alone may see or
    change it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGINT)


def _install_sigint_counter() -> tuple[SigintCounter | None, bool]:
    """The SIGINT counter in place (installed now when a Python handler is there and none counts yet) and
    whether this call installed it. None where Python cannot see a SIGINT (not the main thread, SIGINT
    ignored or left to the OS)."""
    current = _sigint_handler()
    if isinstance(current, SigintCounter):
        return current, False
    if not callable(current):
        return None, False
    counter = SigintCounter(current)
    signal.signal(signal.SIGINT, counter)
    return counter, True


def sigint_count() -> int:
    """How many SIGINTs the running verb's counter has counted (0 where none counts). A count that grew while
    work ran is a Ctrl-C, even when no KeyboardInterrupt came out of that work."""
    current = _sigint_handler()
    return current.count if isinstance(current, SigintCounter) else 0


def run_reporting_errors(prog: str, command: Callable[[], int],
                         also: tuple[type[BaseException], ...] = ()) -> int:
    """command()'s exit status, or 2 after printing `prog: error: <one line>` for a user error (or one of
    the verb's own error types `also`), or 130 after `prog: interrupted` when a Ctrl-C ended it."""
    counter, installed, before = None, False, 0
    try:
        counter, installed = _install_sigint_counter()
        before = counter.count if counter is not None else 0
        code = command()
        if counter is not None and counter.count > before:
            raise KeyboardInterrupt  # a Ctrl-C that the command's libraries swallowed
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if counter is not None and counter.count > before:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(exc, (*user_error_types(), *also)):
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        if installed and signal.getsignal(signal.SIGINT) is counter:
            signal.signal(signal.SIGINT, counter.previous)
