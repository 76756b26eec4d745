"""executor_node end to end over real DDS: the node runs in a child process, this test is the robot.

The test process stands in for the arm driver (publishes /prophrl/ee_pose and /joint_states) and
for the policy (publishes ActionChunks), and records what the executor commands. Both processes
use a ROS domain of their own (from this process's pid) restricted to localhost.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

DOMAIN_ID = 1 + os.getpid() % 100
ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "nodes" / "executor_node.yaml"
# panda_sim with a fixed workspace box (x, y in +-0.45, z in [0.8, 1.4]) that the expected values use.
ROBOT_FILE = Path(tempfile.gettempdir()) / f"prophrl_test_executor_robot_{os.getpid()}.yaml"
ROBOT = str(ROBOT_FILE)


def _write_test_robot() -> None:
    from prophrl_common.paths import config_dir

    data = yaml.safe_load((config_dir() / "robots" / "panda_sim.yaml").read_text())
    data.update(workspace_min=[-0.45, -0.45, 0.8], workspace_max=[0.45, 0.45, 1.4])
    ROBOT_FILE.write_text(yaml.safe_dump(data))


_write_test_robot()
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]

# Set before rclpy is initialised in this process, and inherited by the child.
_ISOLATION = {"ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def wait_for(predicate, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class Rig:
    """Fake robot driver + policy + recorder, spinning in a background thread."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from prophrl_msgs.msg import ActionChunk
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64
        from trajectory_msgs.msg import JointTrajectory

        from prophrl_common.robots import load_robot_config

        self.robot = load_robot_config(ROBOT)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=DOMAIN_ID)
        self.node = rclpy.create_node(f"executor_test_rig_{os.getpid()}", context=self.context)
        self.lock = threading.Lock()
        self.twists: list[tuple[float, TwistStamped]] = []
        self.grippers: list[tuple[float, float]] = []
        self.trajectories: list[tuple[float, JointTrajectory]] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.ee_position = (0.0, 0.0, 1.0)
        self.joint_positions = list(self.robot.home_position)
        qos = QoSProfile(depth=50)
        self.chunk_pub = self.node.create_publisher(ActionChunk, "/prophrl/action_chunk", 10)
        self.pose_pub = self.node.create_publisher(PoseStamped, self.robot.ee_pose_topic, 10)
        self.joint_pub = self.node.create_publisher(JointState, "/joint_states", 10)
        self.twist_sub = self.node.create_subscription(TwistStamped, self.robot.twist_topic, self._on_twist, qos)
        self.node.create_subscription(Float64, self.robot.gripper_topic, self._on_gripper, qos)
        self.traj_sub = self.node.create_subscription(
            JointTrajectory, self.robot.joint_trajectory_topic, self._on_traj, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos)
        self._PoseStamped, self._JointState = PoseStamped, JointState
        self.node.create_timer(0.02, self._publish_state)  # the "driver" at 50 Hz
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):  # shutting down
            pass

    def _publish_state(self):
        pose = self._PoseStamped()
        pose.header.stamp = self.node.get_clock().now().to_msg()
        pose.header.frame_id = self.robot.base_frame
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = self.ee_position
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)
        js = self._JointState()
        js.header.stamp = pose.header.stamp
        # Fingers first and the arm joints reversed: the executor must map by name.
        names = FINGERS + list(reversed(self.robot.joint_names))
        js.name = names
        js.position = [0.04, 0.04] + list(reversed(self.joint_positions))
        self.joint_pub.publish(js)

    def _on_twist(self, msg):
        with self.lock:
            self.twists.append((time.monotonic(), msg))

    def _on_gripper(self, msg):
        with self.lock:
            self.grippers.append((time.monotonic(), msg.data))

    def _on_traj(self, msg):
        with self.lock:
            self.trajectories.append((time.monotonic(), msg))

    def _on_diag(self, msg):
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def clear(self):
        with self.lock:
            self.twists.clear()
            self.grippers.clear()
            self.trajectories.clear()

    def snapshot_twists(self):
        with self.lock:
            return list(self.twists)

    def diag(self, node_name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics.get(f"{node_name}: safety", {}))

    def send(self, actions, space="ee_delta_7d", period=0.05, version=1, age_s=None):
        """Publish a chunk; with age_s, stamped as planned from an observation age_s ago (else unstamped).
        Returns the stamp in seconds (None when unstamped)."""
        from rclpy.duration import Duration

        from prophrl_common.chunks import array_to_chunk
        stamp = None if age_s is None else (self.node.get_clock().now() - Duration(seconds=age_s)).to_msg()
        self.chunk_pub.publish(array_to_chunk(np.asarray(actions, dtype=np.float32), space, period, version,
                                              stamp=stamp))
        return None if stamp is None else stamp.sec + stamp.nanosec * 1e-9

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=2.0)


@pytest.fixture(scope="module")
def rig():
    saved = {k: os.environ.get(k) for k in _ISOLATION}
    os.environ.update(_ISOLATION)
    try:
        r = Rig()
        try:
            yield r
        finally:
            r.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Child:
    def __init__(self, name: str, *extra: str):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}_", suffix=".log", delete=False)
        env = dict(os.environ, **_ISOLATION, PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "prophrl_robot.executor_node", "--ros-args",
               "--params-file", str(PARAMS), "-p", f"robot:={ROBOT}", "-p", "diagnostics_period_s:=0.1",
               "-r", f"__node:={name}", *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3.0)
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def executor(rig, request):
    """A fresh executor process per test, ready (discovered both ways, state received)."""
    name = "exec_" + re.sub(r"[^a-zA-Z0-9_]", "_", request.node.name)[:40] + f"_{os.getpid()}"
    rig.ee_position = (0.0, 0.0, 1.0)
    child = Child(name)
    try:
        ready = wait_for(lambda: child.proc.poll() is not None or (
            rig.chunk_pub.get_subscription_count() >= 1
            and rig.twist_sub.get_publisher_count() >= 1
            and rig.diag(name).get("ee_pose_age_s", "never") != "never"
            and rig.diag(name).get("joint_state_age_s", "never") != "never"), timeout=15.0)
        assert ready and child.proc.poll() is None, f"executor did not come up:\n{child.output()}"
        rig.clear()
        yield child
        assert child.proc.poll() is None, f"executor died:\n{child.output()}"
    finally:
        child.stop()


def nonzero(twist_msg) -> bool:
    t = twist_msg.twist
    return any(v != 0.0 for v in (t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))


def vec(twist_msg):
    t = twist_msg.twist
    return np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def first_zero_after(twists, t0: float):
    return next(((t, m) for t, m in twists if t >= t0 and not nonzero(m)), None)


# ------------------------------------------------------------------ tests
def test_ee_chunk_becomes_filtered_twists_and_gripper(rig, executor):
    rig.ee_position = (0.0, 0.0, 0.81)  # 1 cm above the workspace floor (z >= 0.80)
    time.sleep(0.1)
    rig.send([
        [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],    # within limits: 0.01 m / 0.05 s = 0.2 m/s
        [0.30, 0.40, 0.0, 0.0, 0.0, 0.0, 0.5],   # |d| 0.5 m -> 0.03 m: (0.018, 0.024) -> (0.36, 0.48) m/s
        [0.0, 0.0, 0.0, 0.0, -3.0, 4.0, 2.0],    # |r| 5 rad -> 0.15: (0, -0.09, 0.12) -> (0, -1.8, 2.4) rad/s
        [0.0, 0.0, -0.02, 0.0, 0.0, 0.0, -1.0],  # floor: dz -0.02 -> -0.01 -> -0.2 m/s; gripper -> 0
    ])
    got = wait_for(lambda: (lambda tw: tw if sum(map(nonzero, (m for _, m in tw))) >= 4
                            and any(not nonzero(m) for _, m in tw) else None)(rig.snapshot_twists()), 3.0)
    assert got, f"expected 4 commands then a hold, got {rig.snapshot_twists()}"
    commands = [(t, m) for t, m in got if nonzero(m)]
    expected = np.array([[0.2, 0, 0, 0, 0, 0], [0.36, 0.48, 0, 0, 0, 0],
                         [0, 0, 0, 0, -1.8, 2.4], [0, 0, -0.2, 0, 0, 0]])
    np.testing.assert_allclose([vec(m) for _, m in commands], expected, atol=1e-5)
    assert all(m.header.frame_id == rig.robot.base_frame for _, m in got)
    for _, m in commands:  # never beyond the velocity the per-step limits allow
        assert np.linalg.norm(vec(m)[:3]) <= rig.robot.max_ee_translation_per_step_m / 0.05 + 1e-6
        assert np.linalg.norm(vec(m)[3:]) <= rig.robot.max_ee_rotation_per_step_rad / 0.05 + 1e-6
    # Steps are paced at the chunk's control period (loose bounds: a loaded 2-core box jitters).
    gaps = np.diff([t for t, _ in commands])
    assert 0.03 <= gaps.mean() <= 0.09, gaps
    grippers = wait_for(lambda: [g for _, g in rig.grippers] if len(rig.grippers) >= 4 else None, 1.0)
    assert grippers == pytest.approx([1.0, 0.5, 1.0, 0.0], abs=1e-6)
    diag = wait_for(lambda: (lambda d: d if d.get("watchdog_holds") == "1" else None)(rig.diag(executor.name)), 2.0)
    assert diag, rig.diag(executor.name)
    assert (diag["clamped_translation"], diag["clamped_rotation"], diag["workspace"], diag["clamped_gripper"]) == \
        ("1", "1", "1", "2")
    assert diag["rejected_chunks"] == "0" and diag["executed_steps"] == "4"

    # Receding horizon: a new chunk replaces the running one and starts at its step 0.
    rig.ee_position = (0.0, 0.0, 1.0)
    time.sleep(0.05)
    rig.clear()
    rig.send([[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * 20, version=2)
    assert wait_for(lambda: sum(nonzero(m) for _, m in rig.snapshot_twists()) >= 2, 2.0)
    t_switch = time.monotonic()
    rig.send([[0.0, -0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2, version=3)
    got = wait_for(lambda: (lambda tw: tw if any(not nonzero(m) for t, m in tw if t > t_switch) else None)(
        rig.snapshot_twists()), 2.0)
    assert got, "no hold after the second chunk"
    after = [vec(m) for t, m in got if t > t_switch + 0.02]  # skip a step that may have been in flight
    moving = [v for v in after if np.any(v != 0.0)]
    assert moving and all(np.allclose(v, [0, -0.2, 0, 0, 0, 0], atol=1e-5) for v in moving), after
    assert len(moving) <= 2
    diag = wait_for(lambda: (lambda d: d if d.get("preempted_chunks") == "1" else None)(rig.diag(executor.name)), 2.0)
    assert diag and diag["policy_version"] == "3", rig.diag(executor.name)


def test_malformed_chunk_is_rejected_and_node_survives(rig, executor):
    from prophrl_msgs.msg import ActionChunk

    bad = ActionChunk()
    bad.action_space, bad.horizon, bad.action_dim = "ee_delta_7d", 3, 7
    bad.data = [0.01] * 20  # 3 * 7 = 21 expected
    bad.control_period_s = 0.05
    rig.chunk_pub.publish(bad)
    diag = wait_for(lambda: (lambda d: d if d.get("rejected_chunks") == "1" else None)(rig.diag(executor.name)), 3.0)
    assert diag, f"rejected_chunks never reached 1: {rig.diag(executor.name)}\n{executor.output()}"
    assert executor.proc.poll() is None
    assert not any(nonzero(m) for _, m in rig.snapshot_twists())
    log = wait_for(lambda: "rejected ActionChunk" in executor.output() and executor.output(), 2.0)
    assert log and "data has 20 values but horizon*action_dim = 3*7 = 21" in log
    # A valid chunk afterwards still executes.
    rig.send([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2)
    moved = wait_for(lambda: [m for _, m in rig.snapshot_twists() if nonzero(m)], 2.0)
    assert moved and vec(moved[0])[1] == pytest.approx(0.2, abs=1e-5)
    time.sleep(0.15)
    assert rig.diag(executor.name)["rejected_chunks"] == "1"


def test_a_stamped_chunk_starts_at_the_row_due_and_an_expired_one_is_dropped(rig, executor):
    """Row i is due i steps after the chunk's stamp: a chunk planned 2.5 steps ago starts at row 2 (or later,
    by its transport delay), and one whose rows are all past is dropped while the running chunk goes on."""
    rows = [[0.001 * (i + 1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] for i in range(10)]  # row i: vx = 0.02 * (i + 1)
    stamp = rig.send(rows, age_s=2.5 * 0.05)
    moved = wait_for(lambda: [m for _, m in rig.snapshot_twists() if nonzero(m)], 3.0)
    assert moved, executor.output()
    executed = [round(vec(m)[0] / 0.02) - 1 for m in moved]
    assert 2 <= executed[0] <= 5, executed  # rows 0 and 1 were due before the chunk arrived
    assert all(b > a for a, b in zip(executed, executed[1:])), executed
    due = [int((stamp_s(m) - stamp) // 0.05) for m in moved]  # each twist is stamped when it was commanded
    assert all(row >= row_due for row, row_due in zip(executed, due)), ("a row ran after its time", executed, due)

    rig.send([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 40, version=2)  # a long chunk (row 0: unstamped)
    assert wait_for(lambda: any(vec(m)[1] > 0 for _, m in rig.snapshot_twists()), 3.0)
    rig.send([[0.0, -0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 4, version=3, age_s=1.0)  # 4 rows, all 20 steps past
    diag = wait_for(lambda: (lambda d: d if d.get("stale_chunks") == "1" else None)(rig.diag(executor.name)), 3.0)
    assert diag, rig.diag(executor.name)
    time.sleep(0.2)
    assert not any(vec(m)[1] < 0 for _, m in rig.snapshot_twists()), "the expired chunk moved the arm"
    assert any(vec(m)[1] > 0 for t, m in rig.snapshot_twists() if t > time.monotonic() - 0.15), \
        "the running chunk stopped"
    assert diag["policy_version"] == "2" and "all due by now" in executor.output()


@pytest.mark.parametrize("pause_s", [0.4, 1.0], ids=["short-pause", "pause-past-state-timeout"])
def test_a_late_executor_skips_the_rows_whose_time_passed(rig, executor, pause_s):
    """An executor held up (here: stopped, as a busy machine may) runs the row due when it resumes, never the rows it
    missed, and counts them; a pause past the state timeout (0.5 s) may make the first row after it a hold."""
    # 100 rows (5 s: longer than a busy machine's start + pause); row i: vx = 0.004 * (i + 1), inside the limits
    rows = [[0.0002 * (i + 1), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] for i in range(100)]
    stamp = rig.send(rows, age_s=0.0)
    assert wait_for(lambda: sum(nonzero(m) for _, m in rig.snapshot_twists()) >= 2, 3.0), executor.output()
    executor.proc.send_signal(signal.SIGSTOP)
    try:
        paused = len(rig.snapshot_twists())
        time.sleep(pause_s)  # 8 or 20 control periods
    finally:
        executor.proc.send_signal(signal.SIGCONT)
    assert wait_for(lambda: len(rig.snapshot_twists()) >= paused + 2, 3.0), executor.output()
    twists = [m for _, m in rig.snapshot_twists()]
    moving = [i for i, m in enumerate(twists) if nonzero(m)]
    executed = [round(vec(twists[i])[0] / 0.004) - 1 for i in moving]
    due = [int((stamp_s(twists[i]) - stamp) // 0.05) for i in moving]
    assert all(row >= row_due for row, row_due in zip(executed, due)), ("a row ran after its time", executed, due)
    gaps = np.diff(executed)
    assert gaps.max() >= 6, f"rows executed {executed}: the pause skipped none"
    # A pause longer than the state timeout makes the first row after it a safety hold (a zero twist): that row was
    # taken, not skipped.
    widest = int(np.argmax(gaps))
    holds = sum(not nonzero(m) for m in twists[moving[widest] + 1:moving[widest + 1]])
    skipped = wait_for(lambda: int(rig.diag(executor.name).get("skipped_rows", "0")), 3.0)
    assert skipped >= gaps.max() - 1 - holds, (skipped, executed, holds)


def test_watchdog_holds_once_within_timeout(rig, executor):
    timeout = rig.robot.watchdog_timeout_s
    latencies = []
    for attempt in range(3):
        rig.clear()
        rig.send([[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2, version=attempt + 1)
        got = wait_for(lambda: (lambda tw: tw if any(not nonzero(m) for _, m in tw) else None)(
            rig.snapshot_twists()), timeout + 2.0)
        assert got, "no hold arrived"
        last_cmd = max(t for t, m in got if nonzero(m))
        _, hold = first_zero_after(got, last_cmd)
        # On the executor's own stamps: when it sent the last step and when it decided to hold.
        last_stamp = max(stamp_s(m) for _, m in got if nonzero(m))
        latencies.append(stamp_s(hold) - last_stamp)
        time.sleep(0.3)  # exactly one hold per stop
        assert sum(not nonzero(m) for _, m in rig.snapshot_twists()) == 1
    print(f"\nwatchdog hold latency after the last step (timeout {timeout:.3f} s): "
          + ", ".join(f"{x * 1000:.1f} ms" for x in latencies))
    for latency in latencies:
        assert timeout - 0.02 <= latency <= timeout + 0.1, latencies


def test_estop_latches_until_reset_service(rig, executor):
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    estop_pub = rig.node.create_publisher(Bool, "/prophrl/estop", latched)
    client = rig.node.create_client(Trigger, f"/{executor.name}/reset_estop")
    try:
        assert wait_for(lambda: estop_pub.get_subscription_count() >= 1, 5.0)
        rig.send([[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]] * 60)  # 3 s of motion
        assert wait_for(lambda: sum(nonzero(m) for _, m in rig.snapshot_twists()) >= 3, 2.0)
        t_estop = time.monotonic()
        estop_pub.publish(Bool(data=True))
        hold = wait_for(lambda: first_zero_after(rig.snapshot_twists(), t_estop), 1.0)
        assert hold, "no hold after e-stop"
        assert hold[0] - t_estop < 0.2
        time.sleep(0.3)
        assert not any(nonzero(m) for t, m in rig.snapshot_twists() if t > hold[0]), "moved after e-stop"
        # Chunks are dropped while engaged; False does not release.
        rig.send([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 5)
        estop_pub.publish(Bool(data=False))
        time.sleep(0.3)
        rig.send([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 5)
        time.sleep(0.3)
        assert not any(nonzero(m) for t, m in rig.snapshot_twists() if t > hold[0]), "moved while e-stopped"
        diag = wait_for(lambda: (lambda d: d if d.get("estop_dropped_chunks") == "2" else None)(
            rig.diag(executor.name)), 2.0)
        assert diag and diag["estop"] == "true", rig.diag(executor.name)
        # Only ~/reset_estop releases it.
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        assert wait_for(future.done, 5.0)
        assert future.result().success
        t_reset = time.monotonic()
        rig.send([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0]] * 2)
        moved = wait_for(lambda: [m for t, m in rig.snapshot_twists() if t > t_reset and nonzero(m)], 2.0)
        assert moved and vec(moved[0])[1] == pytest.approx(0.2, abs=1e-5)
    finally:
        rig.node.destroy_client(client)
        rig.node.destroy_publisher(estop_pub)


def test_joint_position_chunk_becomes_rate_limited_trajectory(rig, executor):
    assert wait_for(lambda: rig.traj_sub.get_publisher_count() >= 1, 5.0)
    home = np.array(rig.robot.home_position)
    target = home + np.array([0.02, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0])  # joint 2 far: rate-limited to 0.05
    rig.send([target], space="joint_position", period=0.1)
    got = wait_for(lambda: list(rig.trajectories), 2.0)
    assert got, "no JointTrajectory"
    msg = got[0][1]
    assert list(msg.joint_names) == list(rig.robot.joint_names) and len(msg.points) == 1
    np.testing.assert_allclose(msg.points[0].positions, home + [0.02, -0.05, 0, 0, 0, 0, 0], atol=1e-6)
    tfs = msg.points[0].time_from_start
    assert tfs.sec + tfs.nanosec * 1e-9 == pytest.approx(0.1, abs=1e-6)
    # Watchdog hold: a trajectory back to the measured joint positions.
    hold = wait_for(lambda: rig.trajectories[1:] and rig.trajectories[1][1], 1.0)
    assert hold, "no joint hold"
    np.testing.assert_allclose(hold.points[0].positions, home, atol=1e-6)


def test_unknown_robot_exits_nonzero_with_clear_error():
    env = dict(os.environ, **_ISOLATION)
    proc = subprocess.run([sys.executable, "-m", "prophrl_robot.executor_node", "--ros-args", "-p",
                           "robot:=no_such_robot"], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert "unknown robot 'no_such_robot'" in proc.stderr + proc.stdout
    assert "panda_sim" in proc.stderr + proc.stdout  # it lists the available ones


def test_lifecycle_transitions_in_process(rig):
    """Managed use (autostart false): configure/activate/deactivate/cleanup, and a bad robot fails configure."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from std_msgs.msg import Bool

    from prophrl_robot.executor_node import ExecutorNode

    node = ExecutorNode(f"exec_lifecycle_{os.getpid()}", context=rig.context,
                        parameter_overrides=[Parameter("autostart", value=False),
                                             Parameter("robot", value="no_such_robot")])
    try:
        assert not node.autostart
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        node.set_parameters([Parameter("robot", value="ur5e_sim")])
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.robot.name == "ur5e_sim" and node.counters()["rejected_chunks"] == 0
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        node._on_estop(Bool(data=True))
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.filter.estopped  # a cleanup/configure cycle does not release the e-stop
    finally:
        node.destroy_node()
