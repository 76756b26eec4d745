"""Worker processes that a terminal's Ctrl-C cannot kill mid-start-up; the parent reports it on one line."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from prophrl_common.process_pool import _children_start_with_sigint_blocked, run_in_processes

# Waits for the worker pool in a child process: "started" once the parent runs inside the error reporting (a
# Ctrl-C between the two would be an ordinary KeyboardInterrupt of a script, not the case under test).
_SCRIPT = textwrap.dedent("""
    import sys, time
    from prophrl_common.cli_errors import run_reporting_errors
    from prophrl_common.process_pool import _children_start_with_sigint_blocked, run_in_processes

    def main():
        print("started", flush=True)
        return len(run_in_processes(time.sleep, [(60,)] * 2, 2))

    if __name__ == "__main__":
        sys.exit(run_reporting_errors("pool", main))
""")


def test_results_come_back_in_job_order_and_a_failing_job_raises_in_the_parent():
    assert run_in_processes(pow, [(2, k) for k in range(6)], 2) == [2 ** k for k in range(6)]
    with pytest.raises(ZeroDivisionError):
        run_in_processes(divmod, [(1, 1), (1, 0)], 2)


def test_workers_ignore_sigint_and_the_parent_keeps_its_handler():
    assert run_in_processes(signal.getsignal, [(signal.SIGINT,)] * 2, 2) == [signal.SIG_IGN] * 2
    assert run_in_processes(signal.pthread_sigmask, [(signal.SIG_BLOCK, [])] * 2, 2) == [set(), set()]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_ctrl_c_taken_by_another_thread_while_workers_spawn_is_raised_after_the_spawn():
    """Regression: with SIGINT ignored during the spawn, a Ctrl-C that the kernel handed to another thread of
    the parent (the spawning thread blocks it) was discarded, and `prophrl demo`'s stage 7 ran to its end."""
    other_thread_ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (other_thread_ready.set(), stop.wait()))  # does not block SIGINT
    thread.start()
    try:
        other_thread_ready.wait()
        reached_the_end_of_the_block = False
        with pytest.raises(KeyboardInterrupt):
            with _children_start_with_sigint_blocked():
                os.kill(os.getpid(), signal.SIGINT)  # process-directed: delivered to a thread not blocking it
                time.sleep(0.2)
                reached_the_end_of_the_block = True
        assert reached_the_end_of_the_block, "the Ctrl-C must wait for the end of the spawn"
    finally:
        stop.set()
        thread.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0])
def test_a_ctrl_c_while_workers_start_or_run_is_one_line_and_no_traceback(tmp_path, delay_s):
    """Regression: a Ctrl-C reaching a spawned eval worker inside interpreter start-up printed a
    KeyboardInterrupt traceback from `site` (seen in `prophrl demo`'s stage 7)."""
    script = tmp_path / "pool_script.py"
    script.write_text(_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(delay_s)
        os.killpg(proc.pid, signal.SIGINT)  # the whole group, as a terminal does
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and "pool: interrupted" in output and "Traceback" not in output, output
    deadline = time.monotonic() + 20  # no worker outlives the parent (multiprocessing's resource tracker
    while time.monotonic() < deadline:  # leaves once it sees the parent's end of its pipe close)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"processes of the group outlived the parent: {_group_members(proc.pid)}")


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid,pgid,args", "-e"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:] if line.split()[1] == str(pgid)]
