"""ArmCommander: which chunks an arm accepts, and each row -> a filtered command (no ROS)."""

import dataclasses

import numpy as np
import pytest

from prophrl_common.chunks import InvalidChunkError
from prophrl_common.robots import load_robot_config
from prophrl_robot.arm_commands import ArmCommander
from prophrl_robot.ik_backends import KinematicsIkBackend
from prophrl_robot.safety import SafetyFilter

PANDA = load_robot_config("panda_sim")           # command_interface twist
UR5E = dataclasses.replace(load_robot_config("ur5e"), command_interface="joint_trajectory")


def _commander(robot, ik=None):
    return ArmCommander(robot, SafetyFilter(robot), ik)


def test_admission_rules():
    arm = _commander(PANDA)
    two_arms = np.zeros((3, 14))
    actions, space = arm.admit(two_arms, "ee_delta_14d")
    assert space == "ee_delta_7d" and actions.shape == (3, 7)
    two_arms[1, 8] = 0.01
    with pytest.raises(InvalidChunkError, match="moves a second end effector; robot panda_sim has one arm"):
        arm.admit(two_arms, "ee_delta_14d")
    with pytest.raises(InvalidChunkError, match="joint_position chunk has action_dim 6 but robot panda_sim has 7"):
        arm.admit(np.zeros((3, 6)), "joint_position")
    with pytest.raises(InvalidChunkError, match="ee_delta chunks need IK"):
        _commander(UR5E).admit(np.zeros((3, 7)), "ee_delta_7d")
    assert _commander(UR5E, KinematicsIkBackend(UR5E)).admit(np.zeros((3, 7)), "ee_delta_7d")[1] == "ee_delta_7d"


def test_twist_rows_are_filtered_and_hold_without_a_pose():
    arm = _commander(PANDA)
    inside = np.asarray(PANDA.workspace_min) / 2 + np.asarray(PANDA.workspace_max) / 2
    row = np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    command = arm.command(row, "ee_delta_7d", 0.1, inside, None)
    assert not command.hold and command.interface == "twist" and command.gripper == 1.0
    np.testing.assert_allclose(command.linear, [0.1, 0.0, 0.0])    # 0.01 m in 0.1 s
    held = arm.command(row, "ee_delta_7d", 0.1, None, None)
    assert held.hold and held.interface == "twist" and held.reasons == ("no_state",)


def test_joint_rows_stream_from_the_last_command_while_the_arm_tracks_it():
    arm = _commander(UR5E)
    home = np.asarray(UR5E.home_position, np.float64)
    limits = arm.safety.joint_step_limits(0.1)
    first = arm.command(home + limits * 0.5, "joint_position", 0.1, None, home)
    assert not first.hold and first.interface == "joint" and first.gripper is None
    # the arm lags one step behind: the next target is limited relative to the last command, not the measurement
    second = arm.command(home + limits * 1.5, "joint_position", 0.1, None, home)
    np.testing.assert_allclose(second.positions, home + limits * 1.5)
    held = arm.command(home, "joint_position", 0.1, None, None)
    assert held.hold and arm.last_joint_command is None


def test_ee_rows_on_a_joint_robot_go_through_ik():
    ik = KinematicsIkBackend(UR5E)
    arm = _commander(UR5E, ik)
    home = np.asarray(UR5E.home_position, np.float64)
    command = arm.command(np.array([0.005, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]), "ee_delta_7d", 0.1, None, home)
    assert not command.hold and command.interface == "joint" and command.gripper == 0.5
    moved = ik.ee_position(command.positions) - ik.ee_position(home)
    assert moved[0] > 0.003 and abs(moved[1]) < 0.002 and abs(moved[2]) < 0.002
    unknown = arm.command(np.zeros(7), "ee_delta_7d", 0.1, None, None)
    assert unknown.hold and unknown.interface == "joint"
