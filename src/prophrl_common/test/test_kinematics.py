"""Forward kinematics of the real-robot configs against independent references, IK, joint-state merging,
and the end-effector pose from driver-shaped messages."""

import importlib.util
import os

import mujoco
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from prophrl_common.config_io import ConfigError
from prophrl_common.ee_pose import EePoseTracker
from prophrl_common.joint_states import JointPositions
from prophrl_common.kinematics import KinematicChain, pose_matrix
from prophrl_common.paths import config_dir
from prophrl_common.robots import load_robot_config

ROBOSUITE_ROBOTS = os.path.join(importlib.util.find_spec("robosuite").submodule_search_locations[0],
                                "models", "assets", "robots")


def _mujoco_hand_in_base(model, data, q):
    """robosuite's right_hand body pose in its robot's base body, by MuJoCo's own kinematics."""
    data.qpos[:len(q)] = q
    mujoco.mj_kinematics(model, data)
    base, hand = model.body("base").id, model.body("right_hand").id
    rb = data.xmat[base].reshape(3, 3)
    return rb.T @ (data.xpos[hand] - data.xpos[base]), rb.T @ data.xmat[hand].reshape(3, 3)


# robot config, robosuite model, the robosuite hand frame in our ee_frame, position / angle tolerance.
# robosuite's Panda is Franka's published model (same table as the FR3): right_hand is fr3_hand, 0.1034 m
# above fr3_hand_tcp (its flange offset is 0.1065 m, Franka's 0.107). Its UR5e is MuJoCo Menagerie's,
# whose link offsets round UR's DH parameters by up to 2 mm; right_hand is tool0.
REFERENCES = [("franka_fr3", "panda", pose_matrix((0, 0, -0.1034, 0, 0, 0)), 1e-3, 1e-3),
              ("ur5e", "ur5e", np.eye(4), 4e-3, 1e-3)]


@pytest.mark.parametrize("robot_name,model_name,hand_in_ee,tol_m,tol_rad", REFERENCES, ids=[r[0] for r in REFERENCES])
def test_forward_kinematics_matches_robosuite_mujoco_models(robot_name, model_name, hand_in_ee, tol_m, tol_rad):
    robot = load_robot_config(robot_name)
    chain = KinematicChain.for_robot(robot)
    model = mujoco.MjModel.from_xml_path(os.path.join(ROBOSUITE_ROBOTS, model_name, "robot.xml"))
    data = mujoco.MjData(model)
    assert model.njnt == model.nq == robot.num_joints  # one hinge per arm joint, in the config's order
    rng = np.random.default_rng(0)
    lower = np.maximum(robot.joint_position_lower, -np.pi)
    upper = np.minimum(robot.joint_position_upper, np.pi)
    worst_m = worst_rad = 0.0
    for q in [np.array(robot.home_position)] + [rng.uniform(lower, upper) for _ in range(50)]:
        position, rotation = _mujoco_hand_in_base(model, data, q)
        ours = chain.forward(q) @ hand_in_ee
        worst_m = max(worst_m, float(np.linalg.norm(ours[:3, 3] - position)))
        worst_rad = max(worst_rad, Rotation.from_matrix(ours[:3, :3].T @ rotation).magnitude())
    assert worst_m < tol_m and worst_rad < tol_rad, (worst_m, worst_rad)


def test_forward_kinematics_matches_published_zero_poses():
    # UR5e at zero: stretched out along base_link's +x: x = -(a2 + a3), y = d4 + d6, z = d1 - d5 (base_link
    # is UR's DH base rotated by pi about z).
    ur = KinematicChain.for_robot(load_robot_config("ur5e"))
    np.testing.assert_allclose(ur.forward(np.zeros(6))[:3, 3], [0.8172, 0.2329, 0.0628], atol=1e-9)
    # FR3 / Panda at zero: Franka's flange at (0.088, 0, 0.926), pointing down; fr3_hand_tcp 0.1034 below.
    fr3 = KinematicChain.for_robot(load_robot_config("franka_fr3"))
    tcp = fr3.forward(np.zeros(7))
    np.testing.assert_allclose(tcp[:3, 3], [0.088, 0.0, 0.926 - 0.1034], atol=1e-9)
    np.testing.assert_allclose(tcp[:3, 2], [0.0, 0.0, -1.0], atol=1e-9)


@pytest.mark.parametrize("robot_name", ["franka_fr3", "ur5e"])
def test_jacobian_matches_finite_differences_and_ik_reaches_small_steps(robot_name):
    robot = load_robot_config(robot_name)
    chain = KinematicChain.for_robot(robot)
    q = np.array(robot.home_position) + 0.1
    jac = chain.jacobian(q)
    eps = 1e-6
    for i in range(robot.num_joints):
        dq = np.zeros(robot.num_joints)
        dq[i] = eps
        plus, minus = chain.forward(q + dq), chain.forward(q - dq)
        np.testing.assert_allclose((plus[:3, 3] - minus[:3, 3]) / (2 * eps), jac[:3, i], atol=1e-6)
        omega = Rotation.from_matrix(plus[:3, :3] @ minus[:3, :3].T).as_rotvec() / (2 * eps)
        np.testing.assert_allclose(omega, jac[3:, i], atol=1e-6)
    start = chain.forward(q)
    step = chain.solve_step(q, [0.01, -0.005, 0.008], [0.0, 0.05, -0.03])
    assert step is not None
    reached = chain.forward(step)
    np.testing.assert_allclose(reached[:3, 3] - start[:3, 3], [0.01, -0.005, 0.008], atol=2e-4)
    turned = Rotation.from_matrix(reached[:3, :3] @ start[:3, :3].T).as_rotvec()
    np.testing.assert_allclose(turned, [0.0, 0.05, -0.03], atol=2e-3)
    assert np.all(step >= robot.joint_position_lower) and np.all(step <= robot.joint_position_upper)
    assert chain.solve_step(q, [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]) is None  # out of reach: no solution


def test_kinematics_config_errors_name_the_problem(tmp_path):
    data = yaml.safe_load((config_dir() / "robots" / "ur5e.yaml").read_text())
    data["kinematics"]["a"] = data["kinematics"]["a"][:5]
    path = tmp_path / "ur5e.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="kinematics.a has 5 values, expected 6"):
        load_robot_config(path)
    data = yaml.safe_load((config_dir() / "robots" / "ur5e.yaml").read_text())
    del data["kinematics"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="forward_kinematics needs a kinematics mapping"):
        load_robot_config(path)


def test_joint_positions_merge_by_name_across_messages():
    merge = JointPositions(["a", "b", "c"])
    assert not merge.update(["x"], [1.0])                   # none of ours
    assert not merge.update(["a", "b"], [1.0])               # lengths differ: nothing taken
    assert merge.update(["c", "x", "a"], [3.0, 9.0, 1.0]) and not merge.complete
    assert merge.update(["b"], [2.0]) and merge.complete
    np.testing.assert_array_equal(merge.values, [1.0, 2.0, 3.0])


def test_ee_pose_from_driver_shaped_joint_states_and_tcp_pose():
    ur = load_robot_config("ur5e")
    chain = KinematicChain.for_robot(ur)
    q = np.array(ur.home_position) + np.linspace(-0.2, 0.2, 6)
    tracker = EePoseTracker(ur)
    # ur_robot_driver's joint_state_broadcaster: names sorted, not in the controller's order.
    names = sorted(ur.joint_names)
    position, quaternion = tracker.from_joint_state(names, [q[list(ur.joint_names).index(n)] for n in names])
    np.testing.assert_allclose(position, chain.forward(q)[:3, 3], atol=1e-12)
    # tcp_pose_broadcaster: the same pose in UR's "base" frame (base_link rotated by pi about z).
    in_base = np.linalg.inv(chain.base) @ chain.forward(q)
    moved, turned = tracker.from_driver_pose("base", in_base[:3, 3], Rotation.from_matrix(in_base[:3, :3]).as_quat())
    np.testing.assert_allclose(moved, position, atol=1e-9)
    assert (Rotation.from_quat(turned).inv() * Rotation.from_quat(quaternion)).magnitude() < 1e-9
    np.testing.assert_allclose(moved[:2], -in_base[:2, 3], atol=1e-12)
    with pytest.raises(ValueError, match="frame 'world'"):
        tracker.from_driver_pose("world", [0, 0, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        tracker.from_driver_pose("base_link", [np.nan, 0, 0], [0, 0, 0, 1])

    fr3 = load_robot_config("franka_fr3")
    tracker = EePoseTracker(fr3)
    # franka_ros2: arm joints, then the hand's finger joints; a message with only the fingers is no pose.
    assert tracker.from_joint_state(["fr3_finger_joint1", "fr3_finger_joint2"], [0.04, 0.04]) is None
    names = list(fr3.joint_names) + ["fr3_finger_joint1", "fr3_finger_joint2"]
    position, _ = tracker.from_joint_state(names, list(fr3.home_position) + [0.04, 0.04])
    np.testing.assert_allclose(position, KinematicChain.for_robot(fr3).forward(fr3.home_position)[:3, 3])
    with pytest.raises(ConfigError, match="from the simulator"):
        EePoseTracker(load_robot_config("panda_sim"))
