"""How every `prophrl` verb reports a user's mistake: one line on stderr and exit status 2, no traceback.

The mistakes are the project's error types for bad input (ConfigError: configs, checkpoints, datasets,
output directories; BagError: bags), OSError on the paths a user gives (missing, unreadable, under a
file, a full disk) and a training run that diverged (FloatingPointError, e.g. NonFiniteError). A
Ctrl-C is one line and exit status 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
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


def run_reporting_errors(prog: str, command: Callable[[], int],
                         also: tuple[type[BaseException], ...] = ()) -> int:
    """command()'s exit status, or 2 after printing `prog: error: <one line>` for a user error (or one of
    the verb's own error types `also`)."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*user_error_types(), *also) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
