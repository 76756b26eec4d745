"""IK for ee_delta chunks on joint_trajectory robots: end-effector step -> joint targets.

Both backends answer ``ee_position(joints)`` (the end effector's position in the base frame) and
``solve(joints, delta)`` (joint positions that move the end effector by ``delta`` = dx dy dz in metres
and a rotation vector droll dpitch dyaw in radians, both in the base frame; None when there is no
solution). Their joint targets still go through the executor's joint safety filter.

* :class:`MoveItIkBackend`: moveit_py's IK (only where moveit_py is installed, with a MoveIt config);
* :class:`KinematicsIkBackend`: damped least squares on the robot config's own ``kinematics``
  (:mod:`prophrl_common.kinematics`), available wherever the config has them.

:func:`select_ik_backend` picks moveit_py when a planning group is set and moveit_py imports, else the
config's kinematics, else none (the executor then rejects ee_delta chunks on such a robot).
"""

from __future__ import annotations

import importlib.util

import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_common.kinematics import KinematicChain
from prophrl_common.robots import RobotConfig


def moveit_py_available() -> bool:
    try:
        return importlib.util.find_spec("moveit") is not None and \
            importlib.util.find_spec("moveit.planning") is not None
    except (ImportError, ValueError):
        return False


class MoveItIkBackend:
    """End-effector deltas -> joint targets with moveit_py's IK.

    Uses moveit_py's documented API: ``moveit.planning.MoveItPy`` for the robot model and
    ``moveit.core.robot_state.RobotState`` (``joint_positions``, ``update``, ``get_pose``,
    ``set_from_ik``). MoveItPy reads robot_description / SRDF / kinematics from its parameters,
    so start the executor from a launch file that passes the MoveIt config (moveit_configs_utils'
    ``MoveItConfigsBuilder(...).to_dict()``) as parameters.
    """

    name = "moveit_py"

    def __init__(self, robot: RobotConfig, group: str, ik_timeout_s: float, node_name: str):
        from moveit.core.robot_state import RobotState  # noqa: PLC0415 (optional dependency)
        from moveit.planning import MoveItPy  # noqa: PLC0415

        self._RobotState = RobotState
        self._moveit = MoveItPy(node_name=node_name)
        self._model = self._moveit.get_robot_model()
        self._robot = robot
        self._group = group
        self._timeout = float(ik_timeout_s)

    def _state(self, joints: np.ndarray):
        state = self._RobotState(self._model)
        state.joint_positions = {n: float(v) for n, v in zip(self._robot.joint_names, joints)}
        state.update()
        return state

    def ee_position(self, joints: np.ndarray) -> np.ndarray:
        pose = self._state(joints).get_pose(self._robot.ee_frame)
        return np.array([pose.position.x, pose.position.y, pose.position.z])

    def solve(self, joints: np.ndarray, delta: np.ndarray) -> np.ndarray | None:
        state = self._state(joints)
        pose = state.get_pose(self._robot.ee_frame)
        current = Rotation.from_quat([pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w])
        target = (Rotation.from_rotvec(np.asarray(delta[3:6], dtype=np.float64)) * current).as_quat()
        pose.position.x += float(delta[0])
        pose.position.y += float(delta[1])
        pose.position.z += float(delta[2])
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in target)
        if not state.set_from_ik(self._group, pose, self._robot.ee_frame, self._timeout):
            return None
        solved = state.joint_positions
        return np.array([solved[n] for n in self._robot.joint_names], dtype=np.float64)


class KinematicsIkBackend:
    """End-effector deltas -> joint targets by damped least squares on the robot config's kinematics."""

    name = "kinematics"

    def __init__(self, robot: RobotConfig):
        self._chain = KinematicChain.for_robot(robot)

    def ee_position(self, joints: np.ndarray) -> np.ndarray:
        return self._chain.forward(joints)[:3, 3]

    def solve(self, joints: np.ndarray, delta: np.ndarray) -> np.ndarray | None:
        return self._chain.solve_step(joints, delta[:3], delta[3:6])


def select_ik_backend(robot: RobotConfig, planning_group: str, ik_timeout_s: float, node_name: str
                      ) -> tuple[MoveItIkBackend | KinematicsIkBackend | None, str]:
    """(backend or None, a sentence for the log saying which and why)."""
    problem = ""
    if planning_group and moveit_py_available():
        try:
            return (MoveItIkBackend(robot, planning_group, ik_timeout_s, node_name),
                    f"ee_delta chunks use moveit_py IK (group {planning_group})")
        except Exception as exc:  # noqa: BLE001 (a misconfigured MoveIt must not stop the executor)
            problem = f"moveit_py present but unusable ({exc}); "
    elif planning_group:
        problem = "moveit_planning_group is set but moveit_py is not importable; "
    if robot.kinematics is not None:
        return KinematicsIkBackend(robot), f"{problem}ee_delta chunks use the robot config's kinematics for IK"
    return None, (f"{problem}robot {robot.name} has no kinematics in its config: ee_delta chunks will be "
                  "rejected (send joint_position chunks, add kinematics, or set moveit_planning_group)")
