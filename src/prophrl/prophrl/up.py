"""`prophrl up PROFILE`: run a launch profile's nodes where `ros2 launch` is not installed.

One child process per node, parameters and remappings passed as --ros-args, output prefixed
with the node name. SIGINT/SIGTERM stop every child (SIGINT, then SIGTERM, then SIGKILL); a
child also gets SIGTERM if this supervisor dies (PR_SET_PDEATHSIG). A required node that exits
stops the rest and makes `up` exit non-zero (profiles.required_node_exit). `up` says when every
node has announced that it is ready (prophrl_common.startup); one that has not within the
start-up timeout is named, and the profile stops with exit code 1.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from prophrl.profiles import NodeSpec, Profile, required_node_exit
from prophrl_common.config_io import ConfigError
from prophrl_common.startup import ReadyWatcher, StartupTimeout, not_ready_message, startup_timeout_s
from prophrl_common.stop_request import StopRequest

_PR_SET_PDEATHSIG = 1


def find_entry_point(package: str, executable: str) -> importlib.metadata.EntryPoint:
    """The console script `executable` declared by the Python distribution `package`."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(f"package '{package}' is not installed (run scripts/setup.sh)") from exc
    for ep in dist.entry_points:
        if ep.group == "console_scripts" and ep.name == executable:
            return ep
    names = sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts")
    raise ConfigError(f"package '{package}' has no executable '{executable}'; it has: {names}")


def _param_arg(key: str, value) -> str:
    # ROS parses -p values as YAML; JSON is valid YAML and keeps strings strings ("1.0" stays text).
    return f"{key}:={json.dumps(value)}"


def node_command(spec: NodeSpec) -> list[str]:
    entry = find_entry_point(spec.package, spec.executable)
    module, _, func = entry.value.partition(":")
    bootstrap = (f"import sys; sys.argv[0] = {spec.executable!r}; "
                 f"from {module} import {func} as main; sys.exit(main())")
    argv = [sys.executable, "-c", bootstrap, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.params_file is not None:
        argv += ["--params-file", str(spec.params_file)]
    for key, value in spec.parameters.items():
        argv += ["-p", _param_arg(key, value)]
    for src, dst in spec.remappings:
        argv += ["-r", f"{src}:={dst}"]
    return argv


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class _Child:
    spec: NodeSpec
    proc: subprocess.Popen
    pump: threading.Thread = field(default=None)


def _pump_output(child: _Child, out: TextIO, lock: threading.Lock) -> None:
    prefix = f"[{child.spec.name}] "
    for line in iter(child.proc.stdout.readline, ""):
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()


class Supervisor:
    def __init__(self, profile: Profile, out: TextIO = sys.stdout, grace_s: float = 5.0):
        self.profile = profile
        self.out = out
        self.grace_s = grace_s
        self.children: list[_Child] = []
        self._lock = threading.Lock()
        self._stop = StopRequest()  # requested from signal handlers too: it takes no lock

    def _say(self, text: str) -> None:
        with self._lock:
            self.out.write(f"[prophrl up] {text}\n")
            self.out.flush()

    def start(self) -> None:
        commands = [(spec, node_command(spec)) for spec in self.profile.nodes]  # resolve all before starting any
        env = os.environ.copy()
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
        for spec, argv in commands:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    text=True, bufsize=1, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
            child = _Child(spec, proc)
            child.pump = threading.Thread(target=_pump_output, args=(child, self.out, self._lock), daemon=True)
            child.pump.start()
            self.children.append(child)
            self._say(f"started {spec.name} ({spec.package}/{spec.executable}) pid {proc.pid}")

    def request_stop(self, reason: str) -> None:
        self._stop.request(reason)

    def exited_required(self) -> list[tuple[str, int]]:
        """(name, exit code) of the required nodes that have exited."""
        return [(c.spec.name, c.proc.returncode) for c in self.children
                if c.spec.required and c.proc.poll() is not None]

    def wait_until_ready(self, watcher: ReadyWatcher, spin_once: Callable[[float], None],
                         timeout_s: float | None = None) -> bool:
        """Spin `watcher`'s node until every running node of the profile has announced that it is ready:
        True then; False as soon as a stop is requested or a required node exits (wait() reports it).
        Raises StartupTimeout naming the nodes still not ready after timeout_s (default: the start-up
        timeout). A node that is not required and exits is not waited for."""
        timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            if self.exited_required():
                return False
            waiting = [c.spec.name for c in self.children
                       if c.proc.poll() is None and not watcher.is_ready(c.spec.name)]
            if not waiting:
                return True
            if time.monotonic() >= deadline:
                raise StartupTimeout(not_ready_message(waiting, timeout_s, f"profile {self.profile.name}"))
            spin_once(0.1)
        return False

    def wait(self) -> int:
        """Block until a stop is requested or a required node exits; return the exit status."""
        status = 0
        reported: set[int] = set()
        while not self._stop.is_set():
            for child in self.children:
                code = child.proc.poll()
                if code is None or child.proc.pid in reported:
                    continue
                reported.add(child.proc.pid)
                if child.spec.required:
                    status, message = required_node_exit(child.spec, code)
                    self._say(message)
                    self.request_stop(f"{child.spec.name} exited")
                else:
                    self._say(f"node {child.spec.name} exited with code {code} (not required; continuing)")
            if all(c.proc.poll() is not None for c in self.children):
                self.request_stop("all nodes exited")
            self._stop.wait(0.1)
        self._say(f"stopping: {self._stop.reason}")
        self.shutdown()
        return status

    def shutdown(self) -> None:
        for sig, wait_s in ((signal.SIGINT, self.grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            alive = [c for c in self.children if c.proc.poll() is None]
            if not alive:
                break
            for child in alive:
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and any(c.proc.poll() is None for c in alive):
                time.sleep(0.05)
        for child in self.children:
            child.proc.wait()
            child.pump.join(timeout=1.0)


def _report_readiness(supervisor: Supervisor, timeout_s: float) -> int | None:
    """Watch the profile's nodes come up (a DDS participant of its own, gone afterwards); say when all are
    ready. Returns 1 when one did not come up in time (the profile is then stopping), else None."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("prophrl_up", context=context, start_parameter_services=False)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    start = time.monotonic()
    try:
        if supervisor.wait_until_ready(ReadyWatcher(node), lambda t: executor.spin_once(timeout_sec=t), timeout_s):
            names = ", ".join(c.spec.name for c in supervisor.children if c.proc.poll() is None)
            supervisor._say(f"ready after {time.monotonic() - start:.1f} s: {names}")
    except StartupTimeout as exc:
        supervisor._say(f"{exc}; stopping the profile")
        supervisor.request_stop("start-up timeout")
        return 1
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return None


def run_profile(profile: Profile) -> int:
    timeout_s = startup_timeout_s()
    supervisor = Supervisor(profile)

    def on_signal(signum, _frame):
        supervisor.request_stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        failed = _report_readiness(supervisor, timeout_s)
        return supervisor.wait() or failed or 0
    finally:
        supervisor.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
