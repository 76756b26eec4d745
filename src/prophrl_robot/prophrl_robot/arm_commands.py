"""What one arm executes, without ROS: which chunks it accepts, and each chunk row -> a filtered command.

:class:`ArmCommander` sits between the :class:`~prophrl_robot.chunk_stepper.ChunkStepper` (which row is due)
and the executor node (which publishes). Every row passes the :class:`~prophrl_robot.safety.SafetyFilter`:

- ``ee_delta_7d`` on a ``twist`` robot: the filtered delta as a twist (velocity = delta / step duration) +
  the gripper command; a hold is a zero twist;
- ``ee_delta_7d`` on a ``joint_trajectory`` robot: the filtered delta through IK (the end-effector position
  from the pose topic, else forward kinematics of the measured joints) to a joint target, which then
  passes the joint filter as a ``joint_position`` row does, + the gripper command;
- ``joint_position``: the filtered joint target, streamed from the last command while the arm tracks it
  (tracking error within two step limits), else from the measured joints; a hold is a JointTrajectory at
  the measured joints.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from prophrl_common.chunks import ARM_ACTION_DIM, InvalidChunkError
from prophrl_common.robots import RobotConfig
from prophrl_robot.safety import SafetyFilter


@dataclasses.dataclass(frozen=True)
class ArmCommand:
    """The command for one row. `hold`: publish a hold in `interface` instead (reasons say why)."""

    interface: str                             # "twist" | "joint"
    hold: bool = False
    reasons: tuple[str, ...] = ()
    linear: np.ndarray | None = None           # twist: m/s in the base frame
    angular: np.ndarray | None = None          # twist: rad/s
    positions: np.ndarray | None = None        # joint: target joint positions
    gripper: float | None = None               # 0 open .. 1 closed; None: no gripper command with this row
    warnings: tuple[str, ...] = ()             # solver failures worth a (throttled) warning


class ArmCommander:
    """Rows of accepted chunks -> ArmCommands for one robot. `ik` (an ik_backends backend or None) is needed
    for ee_delta chunks on joint_trajectory robots."""

    def __init__(self, robot: RobotConfig, safety: SafetyFilter, ik=None):
        self.robot, self.safety, self.ik = robot, safety, ik
        self.last_interface: str | None = None      # of the last row's command: "twist" | "joint"
        self.last_joint_command: np.ndarray | None = None

    def admit(self, actions: np.ndarray, space: str) -> tuple[np.ndarray, str]:
        """The (actions, space) this arm executes for a valid chunk; InvalidChunkError says why it cannot. An
        ee_delta_14d chunk whose second arm does not move is executed as ee_delta_7d."""
        robot = self.robot
        if space == "ee_delta_14d":
            if np.any(actions[:, ARM_ACTION_DIM:] != 0.0):
                raise InvalidChunkError(f"ee_delta_14d moves a second end effector; robot {robot.name} has one arm")
            actions, space = actions[:, :ARM_ACTION_DIM], "ee_delta_7d"
        if space == "ee_delta_7d" and robot.command_interface == "joint_trajectory" and self.ik is None:
            raise InvalidChunkError(f"robot {robot.name} uses command_interface joint_trajectory, and ee_delta "
                                    "chunks need IK: its config has no kinematics and moveit_py is not configured "
                                    "(moveit_planning_group); send joint_position chunks to this robot")
        if space == "joint_position" and actions.shape[1] != robot.num_joints:
            raise InvalidChunkError(f"joint_position chunk has action_dim {actions.shape[1]} but robot {robot.name} "
                                    f"has {robot.num_joints} joints {list(robot.joint_names)}")
        return actions, space

    def command(self, row: np.ndarray, space: str, dt: float, ee_position: np.ndarray | None,
                joints: np.ndarray | None) -> ArmCommand:
        """The command for one row of an admitted chunk, given the fresh state (None: unknown or stale)."""
        if space == "joint_position":
            return self._joint(row, dt, joints)
        if self.robot.command_interface == "twist":
            return self._ee_twist(row, dt, ee_position)
        return self._ee_ik(row, dt, ee_position, joints)

    def forget_joint_command(self) -> None:
        """After a hold the next joint command starts from the measured joints."""
        self.last_joint_command = None

    def _ee_twist(self, row: np.ndarray, dt: float, ee_position: np.ndarray | None) -> ArmCommand:
        result = self.safety.filter_ee_delta(row, ee_position)
        self.last_interface = "twist"
        if result.hold:
            return ArmCommand("twist", hold=True, reasons=result.reasons)
        linear, angular = self.safety.twist_from_delta(result.command, dt)
        return ArmCommand("twist", linear=linear, angular=angular, gripper=float(result.command[6]))

    def _ee_ik(self, row: np.ndarray, dt: float, ee_position: np.ndarray | None,
               joints: np.ndarray | None) -> ArmCommand:
        warnings = []
        known_joints = joints is not None and bool(np.all(np.isfinite(joints)))
        if ee_position is None and known_joints:
            try:
                ee_position = self.ik.ee_position(joints)
            except Exception as exc:  # noqa: BLE001 (never crash on a solver error)
                warnings.append(f"{self.ik.name} forward kinematics failed: {exc}")
        result = self.safety.filter_ee_delta(row, ee_position)
        target = None
        if not result.hold and known_joints:
            try:
                target = self.ik.solve(joints, result.command)
            except Exception as exc:  # noqa: BLE001
                warnings.append(f"{self.ik.name} IK failed: {exc}")
            if target is None:
                warnings.append("no IK solution for the filtered ee step: holding")
        if target is None:
            self.last_joint_command = None
            return ArmCommand("joint", hold=True, reasons=result.reasons or ("no_ik",), warnings=tuple(warnings))
        command = self._joint(target, dt, joints)
        if command.hold:
            return dataclasses.replace(command, warnings=tuple(warnings))
        return dataclasses.replace(command, gripper=float(result.command[6]), warnings=tuple(warnings))

    def _joint(self, row: np.ndarray, dt: float, joints: np.ndarray | None) -> ArmCommand:
        reference = None
        if (self.last_interface == "joint" and self.last_joint_command is not None and joints is not None
                and np.all(np.isfinite(joints))):
            # Stream from the last command while the arm tracks it (bounded tracking error),
            # else restart from the measured position.
            if np.all(np.abs(self.last_joint_command - joints) <= 2.0 * self.safety.joint_step_limits(dt)):
                reference = self.last_joint_command
        result = self.safety.filter_joint_position(row, joints, dt, reference=reference)
        self.last_interface = "joint"
        if result.hold:
            self.last_joint_command = None
            return ArmCommand("joint", hold=True, reasons=result.reasons)
        self.last_joint_command = result.command
        return ArmCommand("joint", positions=result.command)
