"""A robot's joint positions, merged by name from sensor_msgs/JointState-shaped updates (no ROS here).

Drivers publish /joint_states in their own order (ur_robot_driver's joint_state_broadcaster sorts the
names alphabetically; franka_ros2's joint_state_publisher appends the finger joints), sometimes split
over several messages (arm and gripper), so consumers map by name: joints the robot config does not
list are ignored, and a joint keeps its last value until a message names it again.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class JointPositions:
    """Latest position of each of ``joint_names``; NaN until a message names that joint."""

    def __init__(self, joint_names: Sequence[str]):
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self._values = np.full(len(self.joint_names), np.nan)

    def update(self, names: Sequence[str], positions: Sequence[float]) -> bool:
        """Take one message's names and positions. False (and nothing taken) when the lists differ in
        length or name none of our joints."""
        if len(names) != len(positions):
            return False
        values = self._values.copy()
        seen = False
        for name, position in zip(names, positions):
            i = self._index.get(name)
            if i is not None:
                values[i] = position
                seen = True
        if seen:
            self._values = values
        return seen

    @property
    def values(self) -> np.ndarray:
        """A copy, in the robot config's joint order (NaN for joints never seen)."""
        return self._values.copy()

    @property
    def complete(self) -> bool:
        """Every joint has a finite position."""
        return bool(np.all(np.isfinite(self._values)))

    def reset(self) -> None:
        self._values[:] = np.nan
