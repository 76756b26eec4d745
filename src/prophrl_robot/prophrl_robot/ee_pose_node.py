"""End-effector pose for a real arm: the driver's topics -> the robot config's ee_pose_topic.

The executor (workspace box) and the policy node (proprio state) read the end-effector pose from
``ee_pose_topic`` (/prophrl/ee_pose). A simulator publishes it itself; on a real arm this node does,
from what the arm's driver publishes, by the robot config's ``ee_pose_source`` (the math is in
:mod:`prophrl_common.ee_pose`, ROS-free):

* ``forward_kinematics``: subscribes ``joint_states_topic`` (sensor_msgs/JointState, as
  ur_robot_driver's and franka_ros2's joint_state_broadcaster publish it: any order, extra joints
  such as the gripper's ignored) and publishes the ``ee_frame`` pose by forward kinematics from the
  config's ``kinematics`` on every message that completes the arm's joints;
* ``driver_pose``: subscribes the config's ``driver_pose_topic`` (geometry_msgs/PoseStamped, e.g.
  ur_robot_driver's /tcp_pose_broadcaster/pose in frame ``base``) and republishes it in ``base_frame``.

Output: geometry_msgs/PoseStamped, ``header.frame_id`` = the robot's ``base_frame``, ``header.stamp``
= the input's stamp (now when the input has none). ``/diagnostics`` every ``diagnostics_period_s``:
status ``"<node name>: ee pose"`` with the counters published / incomplete_joint_states /
rejected_poses. A robot whose pose comes from the simulator, or a config without what its source
needs, is one error line and exit status 2.

Run: ``ros2 run prophrl_robot ee_pose_node --ros-args -p robot:=ur5e``
"""

from __future__ import annotations

import dataclasses
import sys

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import JointState

from prophrl_common.ee_pose import EePoseTracker
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import load_robot_config

POSE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
COUNTERS = ("published", "incomplete_joint_states", "rejected_poses")


@dataclasses.dataclass(frozen=True)
class EePoseNodeParameters:
    robot: str = parameter("franka_fr3", "robot name in config/robots or a YAML path; its ee_pose_source says where "
                                         "the pose comes from: forward_kinematics (joint_states_topic + the "
                                         "config's kinematics) or driver_pose (the config's driver_pose_topic)",
                           required=True)
    joint_states_topic: str = parameter("/joint_states", "the driver's joint states (forward_kinematics)",
                                        required=True)
    diagnostics_period_s: float = parameter(1.0, "period of the /diagnostics status", minimum=0.0,
                                            exclusive_minimum=True)


class EePoseNode(Node):
    def __init__(self, node_name: str = "ee_pose_node", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, EePoseNodeParameters)
        params = read_parameters(self, EePoseNodeParameters)
        joint_states_topic, period = params.joint_states_topic, params.diagnostics_period_s
        self.robot = load_robot_config(params.robot)
        self.tracker = EePoseTracker(self.robot)
        self.counters = {k: 0 for k in COUNTERS}
        self._pub = self.create_publisher(PoseStamped, self.robot.ee_pose_topic, POSE_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if self.tracker.source == "forward_kinematics":
            self.create_subscription(JointState, joint_states_topic, self._on_joint_state, qos_profile_sensor_data)
            source = f"forward kinematics from {joint_states_topic}"
        else:
            self.create_subscription(PoseStamped, self.robot.driver_pose_topic, self._on_driver_pose,
                                     qos_profile_sensor_data)
            source = f"the driver's pose on {self.robot.driver_pose_topic}"
        self.create_timer(period, self._publish_diagnostics)
        self.get_logger().info(f"robot {self.robot.name}: {self.robot.ee_frame} in {self.robot.base_frame} "
                               f"on {self.robot.ee_pose_topic}, by {source}")

    def _publish(self, stamp, pose) -> None:
        position, quaternion = pose
        msg = PoseStamped()
        msg.header.stamp = stamp if (stamp.sec or stamp.nanosec) else self.get_clock().now().to_msg()
        msg.header.frame_id = self.robot.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in position)
        (msg.pose.orientation.x, msg.pose.orientation.y,
         msg.pose.orientation.z, msg.pose.orientation.w) = (float(v) for v in quaternion)
        self._pub.publish(msg)
        self.counters["published"] += 1

    def _on_joint_state(self, msg: JointState) -> None:
        pose = self.tracker.from_joint_state(msg.name, msg.position)
        if pose is None:
            self.counters["incomplete_joint_states"] += 1
            return
        self._publish(msg.header.stamp, pose)

    def _on_driver_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        try:
            pose = self.tracker.from_driver_pose(msg.header.frame_id, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        except ValueError as exc:
            self.counters["rejected_poses"] += 1
            self.get_logger().warning(f"driver pose not used: {exc}", throttle_duration_sec=5.0)
            return
        self._publish(msg.header.stamp, pose)

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: ee pose", hardware_id=self.robot.name)
        if self.counters["published"]:
            status.level, status.message = DiagnosticStatus.OK, "publishing"
        else:
            status.level, status.message = DiagnosticStatus.WARN, "no pose yet"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in self.counters.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Run the node; 0 on a clean stop, 2 when the robot config cannot give an end-effector pose."""
    return run_node(EePoseNode, args)


if __name__ == "__main__":
    sys.exit(main())
