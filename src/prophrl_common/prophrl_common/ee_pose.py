"""A real arm's end-effector pose from what its driver publishes (no ROS here; ee_pose_node wraps it).

By the robot config's ``ee_pose_source``:

* ``forward_kinematics``: the ``ee_frame`` pose in ``base_frame`` from the arm's joint positions
  (sensor_msgs/JointState names and positions, merged by name) and the config's ``kinematics``;
* ``driver_pose``: the driver's own pose of the end effector (e.g. ur_robot_driver's
  tcp_pose_broadcaster, in UR's ``base`` frame), moved into ``base_frame``. Poses in ``base_frame``
  or in ``kinematics.chain_base`` are understood; any other frame is refused (there is no tf here).

Simulated robots (``ee_pose_source: simulator``) have the simulator publish the pose instead.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from prophrl_common.config_io import ConfigError
from prophrl_common.joint_states import JointPositions
from prophrl_common.kinematics import KinematicChain, matrix_to_pose, pose_to_matrix


class EePoseTracker:
    """The ``ee_frame`` pose of one robot, as (position (3,), quaternion x y z w (4,)) in ``base_frame``."""

    def __init__(self, robot):
        if robot.ee_pose_source == "simulator":
            raise ConfigError(f"robot {robot.name} takes its end-effector pose from the simulator "
                              "(ee_pose_source: simulator); ee_pose_node is for real arms")
        self.robot = robot
        self.source = robot.ee_pose_source
        self.chain = KinematicChain.for_robot(robot) if robot.kinematics is not None else None
        self.joints = JointPositions(robot.joint_names)
        self._frames = {robot.base_frame.lstrip("/"): np.eye(4)}
        if self.chain is not None and robot.kinematics.chain_base:
            self._frames.setdefault(robot.kinematics.chain_base.lstrip("/"), self.chain.base)

    @property
    def known_frames(self) -> list[str]:
        return sorted(self._frames)

    def from_joint_state(self, names: Sequence[str], positions: Sequence[float]
                         ) -> tuple[np.ndarray, np.ndarray] | None:
        """Take a JointState; the pose once every arm joint has a finite position, else None."""
        if not self.joints.update(names, positions) or not self.joints.complete:
            return None
        return self.chain.pose(self.joints.values)

    def from_driver_pose(self, frame_id: str, position: Sequence[float], quaternion_xyzw: Sequence[float]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """A driver's PoseStamped of the end effector, in base_frame. ValueError for an unknown frame or
        a non-finite / zero-norm pose."""
        frame = self._frames.get(frame_id.lstrip("/"))
        if frame is None:
            raise ValueError(f"pose in frame {frame_id!r}; this robot config knows {self.known_frames}")
        position = np.asarray(position, dtype=np.float64)
        quaternion = np.asarray(quaternion_xyzw, dtype=np.float64)
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quaternion))) or np.linalg.norm(quaternion) < 1e-6:
            raise ValueError("non-finite position or invalid orientation quaternion")
        return matrix_to_pose(frame @ pose_to_matrix(position, quaternion / np.linalg.norm(quaternion)))
