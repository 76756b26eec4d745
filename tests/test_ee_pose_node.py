"""ee_pose_node in its own process: driver-shaped /joint_states or a driver pose topic -> /prophrl/ee_pose.

This test publishes what franka_ros2 and ur_robot_driver publish (franka: the arm's joints and the hand's
finger joints; ur: names sorted, NaN velocities as joint_state_broadcaster sends for missing interfaces;
tcp_pose_broadcaster's PoseStamped in UR's "base" frame) and checks the pose the node publishes.
"""

import subprocess
import sys

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState

from prophrl_common.kinematics import KinematicChain
from prophrl_common.paths import config_dir
from prophrl_common.robots import load_robot_config
from prophrl_common.testing import node_process, python_module_argv, spin_until


@pytest.fixture()
def ros():
    rclpy.init()
    node = Node("ee_pose_node_test")
    yield node
    node.destroy_node()
    rclpy.shutdown()


def _poses(node, topic="/prophrl/ee_pose"):
    got = []
    node.create_subscription(PoseStamped, topic, got.append, 10)
    return got


def _diagnostics(node, name):
    latest = {}

    def on_diag(msg):
        for status in msg.status:
            if status.name == f"{name}: ee pose":
                latest.update({kv.key: kv.value for kv in status.values})
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    return latest


def test_forward_kinematics_from_franka_joint_states(ros):
    robot = load_robot_config("franka_fr3")
    q = np.array(robot.home_position) + np.linspace(-0.1, 0.1, 7)
    poses = _poses(ros)
    diag = _diagnostics(ros, "ee_pose_node")
    joint_pub = ros.create_publisher(JointState, "/joint_states", 10)
    sent = []

    def publish():
        # franka_ros2 merges the hand's joint states into /joint_states; the hand alone is no arm state.
        fingers = JointState(name=["fr3_finger_joint1", "fr3_finger_joint2"], position=[0.03, 0.03])
        joint_pub.publish(fingers)
        msg = JointState(name=list(robot.joint_names) + ["fr3_finger_joint1", "fr3_finger_joint2"],
                         position=list(q) + [0.03, 0.03], velocity=[0.0] * 9, effort=[0.1] * 9)
        msg.header.stamp = ros.get_clock().now().to_msg()
        sent.append(msg.header.stamp)
        joint_pub.publish(msg)

    timer = ros.create_timer(0.05, publish)
    with node_process(python_module_argv("prophrl_robot.ee_pose_node", "-p", "robot:=franka_fr3")) as proc:
        # wait for what is checked below: a diagnostics report that has seen the fingers-only messages (an
        # earlier report, from before the node handled one, is still valid but cannot show it)
        assert spin_until(ros, lambda: len(poses) >= 5 and int(diag.get("published", "0")) >= 1
                          and int(diag.get("incomplete_joint_states", "0")) >= 1, 30), (diag, proc.output())
    ros.destroy_timer(timer)
    expected = KinematicChain.for_robot(robot).forward(q)
    last = poses[-1]
    assert last.header.frame_id == "fr3_link0"
    assert (last.header.stamp.sec, last.header.stamp.nanosec) in {(s.sec, s.nanosec) for s in sent}
    p, o = last.pose.position, last.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z], expected[:3, 3], atol=1e-9)
    assert (Rotation.from_quat([o.x, o.y, o.z, o.w]).inv() * Rotation.from_matrix(expected[:3, :3])).magnitude() < 1e-9
    assert int(diag["incomplete_joint_states"]) >= 1  # the fingers-only messages published nothing
    assert int(diag["rejected_poses"]) == 0


def test_driver_pose_from_ur_tcp_pose_broadcaster(ros, tmp_path):
    data = yaml.safe_load((config_dir() / "robots" / "ur5e.yaml").read_text())
    data["ee_pose_source"] = "driver_pose"
    robot_file = tmp_path / "ur5e_driver_pose.yaml"
    robot_file.write_text(yaml.safe_dump(data))
    poses = _poses(ros)
    diag = _diagnostics(ros, "ee_pose_node")
    pose_pub = ros.create_publisher(PoseStamped, "/tcp_pose_broadcaster/pose", 10)

    def publish():
        for frame in ("base", "world"):  # "world" is unknown here: refused, not republished
            msg = PoseStamped()
            msg.header.stamp = ros.get_clock().now().to_msg()
            msg.header.frame_id = frame
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = -0.49, -0.13, 0.49
            msg.pose.orientation.x, msg.pose.orientation.w = 1.0, 0.0  # the TCP pointing down
            pose_pub.publish(msg)

    timer = ros.create_timer(0.05, publish)
    with node_process(python_module_argv("prophrl_robot.ee_pose_node", "-p", f"robot:={robot_file}")) as proc:
        assert spin_until(ros, lambda: len(poses) >= 3 and int(diag.get("rejected_poses", 0)) >= 3, 30), proc.output()
        log = proc.output()
    ros.destroy_timer(timer)
    last = poses[-1]
    assert last.header.frame_id == "base_link"
    p, o = last.pose.position, last.pose.orientation
    np.testing.assert_allclose([p.x, p.y, p.z], [0.49, 0.13, 0.49], atol=1e-9)  # base -> base_link: pi about z
    np.testing.assert_allclose(np.abs([o.x, o.y, o.z, o.w]), [0.0, 1.0, 0.0, 0.0], atol=1e-9)
    assert "pose in frame 'world'" in log


def test_a_simulated_robot_is_one_clear_error():
    proc = subprocess.run([sys.executable, "-m", "prophrl_robot.ee_pose_node", "--ros-args", "-p",
                           "robot:=panda_sim"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "takes its end-effector pose from the simulator" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
