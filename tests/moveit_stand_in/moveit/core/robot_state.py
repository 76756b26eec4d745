"""moveit.core.robot_state stand-in: RobotState (see the package docstring)."""

import numpy as np
from geometry_msgs.msg import Pose
from scipy.spatial.transform import Rotation


class RobotState:
    def __init__(self, robot_model):
        self._model = robot_model
        self._names = list(robot_model.robot.joint_names)
        self._q = np.array(robot_model.robot.home_position, dtype=np.float64)
        self.dirty = False

    @property
    def joint_positions(self) -> dict:
        return {n: float(v) for n, v in zip(self._names, self._q)}

    @joint_positions.setter
    def joint_positions(self, values: dict) -> None:
        for name, value in values.items():
            self._q[self._names.index(name)] = float(value)  # KeyError-like failure for unknown joints
        self.dirty = True

    def update(self, force: bool = False, type: str = "all") -> None:  # noqa: A002 (moveit_py's name)
        self.dirty = False

    def _tip(self, link_name: str):
        if self.dirty:
            raise RuntimeError("RobotState is dirty: call update() first")
        if link_name != self._model.robot.ee_frame:
            raise ValueError(f"link {link_name!r} is not the tip of this stand-in ({self._model.robot.ee_frame})")
        return self._model.chain.forward(self._q)

    def get_pose(self, link_name: str) -> Pose:
        self._model.calls["get_pose"] += 1
        tip = self._tip(link_name)
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in tip[:3, 3])
        x, y, z, w = Rotation.from_matrix(tip[:3, :3]).as_quat()
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = x, y, z, w
        return pose

    def set_from_ik(self, joint_model_group_name: str, geometry_pose: Pose, tip_name: str,
                    timeout: float = 0.0) -> bool:
        self._model.calls["set_from_ik"] += 1
        if not isinstance(geometry_pose, Pose):
            raise TypeError("geometry_pose must be a geometry_msgs.msg.Pose")
        tip = self._tip(tip_name)
        p, o = geometry_pose.position, geometry_pose.orientation
        target = Rotation.from_quat([o.x, o.y, o.z, o.w]).as_matrix()
        solution = self._model.chain.solve_step(
            self._q, np.array([p.x, p.y, p.z]) - tip[:3, 3], Rotation.from_matrix(target @ tip[:3, :3].T).as_rotvec())
        if solution is None:
            return False
        self._q = solution
        return True
