"""Which IK serves ee_delta chunks on a joint_trajectory robot, and the config-kinematics one's answers."""

import numpy as np
from scipy.spatial.transform import Rotation

from prophrl_common.kinematics import KinematicChain
from prophrl_common.robots import load_robot_config
from prophrl_robot.ik_backends import KinematicsIkBackend, moveit_py_available, select_ik_backend


def test_the_robot_config_kinematics_serve_when_moveit_py_is_not_configured():
    assert not moveit_py_available()  # moveit_py cannot be installed here
    ur5e = load_robot_config("ur5e")
    backend, why = select_ik_backend(ur5e, "", 0.02, "executor_moveit_py")
    assert isinstance(backend, KinematicsIkBackend) and "robot config's kinematics" in why
    backend, why = select_ik_backend(ur5e, "ur_manipulator", 0.02, "executor_moveit_py")
    assert isinstance(backend, KinematicsIkBackend) and "moveit_py is not importable" in why
    backend, why = select_ik_backend(load_robot_config("panda_sim"), "", 0.02, "executor_moveit_py")
    assert backend is None and "will be rejected" in why


def test_kinematics_ik_moves_the_end_effector_by_the_filtered_step():
    robot = load_robot_config("franka_fr3")
    chain = KinematicChain.for_robot(robot)
    backend = KinematicsIkBackend(robot)
    q = np.array(robot.home_position)
    np.testing.assert_allclose(backend.ee_position(q), chain.forward(q)[:3, 3])
    delta = np.array([0.02, -0.01, 0.0, 0.0, 0.0, 0.1, 1.0])  # dx dy dz droll dpitch dyaw gripper
    solved = backend.solve(q, delta)
    before, after = chain.forward(q), chain.forward(solved)
    np.testing.assert_allclose(after[:3, 3] - before[:3, 3], delta[:3], atol=2e-4)
    np.testing.assert_allclose(Rotation.from_matrix(after[:3, :3] @ before[:3, :3].T).as_rotvec(), delta[3:6],
                               atol=2e-3)
