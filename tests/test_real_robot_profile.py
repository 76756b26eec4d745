"""The real_robot profile drives a driver-shaped test double (not our sim) through the executor.

The double (prophrl_common.testing_driver) publishes what ur_robot_driver / franka_ros2 publish (driver-ordered
/joint_states with the hand's finger joints, UR's tcp_pose_broadcaster) and consumes MoveIt Servo's twist
topic and the JointTrajectoryController topic, checking each command as those consumers do. The profile's
own nodes (exactly the commands `prophrl up real_robot` runs: ee_pose_node, policy_node with a tiny
checkpoint, executor) run against it, once per command backend. This process is the camera (a synthetic
image stream) and watches every command on the wire against the drivers' documented interfaces.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
import yaml
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from prophrl.profiles import load_profile
from prophrl.up import node_command
from prophrl_common.chunks import POLICY_STATE_NAMES, chunk_to_array
from prophrl_common.images import numpy_to_image
from prophrl_common.kinematics import KinematicChain
from prophrl_common.paths import config_dir
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import NodeProcess, python_module_argv, spin_until
from prophrl_msgs.msg import ActionChunk
from prophrl_policy.configuration_vla import get_vla_config
from prophrl_policy.embodiment import Embodiment
from prophrl_policy.modeling_vla import VLAPolicy
from prophrl_policy.transforms import NormStats

MOVEIT_STAND_IN = Path(__file__).resolve().parent / "moveit_stand_in"
STEP_M = 0.004  # the tiny policy's end-effector step along +x, per control period
# The joint order of the drivers' trajectory controllers (ur_robot_driver's ur_controllers.yaml
# scaled_joint_trajectory_controller, franka_fr3_moveit_config's fr3_arm_controller): the order the
# executor must send, and the robot configs' joint_names.
CONTROLLER_JOINTS = {
    "ur5e": ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
             "wrist_3_joint"],
    "franka_fr3": [f"fr3_joint{i}" for i in range(1, 8)],
}


def tiny_checkpoint(path: Path, robot_name: str, control_period_s: float) -> Path:
    """A policy whose every chunk moves the end effector by STEP_M along +x (its action std is tiny, so
    the untrained head's output is the action mean), recorded for `robot_name`."""
    torch.manual_seed(0)
    config = get_vla_config("tiny", hidden_dim=32, num_layers=1, num_heads=2, image_size=32, horizon=5,
                            num_inference_steps=2)
    stats = NormStats((0.0,) * 8, (1.0,) * 8, (STEP_M, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (1e-5,) * 7)
    embodiment = Embodiment(robot_name, "ee_delta_7d", POLICY_STATE_NAMES, control_period_s)
    return VLAPolicy(config, stats, embodiment=embodiment).save_pretrained(path)


def robot_file(tmp_path: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((config_dir() / "robots" / f"{name}.yaml").read_text())
    data.update(changes)
    path = tmp_path / f"{name}_{'_'.join(f'{k}-{v}' for k, v in changes.items())}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Watcher:
    """The camera, and a record of what crosses the wire."""

    def __init__(self, node: Node, robot):
        self.node, self.robot = node, robot
        self.chunks: list[ActionChunk] = []
        self.twists: list[tuple[float, TwistStamped]] = []
        self.trajectories: list[JointTrajectory] = []
        self.ee: list[np.ndarray] = []
        self.status: dict = {}
        node.create_subscription(ActionChunk, "/prophrl/action_chunk", self.chunks.append, 50)
        node.create_subscription(TwistStamped, robot.twist_topic,
                                 lambda m: self.twists.append((node.get_clock().now().nanoseconds * 1e-9, m)), 50)
        node.create_subscription(JointTrajectory, robot.joint_trajectory_topic, self.trajectories.append, 50)
        node.create_subscription(PoseStamped, robot.ee_pose_topic, self._on_ee, 50)
        node.create_subscription(String, "/driver_double/status", self._on_status, 10)
        self._image_pub = node.create_publisher(Image, "/camera/image_raw", 2)
        frame = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
        self._timer = node.create_timer(
            0.1, lambda: self._image_pub.publish(numpy_to_image(frame, "rgb8", stamp=node.get_clock().now().to_msg())))

    def _on_ee(self, msg: PoseStamped) -> None:
        assert msg.header.frame_id == self.robot.base_frame, msg.header.frame_id
        p = msg.pose.position
        self.ee.append(np.array([p.x, p.y, p.z]))

    def _on_status(self, msg: String) -> None:
        self.status = json.loads(msg.data)

    def close(self) -> None:
        self.node.destroy_timer(self._timer)


def _start(argv: list[str], env: dict | None = None) -> NodeProcess:
    return NodeProcess(argv, env=env)


def _stop_all(procs) -> None:
    """SIGINT to every node at once (as Ctrl-C would), then wait for each."""
    for proc in procs:
        if proc.alive():
            try:
                os.killpg(proc.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    for proc in procs:
        proc.stop()


def _diagnose(watcher: Watcher, procs: dict[str, NodeProcess]) -> str:
    lines = [f"chunks {len(watcher.chunks)}, twists {len(watcher.twists)}, trajectories {len(watcher.trajectories)}, "
             f"ee poses {len(watcher.ee)} (first {watcher.ee[0] if watcher.ee else None}, "
             f"last {watcher.ee[-1] if watcher.ee else None})", f"double status: {watcher.status}"]
    for name, proc in procs.items():
        lines.append(f"--- {name} (alive {proc.alive()}) ---\n{proc.output()[-2500:]}")
    return "\n".join(lines)


BACKENDS = [
    pytest.param("franka_fr3", "twist", False, id="twist-franka_fr3"),
    pytest.param("ur5e", "joint_trajectory", False, id="joint_trajectory-ur5e"),
    pytest.param("franka_fr3", "joint_trajectory", True, id="joint_trajectory-moveit_py-franka_fr3"),
]


@pytest.mark.parametrize("robot_name,interface,with_moveit", BACKENDS)
def test_real_robot_profile_drives_a_driver_double(tmp_path, robot_name, interface, with_moveit):
    robot_path = robot_file(tmp_path, robot_name, command_interface=interface)
    robot = load_robot_config(robot_path)
    assert list(robot.joint_names) == CONTROLLER_JOINTS[robot_name]
    checkpoint = tiny_checkpoint(tmp_path / "policy", robot.name, robot.control_period_s)
    profile = load_profile("real_robot", {"robot": str(robot_path), "checkpoint": str(checkpoint)})
    env = dict(os.environ)
    if with_moveit:  # moveit_py's stand-in (moveit_py cannot be installed here), for the executor only
        env.update(PYTHONPATH=os.pathsep.join([str(MOVEIT_STAND_IN), env.get("PYTHONPATH", "")]),
                   PROPHRL_MOVEIT_STAND_IN_ROBOT=str(robot_path))

    rclpy.init()
    node = Node("real_robot_profile_test")
    watcher = Watcher(node, robot)
    procs: dict[str, NodeProcess] = {}
    try:
        # twist_timeout_s: MoveIt Servo's incoming_command_timeout is 0.1 s; a loaded CI box delivers late.
        procs["driver_double"] = _start(python_module_argv(
            "prophrl_common.testing_driver", "-p", f"robot:={robot_path}", "-p", "twist_timeout_s:=1.0"))
        start_ee = KinematicChain.for_robot(robot).forward(robot.home_position)[:3, 3]  # the double starts at home
        for spec in profile.nodes:
            argv = node_command(spec)
            if spec.executable == "executor_node" and with_moveit:
                argv += ["-p", "moveit_planning_group:=fr3_arm"]
            procs[spec.name] = _start(argv, env if spec.executable == "executor_node" else None)

        accepted = lambda: watcher.status.get("accepted", {}).get(interface, 0)  # noqa: E731
        moved = lambda: np.array(watcher.status["ee_position"]) - start_ee  # noqa: E731
        # The commands this process saw, too: its subscription may match the executor's publisher only after
        # the arm has begun to move (discovery on a loaded machine), and the command stream goes on while the
        # policy publishes.
        seen = lambda: len(watcher.twists if interface == "twist" else watcher.trajectories)  # noqa: E731
        ok = spin_until(node, lambda: watcher.status and len(watcher.chunks) >= 5 and accepted() >= 10
                        and moved()[0] >= 0.03 and seen() >= 5, 120)
        assert ok, f"the arm did not move 3 cm along +x\n{_diagnose(watcher, procs)}"
        for name, proc in procs.items():
            assert proc.alive(), f"{name} died\n{_diagnose(watcher, procs)}"
        executor_log = procs["executor"].output()
    finally:
        watcher.close()
        _stop_all(procs.values())
        node.destroy_node()
        rclpy.shutdown()

    status = watcher.status
    foreign = [c for c in watcher.chunks if abs(chunk_to_array(c)[0, 0] - STEP_M) > 1e-3]
    assert not foreign, (f"{len(foreign)} ActionChunks that this test's policy cannot have sent: another process "
                         f"publishes on ROS domain {os.environ.get('ROS_DOMAIN_ID')}")
    assert sum(status["refused"].values()) == 0, f"the double refused commands: {status['last_refusal']}"
    delta = moved()
    assert np.linalg.norm(delta[1:]) <= 0.2 * delta[0], (
        f"moved {delta}, commanded +x; first chunk {chunk_to_array(watcher.chunks[0])[0]}; "
        f"twists {[(m.twist.linear.x, m.twist.linear.y, m.twist.linear.z) for _, m in watcher.twists[:5]]}; "
        f"joints {status['joint_positions']}; ticks cut by joint limits {status['limited_ticks']}")
    # The pose the policy and executor saw is the double's arm (ee_pose_node's forward kinematics).
    assert watcher.ee and np.linalg.norm(watcher.ee[-1] - np.array(status["ee_position"])) < 0.05
    assert all(c.action_space == "ee_delta_7d" and c.policy_version == 0 for c in watcher.chunks)
    if interface == "twist":
        _check_servo_twists(watcher, robot)
    else:
        _check_joint_trajectories(watcher, robot)
        backend = "moveit_py IK (group fr3_arm)" if with_moveit else "the robot config's kinematics for IK"
        assert f"ee_delta chunks use {backend}" in executor_log, executor_log[-2000:]
    assert status["accepted"]["gripper"] >= 1


def _check_servo_twists(watcher: Watcher, robot) -> None:
    """MoveIt Servo (command_in_type speed_units): frame_id a robot frame (the base frame here), a current
    stamp (Servo halts on commands older than incoming_command_timeout), m/s and rad/s within the limits."""
    moving = [m for _, m in watcher.twists if m.twist.linear.x != 0.0]
    assert moving, "no moving twist seen"
    for received, msg in watcher.twists:
        assert msg.header.frame_id == robot.base_frame
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        assert 0.0 <= received - stamp < 2.0, f"twist stamp {stamp} received at {received}"
        t = msg.twist
        linear = np.array([t.linear.x, t.linear.y, t.linear.z])
        angular = np.array([t.angular.x, t.angular.y, t.angular.z])
        assert np.linalg.norm(linear) <= robot.max_ee_translation_per_step_m / robot.control_period_s + 1e-9
        assert np.linalg.norm(angular) <= robot.max_ee_rotation_per_step_rad / robot.control_period_s + 1e-9
    # speed_units: a STEP_M step over one control period is STEP_M / period m/s.
    np.testing.assert_allclose(np.median([m.twist.linear.x for m in moving]), STEP_M / robot.control_period_s,
                               rtol=0.05)


def _check_joint_trajectories(watcher: Watcher, robot) -> None:
    """JointTrajectoryController's topic: the controller's joints in its order, one point that starts now
    (zero header.stamp), time_from_start = the step, positions only and inside the limits."""
    assert watcher.trajectories, "no JointTrajectory seen"
    lower, upper = np.array(robot.joint_position_lower), np.array(robot.joint_position_upper)
    for msg in watcher.trajectories:
        assert list(msg.joint_names) == CONTROLLER_JOINTS[robot.name]
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0) and msg.header.frame_id == ""
        assert len(msg.points) == 1
        point = msg.points[0]
        assert point.time_from_start.sec + point.time_from_start.nanosec * 1e-9 == pytest.approx(
            robot.control_period_s, abs=1e-6)
        assert len(point.positions) == robot.num_joints and not point.velocities and not point.effort
        positions = np.array(point.positions)
        assert np.all(positions >= lower) and np.all(positions <= upper)
    steps = np.abs(np.diff([m.points[0].positions for m in watcher.trajectories], axis=0))
    assert np.all(steps <= robot.max_joint_step_rad * 2 + 1e-9)  # rate-limited, streamed from the last command


def test_the_double_refuses_what_a_joint_trajectory_controller_refuses():
    """The double's checks are the ones ros2_controllers' JointTrajectoryController documents (so a test that
    passes against the double sends what the controller accepts)."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectoryPoint

    from prophrl_common.testing_driver import check_joint_trajectory

    robot = load_robot_config("ur5e")
    home = list(robot.home_position)

    def trajectory(names=None, points=None, stamp=0):
        msg = JointTrajectory(joint_names=list(reversed(robot.joint_names)) if names is None else names)
        msg.header.stamp.sec = stamp
        msg.points = points if points is not None else [
            JointTrajectoryPoint(positions=list(reversed(home)), time_from_start=Duration(nanosec=50_000_000))]
        return msg

    def point(positions=None, t_ns=50_000_000, **fields):
        return JointTrajectoryPoint(positions=list(reversed(home)) if positions is None else positions,
                                    time_from_start=Duration(nanosec=t_ns), **fields)

    now = 1_000.0
    assert check_joint_trajectory(trajectory(), robot, now) is None  # any joint order is fine
    refusals = {
        "not the controller's joints": trajectory(names=list(robot.joint_names)[:5]),
        "empty joint_names": trajectory(names=[]),
        "no points": trajectory(points=[]),
        "5 positions for 6 joints": trajectory(points=[point(positions=home[:5])]),
        "effort": trajectory(points=[point(effort=[0.0] * 6)]),
        "2 velocities": trajectory(points=[point(velocities=[0.0, 0.0])]),
        "not strictly increasing": trajectory(points=[point(), point(t_ns=50_000_000)]),
        "not at rest": trajectory(points=[point(velocities=[0.1] * 6)]),
        "ends in the past": trajectory(stamp=int(now) - 10),
        # elbow_joint (+-pi), in the reversed order the message lists the joints
        "outside the joint limits": trajectory(points=[point(positions=[0.0, 0.0, 0.0, 3.5, 0.0, 0.0])]),
    }
    for reason, msg in refusals.items():
        got = check_joint_trajectory(msg, robot, now)
        assert got is not None and reason in got, (reason, got)
