"""A driver-shaped test double of a real arm (not a simulator), for the real_robot profile where no arm exists.

It publishes what ur_robot_driver / franka_ros2 publish and consumes the command interfaces the executor
drives (MoveIt Servo's twist topic, a JointTrajectoryController's topic), with ideal tracking: no
dynamics, no camera, no objects. Each command is checked the way its real consumer checks it; a refused
one is counted with its reason and moves nothing.

Run: ``python -m prophrl_common.testing_driver --ros-args -p robot:=ur5e [-p rate_hz:=50.0]``

Publishes, like the drivers:

* ``/joint_states`` (sensor_msgs/JointState, every 1/rate_hz): header.stamp now, the arm's joints in the
  driver's order with position, velocity and effort: ur_robot_driver's joint_state_broadcaster sorts
  the names (elbow_joint, shoulder_lift_joint, shoulder_pan_joint, wrist_1..3_joint); franka_ros2's
  joint_state_publisher lists fr3_joint1..7 and then the hand's fr3_finger_joint1/2;
* the robot config's ``driver_pose_topic`` when it names one (ur_robot_driver's tcp_pose_broadcaster:
  geometry_msgs/PoseStamped of the TCP in frame ``kinematics.chain_base``, i.e. UR's ``base``).

Consumes:

* ``twist_topic``, geometry_msgs/TwistStamped, as MoveIt Servo (command_in_type ``speed_units``: m/s and
  rad/s of the end effector): refused when non-finite, when header.frame_id is not a frame of the robot
  (base_frame, kinematics.chain_base or ee_frame here), or stale (header.stamp older than
  ``twist_timeout_s``, Servo's incoming_command_timeout); an accepted twist moves the joints through the
  Jacobian's damped pseudo-inverse until ``twist_timeout_s`` after it arrived or the next command;
* ``joint_trajectory_topic``, trajectory_msgs/JointTrajectory, as ros2_controllers'
  JointTrajectoryController (allow_partial_joints_goal false, position command interface): refused
  unless joint_names are exactly the controller's joints (any order), there are points, every point has
  one position per joint, velocities / accelerations empty or one per joint, no effort,
  time_from_start strictly increasing, the last point at rest, a zero header.stamp ("start now") or a
  trajectory that ends in the future; also refused with positions outside the joint limits. An accepted
  trajectory is followed linearly from where the arm is, starting now;
* ``gripper_topic`` (std_msgs/Float64, 0 open .. 1 closed): the finger joints, where the driver has them.

Reports on ``~/status`` (std_msgs/String, JSON, every status_period_s): per interface the messages
received / accepted / refused, the last refusal, the smallest time_from_start and the largest twist
age seen, the ticks where a joint velocity or position limit cut the commanded motion, the joint positions
(config order) and the end-effector position (base_frame).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import JointTrajectory

from prophrl_common.kinematics import KinematicChain, matrix_to_pose
from prophrl_common.node_parameters import declare_parameters, parameter, read_parameters
from prophrl_common.node_runtime import run_node
from prophrl_common.robots import RobotConfig, load_robot_config

# How each driver lays out /joint_states: "sorted" names or the config's order, and extra joints.
DRIVER_SHAPES = {
    "ur5e": ("sorted", ()),
    "franka_fr3": ("config", ("fr3_finger_joint1", "fr3_finger_joint2")),
}
FINGER_OPEN_M = 0.04  # Franka Hand: each finger 0 .. 0.04 m
INTERFACES = ("twist", "joint_trajectory", "gripper")


def _duration_s(msg) -> float:
    return msg.sec + msg.nanosec * 1e-9


def check_joint_trajectory(msg: JointTrajectory, robot: RobotConfig, now_s: float) -> str | None:
    """Why a JointTrajectoryController (and the arm's limits) would refuse `msg`, or None."""
    joints = list(robot.joint_names)
    names = list(msg.joint_names)
    if not names:
        return "empty joint_names"
    if len(names) != len(joints) or sorted(names) != sorted(joints):
        return f"joint_names {names} are not the controller's joints {joints}"
    if not msg.points:
        return "no points"
    previous = -1.0
    for i, point in enumerate(msg.points):
        if len(point.positions) != len(names):
            return f"point {i} has {len(point.positions)} positions for {len(names)} joints"
        for field in ("velocities", "accelerations"):
            if len(getattr(point, field)) not in (0, len(names)):
                return f"point {i} has {len(getattr(point, field))} {field} for {len(names)} joints"
        if len(point.effort):
            return f"point {i} has effort values (the controller commands positions)"
        t = _duration_s(point.time_from_start)
        if i > 0 and t <= previous:
            return f"time_from_start not strictly increasing at point {i}"
        previous = t
        positions = np.array(point.positions, dtype=np.float64)
        if not np.all(np.isfinite(positions)):
            return f"point {i} has non-finite positions"
        by_config = positions[[names.index(n) for n in joints]]
        outside = (by_config < np.array(robot.joint_position_lower)) | (by_config > np.array(robot.joint_position_upper))
        if np.any(outside):
            return f"point {i} is outside the joint limits at {[j for j, o in zip(joints, outside) if o]}"
    if any(abs(v) > np.finfo(np.float32).eps for v in msg.points[-1].velocities):
        return "the last point is not at rest"
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    if stamp != 0.0 and stamp + _duration_s(msg.points[-1].time_from_start) < now_s:
        return "header.stamp is set and the trajectory ends in the past"
    return None


@dataclasses.dataclass(frozen=True)
class DriverDoubleParameters:
    robot: str = parameter("ur5e", "the real robot config whose driver this node plays", required=True)
    rate_hz: float = parameter(50.0, "joint state rate", minimum=0.0, exclusive_minimum=True)
    twist_timeout_s: float = parameter(0.1, "a twist is followed until a newer one or this much time",
                                       minimum=0.0, exclusive_minimum=True)
    status_period_s: float = parameter(0.2, "period of the status line", minimum=0.0, exclusive_minimum=True)


class DriverDouble(Node):
    def __init__(self, node_name: str = "driver_double", **kwargs):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, DriverDoubleParameters)
        params = read_parameters(self, DriverDoubleParameters)
        self.robot = load_robot_config(params.robot)
        self.rate_hz, self.twist_timeout_s, status_period = params.rate_hz, params.twist_timeout_s, params.status_period_s
        self.chain = KinematicChain.for_robot(self.robot)
        robot = self.robot
        order, self.extra_joints = DRIVER_SHAPES.get(robot.name, ("config", ()))
        self.published_names = (sorted(robot.joint_names) if order == "sorted" else list(robot.joint_names))
        self._publish_index = [list(robot.joint_names).index(n) for n in self.published_names]
        self.q = np.array(robot.home_position, dtype=np.float64)
        self.dq = np.zeros_like(self.q)
        self.gripper = 0.0
        self.frames = {robot.base_frame: "base"}
        if robot.kinematics.chain_base:
            self.frames[robot.kinematics.chain_base] = "chain_base"
        self.frames[robot.ee_frame] = "ee"
        self.counts = {kind: {i: 0 for i in INTERFACES} for kind in ("received", "accepted", "refused")}
        self.last_refusal = ""
        self.min_time_from_start = None
        self.max_twist_age_s = 0.0
        self.limited_ticks = 0  # ticks where a joint velocity or position limit cut the commanded motion
        self._twist: tuple[np.ndarray, float] | None = None      # (base-frame twist, apply until)
        self._trajectory: list[tuple[float, np.ndarray]] | None = None  # (monotonic time, joint positions)
        self._last_tick = time.monotonic()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._joint_pub = self.create_publisher(JointState, "/joint_states", qos)
        self._pose_pub = (self.create_publisher(PoseStamped, robot.driver_pose_topic, qos)
                          if robot.driver_pose_topic else None)
        self._status_pub = self.create_publisher(String, "~/status", qos)
        self.create_subscription(TwistStamped, robot.twist_topic, self._on_twist, qos)
        self.create_subscription(JointTrajectory, robot.joint_trajectory_topic, self._on_trajectory, qos)
        self.create_subscription(Float64, robot.gripper_topic, self._on_gripper, qos)
        self.create_timer(1.0 / self.rate_hz, self._tick)
        self.create_timer(status_period, self._publish_status)
        self.get_logger().info(f"driver double for {robot.name}: /joint_states at {self.rate_hz:g} Hz, "
                               f"twists on {robot.twist_topic}, trajectories on {robot.joint_trajectory_topic}")

    # ---------------------------------------------------------------- commands
    def _refuse(self, interface: str, reason: str) -> None:
        self.counts["refused"][interface] += 1
        self.last_refusal = f"{interface}: {reason}"
        self.get_logger().warning(f"refused {interface} command: {reason}")

    def _on_twist(self, msg: TwistStamped) -> None:
        self.counts["received"]["twist"] += 1
        t = msg.twist
        twist = np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])
        age = (self.get_clock().now() - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9
        self.max_twist_age_s = max(self.max_twist_age_s, age)
        frame = self.frames.get(msg.header.frame_id)
        if not np.all(np.isfinite(twist)):
            return self._refuse("twist", "non-finite twist")
        if frame is None:
            return self._refuse("twist", f"frame_id {msg.header.frame_id!r} is not a frame of the robot "
                                         f"({sorted(self.frames)})")
        if age >= self.twist_timeout_s:
            return self._refuse("twist", f"stale: header.stamp is {age:.3f} s old (timeout {self.twist_timeout_s} s)")
        rotation = {"base": np.eye(3), "chain_base": self.chain.base[:3, :3],
                    "ee": self.chain.forward(self.q)[:3, :3]}[frame]
        twist = np.concatenate([rotation @ twist[:3], rotation @ twist[3:]])
        self.counts["accepted"]["twist"] += 1
        self._trajectory = None
        self._twist = (twist, time.monotonic() + self.twist_timeout_s)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.counts["received"]["joint_trajectory"] += 1
        reason = check_joint_trajectory(msg, self.robot, self.get_clock().now().nanoseconds * 1e-9)
        if reason is not None:
            return self._refuse("joint_trajectory", reason)
        first = _duration_s(msg.points[0].time_from_start)
        self.min_time_from_start = first if self.min_time_from_start is None else min(self.min_time_from_start, first)
        order = [list(msg.joint_names).index(n) for n in self.robot.joint_names]
        now = time.monotonic()
        self._trajectory = [(now, self.q.copy())] + [
            (now + _duration_s(p.time_from_start), np.array(p.positions, dtype=np.float64)[order]) for p in msg.points]
        self._twist = None
        self.counts["accepted"]["joint_trajectory"] += 1

    def _on_gripper(self, msg: Float64) -> None:
        self.counts["received"]["gripper"] += 1
        if not (np.isfinite(msg.data) and 0.0 <= msg.data <= 1.0):
            return self._refuse("gripper", f"command {msg.data} outside 0 .. 1")
        self.counts["accepted"]["gripper"] += 1
        self.gripper = float(msg.data)

    # ---------------------------------------------------------------- motion + state
    def _target(self, now: float, dt: float) -> np.ndarray:
        if self._twist is not None:
            twist, until = self._twist
            if now >= until:
                self._twist = None
                return self.q
            jac = self.chain.jacobian(self.q)
            qdot = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), twist)
            return self.q + qdot * dt
        if self._trajectory is not None:
            times = [t for t, _ in self._trajectory]
            if now >= times[-1]:
                target = self._trajectory[-1][1]
                self._trajectory = None
                return target
            i = int(np.searchsorted(times, now, side="right"))
            (t0, q0), (t1, q1) = self._trajectory[i - 1], self._trajectory[i]
            return q0 + (q1 - q0) * (now - t0) / max(t1 - t0, 1e-9)
        return self.q

    def _tick(self) -> None:
        now = time.monotonic()
        dt = min(now - self._last_tick, 0.1)
        self._last_tick = now
        target = self._target(now, dt)
        limits = np.array(self.robot.joint_velocity_limits) * max(dt, 1e-6)
        step = np.clip(target - self.q, -limits, limits)
        new_q = np.clip(self.q + step, self.robot.joint_position_lower, self.robot.joint_position_upper)
        if not np.allclose(new_q, target, rtol=0.0, atol=1e-12):
            self.limited_ticks += 1
        self.dq = (new_q - self.q) / max(dt, 1e-6)
        self.q = new_q
        stamp = self.get_clock().now().to_msg()
        msg = JointState()
        msg.header.stamp = stamp
        msg.name = list(self.published_names) + list(self.extra_joints)
        finger = FINGER_OPEN_M * (1.0 - self.gripper)
        msg.position = [float(self.q[i]) for i in self._publish_index] + [finger] * len(self.extra_joints)
        msg.velocity = [float(self.dq[i]) for i in self._publish_index] + [0.0] * len(self.extra_joints)
        msg.effort = [0.0] * len(msg.name)
        self._joint_pub.publish(msg)
        if self._pose_pub is not None:
            pose = PoseStamped()
            pose.header.stamp = stamp
            pose.header.frame_id = self.robot.kinematics.chain_base
            position, quaternion = matrix_to_pose(np.linalg.inv(self.chain.base) @ self.chain.forward(self.q))
            pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in position)
            (pose.pose.orientation.x, pose.pose.orientation.y,
             pose.pose.orientation.z, pose.pose.orientation.w) = (float(v) for v in quaternion)
            self._pose_pub.publish(pose)

    def _publish_status(self) -> None:
        status = {**self.counts, "last_refusal": self.last_refusal, "min_time_from_start": self.min_time_from_start,
                  "max_twist_age_s": self.max_twist_age_s, "limited_ticks": self.limited_ticks,
                  "joint_positions": self.q.tolist(),
                  "ee_position": self.chain.forward(self.q)[:3, 3].tolist(),
                  "ee_rotvec": Rotation.from_matrix(self.chain.forward(self.q)[:3, :3]).as_rotvec().tolist()}
        self._status_pub.publish(String(data=json.dumps(status)))


def main(args: list[str] | None = None) -> int:
    return run_node(DriverDouble, args)


if __name__ == "__main__":
    sys.exit(main())
