"""Helpers for tests that start real nodes in separate processes over DDS."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence


# FastDDS derives its ports from the domain id; ids above 232 overflow the port range.
_MAX_DOMAIN_ID = 232
_DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / "prophrl-ros-domains"
_held_domain_lock = None  # the open lock file of the domain this process holds


def isolate_ros_domain(seed: int | None = None, inherit: bool = True) -> int:
    """Put this process (and children it starts) on a private ROS domain on loopback only.

    The domain is held with an exclusive lock file for the life of this process, so test and bench processes
    running side by side on one machine never share a domain (two processes on one domain see each other's
    topics). A process that already holds one keeps it; so does one whose parent passed one down, unless
    `inherit` is False (a pytest-xdist worker: its sibling workers run their own nodes from the same parent).
    `seed` picks where the search for a free domain starts (default: the process id).
    """
    global _held_domain_lock
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    inherited = os.environ.get("PROPHRL_ISOLATED_ROS_DOMAIN") if inherit else None
    if _held_domain_lock is not None or (inherited and inherited == os.environ.get("ROS_DOMAIN_ID")):
        return int(os.environ["ROS_DOMAIN_ID"])
    _DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    start = os.getpid() if seed is None else seed
    for offset in range(_MAX_DOMAIN_ID):
        domain = 1 + (start + offset) % _MAX_DOMAIN_ID
        lock = open(_DOMAIN_LOCK_DIR / f"{domain}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        _held_domain_lock = lock
        os.environ["ROS_DOMAIN_ID"] = os.environ["PROPHRL_ISOLATED_ROS_DOMAIN"] = str(domain)
        return domain
    raise RuntimeError(f"no free ROS domain: all of 1..{_MAX_DOMAIN_ID} are held by other processes")


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


class StallWatchdog:
    """Turns a bounded wait that never returns into a prompt, diagnosed exit of this process.

    rclpy's executor can (rarely) block inside wait_set.wait far past spin_once's timeout, where no
    Python signal handler (pytest-timeout's included) gets to run. Run such observation in a child
    process and wrap each bounded wait in `with watchdog.bounded(seconds, what):`. A wait still
    running `grace_s` after its own deadline - or, with `idle_s`, one that has not called beat()
    (e.g. from a spin_until predicate, called once per spin) for idle_s seconds - makes a daemon
    thread (rclpy releases the GIL while it waits) call `on_stall(what)`, dump every thread's stack
    to stderr and `os._exit(exit_code)`.
    """

    def __init__(self, grace_s: float = 15.0, exit_code: int = 86,
                 on_stall: Callable[[str], None] | None = None, poll_s: float = 0.5):
        import threading

        self.grace_s, self.exit_code, self.on_stall, self.poll_s = grace_s, exit_code, on_stall, poll_s
        self._watched: tuple | None = None     # (deadline, what, idle_s)
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def bounded(self, seconds: float, what: str, idle_s: float | None = None) -> Iterator[None]:
        """Watch the block: it is expected to finish within `seconds` (+ grace_s) and, with idle_s,
        to call beat() at least every idle_s seconds."""
        outer = self._watched
        self._last_beat = time.monotonic()
        self._watched = (time.monotonic() + seconds + self.grace_s, what, idle_s)
        try:
            yield
        finally:
            self._watched = outer
            self._last_beat = time.monotonic()

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def _watch(self) -> None:
        import faulthandler

        while True:
            time.sleep(self.poll_s)
            watched, now = self._watched, time.monotonic()
            if watched is None:
                continue
            deadline, what, idle_s = watched
            if now >= deadline:
                why = f"'{what}' is still waiting {self.grace_s:.0f} s past its deadline"
            elif idle_s is not None and now - self._last_beat > idle_s:
                why = f"'{what}' has made no progress for {now - self._last_beat:.0f} s"
            else:
                continue
            try:
                if self.on_stall is not None:
                    self.on_stall(what)
                print(f"stall watchdog: {why}; stacks follow, then exit {self.exit_code}", file=sys.stderr,
                      flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
            finally:
                os._exit(self.exit_code)


def stop_process_tree(proc: subprocess.Popen, descendants: Sequence = (), sig: int = signal.SIGTERM,
                      timeout: float = 30.0) -> list:
    """Stop `proc` with `sig` (SIGKILL after `timeout`), then SIGKILL whichever of `descendants`
    (psutil.Process objects, e.g. a snapshot of proc's children taken while it ran) outlive it by
    5 s. Returns the descendants that had to be killed (empty when all went by themselves)."""
    import psutil

    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        except ProcessLookupError:
            pass
    _gone, alive = psutil.wait_procs(list(descendants), timeout=5.0)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)
    return alive


def decode_bag_with_third_party_readers(bag_path) -> dict[str, int]:
    """Decode every message of a rosbag2 MCAP bag with two independent readers, and return the message
    count per topic (raises AssertionError naming the topic and message otherwise):

    - rosbags' AnyReader with the types of the bag's own schemas, strictly: its deserialize_cdr refuses a
      message with bytes missing or left over, and re-serialising the decoded message must give the
      stored bytes back exactly (zero padding, nothing trailing: canonical CDR);
    - the mcap library with mcap-ros2-support's decoder (also from the bag's schemas).
    """
    from pathlib import Path

    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rosbags.highlevel import AnyReader

    bag_path = Path(bag_path)
    rosbags_counts: dict[str, int] = {}
    with AnyReader([bag_path]) as reader:
        for connection, log_time, raw in reader.messages():
            where = f"{bag_path}: {connection.topic} ({connection.msgtype}) at {log_time} ns"
            try:
                message = reader.typestore.deserialize_cdr(raw, connection.msgtype)
            except Exception as exc:  # noqa: BLE001 - whatever the strict reader refuses
                raise AssertionError(f"{where}: rosbags refuses it: {exc}") from exc
            again = bytes(reader.typestore.serialize_cdr(message, connection.msgtype))
            assert again == bytes(raw), f"{where}: not canonical CDR ({len(raw)} bytes stored, {len(again)} canonical)"
            rosbags_counts[connection.topic] = rosbags_counts.get(connection.topic, 0) + 1
    mcap_counts: dict[str, int] = {}
    for storage in sorted(bag_path.glob("*.mcap")) if bag_path.is_dir() else [bag_path]:
        with storage.open("rb") as f:
            reader = make_reader(f, validate_crcs=True, decoder_factories=[DecoderFactory()])
            for _schema, channel, message, _decoded in reader.iter_decoded_messages(log_time_order=False):
                mcap_counts[channel.topic] = mcap_counts.get(channel.topic, 0) + 1
    assert mcap_counts == rosbags_counts, f"{bag_path}: mcap read {mcap_counts}, rosbags {rosbags_counts}"
    return rosbags_counts



def swallowed_ctrl_c() -> None:
    """A real SIGINT to this process inside code that catches the KeyboardInterrupt and carries on, as torch's
    C start-up does when the numpy import it runs is interrupted. Main thread only."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 0.5)   # lets Python run the handler if the kill did not already
    except KeyboardInterrupt:
        return
    raise AssertionError("the SIGINT raised no KeyboardInterrupt")
