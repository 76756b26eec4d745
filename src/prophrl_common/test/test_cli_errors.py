"""How a verb reports a user's mistake, a Ctrl-C and a bug."""

import os
import signal

import pytest

from prophrl_common.cli_errors import EXIT_INTERRUPTED, EXIT_USAGE, run_reporting_errors
from prophrl_common.config_io import ConfigError
from prophrl_common.testing import swallowed_ctrl_c


def _ctrl_c_turned_into(error: Exception):
    """A command that gets a real SIGINT inside code that turns the KeyboardInterrupt into `error`, as an
    extension module's initialisation does ("initialization failed")."""
    def command():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.5)   # lets Python run the handler if the kill did not already
        except KeyboardInterrupt:
            raise error from None
        raise AssertionError("the SIGINT raised no KeyboardInterrupt")
    return command


def test_a_ctrl_c_that_surfaced_as_another_error_is_reported_as_an_interruption(capsys):
    assert run_reporting_errors("verb", _ctrl_c_turned_into(ImportError("initialization failed"))) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "verb: interrupted\n"
    assert run_reporting_errors("verb", _ctrl_c_turned_into(ConfigError("shape"))) == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_that_a_library_swallowed_still_interrupts_the_verb(capsys):
    """Regression: `prophrl demo` Ctrl-C'd while its SFT stage imported torch ran every later stage and exited 0."""
    def command():
        swallowed_ctrl_c()
        return 0
    assert run_reporting_errors("verb", command) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "verb: interrupted\n"
    assert run_reporting_errors("verb", lambda: 0) == 0   # a later run of the verb starts its own count
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_nested_verb_reports_a_ctrl_c_once_to_each_level(capsys):
    def outer():
        assert run_reporting_errors("inner", _ctrl_c_turned_into(RuntimeError("x"))) == EXIT_INTERRUPTED
        raise KeyboardInterrupt
    assert run_reporting_errors("outer", outer) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "inner: interrupted\nouter: interrupted\n"


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    def bad_config():
        raise ConfigError("config.yaml: no such\n  key")
    assert run_reporting_errors("verb", bad_config) == EXIT_USAGE
    assert capsys.readouterr().err == "verb: error: config.yaml: no such key\n"
    def bug():
        raise ImportError("initialization failed")
    with pytest.raises(ImportError):
        run_reporting_errors("verb", bug)
